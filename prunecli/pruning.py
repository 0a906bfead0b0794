"""`apply`: stream a checkpoint through scoring and selection into masked outputs.

For global scope, pass 1 keys a strided sample of every tensor and pass 2 counts against
the sample's bounds (selection.find_threshold). The last pass reads each tensor once and
writes `model.safetensors` and `masks.safetensors` as it goes: worker threads mask segments
of the tensor, a cache-sized block at a time, while the main thread writes the finished
ones in order. Scores are recomputed per pass instead of held, and weights are read through
memory-mapped views, so memory stays near the largest tensor whatever the model's size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from prunecli import __version__
from prunecli.checkpoints import Checkpoint
from prunecli.dtypes import as_unsigned, finite_weights, itemsize, raw_dtype
from prunecli.errors import InputError, UsageError
from prunecli.isometry import Refiner, isometry_refiner
from prunecli.manifest import FORMAT, SCHEMA_VERSION, write_manifest
from prunecli.ordered import INLINE, Workers, worker_count
from prunecli.outputs import output_folder
from prunecli.progress import NoProgress, Progress
from prunecli.safetensors_io import SafetensorsWriter
from prunecli.scoring.random_baseline import tensor_rng
from prunecli.scoring.registry import Method
from prunecli.selection import (
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
    shuffle_mask,
    threshold_mask,
    topk_mask,
)
from prunecli.structured import AGGREGATES, STRUCTURES, expand, group_scores, select_groups

MODEL_FILE = "model.safetensors"
MASKS_FILE = "masks.safetensors"
MANIFEST_FILE = "manifest.json"
SHUFFLE_STREAM = 1  # random-stream id for --shuffle, distinct from random scores
BLOCK = 1 << 18  # keys made per step on the fast path: a block and its temporaries stay in cache
SEGMENT = 1 << 20  # entries per masking job in the write pass (a multiple of 8: whole mask bytes)
LAYER_SAMPLE = 1 << 20  # keys sampled per tensor for a layer-scope threshold


@dataclass(frozen=True)
class SelectionSpec:
    """How scores become masks (validated by `validate`)."""

    density: float
    scope: str = "global"
    allocation: str = "uniform"
    min_density: float = 0.0
    pattern: tuple[int, int] | None = None
    structure: str | None = None
    aggregate: str = "l1"
    shuffle: bool = False
    invert: bool = False
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def validate(self) -> None:
        if not 0.0 <= self.density <= 1.0 or math.isnan(self.density):
            raise UsageError(
                f"density {self.density} is outside [0, 1]", "sparsity and density are fractions"
            )
        if not 0.0 <= self.min_density <= 1.0:
            raise UsageError(f"--min-density {self.min_density} is outside [0, 1]", "use a fraction")
        if self.scope not in ("global", "layer", "row"):
            raise UsageError(f"unknown --scope {self.scope!r}", "use global, layer or row")
        if self.structure is not None and self.structure not in STRUCTURES:
            raise UsageError(f"unknown --structure {self.structure!r}", "use filter or channel")
        if self.aggregate not in AGGREGATES:
            raise UsageError(f"unknown --aggregate {self.aggregate!r}", f"use one of {', '.join(AGGREGATES)}")
        if self.structure and (self.pattern or self.scope == "row"):
            raise UsageError("--structure keeps whole filters or channels", "drop --pattern / --scope row")
        if self.scope == "row" and self.allocation == "erk":
            raise UsageError("--scope row keeps the same fraction of every row", "drop --allocation erk")
        if self.allocation not in ("uniform", "erk"):
            raise UsageError(f"unknown --allocation {self.allocation!r}", "use uniform or erk")
        if self.allocation == "erk" and self.scope == "global":
            raise UsageError("--allocation erk sets per-layer densities", "use it with --scope layer")
        if self.shuffle and self.pattern:
            raise UsageError("--shuffle would break the --pattern N:M structure", "use one of them")

    def record(self) -> dict[str, Any]:
        return {
            "sparsity": round(1.0 - self.density, 12),
            "density": round(self.density, 12),
            "scope": self.scope,
            "allocation": self.allocation,
            "min_density": self.min_density,
            "pattern": f"{self.pattern[0]}:{self.pattern[1]}" if self.pattern else None,
            "structure": self.structure,
            "aggregate": self.aggregate if self.structure else None,
            "shuffle": self.shuffle,
            "invert": self.invert,
            "include": list(self.include),
            "exclude": list(self.exclude),
        }


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
        if self.groups is not None:
            return expand(self.groups[name], source.ckpt.tensors[name].shape, self.spec.structure)
        keys = source.keys(name)
        if self.spec.pattern:
            return nm_mask(keys, *self.spec.pattern, name)
        if self.spec.scope == "row":
            return row_mask(keys, self.spec.density)
        if self.threshold is None:
            return topk_mask(keys, self.counts[name])
        free_keys, reserved = self.residual(name, keys)
        reserved[~reserved] = threshold_mask(free_keys, self.threshold, self.starts[name])
        return reserved


def plan_masks(
    source: KeySource, names: list[str], spec: SelectionSpec, progress: Progress, workers: Workers = INLINE
) -> MaskPlan:
    """Decide per-tensor counts, and for global scope run the streamed select (on `workers`)."""
    infos = [source.ckpt.tensors[n] for n in names]
    if spec.structure:
        return _plan_groups(source, names, spec, progress)
    if spec.pattern or spec.scope in ("layer", "row"):
        densities = [spec.density] * len(names)
        if spec.allocation == "erk" and not spec.pattern:
            densities = erk_densities([i.shape for i in infos], spec.density)
        counts = {
            n: max(keep_count(i.numel, d), floor_count(i.numel, spec.min_density))
            for n, i, d in zip(names, infos, densities, strict=True)
        }
        return MaskPlan(spec, counts, workers=workers)
    floors = {n: floor_count(i.numel, spec.min_density) for n, i in zip(names, infos, strict=True)}
    total = sum(i.numel for i in infos)
    free_total = total - sum(floors.values())
    k = max(0, keep_count(total, spec.density) - sum(floors.values()))
    plan = MaskPlan(spec, {n: f for n, f in floors.items() if f})
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


def _plan_groups(source: KeySource, names: list[str], spec: SelectionSpec, progress: Progress) -> MaskPlan:
    """Aggregate each tensor's scores per filter/channel, then select whole groups."""
    progress.stage(f"scoring {spec.structure}s ({spec.aggregate})", len(names))
    aggregates = {}
    for name in names:
        aggregate = group_scores(source.scores(name), spec.structure, spec.aggregate)
        aggregates[name] = -aggregate if spec.invert else aggregate  # invert whole groups, not weights
        progress.advance()
    densities = None
    if spec.scope == "layer":
        shapes = [source.ckpt.tensors[n].shape for n in names]
        values = (
            erk_densities(shapes, spec.density) if spec.allocation == "erk" else [spec.density] * len(names)
        )
        densities = {n: max(d, spec.min_density) for n, d in zip(names, values, strict=True)}
    return MaskPlan(spec, {}, groups=select_groups(aggregates, densities, spec.density))


def _tensor_record(
    name: str, info: Any, kept: int, pruned: bool, channels: tuple[int, int] | None = None
) -> dict[str, Any]:
    record = {
        "name": name,
        "shape": list(info.shape),
        "dtype": info.dtype,
        "numel": info.numel,
        "kept": kept,
        "density": kept / info.numel if info.numel else 1.0,
        "pruned": pruned,
    }
    if channels is not None:
        record["groups"] = {"kept": channels[0], "total": channels[1]}
    return record


class MaskedCopier:
    """Masked copies of prunable tensors, masked segment by segment on a thread pool."""

    def __init__(
        self,
        source: KeySource,
        plan: MaskPlan,
        names: list[str],
        seed: int,
        workers: Workers,
    ) -> None:
        self.source, self.plan, self.seed, self.workers = source, plan, seed, workers
        tensors = source.ckpt.tensors
        self._masked_buf = np.empty(0, dtype=np.uint8)  # whole masked tensors, only when needed
        self._largest = max((tensors[n].nbytes for n in names), default=0)
        self._mask_buf = np.empty(0, dtype=bool)
        entries = min(SEGMENT, max((tensors[n].numel for n in names), default=0))
        widest = max((itemsize(tensors[n].dtype) for n in names), default=0)
        self._slots = [Scratch(entries, widest) for _ in range(workers.slots)]  # one per job in flight

    def write(
        self, name: str, raw: np.ndarray, out: SafetensorsWriter, refine: Refiner | None
    ) -> tuple[np.ndarray, int]:
        """Write `raw` with its pruned entries zeroed (then refined) to `out`.

        Returns the bit-packed keep mask and how many entries it keeps. Commonly segments
        are masked on the pool while finished ones are written; --shuffle and `refine` need
        the whole tensor at once.
        """
        if refine is None and not self.plan.spec.shuffle:
            packed, kept = np.empty(-(-raw.size // 8), dtype=np.uint8), []
            part = self.plan.mask_of(name, self.source)
            out.write_parts(name, self._masked_segments(raw, part, packed, kept))
            return packed, sum(kept)
        masked, mask = self._whole_copy(name, raw)
        if refine is not None:
            masked = refine(name, masked, mask, self.source.ckpt.tensors[name].dtype)
        out.write(name, masked)
        return np.packbits(mask.reshape(-1)), int(np.count_nonzero(mask))

    def _masked_segments(
        self, raw: np.ndarray, part: MaskPart, packed: np.ndarray, kept: list[int]
    ) -> Iterator[np.ndarray]:
        """Masked blocks of `raw` in order, to be written before the next one is asked for."""
        bits = as_unsigned(raw).reshape(-1)
        jobs = (
            partial(_mask_segment, bits, start, part, packed, self._slots[j % len(self._slots)])
            for j, start in enumerate(range(0, bits.size, SEGMENT))
        )
        for masked, count in self.workers.in_order(jobs):
            kept.append(count)
            for offset in range(0, masked.size, BLOCK):
                yield masked[offset : offset + BLOCK]

    def _whole_copy(self, name: str, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(masked copy of the whole of `raw`, keep mask), both valid until the next call."""
        if self._masked_buf.size < self._largest:
            self._masked_buf = np.empty(self._largest, dtype=np.uint8)
        if self._mask_buf.size < raw.size:
            self._mask_buf = np.empty(raw.size, dtype=bool)
        masked = self._masked_buf[: raw.nbytes].view(raw.dtype).reshape(raw.shape)
        mask = self.plan.mask(name, self.source, self._mask_buf)
        if self.plan.spec.shuffle:
            mask = shuffle_mask(mask, tensor_rng(self.seed, name, purpose=SHUFFLE_STREAM))
        np.multiply(as_unsigned(raw), mask, out=as_unsigned(masked))  # pruned entries become +0
        return masked, mask


def _mask_segment(
    bits: np.ndarray, start: int, part: MaskPart, packed: np.ndarray, scratch: Scratch
) -> tuple[np.ndarray, int]:
    """Zero the pruned entries of one segment of `bits` into `scratch`, a block at a time.

    Also packs the segment's keep bits into its own bytes of `packed` (segments start at
    multiples of 8). Returns the masked segment and how many entries it keeps.
    """
    stop = min(start + SEGMENT, bits.size)
    masked = scratch.masked[: (stop - start) * bits.itemsize].view(bits.dtype)
    mask = scratch.mask[: stop - start]
    for first in range(0, stop - start, BLOCK):
        last = min(first + BLOCK, stop - start)
        part(start + first, mask[first:last], scratch.keys)  # in cache for the multiply
        np.multiply(bits[start + first : start + last], mask[first:last], out=masked[first:last])
    packed[start // 8 : -(-stop // 8)] = np.packbits(mask)
    return masked, int(np.count_nonzero(mask))


def write_pruned(
    source: KeySource,
    plan: MaskPlan,
    names: list[str],
    folder: Path,
    seed: int,
    progress: Progress,
    refine: Refiner | None = None,
    workers: Workers = INLINE,
) -> list[dict[str, Any]]:
    """The final pass: mask every prunable tensor (on `workers`), copy the rest, write both files."""
    ckpt = source.ckpt
    chosen = set(names)
    model_entries = [(n, i.dtype, i.shape) for n, i in ckpt.tensors.items()]
    mask_entries = [(n, "U8", (math.ceil(ckpt.tensors[n].numel / 8),)) for n in names]
    records = []
    progress.stage("writing masked weights", len(model_entries))
    with (
        SafetensorsWriter(folder / MODEL_FILE, model_entries, {"format": "prunecli.model"}) as model_out,
        SafetensorsWriter(folder / MASKS_FILE, mask_entries, {"format": "prunecli.masks"}) as masks_out,
    ):
        copier = MaskedCopier(source, plan, names, seed, workers)
        for name, info in ckpt.tensors.items():
            raw = ckpt.view(name)  # read-only; untouched tensors are written straight from it
            kept = info.numel
            if name in chosen:
                packed, kept = copier.write(name, raw, model_out, refine)
                masks_out.write(name, packed)
            else:
                model_out.write(name, raw)
            groups = plan.groups.get(name) if plan.groups is not None else None
            counts = None if groups is None else (int(groups.sum()), groups.size)
            records.append(_tensor_record(name, info, kept, name in chosen, counts))
            progress.advance()
    return records


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
    warnings: list[dict[str, Any]] = field(default_factory=list)


def apply_pruning(req: ApplyRequest, progress: Progress | None = None) -> dict[str, Any]:
    """Write `OUT/model.safetensors`, `OUT/masks.safetensors` and `OUT/manifest.json`.

    Returns:
        The manifest (also written). Nothing is left in `req.out` if anything fails.
    """
    progress = progress or NoProgress()
    req.spec.validate()
    if not req.names:
        raise InputError("no tensor is prunable", "choose tensors with --include GLOB")
    ckpt = req.checkpoint
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
            plan = plan_masks(source, req.names, req.spec, progress, workers)
            refine, isometry = isometry_refiner(*req.isometry) if req.isometry else (None, None)
            records = write_pruned(source, plan, req.names, folder, req.seed, progress, refine, workers)
            source_sha = source_hash.result()
            _warn_if_scored_elsewhere(req, source_sha)
            manifest = _manifest(req, records, source_sha, scores_hash and scores_hash.result())
            if isometry is not None:
                manifest["isometry"] = isometry
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


def _manifest(
    req: ApplyRequest, records: list[dict[str, Any]], source_sha: str, scores_sha: str | None
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
        "files": {"model": MODEL_FILE, "masks": MASKS_FILE},
    }
