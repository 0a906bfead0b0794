"""Magnitude pruning: S = |θ|. Needs no data and no architecture.

Paper: Han et al. 2015, "Learning both Weights and Connections for Efficient Neural
Networks"; at initialisation, the baseline of Frankle et al. 2021. Higher |θ| = keep.
"""

from __future__ import annotations

import numpy as np

from prunecli.scoring.registry import register


def magnitude_keys(raw: np.ndarray, dtype: str, out: np.ndarray) -> np.ndarray | None:
    """Selection keys of |θ| straight from float32 bits, in one pass.

    The key of a non-negative float is its bits with the top bit set, and |θ| is θ with the
    sign bit cleared: setting the sign bit does both (-0.0 and +0.0 get the same key).
    """
    if dtype != "F32":
        return None
    return np.bitwise_or(raw.reshape(-1).view(np.uint32), np.uint32(0x80000000), out=out)


@register(
    "magnitude",
    summary="|θ|: keep the largest weights",
    paper="Han et al. 2015 (NeurIPS)",
    needs="checkpoint only",
    keys=magnitude_keys,
)
def magnitude_scores(name: str, weights: np.ndarray, seed: int, out: np.ndarray | None = None) -> np.ndarray:
    """|θ| in float32."""
    return np.abs(weights, out=out, dtype=np.float32)
