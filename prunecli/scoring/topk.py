"""Exact global top-k over many tensors on any device: a radix select with torch.bincount.

The per-step selection of iterative methods (SynFlow, FORCE, Iter-SNIP) runs here, on the
scores' own device, so no step pays for a full sort or a trip to the CPU. The rule is the
one `apply` uses (prunecli.selection): keep exactly k, prune in ascending (score, flat
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


def _digit(keys: torch.Tensor, shift: int, top: bool) -> torch.Tensor:
    if top:  # the most significant digit is signed: shift it into [0, _BINS)
        return (keys >> shift) + (_BINS // 2)
    return (keys >> shift) & (_BINS - 1)


def _bucket(hist: torch.Tensor, need: int) -> tuple[int, int]:
    """The bin b with count(> b) < need <= count(>= b), and count(> b)."""
    from_top = torch.cumsum(hist.flip(0), 0)
    i = int(torch.searchsorted(from_top, torch.tensor(need, device=hist.device)))
    b = _BINS - 1 - i
    return b, int(from_top[i] - hist[b])


def topk_masks(scores: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Boolean keep masks holding exactly the k highest scores across all tensors."""
    total = sum(s.numel() for s in scores)
    if k <= 0 or k >= total:
        return [torch.full_like(s, k > 0, dtype=torch.bool) for s in scores]
    keys = [ordered_keys(s) for s in scores]
    width = 64 if scores[0].dtype == torch.float64 else 32
    candidates = [torch.ones_like(key, dtype=torch.bool) for key in keys]
    need, threshold = k, 0
    for shift in range(width - _DIGIT_BITS, -1, -_DIGIT_BITS):
        top = shift == width - _DIGIT_BITS
        hist = torch.zeros(_BINS, dtype=torch.int64, device=keys[0].device)
        for key, cand in zip(keys, candidates, strict=True):
            hist += torch.bincount(_digit(key[cand], shift, top), minlength=_BINS)
        b, above = _bucket(hist, need)
        need -= above
        digit_value = b - _BINS // 2 if top else b
        threshold |= digit_value << shift
        candidates = [
            cand & (_digit(key, shift, top) == b) for key, cand in zip(keys, candidates, strict=True)
        ]
    # `need` entries equal to the threshold survive: the ones with the highest flat index
    skip = sum(int(c.sum()) for c in candidates) - need
    masks = []
    for key, tied, score in zip(keys, candidates, scores, strict=True):
        rank = torch.cumsum(tied.to(torch.int64), 0)  # 1-based position among this tensor's ties
        keep = (key > threshold) | (tied & (rank > skip))
        skip = max(0, skip - int(tied.sum()))
        masks.append(keep.reshape(score.shape))
    return masks
