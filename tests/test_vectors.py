"""The hand-checked vectors of methods.md §1 (magnitude), §9 (N:M), §10 (LAMP), §11 (ERK)."""

from __future__ import annotations

import numpy as np
import pytest

from prunecli.scoring import get_method
from prunecli.selection.threshold import (
    erk_densities,
    global_masks,
    nm_mask,
    scores_to_keys,
)

# N0: W1 (2, 3), W2 (2, 2)
W1 = np.array([[0.5, -1, 0.25], [1, 0.5, -0.5]], np.float32)
W2 = np.array([[1, -0.5], [-1.5, 2]], np.float32)


def score(method: str, name: str, w: np.ndarray, seed: int = 0) -> np.ndarray:
    return get_method(method).scorer(name, w, seed, None)


def exact_masks(scores: list[np.ndarray], k: int) -> list[np.ndarray]:
    """Exact global top-k as apply selects it, as 0/1 arrays."""
    keys = [scores_to_keys(s.copy(), f"t{i}") for i, s in enumerate(scores)]
    return [mask.astype(int) for mask in global_masks(keys, k)]


def test_magnitude_scores_are_abs_weights() -> None:
    flat = np.concatenate([score("magnitude", "W1", W1).ravel(), score("magnitude", "W2", W2).ravel()])
    np.testing.assert_array_equal(flat, [0.5, 1, 0.25, 1, 0.5, 0.5, 1, 0.5, 1.5, 2])


def test_magnitude_keep_three_breaks_ties_by_flat_index() -> None:
    m1, m2 = exact_masks([score("magnitude", "W1", W1), score("magnitude", "W2", W2)], 3)
    # W2[1,1]=2 and W2[1,0]=1.5, then the last of the three tied 1.0s (flat 1, 3, 6): W2[0,0]
    np.testing.assert_array_equal(m1, [[0, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(m2, [[1, 0], [1, 1]])


def test_random_keeps_exact_count_and_expected_density() -> None:
    shapes = {"a": (300, 100), "b": (100, 30), "c": (10, 30)}
    fractions = []
    for seed in range(20):
        scores = [score("random", n, np.zeros(s, np.float32), seed) for n, s in shapes.items()]
        masks = exact_masks(scores, k=3430)
        assert sum(int(m.sum()) for m in masks) == 3430
        fractions.append([m.mean() for m in masks])
    np.testing.assert_allclose(np.mean(fractions, axis=0), 0.1, atol=0.01)


A = np.array([[0.3, -1.2, 0.5], [0.9, -0.1, 2.0]], np.float32)
B = np.array([[1.6, -0.4], [0.7, -2.5]], np.float32)


def test_lamp_scores() -> None:
    np.testing.assert_allclose(
        score("lamp", "A", A), [[0.013657, 0.264706, 0.038462], [0.129600, 0.001515, 1]], rtol=0, atol=5e-7
    )
    np.testing.assert_allclose(
        score("lamp", "B", B), [[0.290579, 0.016913], [0.052688, 1]], rtol=0, atol=5e-7
    )


def test_lamp_scores_float64_exact() -> None:
    a = A.astype(np.float64)
    sq = np.sort(a.ravel() ** 2)
    expected_top = sq[-1] / sq[-1]
    assert score("lamp", "A", A).max() == expected_top == 1.0
    # S(u) = w_u² / Σ_{v≥u} w_v² at the smallest entry (0.1² over the whole layer)
    assert score("lamp", "A", A)[1, 1] == pytest.approx(0.01 / sq.sum(), rel=1e-6)


def test_lamp_keep_five_globally() -> None:
    ma, mb = exact_masks([score("lamp", "A", A), score("lamp", "B", B)], 5)
    np.testing.assert_array_equal(ma, [[0, 1, 0], [1, 0, 1]])
    np.testing.assert_array_equal(mb, [[1, 0], [0, 1]])


def test_lamp_all_zero_layer_scores_zero() -> None:
    assert not score("lamp", "z", np.zeros((3, 3), np.float32)).any()


@pytest.mark.parametrize(
    ("shapes", "density", "expected"),
    [
        ([(100, 100), (10, 100)], 0.1, [0.070968, 0.390323]),
        ([(100, 100), (10, 100)], 0.5, [0.45, 1.0]),
        ([(16, 3, 3, 3), (32, 16, 3, 3), (10, 32)], 0.1, [0.256830, 0.052008, 0.582490]),
    ],
)
def test_erk_densities(shapes: list[tuple[int, ...]], density: float, expected: list[float]) -> None:
    np.testing.assert_allclose(erk_densities(shapes, density), expected, rtol=0, atol=5e-7)


WANDA_W = np.array([[1, -2, 0.5, 3, -0.25, 1.5, -1, 0.75], [-0.5, 1, 4, -1, 2, -0.1, 0.3, -3]], np.float64)
WANDA_X = np.array(
    [[1, 0, 2, 0.5, 1, -1, 0.5, 0], [2, 1, 0, 0.5, -1, 2, 0, 1], [0, 1, 1, 1, 0.5, 0, -2, 1]], np.float64
)


def test_two_four_on_wanda_scores() -> None:
    scores = (np.abs(WANDA_W) * np.linalg.norm(WANDA_X, axis=0)).astype(np.float32)
    mask = nm_mask(scores_to_keys(scores, "w"), 2, 4, "w")
    np.testing.assert_array_equal(mask.astype(int), [[0, 1, 0, 1, 0, 1, 1, 0], [0, 1, 1, 0, 1, 0, 0, 1]])


def test_two_four_on_magnitude_scores() -> None:
    scores = score("magnitude", "w", WANDA_W.astype(np.float32))
    mask = nm_mask(scores_to_keys(scores, "w"), 2, 4, "w")
    np.testing.assert_array_equal(mask.astype(int), [[0, 1, 0, 1, 0, 1, 1, 0], [0, 0, 1, 1, 1, 0, 0, 1]])
