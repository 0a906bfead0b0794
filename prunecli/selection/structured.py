"""Structured selection: rank whole filters or channels by an aggregate of per-weight scores.

A *filter* is an output channel, the slice [i, ...] (a conv filter, a linear row); a
*channel* is an input channel, the slice [:, j, ...] (methods.md §13). Its score is an
aggregate of its weights' scores: `l1` Σ|s|, `l2` Σs² (no root, as Torch-Pruning; the
ranking is the same), `mean` or `max`. Whole groups are kept, so pruned checkpoints keep
their shapes with zeroed filters or channels.
"""

from __future__ import annotations

import numpy as np

from prunecli.errors import UsageError
from prunecli.selection.spec import AGGREGATES
from prunecli.selection.threshold import global_masks, keep_count, scores_to_keys, topk_mask


def _groups_first(scores: np.ndarray, structure: str) -> np.ndarray:
    """(groups, rest) view: filters are axis 0, channels axis 1."""
    if structure == "channel":
        return np.moveaxis(scores, 1, 0).reshape(scores.shape[1], -1)
    return scores.reshape(scores.shape[0], -1)


def group_scores(scores: np.ndarray, structure: str, aggregate: str) -> np.ndarray:
    """One float64 score per filter or channel of a tensor with ndim >= 2."""
    matrix = _groups_first(np.asarray(scores, dtype=np.float64), structure)  # (groups, rest)
    if aggregate == "l1":
        return np.abs(matrix).sum(axis=1)
    if aggregate == "l2":
        return np.square(matrix).sum(axis=1)
    if aggregate == "mean":
        return matrix.mean(axis=1)
    if aggregate == "max":
        return matrix.max(axis=1)
    raise UsageError(f"unknown `aggregate` {aggregate!r}", f"choose one of: {', '.join(AGGREGATES)}",
                     option="aggregate", value=aggregate, allowed=AGGREGATES)  # fmt: skip


def expand(keep: np.ndarray, shape: tuple[int, ...], structure: str) -> np.ndarray:
    """A weight mask of `shape` from a keep mask over its filters or channels."""
    axis = 1 if structure == "channel" else 0
    view = [1] * len(shape)
    view[axis] = shape[axis]
    return np.broadcast_to(keep.reshape(view), shape).copy()


def select_groups(
    aggregates: dict[str, np.ndarray], densities: dict[str, float] | None, density: float
) -> dict[str, np.ndarray]:
    """Keep masks over each tensor's groups.

    With `densities` (layer scope) each tensor keeps round(G·d_l) of its groups; without,
    round(G·d) groups are kept across all tensors, ranked globally, ties in flat order.
    """
    keys = {n: scores_to_keys(a.astype(np.float32), n) for n, a in aggregates.items()}
    if densities is not None:
        return {name: topk_mask(key, keep_count(key.size, densities[name])) for name, key in keys.items()}
    total = sum(k.size for k in keys.values())
    return dict(zip(keys, global_masks(list(keys.values()), keep_count(total, density)), strict=True))
