"""Exact selection: the streamed radix select against a plain stable sort."""

from __future__ import annotations

import numpy as np
import pytest

from prunecli.errors import ScoreError, UsageError
from prunecli.selection.threshold import (
    KEEP_ALL,
    KEEP_NONE,
    find_threshold,
    global_masks,
    keep_count,
    nm_mask,
    scores_to_keys,
    shuffle_mask,
    threshold_mask,
    topk_mask,
)


def reference_mask(scores: np.ndarray, k: int) -> np.ndarray:
    """Prune in ascending (score, flat index) order; keep the last k."""
    order = np.argsort(scores.ravel(), kind="stable")
    mask = np.zeros(scores.size, bool)
    mask[order[scores.size - k :]] = True
    return mask.reshape(scores.shape)


def streamed(parts: list[np.ndarray], k: int) -> list[np.ndarray]:
    return global_masks([scores_to_keys(p.astype(np.float32), "t") for p in parts], k)


@pytest.mark.parametrize("seed", range(5))
def test_radix_select_matches_stable_sort_with_ties_and_signs(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # few distinct values => many ties across tensor boundaries; signed; some ±0.0
    values = rng.integers(-6, 7, size=3000).astype(np.float32) / 4
    values[:50] = -0.0
    parts = np.split(values, [700, 1900, 2000])
    for k in (0, 1, 17, 1500, 2999, 3000):
        got = np.concatenate([m.ravel() for m in streamed(parts, k)])
        np.testing.assert_array_equal(got, reference_mask(values, k))
        assert got.sum() == k


def test_radix_select_continuous_values() -> None:
    values = np.random.default_rng(1).standard_normal(100_000).astype(np.float32)
    parts = np.split(values, [10, 50_000])
    got = np.concatenate([m.ravel() for m in streamed(parts, 12_345)])
    np.testing.assert_array_equal(got, reference_mask(values, 12_345))


def test_keys_preserve_float_order() -> None:
    values = np.array([-np.float32(3e38), -2.5, -1e-30, -0.0, 0.0, 1e-30, 1.0, 3e38], np.float32)
    keys = scores_to_keys(values.copy(), "t")
    assert np.all(np.diff(keys.astype(np.int64)) >= 0)
    assert keys[3] == keys[4]  # -0.0 and +0.0 tie


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_scores_are_refused(bad: float) -> None:
    with pytest.raises(ScoreError, match="NaN or infinite"):
        scores_to_keys(np.array([1.0, bad], np.float32), "layer.weight")


def test_invert_gives_the_complement_without_ties() -> None:
    scores = np.random.default_rng(2).standard_normal((20, 10)).astype(np.float32)
    kept = topk_mask(scores_to_keys(scores.copy(), "t"), 60)
    inverted = topk_mask(scores_to_keys(scores.copy(), "t", invert=True), 140)
    np.testing.assert_array_equal(kept, ~inverted)


def test_keep_none_and_all() -> None:
    keys = scores_to_keys(np.arange(5, dtype=np.float32), "t")
    assert find_threshold(lambda: [keys], 0, 5) == KEEP_NONE
    assert find_threshold(lambda: [keys], 5, 5) == KEEP_ALL
    assert not threshold_mask(keys, KEEP_NONE).any()
    assert threshold_mask(keys, KEEP_ALL).all()


def test_keep_count_rounds_half_up() -> None:
    assert keep_count(3, 0.5) == 2
    assert keep_count(10, 0.1) == 1
    assert keep_count(266200, 0.1) == 26620
    assert keep_count(1, 0.0) == 0 and keep_count(1, 1.0) == 1


def test_nm_mask_keeps_n_per_group_of_conv_rows() -> None:
    keys = scores_to_keys(np.random.default_rng(3).standard_normal((4, 2, 2, 2)).astype(np.float32), "c")
    mask = nm_mask(keys, 2, 4, "conv.weight")
    assert mask.shape == (4, 2, 2, 2)
    assert (mask.reshape(4, 2, 4).sum(-1) == 2).all()


def test_nm_mask_refuses_row_length_not_multiple() -> None:
    keys = scores_to_keys(np.ones((2, 6), np.float32), "w")
    with pytest.raises(UsageError, match=r"fc\.weight.*multiple of 4") as info:
        nm_mask(keys, 2, 4, "fc.weight")
    assert "`exclude` 'fc.weight'" in info.value.hint and info.value.option == "pattern"


def test_shuffle_keeps_count_and_moves_entries() -> None:
    mask = np.zeros((50, 50), bool)
    mask[:5] = True
    shuffled = shuffle_mask(mask, np.random.default_rng(0))
    assert shuffled.sum() == mask.sum() and shuffled.shape == mask.shape
    assert not np.array_equal(shuffled, mask)


def test_magnitude_fast_keys_equal_the_general_path() -> None:
    from prunecli.io.dtypes import to_float32
    from prunecli.scoring.magnitude import magnitude_keys, magnitude_scores

    values = np.random.default_rng(4).standard_normal(10_000).astype(np.float32)
    values[:4] = [0.0, -0.0, 3e38, -1e-40]
    for dtype, raw in [
        ("F32", values),
        ("F16", np.clip(values, -6e4, 6e4).astype(np.float16)),
        ("BF16", (values.view(np.uint32) >> 16).astype(np.uint16)),  # truncated to bfloat16
    ]:
        fast = magnitude_keys(raw, dtype, np.empty(values.size, np.uint32))
        slow = scores_to_keys(magnitude_scores("w", to_float32(raw, dtype), 0), "w")
        np.testing.assert_array_equal(fast, slow)
    assert magnitude_keys(values.astype(np.float64), "F64", np.empty(values.size, np.uint32)) is None


@pytest.mark.parametrize("k", [1, 1000, 1_500_000, 2_999_999])
def test_sampled_threshold_equals_radix_on_large_inputs(k: int) -> None:
    from prunecli.selection.threshold import _radix_threshold, _threshold_from_sample

    rng = np.random.default_rng(7)
    values = np.concatenate([rng.standard_normal(2_000_000), rng.integers(-3, 4, 1_000_000) / 2])
    parts = np.split(values.astype(np.float32), [1_234_567, 2_500_000])
    keys = [scores_to_keys(p.copy(), "t") for p in parts]
    sampled = _threshold_from_sample(lambda: keys, lambda stride: [x[::stride] for x in keys], k, 3_000_000)
    assert sampled is None or sampled == _radix_threshold(lambda: keys, k, 3_000_000)
    got = np.concatenate([m.ravel() for m in streamed(parts, k)])  # the public path, sample or not
    np.testing.assert_array_equal(got, reference_mask(values.astype(np.float32), k))


def test_sample_bounds_that_miss_fall_back_to_radix(monkeypatch: pytest.MonkeyPatch) -> None:
    from prunecli.selection import threshold as selection
    from prunecli.selection.threshold import _threshold_from_sample

    monkeypatch.setattr(selection, "SAMPLE_LIMIT", 512)  # stride 4096 over 2^21 keys
    keys = np.arange(1 << 21, dtype=np.uint32) + np.uint32(0x80000000)
    shuffled = keys.copy()
    shuffled[::4096] = np.uint32(0x80000000)  # the strided sample sees only the smallest key
    assert _threshold_from_sample(lambda: [shuffled], lambda s: [shuffled[::s]], 10, shuffled.size) is None
    assert find_threshold(lambda: [shuffled], 10, shuffled.size).key == int(shuffled.max()) - 9


def test_threshold_is_the_same_when_keys_come_in_blocks() -> None:
    """Passes may split a tensor's keys into blocks; flat order is all that matters."""
    rng = np.random.default_rng(11)
    values = (rng.integers(-40, 41, 1_500_000) / 8).astype(np.float32)  # heavy ties
    keys = scores_to_keys(values.copy(), "t")
    whole = find_threshold(lambda: [keys], 300_001, keys.size)
    blocks = find_threshold(lambda: np.array_split(keys, 37), 300_001, keys.size)
    assert whole == blocks
    np.testing.assert_array_equal(threshold_mask(keys, whole), reference_mask(values, 300_001))


@pytest.mark.parametrize("size", [5_000, 1_500_000])  # the radix path, and the sampled one
def test_blocks_masked_alone_in_any_order_match_the_reference(size: int) -> None:
    """The threshold's cut says which ties are pruned, so a block needs only its position."""
    rng = np.random.default_rng(12)
    values = (rng.integers(-40, 41, size) / 8).astype(np.float32)  # heavy ties
    keys = scores_to_keys(values.copy(), "t")
    k = size // 5 + 1
    threshold = find_threshold(lambda: np.array_split(keys, 7), k, size)
    assert threshold.cut > 0  # the boundary value is tied, and some of its ties are pruned
    starts = list(range(0, size, 997))
    mask = np.empty(size, dtype=bool)
    for start in rng.permutation(starts):
        threshold_mask(keys[start : start + 997], threshold, int(start), mask[start : start + 997])
    np.testing.assert_array_equal(mask, reference_mask(values, k))


def test_threshold_mask_writes_into_out() -> None:
    keys = scores_to_keys(np.array([3, 1, 2, 2, 5], np.float32), "t")
    out = np.ones(5, dtype=bool)
    threshold = find_threshold(lambda: [keys], 3, 5)
    assert threshold.cut == 3  # prune the tie at position 2, keep the one at 3
    mask = threshold_mask(keys, threshold, 0, out)
    assert mask.base is out or mask is out
    np.testing.assert_array_equal(out, [True, False, False, True, True])  # the lower tied index pruned
    np.testing.assert_array_equal(threshold_mask(keys[3:], threshold, 3), [True, True])


def _row_mask_by_sorting(keys: np.ndarray, density: float) -> np.ndarray:
    """Each row's keys in ascending (key, index) order by a stable sort; the last k are kept."""
    from prunecli.selection.threshold import keep_count

    flat = keys.reshape(keys.shape[0], -1)
    k = keep_count(flat.shape[1], density)
    mask = np.zeros(flat.shape, dtype=bool)
    order = np.argsort(flat, axis=1, kind="stable")
    np.put_along_axis(mask, order[:, flat.shape[1] - k :], True, axis=1)
    return mask.reshape(keys.shape)


@pytest.mark.parametrize("distinct", [2, 7, 1 << 40])  # ties everywhere, some, hardly any
@pytest.mark.parametrize("density", [0.0, 0.1, 0.5, 0.77, 1.0])
def test_row_mask_equals_a_stable_sort_of_each_row(distinct: int, density: float) -> None:
    from prunecli.selection.threshold import row_mask

    keys = np.random.default_rng(distinct).integers(0, distinct, (32, 3, 5, 5))
    assert np.array_equal(row_mask(keys, density), _row_mask_by_sorting(keys, density))
