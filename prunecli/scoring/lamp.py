"""LAMP: layer-adaptive magnitude scores (Lee et al. 2021, ICLR).

Sort a layer's weights ascending by w², index u in that order:
    S(u) = w_u² / Σ_{v ≥ u} w_v²
The largest weight of every layer scores exactly 1, so a global ranking keeps at least one
weight per layer. Pruned zeros score 0. Needs no data. Higher = keep.
"""

from __future__ import annotations

import numpy as np

from prunecli.scoring.registry import register


@register(
    "lamp",
    summary="w² / (sum of w² of the weights at least as large): layer-adaptive magnitude",
    paper="Lee et al. 2021 (ICLR)",
)
def lamp_scores(name: str, weights: np.ndarray, seed: int, out: np.ndarray | None = None) -> np.ndarray:
    """LAMP scores in float32 (sums accumulated in float64); ties ordered by flat index."""
    squared = np.square(weights.reshape(-1), dtype=np.float64)  # (n,)
    order = np.argsort(squared, kind="stable")
    sorted_sq = squared[order]
    # suffix sums: Σ_{v ≥ u} w_v² for each sorted position u
    suffix = np.cumsum(sorted_sq[::-1])[::-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(suffix > 0, sorted_sq / suffix, 0.0)
    scores = np.empty_like(squared)
    scores[order] = ratio
    return scores.astype(np.float32).reshape(weights.shape)
