"""`prunecli inspect`: layer densities, totals, collapsed layers, and CI checks."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from prunecli.cli import options as opt
from prunecli.cli.output import note, stderr_console, warn
from prunecli.errors import CheckFailed, UsageError

BAR_WIDTH = 12


def finite_or_null(value: Any) -> Any:
    """`value` with every NaN or infinity made null: bare NaN/Infinity is not JSON, and a CI
    job parsing the report must not choke on it (or, worse, read it leniently).
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(item) for item in value]
    return value


def emit_strict_json(data: Any) -> None:
    """The report on stdout as strict JSON (non-finite numbers are null, never NaN)."""
    sys.stdout.write(json.dumps(finite_or_null(data), indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    sys.stdout.flush()


def _bar(density: float) -> str:
    filled = round(density * BAR_WIDTH)
    return "█" * filled + "·" * (BAR_WIDTH - filled)


def _cells(t: dict[str, Any], with_groups: bool) -> list[str]:
    cells = [t["name"], "×".join(str(d) for d in t["shape"]) or "scalar", f"{t['numel']:,}", f"{t['kept']:,}"]
    if with_groups:
        cells.append(f"{t['groups']['kept']}/{t['groups']['total']}" if "groups" in t else "")
    return [*cells, f"{t['density']:.4f}", _bar(t["density"])]


def render(summary: dict[str, Any], console: Console, show_all: bool = False) -> None:
    """Draw the density table, the totals and any collapsed layers."""
    table = Table(title=f"{summary['path']} ({summary['kind']})", title_justify="left")
    totals = summary["totals"]
    shown = [t for t in summary["tensors"] if t["pruned"] or show_all]
    with_groups = any("groups" in t for t in shown)
    headers = [("tensor", "left"), ("shape", "left"), ("params", "right"), ("kept", "right")]
    headers += [("groups", "right")] if with_groups else []
    headers += [("density", "right"), ("", "left")]
    rows = [_cells(t, with_groups) for t in shown]
    total_row = ["total (prunable)", "", f"{totals['prunable']:,}", f"{totals['kept']:,}"]
    total_row += [""] if with_groups else []
    total_row += [f"{1 - totals['sparsity']:.4f}", _bar(1 - totals["sparsity"])]
    widths = [max(len(h), *(len(r[i]) for r in [*rows, total_row])) for i, (h, _) in enumerate(headers)]
    widths[0] = min(widths[0], 28)  # long names fold; numbers are never cut
    if sum(widths) + 3 * len(widths) + 1 > console.width:  # no room: drop the bar, not the figures
        headers, widths = headers[:-1], widths[:-1]
        rows, total_row = [r[:-1] for r in rows], total_row[:-1]
    for i, (header, justify) in enumerate(headers):
        table.add_column(header, justify=justify, overflow="fold" if i == 0 else "ellipsis",
                         no_wrap=i > 0, min_width=widths[i])  # fmt: skip
    for t, cells in zip(shown, rows, strict=True):
        collapsed = t["pruned"] and t["kept"] == 0 and t["numel"] > 0
        table.add_row(*cells, style="red" if collapsed else None)
    table.add_section()
    table.add_row(*total_row)
    console.print(table)
    console.print(f"sparsity {totals['sparsity']:.4f} over {totals['prunable']:,} prunable parameters "
                  f"({totals.get('params', totals['prunable']):,} in all)")  # fmt: skip
    if summary["collapsed"]:
        console.print(
            f"[red]collapsed layers ({len(summary['collapsed'])}): {', '.join(summary['collapsed'])}[/red]"
        )


def render_signal(signal: dict[str, Any], console: Console) -> None:
    """Path check and Jacobian singular values, after pruning and before when known."""
    for stage in ("before", "after"):
        report = signal[stage]
        if report is None:
            continue
        jac = report["jacobian"]
        console.print(
            f"{stage} pruning: SynFlow R {report['synflow_r']:.6g}; Jacobian singular values over "
            f"{jac['examples']} examples: mean {jac['mean']:.4g}, std {jac['std']:.4g}, "
            f"min {jac['min']:.4g}, max {jac['max']:.4g}"
        )


def inspect(
    path: Annotated[Path, typer.Argument(help="Output folder, manifest.json, or a checkpoint.")],
    json_out: opt.Json = False,
    expect_sparsity: Annotated[
        Optional[float], typer.Option("--expect-sparsity", help="Exit 1 unless the sparsity is this.")
    ] = None,
    tolerance: Annotated[float, typer.Option("--tolerance", help="Allowed |achieved - expected|.")] = 0.001,
    fail_on_collapse: Annotated[
        bool, typer.Option("--fail-on-collapse", help="Exit 1 if any layer keeps no weights.")
    ] = False,
    show_all: Annotated[bool, typer.Option("--all", help="List untouched tensors too.")] = False,
    signal: Annotated[
        bool, typer.Option("--signal", help="Jacobian singular values and the path check (needs --arch).")
    ] = False,
    arch: opt.Arch = None,
    arch_args: opt.ArchArgs = None,
    data: opt.Data = None,
    input_shape: opt.InputShape = None,
    examples: Annotated[int, typer.Option("--examples", help="Examples probed by --signal.")] = 32,
    seed: opt.Seed = opt.DEFAULT_SEED,
    include: opt.Include = None,
    exclude: opt.Exclude = None,
    quiet: opt.Quiet = False,
) -> None:
    """Show per-tensor densities; with expectations, act as a CI gate (exit 1 on failure).

    A folder or manifest is first checked against its masks and model files: any
    contradiction (an edited folder, or one mixed from two runs) exits 2.

    Examples:

      prunecli inspect out/

      prunecli inspect out/manifest.json --json --expect-sparsity 0.9 --tolerance 0.001

      prunecli inspect model.safetensors --fail-on-collapse

      prunecli inspect out/ --signal --arch lenet-300-100 --data mnist.npz
    """
    from prunecli.analysis.inspect import Expectations, SignalRequest, check, signal_summary, summarize

    expect = Expectations(expect_sparsity, tolerance, fail_on_collapse)
    try:
        expect.validate()
    except UsageError as exc:  # the library's `Expectations.sparsity` is this command's --expect-sparsity
        raise exc.renamed(sparsity="expect_sparsity") from None
    if signal and arch is None:
        raise UsageError("--signal rebuilds the network and needs its architecture", "add --arch")
    if examples < 1:
        raise UsageError(f"--examples {examples} must be at least 1", "e.g. --examples 32")
    summary = summarize(path, tuple(include or ()), tuple(exclude or ()))
    if signal:
        request = SignalRequest(
            arch=arch, arch_args=arch_args, data=data, input_shape=input_shape, examples=examples, seed=seed
        )
        summary["signal"] = signal_summary(Path(summary["path"]) if summary["kind"] == "manifest" else path,
                                           request)  # fmt: skip
    for line in summary.pop("notes"):
        note(line, quiet)
    failures = check(summary, expect)
    if json_out:
        emit_strict_json({**summary, "checks": {"passed": not failures, "failures": failures}})
    elif not quiet:
        render(summary, stderr_console(), show_all)
        if signal:
            render_signal(summary["signal"], stderr_console())
    if signal and not summary["signal"]["after"]["connected"]:
        warn("no path from input to output survives (SynFlow R = 0): the network is fully collapsed")
    for name in summary["collapsed"]:
        warn(f"{name} keeps no weights: the layer is collapsed")
    if failures:
        raise CheckFailed("; ".join(failures), "the check asked for with inspect did not hold")
