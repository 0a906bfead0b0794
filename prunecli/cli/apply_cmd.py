"""`prunecli apply`: scores -> masks -> masked weights, masks and manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from prunecli.cli import completion, values
from prunecli.cli import options as opt
from prunecli.cli.output import RichProgress, report_applied
from prunecli.errors import UsageError


def apply(
    checkpoint: opt.Checkpoint,
    output: opt.OutputFolder,
    scores: Annotated[
        Optional[Path], typer.Option("--scores", help="Scores file from `prunecli score`.")
    ] = None,
    masks: Annotated[
        Optional[Path],
        typer.Option(
            "--masks",
            help="Put this mask set on the checkpoint (an output folder, its manifest.json or its "
            "masks.safetensors); with --sparsity and --scores/--method, prune further within it.",
        ),
    ] = None,
    method: Annotated[
        Optional[str],
        typer.Option(
            "--method",
            "-m",
            help="Score on the fly with a data-free method.",
            autocompletion=completion.data_free_methods,
        ),
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
    isometry_steps: opt.IsometrySteps = 0,
    isometry_lr: opt.IsometryLr = None,
    max_shard_size: opt.MaxShardSize = None,
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

      prunecli apply model.safetensors --method magnitude -s 0.5 --max-shard-size 2GB -o sharded/

      prunecli apply init.safetensors --masks trained-90/ -o rewound/

      prunecli apply trained.safetensors --masks trained-90/ --method magnitude -s 0.95 -o more/
    """
    selection = opt.gather(opt.SelectionOptions, locals())
    alone = masks is not None and scores is None and method is None
    if alone:
        _refuse_selection(selection)
    elif (scores is None) == (method is None):
        raise UsageError("give exactly one of --scores and --method", "e.g. --method magnitude")
    spec = None if alone else selection.spec()
    isometry = values.isometry(isometry_steps, isometry_lr)
    shard_size = opt.shard_size(max_shard_size)
    with RichProgress(quiet) as progress:
        if masks is not None:
            from prunecli.pipelines.apply_masks import apply_masks

            applied = apply_masks(
                checkpoint, output, masks, spec, method=method, scores=scores, seed=seed, force=force,
                include=selection.include if alone else (), exclude=selection.exclude if alone else (),
                isometry=isometry, max_shard_size=shard_size, progress=progress,
            )  # fmt: skip
        else:
            from prunecli.pipelines.apply import apply as apply_checkpoint

            applied = apply_checkpoint(
                checkpoint, output, spec, method=method, scores=scores, seed=seed, force=force,
                isometry=isometry, max_shard_size=shard_size, progress=progress,
            )  # fmt: skip
    report_applied(applied, output, json_out=json_out, quiet=quiet)


def _refuse_selection(selection: opt.SelectionOptions) -> None:
    """--masks alone reproduces the masks: a selection option would have no effect."""
    given = [
        name for name in ("sparsity", "density", "scope", "pattern", "structure", "shuffle", "invert")
        if getattr(selection, name) not in (None, False)
    ] + [name for name in ("allocation", "min_density", "aggregate")
         if getattr(selection, name) != getattr(opt.SELECTION, name)]  # fmt: skip
    if given:
        option = "--" + given[0].replace("_", "-")
        raise UsageError(
            f"{option} selects masks, but --masks alone puts the masks on as they are",
            "to prune further within them, add --scores FILE or --method METHOD with --sparsity",
        )
