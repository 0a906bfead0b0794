"""`prunecli intersect`: the weights two or more mask sets all keep (or, with --union, any keeps)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from prunecli.cli import options as opt
from prunecli.cli.output import emit_json, note, stderr_console, warn

Sources = Annotated[
    list[Path],
    typer.Argument(
        metavar="MASKS...", help="Two or more output folders, their manifest.json, or masks.safetensors."
    ),
]
LABELS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def _cells(label: str, r: dict[str, Any]) -> list[str]:
    densities = [f"{d:.4f}" for d in r["densities"]]
    return [escape(label), *densities, f"{r['result_density']:.4f}", f"{r['chance_density']:.4f}",
            _ratio(r["vs_chance"])]  # fmt: skip


def render(report: dict[str, Any], console: Console) -> None:
    """Per-tensor densities of each input and of the result, against chance, and a summary line."""
    inputs = report["inputs"]
    title = "  ".join(escape(f"{LABELS[i % 26]}: {s['path']}") for i, s in enumerate(inputs))
    table = Table(title=f"{report['operation']} of {title}", title_justify="left")
    headers = ["tensor", *(f"density\n{LABELS[i % 26]}" for i in range(len(inputs))), report["operation"],
               "chance", "vs\nchance"]  # fmt: skip
    for i, header in enumerate(headers):
        if i == 0:
            table.add_column(header, overflow="fold")
        else:
            table.add_column(header, justify="right", no_wrap=True)
    for r in report["tensors"]:
        table.add_row(*_cells(r["name"], r))
    table.add_section()
    table.add_row(*_cells("total", report["totals"]))
    console.print(table)
    t = report["totals"]
    console.print(
        f"{report['operation']} keeps {t['result_kept']:,} of {t['numel']:,} ({t['result_density']:.4f}): "
        f"{_ratio(t['vs_chance'])} what independent random masks of these densities would "
        f"({t['chance_density']:.4f})",
        markup=False,
    )


def intersect(
    sources: Sources,
    output: opt.OutputFolder,
    union: Annotated[
        bool, typer.Option("--union", help="Keep what any mask set keeps, not what all keep.")
    ] = False,
    force: opt.Force = False,
    json_out: opt.Json = False,
    quiet: opt.Quiet = False,
) -> None:
    """Intersect two or more mask sets (or unite them with --union) into OUT/ for `apply --masks`.

    Writes OUT/masks.safetensors and OUT/manifest.json (no model file).

    Shows each tensor's densities, and the result against independent random masks of those densities.

    Examples:

      prunecli intersect seed0/round-5/ seed1/round-5/ -o common/

      prunecli intersect snip/ synflow/ grasp/ --union -o any/ --json

      prunecli apply init.safetensors --masks common/ -o common-init/
    """
    from prunecli.analysis.intersect import intersect as intersect_sets

    report = intersect_sets(sources, output, union=union, force=force)
    for w in report["manifest"]["warnings"]:
        warn(w["message"])
    note(f"wrote {output}: kept {report['totals']['result_kept']:,} of {report['totals']['numel']:,}", quiet)
    if json_out:
        emit_json({key: value for key, value in report.items() if key != "manifest"})
    elif not quiet:
        render(report, stderr_console())
