"""`apply`: stream a checkpoint through scoring and selection into masked outputs.

`apply` is the one call behind `prunecli apply`: it opens the inputs and runs `apply_pruning`.

For global scope, pass 1 keys a strided sample of every tensor and pass 2 counts against
the sample's bounds (selection.find_threshold). The last pass reads each tensor once and
writes `model.safetensors` and `masks.safetensors` as it goes: worker threads mask segments
of the tensor, a cache-sized block at a time, while the main thread writes the finished
ones in order. Scores are recomputed per pass instead of held, and weights are read through
memory-mapped views, so memory stays near the largest tensor whatever the model's size.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from prunecli import __version__
from prunecli.apply.isometry import isometry_refiner
from prunecli.apply.layout import OutputLayout, output_layout
from prunecli.apply.plan import KeySource, MaskPlan, plan_masks
from prunecli.apply.write import write_pruned
from prunecli.errors import InputError, UsageError
from prunecli.io.checkpoints import Checkpoint
from prunecli.io.manifest import FORMAT, MANIFEST_FILE, MASKS_FILE, SCHEMA_VERSION, write_manifest
from prunecli.io.outputs import output_folder
from prunecli.progress import NoProgress, Progress
from prunecli.scoring.registry import Method, get_method
from prunecli.selection.spec import SelectionSpec
from prunecli.selection.threshold import keep_count
from prunecli.selection.workers import Workers, worker_count


def _floor_warnings(spec: SelectionSpec, prunable: int, kept: int) -> list[dict[str, Any]]:
    if spec.min_density <= 0 or kept <= keep_count(prunable, spec.density):
        return []
    message = f"--min-density {spec.min_density:g} raised the density to {kept / prunable:.6f}"
    return [{"kind": "floors_raised_density", "tensor": None, "message": message}]


def _collapse_warnings(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "kind": "collapsed_layer",
            "tensor": r["name"],
            "message": f"{r['name']} keeps no weights: the layer is collapsed",
        }
        for r in records
        if r["pruned"] and r["kept"] == 0 and r["numel"] > 0
    ]


@dataclass
class ApplyRequest:
    """Everything `apply` needs, as the CLI or a Python caller gives it."""

    checkpoint: Checkpoint
    names: list[str]
    spec: SelectionSpec
    out: Path
    method: Method | None = None
    scores: Checkpoint | None = None
    scores_path: Path | None = None
    method_name: str = ""
    method_params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    force: bool = False
    arch: str | None = None
    data_fingerprint: str | None = None
    isometry: tuple[int, float] | None = None  # (steps, lr) of --isometry-steps
    inputs: list[Path] = field(default_factory=list)  # other input files the output must not replace
    max_shard_size: int | None = None  # bytes per weights file (None: shard like the input)
    given: dict[str, int] | None = None  # masks decided while calibrating: keep counts, kept exactly
    weights: Checkpoint | None = None  # updated weights (SparseGPT) written instead of the originals
    warnings: list[dict[str, Any]] = field(default_factory=list)
    lineage: dict[str, Any] | None = None  # the mask sets the masks came from (apply --masks, lottery)


def apply_pruning(req: ApplyRequest, progress: Progress | None = None) -> dict[str, Any]:
    """Write `OUT/model.safetensors`, `OUT/masks.safetensors` and `OUT/manifest.json`.

    Returns:
        The manifest (also written). Nothing is left in `req.out` if anything fails.
    """
    progress = progress or NoProgress()
    req.spec.validate()
    if req.scores is None and req.method is None:
        raise UsageError("apply_pruning needs scores or a per-tensor method", "give scores=... or method=...")
    if req.scores is None and req.method.needs_model:
        raise UsageError(
            f"apply_pruning scores tensor by tensor, but {req.method.name} needs a model",
            "score it first (prunecli.pipelines.score.score) and give the scores, or use prune",
        )
    if not req.names:
        raise InputError("no tensor is prunable", "choose tensors with `include` GLOB", option="include")
    ckpt = req.checkpoint
    layout = output_layout(ckpt, req.max_shard_size)
    with (
        ThreadPoolExecutor(max_workers=2) as pool,  # hashing overlaps with selection
        Workers(worker_count()) as workers,  # selection and masking, while the main thread writes
    ):
        source_hash = pool.submit(ckpt.sha256)
        scores_hash = pool.submit(req.scores.sha256) if req.scores is not None else None
        inputs = ckpt.files + (req.scores.files if req.scores is not None else []) + req.inputs
        with output_folder(req.out, req.force, inputs) as folder:
            source = KeySource(
                ckpt, req.names, method=req.method, scores=req.scores, seed=req.seed, invert=req.spec.invert
            )
            plan = _plan(source, req, progress, workers)
            refine, isometry = isometry_refiner(*req.isometry) if req.isometry else (None, None)
            records = write_pruned(
                source, plan, req.names, folder, req.seed, progress, refine, workers, layout, req.weights
            )
            source_sha = source_hash.result()
            _warn_if_scored_elsewhere(req, source_sha)
            manifest = _manifest(req, records, source_sha, scores_hash and scores_hash.result(), layout)
            if isometry is not None:
                manifest["isometry"] = isometry
            if req.lineage is not None:
                manifest["lineage"] = req.lineage
            write_manifest(manifest, folder / MANIFEST_FILE)
    return manifest


def _warn_if_scored_elsewhere(req: ApplyRequest, source_sha: str) -> None:
    recorded = req.scores.metadata.get("source_sha256") if req.scores is not None else None
    if recorded and recorded != source_sha:
        req.warnings.append(
            {
                "kind": "scores_source_mismatch",
                "tensor": None,
                "message": f"the scores were computed on another checkpoint (sha256 {recorded[:12]})",
            }
        )


def _plan(source: KeySource, req: ApplyRequest, progress: Progress, workers: Workers) -> MaskPlan:
    """The mask plan: by the selection rule, or, for masks given whole, their exact keep counts
    (their scores are 1 where kept and 0 where pruned, so each tensor's top `kept` is its mask)."""
    if req.given is None:
        transposed = transposed_weights(req.checkpoint, req.spec)
        return plan_masks(source, req.names, req.spec, progress, workers, transposed)
    exact = replace(
        req.spec, scope="layer", allocation="uniform", pattern=None, structure=None, min_density=0.0
    )
    return MaskPlan(exact, dict(req.given), workers=workers, given=True)


def transposed_weights(ckpt: Checkpoint, spec: SelectionSpec) -> frozenset[str]:
    """Weights stored (in, out), for the rules that work along each output's inputs (rows, N:M,
    filters and channels): learnt from the module types of a Hugging Face model, built on the
    meta device (no memory, no weights)."""
    if ckpt.config_folder is None or not (spec.scope == "row" or spec.pattern or spec.structure):
        return frozenset()
    from prunecli.models.hf import build_model, stored_transposed

    return stored_transposed(build_model(ckpt.config_folder, meta=True))


def _manifest(
    req: ApplyRequest,
    records: list[dict[str, Any]],
    source_sha: str,
    scores_sha: str | None,
    layout: OutputLayout,
) -> dict[str, Any]:
    prunable = sum(r["numel"] for r in records if r["pruned"])
    kept = sum(r["kept"] for r in records if r["pruned"])
    scores = None if req.scores_path is None else {"path": str(req.scores_path), "sha256": scores_sha}
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "prunecli", "version": __version__},
        "source": {"path": str(req.checkpoint.path), "sha256": source_sha, "arch": req.arch},
        "method": {
            "name": req.method_name,
            "params": req.method_params,
            "seed": req.seed,
            "scores": scores,
            "data_fingerprint": req.data_fingerprint,
        },
        "selection": req.spec.record(),
        "totals": {
            "params": sum(r["numel"] for r in records),
            "prunable": prunable,
            "kept": kept,
            "sparsity": 1.0 - kept / prunable if prunable else 0.0,
        },
        "tensors": records,
        "warnings": req.warnings + _floor_warnings(req.spec, prunable, kept) + _collapse_warnings(records),
        "weights_updated": req.weights is not None,
        "files": _files(layout),
    }


def _files(layout: OutputLayout) -> dict[str, Any]:
    files: dict[str, Any] = {"model": layout.model_file, "masks": MASKS_FILE}
    if layout.sharded:
        files["shards"] = [shard for shard, _ in layout.shards]
    if layout.copied:
        files["copied"] = [path.name for path in layout.copied]
    return files


@dataclass
class Applied:
    """What `apply` and `prune` wrote: the manifest, and notes for the user (e.g. a stripped
    `module.` prefix). The manifest's warnings (`warnings`) are for the user too."""

    manifest: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        return [w["message"] for w in self.manifest["warnings"]]


def apply(
    checkpoint: Path | str,
    output: Path | str,
    spec: SelectionSpec,
    *,
    method: str | Method | None = None,
    scores: Path | str | None = None,
    seed: int = 0,
    force: bool = False,
    isometry: tuple[int, float] | None = None,
    inputs: list[Path] | None = None,
    max_shard_size: int | None = None,
    progress: Progress | None = None,
) -> Applied:
    """Select masks and write `output/` (model.safetensors, masks.safetensors, manifest.json).

    Args:
        spec: the selection rule (`prunecli.selection.spec.SelectionSpec`).
        method: a per-tensor method scored on the fly ("magnitude"), or
        scores: a scores file from `score`; give exactly one of the two.
        seed: for random scores, shuffling and the isometry fix.
        force: replace an existing output folder (one that prunecli wrote).
        isometry: (steps, learning rate) of the approximate-isometry fix, or None.
        inputs: other input files the output must not replace.
        max_shard_size: split the weights into files of at most this many bytes (with an index);
            None writes them sharded as the input was.
        progress: reports stages and steps; silent by default.

    Returns:
        The manifest (also written) and notes; `Applied.warnings` lists its warnings.

    Example:
        >>> from prunecli.selection.spec import SelectionSpec
        >>> applied = apply("init.safetensors", "out", SelectionSpec(density=0.1), method="magnitude")
        >>> applied.manifest["totals"]["sparsity"]
        0.9
    """
    from prunecli.io.checkpoints import open_checkpoint
    from prunecli.io.scores_file import open_scores

    if (scores is None) == (method is None):
        raise UsageError("give exactly one of `scores` and `method`", "e.g. `method` magnitude",
                         option="method", value=method)  # fmt: skip
    chosen = get_method(method) if isinstance(method, str) else method
    if chosen is not None and chosen.needs_model:
        raise UsageError(
            f"apply `method` scores without a model, but {chosen.name} needs one",
            f"use prunecli prune -m {chosen.name} `arch` SPEC ..., or prunecli score then apply `scores`",
            option="method",
            value=chosen.name,
        )
    with open_checkpoint(Path(checkpoint)) as ckpt:
        score_file = open_scores(Path(scores), ckpt) if scores is not None else None
        try:
            manifest = apply_opened(
                ckpt, Path(output), spec, method=chosen, scores=score_file,
                scores_path=None if scores is None else Path(scores), seed=seed, force=force,
                isometry=isometry, inputs=inputs, max_shard_size=max_shard_size, progress=progress,
            )  # fmt: skip
        finally:
            if score_file is not None:
                score_file.close()
        return Applied(manifest, list(ckpt.notes))


def apply_opened(
    ckpt: Checkpoint,
    output: Path,
    spec: SelectionSpec,
    *,
    method: Method | None,
    scores: Checkpoint | None,
    scores_path: Path | None,
    seed: int,
    force: bool,
    isometry: tuple[int, float] | None = None,
    inputs: list[Path] | None = None,
    max_shard_size: int | None = None,
    given: dict[str, int] | None = None,
    weights: Checkpoint | None = None,
    lineage: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """`apply` on an open checkpoint and open scores (a file, or scores held in memory)."""
    from prunecli.selection.prunable import check_globs, is_excluded, prunable_names

    if scores is not None:  # the scores name the candidates; exclude still applies
        check_globs(ckpt.tensors, spec.exclude, "exclude")
        names = [n for n in scores.tensors if not is_excluded(n, spec.exclude)]
    else:
        names = prunable_names(ckpt.tensors, spec.include, spec.exclude, ckpt.config_folder is not None)
    name = method.name if method is not None else scores.metadata.get("method", "unknown")
    request = ApplyRequest(
        checkpoint=ckpt, names=names, spec=spec, out=output, method=method, scores=scores,
        scores_path=scores_path, method_name=name, seed=seed, force=force, isometry=isometry,
        inputs=list(inputs or []), max_shard_size=max_shard_size, given=given,
        weights=weights, lineage=lineage,
    )  # fmt: skip
    if scores is not None:
        describe_scores(request, scores.metadata)
    return apply_pruning(request, progress)


def describe_scores(request: ApplyRequest, metadata: dict[str, str]) -> None:
    """Carry the scores' provenance into the manifest, and warn on a target mismatch."""
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
