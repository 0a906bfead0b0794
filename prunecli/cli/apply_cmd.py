"""`prunecli apply`: scores -> masks -> masked weights, masks and manifest."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from prunecli.cli import options as opt
from prunecli.cli.output import RichProgress, emit_json, note, warn
from prunecli.errors import UsageError

if TYPE_CHECKING:
    from prunecli.pipelines.apply import ApplyRequest
    from prunecli.selection.spec import SelectionSpec


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
    isometry = isometry_options(isometry_steps, isometry_lr)
    run_apply(checkpoint, output, spec, method=method, scores=scores, seed=seed, force=force,
              json_out=json_out, quiet=quiet, isometry=isometry)  # fmt: skip


def isometry_options(steps: int, lr: float | None) -> tuple[int, float] | None:
    """Validate --isometry-steps / --isometry-lr once, at the edge."""
    if steps < 0:
        raise UsageError(f"--isometry-steps {steps} is negative", "use e.g. --isometry-steps 10000")
    if lr is not None and (steps == 0 or not lr > 0):
        raise UsageError(
            "--isometry-lr needs --isometry-steps and a positive value", "e.g. --isometry-lr 0.1"
        )
    return (steps, 0.1 if lr is None else lr) if steps else None


def selection_spec(*args: Any, **kwargs: Any) -> SelectionSpec:
    """Deprecated: the old positional form, kept only for `benchmarks/reproduce/run.py`.

    Use `SelectionOptions(sparsity=..., ...).spec()`, or `SelectionSpec` from Python. Remove this
    once the benchmark builds its `SelectionSpec` itself.
    """
    names = ("sparsity", "density", "scope", "allocation", "min_density", "pattern", "shuffle", "invert",
             "include", "exclude")  # fmt: skip
    given = {**dict(zip(names, args, strict=False)), **kwargs}
    return opt.gather(opt.SelectionOptions, {**vars(opt.SELECTION), **given}).spec()


def run_apply(
    checkpoint: Path,
    output: Path,
    spec: SelectionSpec,
    *,
    method: str | None = None,
    scores: Path | None = None,
    seed: int = 0,
    force: bool = False,
    json_out: bool = False,
    quiet: bool = False,
    scores_label: str | None = None,
    isometry: tuple[int, float] | None = None,
    inputs: list[Path] | None = None,
) -> None:
    """Open the inputs, run `apply_pruning`, and report; `scores_label` names temporary scores."""
    from prunecli.io.checkpoints import open_checkpoint
    from prunecli.io.scores_file import open_scores
    from prunecli.pipelines.apply import ApplyRequest, apply_pruning
    from prunecli.scoring import get_method
    from prunecli.selection.prunable import is_excluded, prunable_names

    chosen = get_method(method) if method else None
    if chosen is not None and chosen.needs_model:
        raise UsageError(
            f"apply --method scores without a model, but {chosen.name} needs one",
            f"use prunecli prune -m {chosen.name} --arch SPEC ..., or prunecli score then apply --scores",
        )
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
            scores_path=scores if scores_label is None else Path(scores_label),
            method_name=chosen.name if chosen else score_file.metadata.get("method", "unknown"),
            seed=seed,
            force=force,
            isometry=isometry,
            inputs=list(inputs or []),
        )
        if score_file is not None:
            describe_scores(request, score_file.metadata)
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


def describe_scores(request: ApplyRequest, metadata: dict[str, str]) -> None:
    """Carry the scores file's provenance into the manifest, and warn on a target mismatch."""
    import json

    request.method_params = json.loads(metadata.get("params") or "{}")
    request.data_fingerprint = metadata.get("data_fingerprint") or None
    request.arch = metadata.get("arch") or None
    scored_at = metadata.get("sparsity")
    target = 1.0 - request.spec.density
    if scored_at and abs(float(scored_at) - target) > 1e-9:
        request.warnings.append({
            "kind": "sparsity_mismatch",
            "tensor": None,
            "message": f"the {metadata.get('method')} scores were computed for sparsity "
            f"{float(scored_at):g}, applied at {target:g}: iterative masks are exact only at their own",
        })  # fmt: skip
