"""`prunecli eval`: accuracy (per class) or perplexity on held-out data, against a baseline, gated."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from prunecli.cli import choices
from prunecli.cli import options as opt
from prunecli.cli.inspect_cmd import emit_strict_json
from prunecli.cli.output import RichProgress, note, stderr_console
from prunecli.errors import CheckFailed

EvalCheckpoint = Annotated[
    Path, typer.Argument(help="Checkpoint file, apply output folder, or Hugging Face model folder.")
]
EvalData = Annotated[
    str,
    typer.Option(
        "--data",
        help="Test data: .npz/.npy/.safetensors/.pt with inputs and labels (accuracy), or for a language "
        "model .txt/.jsonl text or input_ids (perplexity). Every example is used.",
    ),
]
Baseline = Annotated[
    Optional[Path],
    typer.Option("--baseline", help="The checkpoint to compare with (e.g. the dense one), on the same data."),
]
EvalBatchSize = Annotated[
    Optional[int],
    typer.Option("--batch-size", min=1, help="Examples per forward pass (default: 256, or 8 token windows)."),
]
MaxDrop = Annotated[
    Optional[float],
    typer.Option(
        "--max-drop",
        help="Exit 1 if accuracy drops more than this fraction below --baseline's (0.02: two points); for a "
        "language model, if perplexity rises more than this fraction (0.1: 10%).",
    ),
]
MaxClassDrop = Annotated[
    Optional[float],
    typer.Option("--max-class-drop", help="Exit 1 if any class's accuracy drops more than this fraction."),
]
EvalDtype = Annotated[
    Optional[choices.ScoreDtype],
    typer.Option("--dtype", help="Precision of the forward passes (default float32)."),
]


def _fraction(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def render(report: dict[str, Any], console: Console) -> None:
    """Draw the per-class table (a classifier) or the perplexity table (a language model), under a
    heading line (a table title would wrap long paths to the table's width)."""
    heading = f"{report['checkpoint']} on {report['data']}"
    if report["task"] == "language-modeling":
        _render_lm(report, heading, console)
        return
    base = report["baseline"]
    console.print(f"{heading} ({report['examples']:,} examples)", markup=False)
    table = Table()
    table.add_column("class")
    for header in ("examples", "accuracy", *(("baseline", "drop") if base else ())):
        table.add_column(header, justify="right", no_wrap=True)
    worst = report["worst_class"]["class"] if report["worst_class"] else None
    for c in report["classes"]:
        cells = [str(c["class"]), f"{c['examples']:,}", _fraction(c["accuracy"])]
        cells += [_fraction(c["baseline_accuracy"]), _fraction(c["drop"])] if base else []
        table.add_row(*cells, style="red" if c["class"] == worst else None)
    table.add_section()
    total = ["all", f"{report['examples']:,}", _fraction(report["accuracy"])]
    table.add_row(*total, *((_fraction(base["accuracy"]), _fraction(report["drop"])) if base else ()))
    console.print(table)
    line = f"accuracy {report['accuracy']:.4f} ({report['correct']:,} of {report['examples']:,})"
    if base:
        line += f"; baseline {base['accuracy']:.4f}, drop {report['drop']:.4f}"
        line += f"; worst class {worst} (drop {report['worst_class']['drop']:.4f})"
    console.print(line, markup=False)


def _render_lm(report: dict[str, Any], heading: str, console: Console) -> None:
    base = report["baseline"]
    console.print(f"{heading} ({report['windows']:,} windows of {report['seq_len']:,} tokens)", markup=False)
    table = Table()
    table.add_column("model")
    for header in ("tokens", "nll", "perplexity"):
        table.add_column(header, justify="right", no_wrap=True)
    for label, r in (("checkpoint", report), ("baseline", base)):
        if r is not None:
            cells = [escape(f"{label}: {r['checkpoint']}"), f"{r['tokens']:,}", f"{r['nll']:.4f}"]
            table.add_row(*cells, f"{r['perplexity']:,.3f}")
    console.print(table)
    line = f"perplexity {report['perplexity']:,.3f} over {report['tokens']:,} predicted tokens"
    if base:
        line += f"; baseline {base['perplexity']:,.3f}: ratio {report['perplexity_ratio']:.4f} "
        line += f"({report['perplexity_increase']:+.2%})"
    console.print(line, markup=False)


def eval_command(
    checkpoint: EvalCheckpoint,
    data: EvalData,
    baseline: Baseline = None,
    arch: opt.Arch = None,
    arch_args: opt.ArchArgs = None,
    trust_remote_code: opt.TrustRemoteCode = False,
    batch_size: EvalBatchSize = None,
    seq_len: opt.SeqLen = None,
    inputs_key: opt.InputsKey = None,
    labels_key: opt.LabelsKey = None,
    max_drop: MaxDrop = None,
    max_class_drop: MaxClassDrop = None,
    device: opt.Device = opt.MODEL.device,
    dtype: EvalDtype = None,
    json_out: opt.Json = False,
    quiet: opt.Quiet = False,
) -> None:
    """Measure accuracy (overall and per class) or perplexity on held-out data; with --baseline,
    the drop; with --max-drop / --max-class-drop, a CI gate (exit 1 when exceeded).

    Examples:

      prunecli eval snip-95/ --arch lenet-300-100 --data test.npz

      prunecli eval snip-95/ --arch lenet-300-100 --data test.npz --baseline dense.safetensors --max-drop 0.02

      prunecli eval llama-50/ --data wiki.txt --seq-len 1024 --baseline llama/ --max-drop 0.1 --json
    """
    from prunecli.models import parse_arch_args
    from prunecli.pipelines.eval import evaluate

    with RichProgress(quiet) as progress:
        report = evaluate(
            checkpoint, data, arch=arch, arch_args=parse_arch_args(arch_args), baseline=baseline,
            batch_size=batch_size, seq_len=seq_len, inputs_key=inputs_key, labels_key=labels_key,
            device=device, dtype=dtype.value if dtype else None, max_drop=max_drop,
            max_class_drop=max_class_drop, trust_remote_code=trust_remote_code, progress=progress,
        )  # fmt: skip
    for line in report.pop("notes"):
        note(line, quiet)
    if json_out:
        emit_strict_json(report)
    elif not quiet:
        render(report, stderr_console())
    if not report["checks"]["passed"]:
        raise CheckFailed(
            "; ".join(report["checks"]["failures"]), "the check asked for with eval did not hold"
        )
