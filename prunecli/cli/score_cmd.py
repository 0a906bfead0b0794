"""`prunecli score`: per-weight saliency scores into a safetensors file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prunecli.cli import options as opt
from prunecli.cli.output import RichProgress, note


def score(
    checkpoint: opt.Checkpoint,
    method: Annotated[str, typer.Option("--method", "-m", help="Scoring method (see `prunecli methods`).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Scores file to write (.safetensors).")],
    seed: opt.Seed = 0,
    include: opt.Include = None,
    exclude: opt.Exclude = None,
    force: opt.Force = False,
    quiet: opt.Quiet = False,
) -> None:
    """Compute float32 scores (higher = keep) for every prunable tensor.

    Examples:

      prunecli score init.safetensors --method magnitude -o scores.safetensors

      prunecli score model.pt --method lamp --exclude 'fc3.*' -o lamp.safetensors
    """
    from prunecli.checkpoints import open_checkpoint
    from prunecli.prunable import prunable_names
    from prunecli.scores_file import compute_scores
    from prunecli.scoring import get_method

    chosen = get_method(method)
    with open_checkpoint(checkpoint) as ckpt:
        for line in ckpt.notes:
            note(line, quiet)
        names = prunable_names(ckpt.tensors, tuple(include or ()), tuple(exclude or ()))
        with RichProgress(quiet) as progress:
            progress.stage(f"scoring ({chosen.name})", len(names))
            compute_scores(ckpt, names, chosen, output, seed=seed, force=force, on_tensor=progress.advance)
    note(f"wrote {output} ({len(names)} tensors, method {chosen.name})", quiet)
