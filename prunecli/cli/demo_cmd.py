"""`prunecli demo`: SNIP vs magnitude vs random at 95% on LeNet-5 and built-in real digits."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from prunecli.cli import options as opt
from prunecli.cli.output import RichProgress, emit_json, note, stderr_console
from prunecli.errors import UsageError


def demo(
    workdir: Annotated[
        Optional[Path], typer.Option("--workdir", help="Keep the files here (default: a temporary folder).")
    ] = None,
    epochs: Annotated[int, typer.Option("--epochs", help="Masked training epochs per method.")] = 3,
    seed: opt.Seed = opt.DEFAULT_SEED,
    json_out: opt.Json = False,
    quiet: opt.Quiet = False,
) -> None:
    """Prune LeNet-5 with SNIP, magnitude and random at 95%, train each briefly, compare.

    Uses 2,000 MNIST training digits and 1,000 test digits that ship with prunecli.

    Example:

      prunecli demo --workdir demo-out --epochs 2
    """
    if epochs < 0:
        raise UsageError(f"--epochs {epochs} is negative", "use 0 to skip training, or e.g. 3")
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="prunecli-demo-") as tmp:
            report = _run(Path(tmp), seed, epochs, quiet)
    else:
        workdir.mkdir(parents=True, exist_ok=True)
        report = _run(workdir, seed, epochs, quiet)
    if json_out:
        emit_json(report)
    elif not quiet:
        _render(report)


def _run(folder: Path, seed: int, epochs: int, quiet: bool) -> dict[str, Any]:
    from prunecli.analysis.inspect import summarize
    from prunecli.models.initialize import init_checkpoint
    from prunecli.pipelines.apply import apply
    from prunecli.pipelines.demo import DEMO_ARCH, DEMO_METHODS, DEMO_SPARSITY, demo_data_path, train_and_test
    from prunecli.pipelines.score import score

    init = folder / f"{DEMO_ARCH}.safetensors"
    init_checkpoint(DEMO_ARCH, init, seed=seed, force=True)
    note(f"initialised {DEMO_ARCH} (seed {seed}) in {init}", quiet)
    spec = opt.SelectionOptions(sparsity=DEMO_SPARSITY).spec()
    model = opt.ModelOptions(arch=DEMO_ARCH, data=str(demo_data_path()), batch_size=100, device="cpu")
    scoring = opt.scoring_arguments(model, opt.METHOD)
    methods: dict[str, Any] = {}
    with RichProgress(quiet) as progress:
        for name in DEMO_METHODS:
            out, scores = folder / f"{name}-95", folder / f"{name}.safetensors"
            score(init, name, scores, seed=seed, force=True, progress=progress, **scoring)
            apply(init, out, spec, scores=scores, seed=seed, force=True)
            densities = {t["name"]: t["density"] for t in summarize(out)["tensors"] if t["pruned"]}
            progress.stage(f"training the {name} mask ({epochs} epoch(s))", 1)
            methods[name] = {"densities": densities, "accuracy": train_and_test(out, epochs, seed)}
            progress.advance()
    return {"arch": DEMO_ARCH, "sparsity": DEMO_SPARSITY, "epochs": epochs, "methods": methods}


def _render(report: dict[str, Any]) -> None:
    methods = report["methods"]
    table = Table(
        title=f"{report['arch']} pruned to {report['sparsity']:.0%} sparsity: weights kept per layer",
        caption=f"test accuracy on 1,000 MNIST test digits after {report['epochs']} epoch(s) of training",
        title_justify="left",
        caption_justify="left",
    )
    table.add_column("tensor")
    for name in methods:
        table.add_column(name, justify="right")
    for tensor in next(iter(methods.values()))["densities"]:
        table.add_row(tensor, *(f"{m['densities'][tensor]:.2%}" for m in methods.values()))
    table.add_section()
    table.add_row("test accuracy", *(f"{m['accuracy']:.2%}" for m in methods.values()))
    stderr_console().print(table)
