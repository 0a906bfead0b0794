"""Exact global top-k over many tensors on any device.

The per-step selection of iterative methods (SynFlow, FORCE, Iter-SNIP) runs here, on the
scores' own device, so no step pays for a full sort or a trip to the CPU. The rule is the
one `apply` uses (prunecli.selection.threshold): keep exactly k, prune in ascending (score, flat
index) order. float32 scores select on 32-bit keys, float64 on 64-bit keys, so float64
scores are ranked at full precision.
"""

from __future__ import annotations

import torch

_DIGIT_BITS = 16
_BINS = 1 << _DIGIT_BITS


def ordered_keys(scores: torch.Tensor) -> torch.Tensor:
    """Signed int64 keys in the same order as the float scores (-0.0 and +0.0 equal)."""
    scores = scores.detach().reshape(-1) + 0.0  # -0.0 -> +0.0
    if scores.dtype == torch.float64:
        bits = scores.view(torch.int64)
        return bits ^ ((bits >> 63) & 0x7FFFFFFFFFFFFFFF)
    bits = scores.to(torch.float32).view(torch.int32).to(torch.int64)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def _bucket(hist: torch.Tensor, need: int) -> tuple[int, int]:
    """The bin b with count(> b) < need <= count(>= b), and count(> b)."""
    from_top = torch.cumsum(hist.flip(0), 0)
    i = int(torch.searchsorted(from_top, torch.tensor(need, device=hist.device)))
    b = _BINS - 1 - i
    return b, int(from_top[i] - hist[b])


def _radix_threshold(keys: list[torch.Tensor], k: int, width: int) -> int:
    """The k-th largest key: a 16-bit histogram of the top digit over every key, then the
    keys of the boundary bucket (usually few) resolved digit by digit."""
    shift = width - _DIGIT_BITS
    hist = sum(torch.bincount((key >> shift) + _BINS // 2, minlength=_BINS) for key in keys)
    b, above = _bucket(hist, k)
    need, threshold = k - above, (b - _BINS // 2) << shift
    candidates = torch.cat([key[(key >> shift) == b - _BINS // 2] for key in keys])
    while shift > 0:
        shift -= _DIGIT_BITS
        digits = (candidates >> shift) & (_BINS - 1)
        b, above = _bucket(torch.bincount(digits, minlength=_BINS), need)
        need -= above
        threshold |= b << shift
        candidates = candidates[digits == b]
    return threshold


def _cuda_threshold(keys: list[torch.Tensor], k: int) -> int:
    """The k-th largest key via torch.topk on the smaller side (CUDA's topk is a fast radix
    select); only the value is used, so its tie order does not matter."""
    flat = torch.cat(keys)
    n = flat.numel()
    if k <= n - k + 1:
        return int(torch.topk(flat, k, sorted=False).values.min())
    return int(torch.topk(flat, n - k + 1, largest=False, sorted=False).values.max())


def topk_masks(scores: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Boolean keep masks holding exactly the k highest scores across all tensors.

    The k-th largest value is found by a radix select (CPU) or torch.topk (CUDA); then
    everything above it is kept, and of the entries equal to it, those with the highest
    flat index, so the result is the same on every device.
    """
    total = sum(s.numel() for s in scores)
    if k <= 0 or k >= total:
        return [torch.full_like(s, k > 0, dtype=torch.bool) for s in scores]
    keys = [ordered_keys(s) for s in scores]
    if keys[0].is_cuda:
        threshold = _cuda_threshold(keys, k)
    else:
        threshold = _radix_threshold(keys, k, 64 if scores[0].dtype == torch.float64 else 32)
    above = sum(int((key > threshold).sum()) for key in keys)
    tied_total = sum(int((key == threshold).sum()) for key in keys)
    skip = tied_total - (k - above)  # tied entries to prune, lowest flat index first
    masks = []
    for key, score in zip(keys, scores, strict=True):
        keep = key > threshold
        tied = torch.nonzero(key == threshold).flatten()  # few: the boundary value only
        keep[tied[skip:]] = True
        skip = max(0, skip - tied.numel())
        masks.append(keep.reshape(score.shape))
    return masks
