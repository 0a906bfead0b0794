"""`prunecli apply`: scores -> masks -> masked weights, masks and manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from prunecli.cli import options as opt
from prunecli.cli.output import RichProgress, report_applied
from prunecli.errors import UsageError


def apply(
    checkpoint: opt.Checkpoint,
    output: opt.OutputFolder,
    scores: Annotated[
        Optional[Path], typer.Option("--scores", help="Scores file from `prunecli score`.")
    ] = None,
    method: Annotated[
        Optional[str], typer.Option("--method", "-m", help="Score on the fly with a data-free method.")
    ] = None,
    sparsity: opt.Sparsity = None,
    density: opt.Density = None,
    scope: opt.Scope = None,
    allocation: opt.Allocation = opt.SELECTION.allocation,
    min_density: opt.MinDensity = opt.SELECTION.min_density,
    pattern: opt.Pattern = None,
    structure: opt.Structure = None,
    aggregate: opt.Aggregate = opt.SELECTION.aggregate,
    shuffle: opt.Shuffle = False,
    invert: opt.Invert = False,
    isometry_steps: Annotated[
        int,
        typer.Option("--isometry-steps", help="SGD steps of the approximate-isometry fix (Lee et al. 2020)."),
    ] = 0,
    isometry_lr: Annotated[
        Optional[float],
        typer.Option("--isometry-lr", help="Learning rate of --isometry-steps (default 0.1)."),
    ] = None,
    seed: opt.Seed = opt.DEFAULT_SEED,
    include: opt.Include = None,
    exclude: opt.Exclude = None,
    force: opt.Force = False,
    json_out: opt.Json = False,
    quiet: opt.Quiet = False,
) -> None:
    """Select masks and write OUT/model.safetensors, OUT/masks.safetensors, OUT/manifest.json.

    Examples:

      prunecli apply init.safetensors --method magnitude --sparsity 0.9 -o out/

      prunecli apply model.pt --scores snip.safetensors --sparsity 0.95 --scope layer -o out/

      prunecli apply model.safetensors --method magnitude --pattern 2:4 -o out24/

      prunecli apply model.safetensors --scores snip.safetensors -s 0.5 --structure filter -o filters/
    """
    selection = opt.gather(opt.SelectionOptions, locals())
    if (scores is None) == (method is None):
        raise UsageError("give exactly one of --scores and --method", "e.g. --method magnitude")
    spec = selection.spec()
    from prunecli.pipelines.apply import apply as apply_checkpoint

    isometry = isometry_options(isometry_steps, isometry_lr)
    with RichProgress(quiet) as progress:
        applied = apply_checkpoint(
            checkpoint, output, spec, method=method, scores=scores, seed=seed, force=force,
            isometry=isometry, progress=progress,
        )  # fmt: skip
    report_applied(applied, output, json_out=json_out, quiet=quiet)


def isometry_options(steps: int, lr: float | None) -> tuple[int, float] | None:
    """Validate --isometry-steps / --isometry-lr once, at the edge."""
    if steps < 0:
        raise UsageError(f"--isometry-steps {steps} is negative", "use e.g. --isometry-steps 10000")
    if lr is not None and (steps == 0 or not lr > 0):
        raise UsageError(
            "--isometry-lr needs --isometry-steps and a positive value", "e.g. --isometry-lr 0.1"
        )
    return (steps, 0.1 if lr is None else lr) if steps else None
