"""`prunecli compare`: per-tensor overlap (IoU) and densities of two mask sets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from prunecli.cli import options as opt
from prunecli.cli.output import emit_json, note, stderr_console

_SOURCE_HELP = "Apply output folder, manifest.json, or masks.safetensors."
SourceA = Annotated[Path, typer.Argument(metavar="A", help=_SOURCE_HELP)]
SourceB = Annotated[Path, typer.Argument(metavar="B", help=_SOURCE_HELP)]


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _cells(label: str, r: dict[str, Any], random: bool) -> list[str]:
    cells = [escape(label), f"{r['density_a']:.4f}", f"{r['density_b']:.4f}", f"{r['intersection']:,}",
             _ratio(r["iou"]), _ratio(r["a_kept_by_b"])]  # fmt: skip
    return [*cells, _ratio(r["random"]["iou"])] if random else cells


def _side(tag: str, side: dict[str, Any]) -> str:
    return escape(f"{tag}: {side['path']}" + (f" ({side['method']})" if side["method"] else ""))


def _shape(shape: list[int]) -> str:
    return "×".join(str(d) for d in shape) or "scalar"


def render(report: dict[str, Any], console: Console) -> None:
    """Draw the overlap table, the tensors found on one side only, and a one-line summary.

    The table fits 80 columns: shapes and union counts are left to `--json`.
    """
    random = report["random_baseline"]
    table = Table(title=f"{_side('A', report['a'])}  vs  {_side('B', report['b'])}", title_justify="left")
    rows = [_cells(r["name"], r, random) for r in report["tensors"]]
    total = _cells("total", report["totals"], random)
    headers = ["tensor", "density\nA", "density\nB", "kept by\nboth", "IoU", "A kept\nby B", "random\nIoU"]
    for i, header in enumerate(headers[: len(total)]):
        if i == 0:  # only the names may wrap; numbers are never cut
            table.add_column(header, overflow="fold")
        else:
            width = max(*(len(line) for line in header.split("\n")), *(len(row[i]) for row in [*rows, total]))
            table.add_column(header, justify="right", no_wrap=True, min_width=width)
    for row in rows:
        table.add_row(*row)
    table.add_section()
    table.add_row(*total)
    console.print(table)
    for tag, key in (("A", "only_a"), ("B", "only_b")):
        for r in report[key]:
            line = f"only in {tag}: {r['name']} ({_shape(r['shape'])}, density {r['density']:.4f})"
            console.print(line, markup=False)
    totals = report["totals"]
    console.print(
        f"IoU {_ratio(totals['iou'])} over {totals['numel']:,} weights in {totals['tensors']} tensors"
    )
    if random:
        expected = _ratio(totals["random"]["iou"])
        console.print(f"independent random masks with the same per-tensor densities: IoU {expected}")


def compare(
    a: SourceA,
    b: SourceB,
    random_baseline: Annotated[
        bool,
        typer.Option(
            "--random-baseline", help="Also show the IoU expected from random masks of these densities."
        ),
    ] = False,
    json_out: opt.Json = False,
    quiet: opt.Quiet = False,
) -> None:
    """Compare two mask sets: per-tensor densities, overlap (IoU) and agreement against chance.

    Per tensor pruned on both sides: densities, weights kept by both, IoU, and A's kept weights B keeps.

    --random-baseline adds the IoU expected of independent random masks with the same densities.

    Examples:

      prunecli compare snip/ synflow/

      prunecli compare snip/ synflow/ --random-baseline --json

      prunecli compare run1/masks.safetensors run2/manifest.json
    """
    from prunecli.analysis.compare import compare as compare_sets

    report = compare_sets(a, b, random_baseline)
    for line in report.pop("notes"):
        note(line, quiet)
    if json_out:
        emit_json(report)
    elif not quiet:
        render(report, stderr_console())
