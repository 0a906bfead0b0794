"""`apply`: stream a checkpoint through scoring and selection into masked outputs.

For global scope, pass 1 keys a strided sample of every tensor and pass 2 counts against
the sample's bounds (selection.find_threshold). The last pass reads each tensor once, masks
it a cache-sized block at a time, and writes `model.safetensors` and `masks.safetensors` as
it goes. Scores are recomputed per pass instead of held, and weights are read through
memory-mapped views, so memory stays near the largest tensor whatever the model's size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prunecli import __version__
from prunecli.checkpoints import Checkpoint, output_folder
from prunecli.dtypes import as_unsigned, finite_weights, raw_dtype
from prunecli.errors import InputError, UsageError
from prunecli.isometry import Refiner, isometry_refiner
from prunecli.manifest import FORMAT, SCHEMA_VERSION, write_manifest
from prunecli.progress import NoProgress, Progress
from prunecli.safetensors_io import SafetensorsWriter
from prunecli.scoring.random_baseline import tensor_rng
from prunecli.scoring.registry import Method
from prunecli.selection import (
    KEEP_ALL,
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
    keys, keys are made a block at a time (`key_blocks`, `sample_keys`), in cache.
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
        self._block_buf = np.empty(min(largest, BLOCK), dtype=np.uint32)
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
        if self._fast(info.dtype):
            out = self._scores_buf[: info.numel].view(np.uint32)
            keys = self.method.keys(self.ckpt.view(name).reshape(-1), info.dtype, out)
            keys = check_keys(keys, name, self.invert, name not in self._checked)
            self._checked.add(name)
            return keys.reshape(info.shape)
        return scores_to_keys(self.scores(name), name, self.invert)

    def key_blocks(self, name: str) -> Iterator[np.ndarray]:
        """The keys of `name` in flat order, in blocks (each valid until the next)."""
        info = self.ckpt.tensors[name]
        if not self._fast(info.dtype):
            keys = self.keys(name).reshape(-1)
            for start in range(0, keys.size, BLOCK):
                yield keys[start : start + BLOCK]
            return
        raw, check = self.ckpt.view(name).reshape(-1), name not in self._checked
        for start in range(0, raw.size, BLOCK):
            part = raw[start : start + BLOCK]
            keys = self.method.keys(part, info.dtype, self._block_buf[: part.size])
            yield check_keys(keys, name, self.invert, check)
        self._checked.add(name)  # the file does not change between passes: once is enough

    def sample_keys(self, name: str, stride: int) -> np.ndarray:
        """`keys(name).reshape(-1)[::stride]`, computing only the sampled keys where it can."""
        info = self.ckpt.tensors[name]
        if not self._fast(info.dtype):
            return self.keys(name).reshape(-1)[::stride].copy()
        sampled = np.ascontiguousarray(self.ckpt.view(name).reshape(-1)[::stride])
        keys = self.method.keys(sampled, info.dtype, np.empty(sampled.size, dtype=np.uint32))
        return check_keys(keys, name, self.invert)

    def _fast(self, dtype: str) -> bool:
        """Whether the method makes keys straight from raw weights of this dtype (elementwise)."""
        if self.scores_file is not None or self.method.keys is None:
            return False
        probe = np.empty(0, dtype=raw_dtype(dtype))
        return self.method.keys(probe, dtype, np.empty(0, dtype=np.uint32)) is not None


@dataclass
class MaskPlan:
    """Per-tensor keep counts or floors, plus an optional global threshold."""

    spec: SelectionSpec
    counts: dict[str, int]  # layer scope: exact keep count; global scope: floor
    threshold: Threshold | None = None  # global scope: over the keys left after floors
    groups: dict[str, np.ndarray] | None = None  # structured: keep mask over filters/channels
    _skip_left: int = field(default=0, init=False)  # tied entries still to prune, in flat order

    def start(self) -> None:
        self._skip_left = self.threshold.skip if self.threshold else 0

    def residual(self, name: str, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Keys left for the global pool once a tensor's floor is reserved, and the floor mask."""
        floor = self.counts.get(name, 0)
        if floor == 0:
            return keys.reshape(-1), None
        reserved = topk_mask(keys, floor).reshape(-1)
        return keys.reshape(-1)[~reserved], reserved

    def mask(self, name: str, source: KeySource, out: np.ndarray) -> np.ndarray:
        """The keep mask of `name`, in `out` (a bool buffer of at least the tensor's size)."""
        for _ in self.mask_parts(name, source, out):
            pass
        info = source.ckpt.tensors[name]
        return out[: info.numel].reshape(info.shape)

    def mask_parts(self, name: str, source: KeySource, out: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """Fill `out` with the flat keep mask of `name`, yielding (start, part) as parts are done.

        Call in flat order, since ties are resolved in that order. The global threshold
        without a floor (the common case) works a block at a time, so a caller can use each
        part while it is still in cache; every other rule yields the whole mask at once.
        """
        info = source.ckpt.tensors[name]
        flat = out[: info.numel]
        if self.threshold is not None and self.groups is None and not self.counts.get(name):
            start = 0
            for block in source.key_blocks(name):
                part = flat[start : start + block.size]
                self._skip_left -= threshold_mask(block, self.threshold, self._skip_left, part)[1]
                yield start, part
                start += block.size
            return
        flat[:] = self._whole_mask(name, source).reshape(-1)
        yield 0, flat

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
        chosen, used = threshold_mask(free_keys, self.threshold, self._skip_left)
        self._skip_left -= used
        reserved[~reserved] = chosen
        return reserved


def plan_masks(source: KeySource, names: list[str], spec: SelectionSpec, progress: Progress) -> MaskPlan:
    """Decide per-tensor counts, and for global scope run the streamed radix select."""
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
        return MaskPlan(spec, counts)
    floors = {n: floor_count(i.numel, spec.min_density) for n, i in zip(names, infos, strict=True)}
    total = sum(i.numel for i in infos)
    free_total = total - sum(floors.values())
    k = max(0, keep_count(total, spec.density) - sum(floors.values()))
    plan = MaskPlan(spec, {n: f for n, f in floors.items() if f})
    if k >= free_total:
        plan.threshold = KEEP_ALL
        return plan

    def passes() -> Iterator[np.ndarray]:
        progress.stage("selecting (global top-k)", len(names))
        for name in names:
            if name in plan.counts:
                yield plan.residual(name, source.keys(name))[0]
            else:
                yield from source.key_blocks(name)
            progress.advance()

    def sample(stride: int) -> Iterator[np.ndarray]:
        progress.stage("sampling scores", len(names))
        for name in names:
            if name in plan.counts:
                yield plan.residual(name, source.keys(name))[0][::stride]
            else:
                yield source.sample_keys(name, stride)
            progress.advance()

    plan.threshold = find_threshold(passes, k, free_total, sample)
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
    """Masked copies of prunable tensors, made in reused buffers (no fresh pages per tensor)."""

    def __init__(self, source: KeySource, plan: MaskPlan, names: list[str], seed: int) -> None:
        self.source, self.plan, self.seed = source, plan, seed
        tensors = source.ckpt.tensors
        self._masked_buf = np.empty(0, dtype=np.uint8)  # whole masked tensors, only when needed
        self._largest = max((tensors[n].nbytes for n in names), default=0)
        self._block_buf = np.empty(BLOCK * 8, dtype=np.uint8)  # one block of the widest dtype
        self._mask_buf = np.empty(max((tensors[n].numel for n in names), default=0), dtype=bool)

    def write(self, name: str, raw: np.ndarray, out: SafetensorsWriter, refine: Refiner | None) -> np.ndarray:
        """Write `raw` with its pruned entries zeroed (then refined) to `out`; return the mask.

        Commonly a block at a time: each block is masked while its keys are in cache and
        written from a small buffer. --shuffle and `refine` need the whole tensor at once.
        """
        if refine is None and not self.plan.spec.shuffle:
            out.write_parts(name, self._masked_blocks(name, raw))
            return self._mask_buf[: raw.size].reshape(raw.shape)
        masked, mask = self._whole_copy(name, raw)
        if refine is not None:
            masked = refine(name, masked, mask, self.source.ckpt.tensors[name].dtype)
        out.write(name, masked)
        return mask

    def _masked_blocks(self, name: str, raw: np.ndarray) -> Iterator[np.ndarray]:
        bits = as_unsigned(raw).reshape(-1)
        block = self._block_buf[: BLOCK * bits.itemsize].view(bits.dtype)
        for start, part in self.plan.mask_parts(name, self.source, self._mask_buf):
            for offset in range(0, part.size, BLOCK):  # whole-tensor masks come as one part
                keep = part[offset : offset + BLOCK]
                first = start + offset
                yield np.multiply(bits[first : first + keep.size], keep, out=block[: keep.size])

    def _whole_copy(self, name: str, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(masked copy of the whole of `raw`, keep mask), both valid until the next call."""
        if self._masked_buf.size < self._largest:
            self._masked_buf = np.empty(self._largest, dtype=np.uint8)
        masked = self._masked_buf[: raw.nbytes].view(raw.dtype).reshape(raw.shape)
        mask = self.plan.mask(name, self.source, self._mask_buf)
        if self.plan.spec.shuffle:
            mask = shuffle_mask(mask, tensor_rng(self.seed, name, purpose=SHUFFLE_STREAM))
        np.multiply(as_unsigned(raw), mask, out=as_unsigned(masked))  # pruned entries become +0
        return masked, mask


def write_pruned(
    source: KeySource,
    plan: MaskPlan,
    names: list[str],
    folder: Path,
    seed: int,
    progress: Progress,
    refine: Refiner | None = None,
) -> list[dict[str, Any]]:
    """The final pass: mask every prunable tensor, copy the rest, write both files."""
    ckpt = source.ckpt
    chosen = set(names)
    copier = MaskedCopier(source, plan, names, seed)
    model_entries = [(n, i.dtype, i.shape) for n, i in ckpt.tensors.items()]
    mask_entries = [(n, "U8", (math.ceil(ckpt.tensors[n].numel / 8),)) for n in names]
    records = []
    progress.stage("writing masked weights", len(model_entries))
    plan.start()
    with (
        SafetensorsWriter(folder / MODEL_FILE, model_entries, {"format": "prunecli.model"}) as model_out,
        SafetensorsWriter(folder / MASKS_FILE, mask_entries, {"format": "prunecli.masks"}) as masks_out,
    ):
        for name, info in ckpt.tensors.items():
            raw = ckpt.view(name)  # read-only; untouched tensors are written straight from it
            kept = info.numel
            if name in chosen:
                mask = copier.write(name, raw, model_out, refine)
                kept = int(np.count_nonzero(mask))
                masks_out.write(name, np.packbits(mask.reshape(-1)))
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
    with ThreadPoolExecutor(max_workers=2) as pool:  # hashing overlaps with selection
        source_hash = pool.submit(ckpt.sha256)
        scores_hash = pool.submit(req.scores.sha256) if req.scores is not None else None
        with output_folder(req.out, req.force) as folder:
            source = KeySource(
                ckpt, req.names, method=req.method, scores=req.scores, seed=req.seed, invert=req.spec.invert
            )
            plan = plan_masks(source, req.names, req.spec, progress)
            refine, isometry = isometry_refiner(*req.isometry) if req.isometry else (None, None)
            records = write_pruned(source, plan, req.names, folder, req.seed, progress, refine)
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
