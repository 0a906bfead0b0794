"""The write pass: mask every prunable tensor segment by segment and write both output files.

Worker threads mask segments of a tensor, a cache-sized block at a time, while the main thread
writes the finished ones in order; weights are read through memory-mapped views.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from prunecli.apply.isometry import Refiner
from prunecli.apply.layout import OutputLayout
from prunecli.apply.plan import BLOCK, SEGMENT, KeySource, MaskPart, MaskPlan, Scratch
from prunecli.io.checkpoints import Checkpoint
from prunecli.io.dtypes import as_unsigned, itemsize
from prunecli.io.manifest import MASKS_FILE, MODEL_FILE, tensor_record
from prunecli.io.outputs import write_bytes
from prunecli.io.safetensors_file import SafetensorsWriter
from prunecli.progress import Progress
from prunecli.scoring.random_baseline import tensor_rng
from prunecli.selection.threshold import (
    shuffle_mask,
)
from prunecli.selection.workers import INLINE, Workers

SHUFFLE_STREAM = 1  # random-stream id for --shuffle, distinct from random scores


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


MODEL_METADATA = {"format": "pt", "prunecli": "model"}  # transformers 4.x loads only format pt/tf/flax/mlx


def write_pruned(
    source: KeySource,
    plan: MaskPlan,
    names: list[str],
    folder: Path,
    seed: int,
    progress: Progress,
    refine: Refiner | None = None,
    workers: Workers = INLINE,
    layout: OutputLayout | None = None,
    replacements: Checkpoint | None = None,
) -> list[dict[str, Any]]:
    """The final pass: mask every prunable tensor (on `workers`), copy the rest, write the
    weights files of `layout` (one `model.safetensors` by default), the masks and the copies.
    A tensor in `replacements` (weights a method updated) is written from there instead."""
    ckpt = source.ckpt
    layout = layout or OutputLayout([(MODEL_FILE, list(ckpt.tensors))], [])
    chosen = set(names)
    mask_entries = [(n, "U8", (math.ceil(ckpt.tensors[n].numel / 8),)) for n in names]
    records = {}
    progress.stage("writing masked weights", len(ckpt.tensors))
    with SafetensorsWriter(folder / MASKS_FILE, mask_entries, {"format": "prunecli.masks"}) as masks_out:
        copier = MaskedCopier(source, plan, names, seed, workers)
        for shard, shard_names in layout.shards:
            entries = [(n, ckpt.tensors[n].dtype, ckpt.tensors[n].shape) for n in shard_names]
            with SafetensorsWriter(folder / shard, entries, MODEL_METADATA) as model_out:
                for name in shard_names:
                    info = ckpt.tensors[name]
                    updated = replacements is not None and name in replacements.tensors
                    raw = (replacements if updated else ckpt).view(name)  # read-only, mapped
                    kept = info.numel
                    if name in chosen:
                        packed, kept = copier.write(name, raw, model_out, refine)
                        masks_out.write(name, packed)
                    else:
                        model_out.write(name, raw)
                    groups = plan.groups.get(name) if plan.groups is not None else None
                    counts = None if groups is None else (int(groups.sum()), groups.size)
                    records[name] = tensor_record(name, info.shape, info.dtype, kept, name in chosen, counts)
                    progress.advance()
    if layout.sharded:
        sizes = {n: i.nbytes for n, i in ckpt.tensors.items()}
        write_bytes(folder / layout.model_file, layout.index_bytes(sizes))
    for path in layout.copied:
        write_bytes(folder / path.name, path.read_bytes())
    return [records[n] for n in ckpt.tensors]
