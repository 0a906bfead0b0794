"""Random pruning: i.i.d. standard-normal scores, seeded per tensor name.

The baseline of every pruning-at-initialisation paper (e.g. Tanaka et al. 2020). With one
global threshold each layer's expected density equals the target. Needs no data.
"""

from __future__ import annotations

import zlib

import numpy as np

from prunecli.scoring.registry import register


def tensor_rng(seed: int, name: str, purpose: int = 0) -> np.random.Generator:
    """A generator that depends only on the seed, the tensor's name and the purpose.

    Independent of tensor order; `purpose` keeps e.g. shuffling apart from random scores.
    """
    return np.random.default_rng([seed, zlib.crc32(name.encode("utf-8")), purpose])


@register(
    "random",
    summary="i.i.d. normal scores (seeded): the sanity baseline",
    paper="Tanaka et al. 2020 (NeurIPS), baseline",
    reads="shapes",
)
def random_scores(name: str, weights: np.ndarray, seed: int, out: np.ndarray | None = None) -> np.ndarray:
    """Standard-normal float32 scores with the shape of `weights`."""
    rng = tensor_rng(seed, name)
    if out is None:
        return rng.standard_normal(weights.shape, dtype=np.float32)
    rng.standard_normal(dtype=np.float32, out=out)
    return out
