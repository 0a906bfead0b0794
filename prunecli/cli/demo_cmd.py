"""`prunecli demo`: init LeNet-300-100, prune it by magnitude and at random, inspect both."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer

from prunecli.cli import options as opt
from prunecli.cli.inspect_cmd import render
from prunecli.cli.output import note, stderr_console

DEMO_SPARSITY = 0.9


def demo(
    workdir: Annotated[
        Optional[Path], typer.Option("--workdir", help="Keep the files here (default: a temporary folder).")
    ] = None,
    seed: opt.Seed = 0,
    quiet: opt.Quiet = False,
) -> None:
    """Run init → apply (magnitude, random) at 90% → inspect, and show both tables.

    Example:

      prunecli demo --workdir demo-out
    """
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="prunecli-demo-") as tmp:
            _run(Path(tmp), seed, quiet)
    else:
        workdir.mkdir(parents=True, exist_ok=True)
        _run(workdir, seed, quiet)


def _run(folder: Path, seed: int, quiet: bool) -> None:
    from prunecli.checkpoints import open_checkpoint
    from prunecli.initialize import init_checkpoint
    from prunecli.inspection import summarize
    from prunecli.prunable import prunable_names
    from prunecli.pruning import ApplyRequest, SelectionSpec, apply_pruning
    from prunecli.scoring import get_method

    init_path = folder / "lenet-300-100.safetensors"
    init_checkpoint("lenet-300-100", init_path, seed=seed, force=True)
    note(f"initialised LeNet-300-100 (seed {seed}) in {init_path}", quiet)
    console = stderr_console()
    for method in ("magnitude", "random"):
        out = folder / f"{method}-90"
        with open_checkpoint(init_path) as ckpt:
            request = ApplyRequest(
                checkpoint=ckpt,
                names=prunable_names(ckpt.tensors),
                spec=SelectionSpec(density=1.0 - DEMO_SPARSITY),
                out=out,
                method=get_method(method),
                method_name=method,
                seed=seed,
                force=True,
            )
            apply_pruning(request)
        summary = summarize(out)
        summary["path"] = f"{method} at {DEMO_SPARSITY:.0%} sparsity ({out})"
        render(summary, console)
        pruned = [t for t in summary["tensors"] if t["pruned"]]
        first, last = pruned[0], pruned[-1]
        note(f"{method}: {first['name']} keeps {first['density']:.1%}, "
             f"{last['name']} keeps {last['density']:.1%}", quiet)  # fmt: skip
