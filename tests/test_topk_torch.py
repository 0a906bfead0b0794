"""The on-device radix select agrees with apply's numpy selection, ties and signs included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prunecli.scoring.topk import topk_masks
from prunecli.selection.threshold import global_masks, scores_to_keys


def numpy_masks(parts: list[np.ndarray], k: int) -> list[np.ndarray]:
    return global_masks([scores_to_keys(p.astype(np.float32), "t") for p in parts], k)


@pytest.mark.parametrize("seed", range(4))
def test_matches_numpy_selection_float32(seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = (rng.integers(-5, 6, size=2000) / 3).astype(np.float32)
    values[:30] = -0.0
    parts = [values[:500].reshape(20, 25), values[500:1700], values[1700:]]
    for k in (0, 1, 333, 1000, 1999, 2000):
        got = topk_masks([torch.from_numpy(p) for p in parts], k)
        for mine, ref in zip(got, numpy_masks(parts, k), strict=True):
            np.testing.assert_array_equal(mine.numpy(), ref)


def test_float64_ranks_beyond_float32_precision() -> None:
    base = 1.0 + np.arange(6) * 1e-12  # identical in float32, distinct in float64
    masks = topk_masks([torch.tensor(base[:3]), torch.tensor(base[3:])], 2)
    assert masks[0].tolist() == [False] * 3 and masks[1].tolist() == [False, True, True]


def test_float64_matches_stable_sort_with_negatives() -> None:
    values = np.random.default_rng(5).standard_normal(5000) * 1e200
    values[::7] = 0.0
    k = 1234
    order = np.argsort(values, kind="stable")
    expected = np.zeros(values.size, bool)
    expected[order[values.size - k :]] = True
    got = torch.cat([m for m in topk_masks([torch.tensor(values[:2500]), torch.tensor(values[2500:])], k)])
    np.testing.assert_array_equal(got.numpy(), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_topk_threshold_agrees_with_radix(dtype: torch.dtype) -> None:
    from prunecli.scoring.topk import _cuda_threshold, _radix_threshold, ordered_keys

    g = torch.Generator().manual_seed(1)
    parts = [(torch.randint(-20, 20, (n,), generator=g) / 3).to(dtype) for n in (700, 1300)]
    keys = [ordered_keys(p) for p in parts]
    width = 64 if dtype == torch.float64 else 32
    for k in (1, 5, 999, 1000, 1001, 1999):  # both sides of n/2 take different topk calls
        assert _cuda_threshold(keys, k) == _radix_threshold(keys, k, width)
