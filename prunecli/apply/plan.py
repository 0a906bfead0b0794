"""Selection keys as a stream, and the mask plan: which entries of each tensor are kept.

For global scope, pass 1 keys a strided sample of every tensor and pass 2 counts against
the sample's bounds (`selection.threshold.find_threshold`). Scores are recomputed per pass
instead of held, so memory stays near the largest tensor whatever the model's size.

Rules with an orientation (`scope` row, `pattern` N:M, `structure`) take a weight as
(out, in, ...). A tensor named in `transposed` is stored (in, out), as GPT-2's Conv1D:
those rules see it transposed, and its mask is transposed back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from prunecli.io.checkpoints import Checkpoint
from prunecli.io.dtypes import CACHE_BLOCK, finite_weights, raw_dtype
from prunecli.progress import Progress
from prunecli.scoring.registry import Method
from prunecli.selection.spec import SelectionSpec
from prunecli.selection.structured import expand, group_scores, select_groups
from prunecli.selection.threshold import (
    KEEP_ALL,
    KeyJob,
    Threshold,
    check_keys,
    erk_densities,
    find_threshold,
    floor_count,
    keep_count,
    nm_mask,
    row_mask,
    scores_to_keys,
    threshold_mask,
    topk_mask,
)
from prunecli.selection.workers import INLINE, Workers

BLOCK = CACHE_BLOCK  # keys made per step on the fast path
SEGMENT = 1 << 20  # entries per masking job in the write pass (a multiple of 8: whole mask bytes)
LAYER_SAMPLE = 1 << 20  # keys sampled per tensor for a layer-scope threshold


class KeySource:
    """Selection keys of each prunable tensor, from a per-tensor method or a scores file.

    Weights are read through `Checkpoint.view` (a memory map for safetensors), so a pass
    copies nothing it does not change. Where the method has a fast path from raw weights to
    keys, keys are made a block at a time (`key_jobs`, `keys_at`, `sample_keys`), in cache,
    and independently, so passes can run on several threads.
    """

    def __init__(
        self,
        ckpt: Checkpoint,
        names: list[str],
        *,
        method: Method | None = None,
        scores: Checkpoint | None = None,
        seed: int = 0,
        invert: bool = False,
    ) -> None:
        self.ckpt, self.method, self.scores_file, self.seed, self.invert = ckpt, method, scores, seed, invert
        largest = max((ckpt.tensors[n].numel for n in names), default=0)
        self._scores_buf = np.empty(largest, dtype=np.float32)
        self._checked: set[str] = set()  # tensors whose keys were all checked for NaN/Inf

    def scores(self, name: str) -> np.ndarray:
        """Float32 scores of `name` (valid until the next call)."""
        info = self.ckpt.tensors[name]
        out = self._scores_buf[: info.numel].reshape(info.shape)
        if self.scores_file is not None:
            return self.scores_file.read(name, self._scores_buf.view(np.uint8))
        raw = self.ckpt.view(name)
        return self.method.scorer(name, finite_weights(raw, info.dtype, name), self.seed, out)

    def keys(self, name: str) -> np.ndarray:
        """Selection keys of the whole tensor `name` (valid until the next call)."""
        info = self.ckpt.tensors[name]
        if self.fast(info.dtype):
            out = self._scores_buf[: info.numel].view(np.uint32)
            keys = self.method.keys(self.ckpt.view(name).reshape(-1), info.dtype, out)
            keys = check_keys(keys, name, self.invert, name not in self._checked)
            self._checked.add(name)
            return keys.reshape(info.shape)
        return scores_to_keys(self.scores(name), name, self.invert)

    def key_jobs(self, name: str) -> Iterator[np.ndarray | KeyJob]:
        """The keys of `name` for one pass of `find_threshold`, in flat order.

        On the fast path: one `KeyJob` per segment, keying its own entries, so jobs may run
        on several threads. Otherwise: the whole tensor's keys (valid until the next `keys`).
        """
        info = self.ckpt.tensors[name]
        if not self.fast(info.dtype):
            yield self.keys(name).reshape(-1)
            return
        keys_at = self.keys_at(name)
        for start in range(0, info.numel, SEGMENT):
            yield partial(_segment_keys, keys_at, start, min(start + SEGMENT, info.numel))

    def mark_checked(self, names: list[str]) -> None:
        """Record that every key of `names` passed the NaN/Inf check (the file does not change)."""
        self._checked.update(names)

    def keys_at(self, name: str) -> Callable[[int, int, np.ndarray], np.ndarray]:
        """`keys_at(name)(start, n, scratch)`: the keys of flat entries [start, start + n).

        On the fast path each call keys its own entries into `scratch` (uint32, n or more),
        so calls may run on several threads at once. Otherwise the whole tensor is keyed
        here, once, and calls slice it (valid until the next `keys`).
        """
        info = self.ckpt.tensors[name]
        if not self.fast(info.dtype):
            whole = self.keys(name).reshape(-1)
            return lambda start, n, scratch: whole[start : start + n]
        raw, check = self.ckpt.view(name).reshape(-1), name not in self._checked
        return lambda start, n, scratch: self._block_keys(name, raw[start : start + n], scratch, check)

    def _block_keys(self, name: str, raw: np.ndarray, scratch: np.ndarray, check: bool) -> np.ndarray:
        keys = self.method.keys(raw, self.ckpt.tensors[name].dtype, scratch[: raw.size])
        return check_keys(keys, name, self.invert, check)

    def sample_keys(self, name: str, stride: int) -> np.ndarray:
        """`keys(name).reshape(-1)[::stride]`, computing only the sampled keys where it can."""
        info = self.ckpt.tensors[name]
        if not self.fast(info.dtype):
            return self.keys(name).reshape(-1)[::stride].copy()
        sampled = np.ascontiguousarray(self.ckpt.view(name).reshape(-1)[::stride])
        keys = self.method.keys(sampled, info.dtype, np.empty(sampled.size, dtype=np.uint32))
        return check_keys(keys, name, self.invert)

    def fast(self, dtype: str) -> bool:
        """Whether the method makes keys straight from raw weights of this dtype (elementwise)."""
        if self.scores_file is not None or self.method.keys is None:
            return False
        probe = np.empty(0, dtype=raw_dtype(dtype))
        return self.method.keys(probe, dtype, np.empty(0, dtype=np.uint32)) is not None


class Scratch:
    """Buffers of one masking job: a block's keys, and a segment's mask and masked bytes."""

    def __init__(self, entries: int, itemsize: int) -> None:
        self.keys = np.empty(BLOCK, dtype=np.uint32)
        self.mask = np.empty(entries, dtype=bool)
        self.masked = np.empty(entries * itemsize, dtype=np.uint8)


MaskPart = Callable[[int, np.ndarray, np.ndarray], object]


def _segment_keys(
    keys_at: Callable[[int, int, np.ndarray], np.ndarray], start: int, stop: int, scratch: np.ndarray
) -> Iterator[np.ndarray]:
    """A `KeyJob`: the keys of entries [start, stop), made in `scratch` a block at a time."""
    for first in range(start, stop, scratch.size):
        yield keys_at(first, min(scratch.size, stop - first), scratch)


@dataclass
class MaskPlan:
    """Per-tensor keep counts or floors, plus an optional global threshold."""

    spec: SelectionSpec
    counts: dict[str, int]  # layer scope: exact keep count; global scope: floor
    threshold: Threshold | None = None  # global scope: over the keys left after floors
    groups: dict[str, np.ndarray] | None = None  # structured: keep mask over filters/channels
    starts: dict[str, int] = field(default_factory=dict)  # global: each tensor's first position
    workers: Workers = field(default=INLINE, repr=False)  # for layer-scope thresholds
    given: bool = False  # the scores are whole masks (1 kept, 0 pruned), taken as they are
    transposed: frozenset[str] = frozenset()  # tensors stored (in, out): rows, N:M, groups see .T

    def tensor_threshold(self, name: str, source: KeySource) -> tuple[Threshold, int] | None:
        """The threshold that masks `name` key by key, and the position of its first key.

        Global scope has one threshold for all. Layer scope finds the tensor's own here, by
        the same streamed select, when its keys come in blocks. None: the rule needs the
        whole tensor at once (a floor, N:M, rows, groups, or keys made whole).
        """
        if self.groups is not None or self.spec.pattern or self.spec.scope == "row":
            return None
        if self.threshold is not None:
            return None if self.counts.get(name) else (self.threshold, self.starts[name])
        info = source.ckpt.tensors[name]
        if not source.fast(info.dtype):
            return None

        def passes() -> Iterator[np.ndarray | KeyJob]:
            yield from source.key_jobs(name)
            source.mark_checked([name])  # every key was counted (a job that finds NaN fails)

        sample = lambda stride: [partial(source.sample_keys, name, stride)]  # noqa: E731
        threshold = find_threshold(passes, self.counts[name], info.numel, sample, self.workers, LAYER_SAMPLE)
        return threshold, 0

    def residual(self, name: str, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Keys left for the global pool once a tensor's floor is reserved, and the floor mask."""
        floor = self.counts.get(name, 0)
        if floor == 0:
            return keys.reshape(-1), None
        reserved = topk_mask(keys, floor).reshape(-1)
        return keys.reshape(-1)[~reserved], reserved

    def mask(self, name: str, source: KeySource, out: np.ndarray) -> np.ndarray:
        """The keep mask of `name`, in `out` (a bool buffer of at least the tensor's size)."""
        info = source.ckpt.tensors[name]
        part, keys = self.mask_of(name, source), np.empty(BLOCK, dtype=np.uint32)
        for start in range(0, info.numel, BLOCK):
            part(start, out[start : min(start + BLOCK, info.numel)], keys)
        return out[: info.numel].reshape(info.shape)

    def mask_of(self, name: str, source: KeySource) -> MaskPart:
        """`part(start, out, keys)` fills `out` (at most BLOCK bools) with the keep mask of
        flat entries [start, start + out.size) of `name`; `keys` is uint32 scratch of BLOCK.

        Blockwise rules key and mask each part on its own (the threshold says which ties
        are pruned), so parts may be made on several threads at once, each with its own
        scratch. Every other rule makes the whole mask here, once, and parts copy from it.
        Valid until the next call.
        """
        found = self.tensor_threshold(name, source)
        if found is not None:
            (threshold, first), keys_at = found, source.keys_at(name)
            return lambda start, out, keys: threshold_mask(
                keys_at(start, out.size, keys), threshold, first + start, out
            )
        whole = self._whole_mask(name, source).reshape(-1)
        return lambda start, out, keys: np.copyto(out, whole[start : start + out.size])

    def _whole_mask(self, name: str, source: KeySource) -> np.ndarray:
        if self.given:
            return source.scores(name) > 0
        flip = name in self.transposed  # stored (in, out): oriented rules work on .T, (out, in)
        if self.groups is not None:
            shape = source.ckpt.tensors[name].shape
            mask = expand(self.groups[name], shape[::-1] if flip else shape, self.spec.structure)
            return mask.T if flip else mask
        keys = source.keys(name)
        if self.spec.pattern or self.spec.scope == "row":
            keys = np.ascontiguousarray(keys.T) if flip else keys  # (out, in, ...)
            if self.spec.pattern:
                mask = nm_mask(keys, *self.spec.pattern, name)
            else:
                mask = row_mask(keys, self.spec.density)
            return mask.T if flip else mask
        if self.threshold is None:
            return topk_mask(keys, self.counts[name])
        free_keys, reserved = self.residual(name, keys)
        reserved[~reserved] = threshold_mask(free_keys, self.threshold, self.starts[name])
        return reserved


def plan_masks(
    source: KeySource,
    names: list[str],
    spec: SelectionSpec,
    progress: Progress,
    workers: Workers = INLINE,
    transposed: frozenset[str] = frozenset(),
) -> MaskPlan:
    """Decide per-tensor counts, and for global scope run the streamed select (on `workers`).

    Args:
        source: the keys (and scores) of each tensor.
        names: the tensors to mask, in flat order.
        spec: the selection rule.
        progress: reports stages and steps.
        workers: threads for the streamed select and for masking.
        transposed: tensors stored (in, out), as GPT-2's Conv1D: `scope` row, `pattern` N:M and
            `structure` work along each output's inputs there (a column, not a row).

    Returns:
        The plan that `MaskPlan.mask` and `MaskPlan.mask_of` read the masks from.

    Example:
        >>> plan = plan_masks(source, ["h.0.attn.c_attn.weight"], SelectionSpec(0.5, scope="row"),
        ...                   NoProgress(), transposed=frozenset({"h.0.attn.c_attn.weight"}))
    """
    infos = [source.ckpt.tensors[n] for n in names]
    if spec.structure:
        return _plan_groups(source, names, spec, progress, transposed)
    if spec.pattern or spec.scope in ("layer", "row"):
        densities = [spec.density] * len(names)
        if spec.allocation == "erk" and not spec.pattern:
            densities = erk_densities([i.shape for i in infos], spec.density)
        counts = {
            n: max(keep_count(i.numel, d), floor_count(i.numel, spec.min_density))
            for n, i, d in zip(names, infos, densities, strict=True)
        }
        return MaskPlan(spec, counts, workers=workers, transposed=transposed)
    floors = {n: floor_count(i.numel, spec.min_density) for n, i in zip(names, infos, strict=True)}
    total = sum(i.numel for i in infos)
    free_total = total - sum(floors.values())
    k = max(0, keep_count(total, spec.density) - sum(floors.values()))
    plan = MaskPlan(spec, {n: f for n, f in floors.items() if f}, transposed=transposed)
    position = 0
    for name, info in zip(names, infos, strict=True):
        plan.starts[name] = position  # where its keys (those left after the floor) begin
        position += info.numel - floors[name]
    if k >= free_total:
        plan.threshold = KEEP_ALL
        return plan

    def passes() -> Iterator[np.ndarray | KeyJob]:
        progress.stage("selecting (global top-k)", len(names))
        for name in names:
            if name in plan.counts:
                yield plan.residual(name, source.keys(name))[0]  # a copy: stays valid
            else:
                yield from source.key_jobs(name)
            progress.advance()
        source.mark_checked(names)  # a job that finds NaN fails the whole select

    def sample(stride: int) -> Iterator[np.ndarray | Callable[[], np.ndarray]]:
        progress.stage("sampling scores", len(names))
        for name in names:
            if name in plan.counts:
                yield plan.residual(name, source.keys(name))[0][::stride]
            else:
                yield partial(source.sample_keys, name, stride)
            progress.advance()

    # Whole-tensor keys share one buffer, so only the fast path may run ahead on threads.
    fast = all(source.fast(i.dtype) for n, i in zip(names, infos, strict=True) if n not in plan.counts)
    plan.threshold = find_threshold(passes, k, free_total, sample, workers if fast else INLINE)
    return plan


def _plan_groups(
    source: KeySource, names: list[str], spec: SelectionSpec, progress: Progress, transposed: frozenset[str]
) -> MaskPlan:
    """Aggregate each tensor's scores per filter/channel, then select whole groups."""
    progress.stage(f"scoring {spec.structure}s ({spec.aggregate})", len(names))
    aggregates = {}
    for name in names:
        scores = source.scores(name)
        scores = scores.T if name in transposed else scores  # (out, in, ...)
        aggregate = group_scores(scores, spec.structure, spec.aggregate)
        aggregates[name] = -aggregate if spec.invert else aggregate  # invert whole groups, not weights
        progress.advance()
    densities = None
    if spec.scope == "layer":
        shapes = [source.ckpt.tensors[n].shape for n in names]
        values = (
            erk_densities(shapes, spec.density) if spec.allocation == "erk" else [spec.density] * len(names)
        )
        densities = {n: max(d, spec.min_density) for n, d in zip(names, values, strict=True)}
    groups = select_groups(aggregates, densities, spec.density)
    return MaskPlan(spec, {}, groups=groups, transposed=transposed)
