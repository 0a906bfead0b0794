"""`prunecli apply`: scores -> masks -> masked weights, masks and manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from prunecli.cli import options as opt
from prunecli.cli.output import RichProgress, emit_json, note, warn
from prunecli.errors import UsageError


def apply(
    checkpoint: opt.Checkpoint,
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder.")],
    scores: Annotated[
        Optional[Path], typer.Option("--scores", help="Scores file from `prunecli score`.")
    ] = None,
    method: Annotated[
        Optional[str], typer.Option("--method", "-m", help="Score on the fly with a data-free method.")
    ] = None,
    sparsity: Annotated[Optional[float], typer.Option("--sparsity", "-s", help="Fraction to prune.")] = None,
    density: Annotated[Optional[float], typer.Option("--density", "-d", help="Fraction to keep.")] = None,
    scope: Annotated[
        Optional[str], typer.Option("--scope", help="global (one ranking) or layer (per tensor).")
    ] = None,
    allocation: Annotated[
        str, typer.Option("--allocation", help="Per-layer densities: uniform or erk (layer scope).")
    ] = "uniform",
    min_density: Annotated[
        float, typer.Option("--min-density", help="Floor on every tensor's density.")
    ] = 0.0,
    pattern: Annotated[
        Optional[str], typer.Option("--pattern", help="N:M pattern, e.g. 2:4 (implies the sparsity).")
    ] = None,
    shuffle: Annotated[
        bool, typer.Option("--shuffle", help="Permute each layer's mask at random (sanity ablation).")
    ] = False,
    invert: Annotated[bool, typer.Option("--invert", help="Keep the lowest scores instead.")] = False,
    seed: opt.Seed = 0,
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
    """
    from prunecli.checkpoints import open_checkpoint
    from prunecli.prunable import is_excluded, prunable_names
    from prunecli.pruning import ApplyRequest, SelectionSpec, apply_pruning
    from prunecli.scores_file import open_scores
    from prunecli.scoring import get_method

    if (scores is None) == (method is None):
        raise UsageError("give exactly one of --scores and --method", "e.g. --method magnitude")
    nm = opt.parse_pattern(pattern) if pattern else None
    target = opt.target_density(sparsity, density, required=nm is None)
    if nm and target is not None and abs(target - nm[0] / nm[1]) > 1e-9:
        raise UsageError(
            f"--pattern {pattern} keeps {nm[0]}/{nm[1]}, not density {target:g}", "drop --sparsity"
        )
    resolved_scope = scope or ("layer" if allocation == "erk" else "global")
    spec = SelectionSpec(
        density=nm[0] / nm[1] if nm else target,
        scope=resolved_scope,
        allocation=allocation,
        min_density=opt.fraction(min_density, "--min-density"),
        pattern=nm,
        shuffle=shuffle,
        invert=invert,
        include=tuple(include or ()),
        exclude=tuple(exclude or ()),
    )
    spec.validate()
    chosen = get_method(method) if method else None
    with open_checkpoint(checkpoint) as ckpt:
        for line in ckpt.notes:
            note(line, quiet)
        score_file = open_scores(scores, ckpt) if scores else None
        if score_file:  # the scores file names the candidates; --exclude still applies
            names = [n for n in score_file.tensors if not is_excluded(n, spec.exclude)]
        else:
            names = prunable_names(ckpt.tensors, spec.include, spec.exclude)
        request = ApplyRequest(
            checkpoint=ckpt,
            names=names,
            spec=spec,
            out=output,
            method=chosen,
            scores=score_file,
            scores_path=scores,
            method_name=chosen.name if chosen else score_file.metadata.get("method", "unknown"),
            seed=seed,
            force=force,
        )
        try:
            with RichProgress(quiet) as progress:
                manifest = apply_pruning(request, progress)
        finally:
            if score_file is not None:
                score_file.close()
    for warning in manifest["warnings"]:
        warn(warning["message"])
    totals = manifest["totals"]
    note(f"wrote {output}: kept {totals['kept']:,} of {totals['prunable']:,} "
         f"(sparsity {totals['sparsity']:.4f})", quiet)  # fmt: skip
    if json_out:
        emit_json(manifest)
