"""Magnitude pruning: S = |θ|. Needs no data and no architecture.

Paper: Han et al. 2015, "Learning both Weights and Connections for Efficient Neural
Networks"; at initialisation, the baseline of Frankle et al. 2021. Higher |θ| = keep.
"""

from __future__ import annotations

import numpy as np

from prunecli.scoring.registry import register


def magnitude_keys(raw: np.ndarray, dtype: str, out: np.ndarray) -> np.ndarray | None:
    """Selection keys of |θ| straight from raw float32, bfloat16 or float16 weights.

    The key of a non-negative float32 is its bits with the top bit set, and |θ| is θ with
    the sign bit cleared: setting the sign bit does both (-0.0 and +0.0 get the same key).
    bfloat16 is the top half of a float32 and float16 widens exactly, so both key alike.
    """
    flat = raw.reshape(-1)
    if dtype == "F32":
        bits = flat.view(np.uint32)
    elif dtype == "BF16":
        bits = np.left_shift(flat, np.uint32(16), out=out)  # computed in uint32
    elif dtype == "F16":
        np.copyto(out.view(np.float32), flat)
        bits = out
    else:
        return None
    return np.bitwise_or(bits, np.uint32(0x80000000), out=out)


@register(
    "magnitude",
    summary="|θ|: keep the largest weights",
    paper="Han et al. 2015 (NeurIPS)",
    keys=magnitude_keys,
)
def magnitude_scores(name: str, weights: np.ndarray, seed: int, out: np.ndarray | None = None) -> np.ndarray:
    """|θ| in float32."""
    return np.abs(weights, out=out, dtype=np.float32)
