"""Magnitude pruning: S = |θ|. Needs no data and no architecture.

Paper: Han et al. 2015, "Learning both Weights and Connections for Efficient Neural
Networks"; at initialisation, the baseline of Frankle et al. 2021. Higher |θ| = keep.
"""

from __future__ import annotations

import numpy as np

from prunecli.scoring.registry import register


@register(
    "magnitude",
    summary="|θ|: keep the largest weights",
    paper="Han et al. 2015 (NeurIPS)",
    needs="checkpoint only",
)
def magnitude_scores(name: str, weights: np.ndarray, seed: int, out: np.ndarray | None = None) -> np.ndarray:
    """|θ| in float32."""
    return np.abs(weights, out=out, dtype=np.float32)
