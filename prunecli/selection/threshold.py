"""Scores -> masks: exact-count top-k (global or per layer), ERK, N:M, shuffle and invert.

Scores are turned into order-preserving uint32 *keys* (higher key = higher score), so
selection is integer work. Global top-k is streamed: a strided sample bounds the k-th key,
one counting pass settles it (with a radix select over 16-bit digits as the exact fallback).
It never concatenates the scores, so memory stays near the largest tensor.
Exactly k = round(N·d) entries are kept. Ties are broken by flat index: weights are pruned
in ascending order of (score, flat index), so among equal scores the lower index is pruned
first (the convention of the reference N:M code, methods.md §9). A threshold records where
the pruned ties end, so any block of keys can be masked on its own, in any order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

import numpy as np

from prunecli.errors import ScoreError, UsageError
from prunecli.io.dtypes import CACHE_BLOCK
from prunecli.selection.workers import INLINE, Workers

CHUNK = CACHE_BLOCK  # elements per chunk of the radix passes
_BINS = 1 << 16
_NONFINITE_LOW = 0x007FFFFF  # keys at or below: -inf or NaN with the sign bit set
_NONFINITE_HIGH = 0xFF800000  # keys at or above: +inf or NaN


def _chunks(flat: np.ndarray) -> Iterable[np.ndarray]:
    for start in range(0, flat.size, CHUNK):
        yield flat[start : start + CHUNK]


def scores_to_keys(scores: np.ndarray, name: str, invert: bool = False) -> np.ndarray:
    """Order-preserving uint32 keys of float32 scores, computed in place.

    `scores` is overwritten (its buffer becomes the keys). -0.0 and +0.0 get the same key.
    With `invert`, the order is reversed (the keys of −S), for the inversion ablation.
    NaN or infinite scores raise ScoreError naming the tensor.
    """
    flat = np.ascontiguousarray(scores, dtype=np.float32).reshape(-1)
    keys = flat.view(np.uint32)
    for part in _chunks(flat):
        part += np.float32(0.0)  # -0.0 -> +0.0
        bits = part.view(np.uint32)
        flip = (bits.view(np.int32) >> 31).view(np.uint32)
        flip |= np.uint32(0x80000000)
        bits ^= flip  # negatives: all bits flipped; positives: sign bit set
    return check_keys(keys, name, invert).reshape(scores.shape)


def check_keys(keys: np.ndarray, name: str, invert: bool = False, check: bool = True) -> np.ndarray:
    """Refuse keys of NaN or infinite scores (naming the tensor); reverse them for --invert.

    `check=False` skips the scan, for keys already checked on an earlier pass.
    """
    if check and keys.size and (keys.min() <= _NONFINITE_LOW or keys.max() >= _NONFINITE_HIGH):
        raise ScoreError(
            f"scores of {name} contain NaN or infinite values",
            "check the checkpoint for NaN/Inf weights (inspect) or recompute the scores",
        )
    if invert:
        np.invert(keys, out=keys)
    return keys


@dataclass(frozen=True)
class Threshold:
    """Keep every key > `key`, and the keys == `key` at positions >= `cut`.

    Positions count every key the passes yield, in order (tensor after tensor, each in flat
    order), so the ties pruned are exactly the lowest-indexed ones.
    """

    key: int
    cut: int = 0


KEEP_NONE = Threshold(0xFFFFFFFF)  # no real key is this large (it would be NaN)
KEEP_ALL = Threshold(0)  # no real key is this small


def _bucket(hist: np.ndarray, need: int) -> tuple[int, int]:
    """The bin b with count(> b) < need <= count(>= b), and count(> b)."""
    from_top = np.cumsum(hist[::-1])  # from_top[i] = count(bins >= len-1-i)
    i = int(np.searchsorted(from_top, need))
    b = len(hist) - 1 - i
    return b, int(from_top[i] - hist[b])


SAMPLE_LIMIT = 1 << 23  # keys in the bounding sample (32 MB)
SAMPLE_MIN_TOTAL = 1 << 20  # below this, the radix select alone is cheap


KeyJob = Callable[[np.ndarray], Iterable[np.ndarray]]
"""`job(scratch)` yields some keys in flat order, in arrays no longer than `scratch` (uint32),
made in it or held elsewhere. Jobs of one pass may run on several threads, each with its own
scratch, so a job must not share other buffers."""
Passes = Callable[[], Iterable[np.ndarray | KeyJob]]
Sampler = Callable[[int], Iterable[np.ndarray | Callable[[], np.ndarray]]]


def find_threshold(
    passes: Passes,
    k: int,
    total: int,
    sample: Sampler | None = None,
    workers: Workers = INLINE,
    sample_limit: int | None = None,
) -> Threshold:
    """The threshold that keeps exactly the k largest keys among `total`.

    Large inputs first bound the k-th key from a strided sample (pass 1), then count the keys
    above the bound and gather the few in between (pass 2): cheap comparisons instead of a
    histogram. If the sample's bounds miss (rare), the radix select settles it. Either way
    the threshold is the exact k-th largest key, so the result does not depend on the path.

    Args:
        passes: called up to four times; each call yields every key once, in flat order, as
            arrays of any size (a tensor's keys may come in blocks) or as `KeyJob`s.
        k: how many to keep (0 <= k <= total).
        total: how many keys the passes yield in all.
        sample: `sample(stride)` yields `keys.reshape(-1)[::stride]` of every tensor in order,
            as arrays or as calls that make them; lets a caller compute only the sampled
            keys. Default: taken from `passes`.
        workers: threads for the sampling and counting passes. Give more than INLINE only
            when an item stays valid while later ones are made (jobs and calls do).
        sample_limit: about how many keys to sample (default SAMPLE_LIMIT); fewer make a
            cheaper pass 1 and a wider band of candidates in pass 2.
    """
    if k <= 0:
        return KEEP_NONE
    if k >= total:
        return KEEP_ALL
    if total >= SAMPLE_MIN_TOTAL:
        sample = sample or (lambda stride: (keys[::stride] for keys in _flat_keys(passes)))
        found = _threshold_from_sample(passes, sample, k, total, workers, sample_limit or SAMPLE_LIMIT)
        if found is not None:
            return found
    return _radix_threshold(passes, k, total)


def _parts(item: np.ndarray | KeyJob, scratch: np.ndarray) -> Iterable[np.ndarray]:
    """The keys of one pass item in chunks: an array as it is, a job's output as it comes."""
    for keys in item(scratch) if callable(item) else (item,):
        yield from _chunks(keys.reshape(-1))


def _flat_keys(passes: Passes) -> Iterable[np.ndarray]:
    """Every key of a pass as one flat array per item (a job's keys copied out of its scratch)."""
    scratch = np.empty(CHUNK, dtype=np.uint32)
    for item in passes():
        if not callable(item):
            yield item.reshape(-1)
            continue
        yield np.concatenate([part.copy() for part in _parts(item, scratch)] or [np.empty(0, np.uint32)])


def _threshold_from_sample(
    passes: Passes, sample: Sampler, k: int, total: int, workers: Workers = INLINE, limit: int | None = None
) -> Threshold | None:
    stride = max(1, -(-total // (limit or SAMPLE_LIMIT)))
    calls = (item if callable(item) else partial(np.asarray, item) for item in sample(stride))
    sampled = np.concatenate(list(workers.in_order(calls)))
    m = sampled.size
    position = m - k / stride  # where the k-th largest falls in the sorted sample
    margin = 8 * math.sqrt(m * (k / total) * (1 - k / total)) + 8
    lo_rank, hi_rank = max(0, int(position - margin)), min(m - 1, int(position + margin))
    sampled.partition([lo_rank, hi_rank])  # in place: no second copy of the sample
    lo, hi = sampled[[lo_rank, hi_rank]]
    del sampled  # its memory is free again for the counting pass
    above, candidates, positions = _count_and_gather(passes, int(lo), int(hi), workers)
    need = k - above  # how many of the candidates are kept
    if need <= 0 or need > candidates.size:
        return None
    value = np.partition(candidates, candidates.size - need)[candidates.size - need]
    greater = int(np.count_nonzero(candidates > value))
    tied = positions[candidates == value]  # in order
    skip = tied.size - (need - greater)  # how many ties are pruned: the first ones
    return Threshold(int(value), int(tied[skip - 1]) + 1 if skip else 0)


class _CountScratch:
    """Chunk-sized buffers of one counting job, reused from job to job."""

    def __init__(self) -> None:
        self.keys = np.empty(CHUNK, dtype=np.uint32)
        self.shifted = np.empty(CHUNK, dtype=np.uint32)
        self.flags = np.empty(CHUNK, dtype=bool)


def _count_and_gather(
    passes: Passes, lo: int, hi: int, workers: Workers = INLINE
) -> tuple[int, np.ndarray, np.ndarray]:
    """How many keys are above `hi`, and the keys in [lo, hi] with their positions, in order.

    Each pass item is counted on its own (on `workers`) and the results joined in order.
    """
    slots = [_CountScratch() for _ in range(workers.slots)]
    calls = (partial(_count_item, item, lo, hi, slots[j % len(slots)]) for j, item in enumerate(passes()))
    above, between, where, offset = 0, [], [], 0
    for size, item_above, keys, positions in workers.in_order(calls):
        above += item_above
        between.append(keys)
        where.append(positions + offset)
        offset += size
    if not between:
        return above, np.empty(0, dtype=np.uint32), np.empty(0, dtype=np.int64)
    return above, np.concatenate(between), np.concatenate(where)


def _count_item(
    item: np.ndarray | KeyJob, lo: int, hi: int, scratch: _CountScratch
) -> tuple[int, int, np.ndarray, np.ndarray]:
    """(keys in the item, how many are above `hi`, those in [lo, hi], their positions in it).

    Allocates nothing per chunk but the (few) gathered candidates; `key - lo <= hi - lo` in
    wrapping uint32 tests both bounds at once.
    """
    above, between, where, offset = 0, [], [], 0
    low, width = np.uint32(lo), np.uint32(hi - lo)
    for part in _parts(item, scratch.keys):
        n = part.size
        flags, shifted = scratch.flags[:n], scratch.shifted[:n]
        np.greater(part, np.uint32(hi), out=flags)
        above += int(np.count_nonzero(flags))
        np.subtract(part, low, out=shifted)
        np.less_equal(shifted, width, out=flags)
        found = np.flatnonzero(flags)
        between.append(part[found])
        where.append(found + offset)
        offset += n
    if not between:
        return offset, above, np.empty(0, dtype=np.uint32), np.empty(0, dtype=np.int64)
    return offset, above, np.concatenate(between), np.concatenate(where)


def _radix_threshold(passes: Passes, k: int, total: int) -> Threshold:
    """A histogram of the top 16 key bits, then of the low 16 bits inside the boundary bucket."""
    high, scratch = np.zeros(_BINS, dtype=np.int64), np.empty(CHUNK, dtype=np.uint32)
    for item in passes():
        for part in _parts(item, scratch):
            high += np.bincount(part >> 16, minlength=_BINS)
    bucket, above = _bucket(high, k)
    low = np.zeros(_BINS, dtype=np.int64)
    for item in passes():
        for part in _parts(item, scratch):
            inside = part[(part >> 16) == bucket]
            low += np.bincount(inside & 0xFFFF, minlength=_BINS)
    value, above_in_bucket = _bucket(low, k - above)
    kept_ties = k - above - above_in_bucket
    key = (bucket << 16) | value
    return Threshold(key, _cut_after_ties(passes, key, int(low[value]) - kept_ties))


def _cut_after_ties(passes: Passes, key: int, skip: int) -> int:
    """The position just after the `skip`-th key equal to `key` (0 if `skip` is 0)."""
    if skip == 0:
        return 0
    offset, scratch = 0, np.empty(CHUNK, dtype=np.uint32)
    for item in passes():
        for part in _parts(item, scratch):
            tied = np.flatnonzero(part == key)
            if tied.size >= skip:
                return offset + int(tied[skip - 1]) + 1
            skip -= tied.size
            offset += part.size
    raise AssertionError("fewer ties than the histogram counted")


def threshold_mask(
    keys: np.ndarray, threshold: Threshold, start: int = 0, out: np.ndarray | None = None
) -> np.ndarray:
    """The keep mask of some keys whose first one sits at position `start` of the passes.

    `out` (a bool array of the keys' size) receives the mask when given. Keys wholly before
    the cut keep only what is above the threshold; keys after it keep the ties too.
    """
    flat = keys.reshape(-1)
    into = None if out is None else out.reshape(-1)
    before = threshold.cut - start  # how many of these keys lie before the cut
    key = np.uint32(threshold.key)
    if before >= flat.size:
        return np.greater(flat, key, out=into).reshape(keys.shape)
    mask = np.greater_equal(flat, key, out=into)
    if before > 0:
        mask[np.flatnonzero(flat[:before] == key)] = False
    return mask.reshape(keys.shape)


def global_masks(keys: list[np.ndarray], k: int) -> list[np.ndarray]:
    """Exact top-k keep masks over in-memory key arrays taken together, in flat order."""
    threshold = find_threshold(lambda: keys, k, sum(key.size for key in keys))
    masks, start = [], 0
    for key in keys:
        masks.append(threshold_mask(key, threshold, start))
        start += key.size
    return masks


def topk_mask(keys: np.ndarray, k: int) -> np.ndarray:
    """The exact top-k mask of one tensor (among ties the lower flat index is pruned)."""
    return global_masks([keys], k)[0]


def keep_count(numel: int, density: float) -> int:
    """k = round(n·d), with exact halves rounded away from zero (so d = 0.5 of 3 keeps 2)."""
    return min(numel, math.floor(numel * density + 0.5))


def floor_count(numel: int, min_density: float) -> int:
    """The fewest entries that give a density of at least `min_density` (rounded up)."""
    return min(numel, math.ceil(numel * min_density - 1e-9))


def nm_mask(keys: np.ndarray, n: int, m: int, name: str) -> np.ndarray:
    """Keep the n highest of every m consecutive entries along each output row's input.

    The tensor is viewed as (out, in·kh·kw); a row length not divisible by m is an error.
    """
    rows = keys.shape[0]
    cols = keys.size // rows if rows else 0
    if cols % m:
        raise UsageError(
            f"`pattern` {n}:{m} needs the input dimension of {name} ({cols}) to be a multiple of {m}",
            f"exclude it with `exclude` '{name}'",
            option="pattern",
            value=(n, m),
        )
    groups = keys.reshape(rows, cols // m, m)  # (out, groups, m)
    order = np.argsort(groups, axis=-1, kind="stable")  # ascending key, ties by index
    mask = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(mask, order[..., m - n :], True, axis=-1)  # prune the m-n lowest
    return mask.reshape(keys.shape)


def row_mask(keys: np.ndarray, density: float) -> np.ndarray:
    """Keep round(cols·d) of each output row (the tensor viewed as (out, in·kh·kw)).

    Wanda's comparison group: every row keeps the same fraction. Ties by index, as elsewhere.
    """
    flat = keys.reshape(keys.shape[0], -1)  # (out, cols)
    cols = flat.shape[1]
    k = keep_count(cols, density)
    if k in (0, cols):
        return np.full(keys.shape, k == cols)
    # The lowest kept key of each row by a partition (no full sort): keys above it are kept.
    cut = np.partition(flat, cols - k, axis=1)[:, cols - k, None]  # (out, 1)
    mask = flat > cut
    # Keys equal to the cut: keep as many as the row still needs, the highest indices first
    # (ascending (key, index) order prunes the lower index of a tie first).
    tied = flat == cut
    need = k - np.count_nonzero(mask, axis=1)
    split = np.flatnonzero(np.count_nonzero(tied, axis=1) != need)  # rows whose tie straddles the cut
    mask |= tied
    for row in split:
        at = np.flatnonzero(tied[row])
        mask[row, at[: at.size - need[row]]] = False
    return mask.reshape(keys.shape)


def erk_densities(shapes: list[tuple[int, ...]], density: float, power: float = 1.0) -> list[float]:
    """Erdős–Rényi-Kernel per-layer densities (Evci et al. 2020) for a target density.

    p_l = (Σ dims / Π dims)^power; ε solves Σ ε·p_l·n_l = Σ (n_l − floor(s·n_l)), and any
    layer whose ε·p_l exceeds 1 is made dense (its floor(s·n_l) leaves the budget) and the
    solve repeated.
    """
    sparsity = 1.0 - density
    numels = [math.prod(s) for s in shapes]
    raw = [(sum(s) / math.prod(s)) ** power if math.prod(s) else 0.0 for s in shapes]
    dense: set[int] = set()
    while True:
        rhs = 0.0
        divisor = 0.0
        for i, n in enumerate(numels):
            pruned = math.floor(sparsity * n + 1e-9)
            if i in dense:
                rhs -= pruned
            else:
                rhs += n - pruned
                divisor += raw[i] * n
        eps = rhs / divisor if divisor else 0.0
        free = [i for i in range(len(shapes)) if i not in dense]
        worst = max(free, key=lambda i: raw[i], default=None)
        if worst is None or eps * raw[worst] <= 1.0:
            return [1.0 if i in dense else eps * raw[i] for i in range(len(shapes))]
        dense.update(i for i in free if raw[i] == raw[worst])


def shuffle_mask(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The mask's entries permuted uniformly at random: the per-layer count is kept."""
    return rng.permutation(mask.reshape(-1)).reshape(mask.shape)
