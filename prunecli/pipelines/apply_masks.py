"""`apply --masks`: put an existing mask set on a checkpoint, alone or as the start of more pruning.

Alone, the masks are reproduced exactly (the kept weights keep the checkpoint's values: rewinding).
With a target and scores (a file or a per-tensor method), pruning is cumulative: what the masks
pruned stays pruned, and the target counts the total over the pruned tensors. The masks' pruned
entries are ranked below every kept one (`BelowKept`), the selection rule runs as usual
(`plan_masks`: global, layer, ERK, row, N:M, floors), and any rule that would keep a weight the
masks pruned is refused before anything is written. The new masks then go to `apply` whole,
with their exact keep counts (`MaskScores`), and the manifest records their `lineage`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from prunecli.apply.plan import KeySource, plan_masks
from prunecli.errors import InputError, UsageError
from prunecli.io.checkpoints import Checkpoint
from prunecli.io.dtypes import finite_weights
from prunecli.io.mask_sets import MaskScores, PackedMasks, open_mask_set
from prunecli.pipelines.apply import Applied, apply_opened, transposed_weights
from prunecli.progress import NoProgress, Progress
from prunecli.scoring.registry import Method, get_method
from prunecli.selection.prunable import is_excluded, prunable_names
from prunecli.selection.spec import SelectionSpec
from prunecli.selection.threshold import keep_count

LOWEST = np.finfo(np.float32).min  # the lowest finite score: where the masks pruned
ABOVE_LOWEST = np.nextafter(LOWEST, np.float32(0))  # every weight the masks kept scores at least this
SHOWN = 3  # mismatched tensors named in an error


class MethodScores(Checkpoint):
    """A per-tensor method's float32 scores of a checkpoint's weights, made when read."""

    def __init__(self, weights: Checkpoint, names: list[str], method: Method, seed: int) -> None:
        super().__init__(weights.path)
        self.files = list(weights.files)
        self.weights, self.method, self.seed = weights, method, seed
        self.tensors = {name: weights.tensors[name] for name in names}
        self.metadata = {"method": method.name, "params": "{}"}

    def read(self, name: str, scratch: np.ndarray | None = None) -> np.ndarray:
        info = self.weights.tensors[name]
        out = None
        if scratch is not None and scratch.nbytes >= info.numel * 4:
            out = scratch[: info.numel * 4].view(np.float32).reshape(info.shape)
        weights = finite_weights(self.weights.view(name), info.dtype, name)
        return np.asarray(self.method.scorer(name, weights, self.seed, out), dtype=np.float32)


class BelowKept(Checkpoint):
    """Scores in which every weight a mask set pruned ranks below every weight it kept.

    Pruned entries score the lowest finite float32; kept ones at least the next float above it
    (a NaN stays NaN, and is refused when keyed).
    """

    def __init__(self, scores: Checkpoint, masks: PackedMasks, names: list[str]) -> None:
        super().__init__(scores.path)
        self.scores, self.masks = scores, masks
        self.tensors = {name: scores.tensors[name] for name in names}

    def read(self, name: str, scratch: np.ndarray | None = None) -> np.ndarray:
        scores = np.array(self.scores.read(name, scratch), dtype=np.float32, copy=None)
        if not scores.flags.writeable:
            scores = scores.copy()
        np.maximum(scores, ABOVE_LOWEST, out=scores)
        scores[~self.masks.mask(name)] = LOWEST
        return scores


def matching_names(
    masks: PackedMasks, ckpt: Checkpoint, include: tuple[str, ...], exclude: tuple[str, ...]
) -> list[str]:
    """The tensors the masks prune, in the checkpoint's order, once they are shown to fit it.

    Every mask (but the excluded ones) must name a tensor of the checkpoint with its shape (for a
    bare masks file: a packed length that fits), and every prunable tensor of the checkpoint
    (the default rule with `include`/`exclude`) must have a mask.

    Raises:
        InputError: naming the first few tensors that do not match.
    """
    expected = prunable_names(ckpt.tensors, include, exclude, ckpt.config_folder is not None)
    given = [name for name in masks.names if not is_excluded(name, exclude)]
    problems = []
    for name in given:
        info = ckpt.tensors.get(name)
        if info is None:
            problems.append(f"{name} (not in the checkpoint)")
        elif masks.shapes is not None and masks.shapes[name] != info.shape:
            problems.append(f"{name} ({list(masks.shapes[name])} in the masks, {list(info.shape)} here)")
        elif masks.shapes is None and masks.packed[name].size != -(-info.numel // 8):
            problems.append(
                f"{name} ({masks.packed[name].size} packed bytes, {list(info.shape)} needs "
                f"{-(-info.numel // 8)})"
            )
    problems += [f"{name} (prunable here, no mask)" for name in expected if name not in masks.packed]
    if problems:
        more = f" and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
        raise InputError(
            f"the masks {masks.source} do not fit the checkpoint {ckpt.path}: "
            f"{', '.join(problems[:SHOWN])}{more}",
            "put masks on the architecture they were made for; `exclude` GLOB leaves a tensor out",
        )
    chosen = set(given)
    return [name for name in ckpt.tensors if name in chosen]


def cumulative_masks(
    ckpt: Checkpoint,
    names: list[str],
    masks: PackedMasks,
    spec: SelectionSpec,
    scores: Checkpoint,
    progress: Progress | None = None,
) -> PackedMasks:
    """The masks `spec` selects by `scores` among the weights `masks` kept (they keep no other).

    Raises:
        UsageError: a rule that cannot only remove weights (`shuffle`, `invert`, `structure`), a
            global target below the masks' own sparsity, or a rule that would keep some weight
            the masks pruned (a tensor, row or N:M group asked to keep more than it has).
    """
    progress = progress or NoProgress()
    for option, given in (("shuffle", spec.shuffle), ("invert", spec.invert), ("structure", spec.structure)):
        if given:
            raise UsageError(
                f"`{option}` cannot prune within masks: it would bring back weights they pruned",
                f"drop `{option}`",
                option=option,
                value=given,
            )
    prior = sum(masks.kept(name) for name in names)
    total = sum(ckpt.tensors[name].numel for name in names)
    if spec.scope == "global" and spec.pattern is None and keep_count(total, spec.density) > prior:
        own = 1 - prior / total
        raise UsageError(
            f"`sparsity` {1 - spec.density:g} is below the masks' own sparsity {own:.6g}: "
            "cumulative pruning only removes weights",
            f"give `sparsity` {own:.6g} or more, or put the masks on alone (no scores or method)",
            option="sparsity",
            value=1 - spec.density,
        )
    source = KeySource(ckpt, names, scores=BelowKept(scores, masks, names))
    plan = plan_masks(source, names, spec, progress, transposed=transposed_weights(ckpt, spec))
    buffer = np.empty(max(ckpt.tensors[name].numel for name in names), dtype=bool)
    packed = {}
    progress.stage("masking within the masks", len(names))
    for name in names:
        mask = plan.mask(name, source, buffer)
        revived = int(np.count_nonzero(mask & ~masks.mask(name)))
        if revived:
            raise UsageError(
                f"the selection would keep {revived} weights of {name} that the masks pruned (they keep "
                f"{masks.kept(name)} of its {mask.size}): cumulative pruning only removes weights",
                "ask for a higher `sparsity`: with a per-layer or per-row rule or a `pattern`, every "
                "tensor, row or group must keep no more than the masks do",
                option="sparsity",
                value=1 - spec.density,
            )
        packed[name] = np.packbits(mask.reshape(-1))
        progress.advance()
    shapes = {name: ckpt.tensors[name].shape for name in names}
    return PackedMasks(masks.source, masks.masks_path, None, packed, shapes, masks.sha256)


def apply_with_masks(
    ckpt: Checkpoint,
    output: Path,
    masks: PackedMasks,
    spec: SelectionSpec | None = None,
    *,
    scores: Checkpoint | None = None,
    scores_path: Path | None = None,
    provenance: dict[str, str] | None = None,
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    seed: int = 0,
    force: bool = False,
    isometry: tuple[int, float] | None = None,
    max_shard_size: int | None = None,
    lineage: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """`apply --masks` on an open checkpoint, mask set and scores (see the module docstring).

    Args:
        spec: None puts the masks on alone (`include`/`exclude` then say which tensors must have
            a mask); otherwise the target and rule of the cumulative pruning, with `scores`.
        scores: float32 scores of the pruned tensors (a scores file, `MethodScores`, ...).
        scores_path: the scores file, recorded in the manifest's `method.scores`.
        provenance: the scores' metadata (`method`, `params`, `data_fingerprint`, `arch`, ...).
        lineage: fields added to the manifest's `lineage` (`kind` defaults to "apply").

    Returns:
        The manifest (also written in `output/`).
    """
    if spec is not None:
        include, exclude = spec.include, spec.exclude
    names = matching_names(masks, ckpt, include, exclude)
    if not names:
        raise InputError(f"the masks {masks.source} prune no tensor of {ckpt.path}", "check `exclude`")
    masks = chosen = masks.shaped_by({name: ckpt.tensors[name].shape for name in names})
    if spec is None:
        total = sum(ckpt.tensors[name].numel for name in names)
        spec = SelectionSpec(
            density=sum(masks.kept(n) for n in names) / total, include=include, exclude=exclude
        )
        parent = masks.manifest or {}
        provenance = {
            "method": "masks",
            "params": "{}",
            "arch": (parent.get("source") or {}).get("arch") or "",
        }
    else:
        if scores is None:
            raise UsageError(
                "pruning within masks needs scores", "give `scores` or `method`", option="scores"
            )
        missing = [name for name in names if name not in scores.tensors]
        if missing:
            raise InputError(
                f"the scores have no entry for {missing[0]}, which the masks prune",
                "score the tensors the masks prune",
            )
        chosen = cumulative_masks(ckpt, names, masks, spec, scores, progress)
    given = MaskScores(chosen, names, provenance or {}, scores.sha256() if scores_path else None)
    return apply_opened(
        ckpt,
        output,
        spec,
        method=None,
        scores=given,
        scores_path=scores_path,
        seed=seed,
        force=force,
        isometry=isometry,
        inputs=open_inputs(masks, scores),
        max_shard_size=max_shard_size,
        given=given.kept,
        lineage={"kind": "apply", "masks": [masks.record()], **(lineage or {})},
        progress=progress,
    )


def open_inputs(masks: PackedMasks, scores: Checkpoint | None) -> list[Path]:
    """Files an output must not replace: the mask set's and the scores'."""
    return [*masks.files, *(scores.files if scores is not None else [])]


def apply_masks(
    checkpoint: Path | str,
    output: Path | str,
    masks: Path | str,
    spec: SelectionSpec | None = None,
    *,
    method: str | None = None,
    scores: Path | str | None = None,
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    seed: int = 0,
    force: bool = False,
    isometry: tuple[int, float] | None = None,
    max_shard_size: int | None = None,
    progress: Progress | None = None,
) -> Applied:
    """Put a mask set on a checkpoint; with `spec`, prune further within it.

    Args:
        masks: an apply or intersect output folder, its manifest.json, or a masks.safetensors
            (then the shapes come from the checkpoint).
        spec: None reproduces the masks exactly; otherwise the cumulative target (the total
            over the pruned tensors, at least the masks' own) and rule, scored by
        method: a per-tensor method ("magnitude") scored on the checkpoint, or
        scores: a scores file from `score`; give exactly one with `spec`, none without.
        include, exclude: without `spec`, which tensors must have a mask (the default rule).

    Returns:
        The manifest (also written), with `lineage` naming the mask set, and notes.

    Example:
        >>> from prunecli.selection.spec import SelectionSpec
        >>> apply_masks("init.safetensors", "rewound", "trained-90/").manifest["totals"]["sparsity"]
        0.9
        >>> more = apply_masks("trained.safetensors", "more", "trained-90/", SelectionSpec(density=0.05),
        ...                    method="magnitude")
    """
    from prunecli.io.checkpoints import open_checkpoint
    from prunecli.io.scores_file import open_scores

    if spec is None and (method is not None or scores is not None):
        raise UsageError(
            "scores prune within the masks only towards a target",
            "give `sparsity` (a spec)",
            option="sparsity",
        )
    if spec is not None and (scores is None) == (method is None):
        raise UsageError(
            "to prune within masks, give exactly one of `scores` and `method`",
            "e.g. `method` magnitude",
            option="method",
            value=method,
        )
    if spec is not None and (include or exclude):
        raise UsageError(
            "with a spec, give `include` and `exclude` in it", "e.g. SelectionSpec(..., exclude=...)"
        )
    mask_set = open_mask_set(masks)
    with open_checkpoint(Path(checkpoint)) as ckpt:
        score_file = open_scores(Path(scores), ckpt) if scores is not None else None
        try:
            source, provenance = score_file, dict(score_file.metadata) if score_file is not None else None
            if method is not None:
                chosen = _data_free(method)
                source = MethodScores(ckpt, [n for n in mask_set.names if n in ckpt.tensors], chosen, seed)
                provenance = dict(source.metadata)
            manifest = apply_with_masks(
                ckpt,
                Path(output),
                mask_set,
                spec,
                scores=source,
                scores_path=None if scores is None else Path(scores),
                provenance=provenance,
                include=tuple(include),
                exclude=tuple(exclude),
                seed=seed,
                force=force,
                isometry=isometry,
                max_shard_size=max_shard_size,
                progress=progress,
            )
        finally:
            if score_file is not None:
                score_file.close()
        return Applied(manifest, list(ckpt.notes))


def _data_free(name: str) -> Method:
    chosen = get_method(name)
    if chosen.needs_model or chosen.scorer is None:
        raise UsageError(
            f"{chosen.name} needs a model, so it cannot score tensor by tensor here",
            f"score it first (prunecli score -m {chosen.name} ...) and give the scores file",
            option="method",
            value=chosen.name,
        )
    return chosen
