"""SparseGPT's layer solver against an independent float64 OBS implementation, and its contracts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prunecli.errors import ScoreError, UsageError
from prunecli.scoring.sparsegpt import HessianAccumulator, sparsegpt_solve
from prunecli.selection.threshold import keep_count


def correlated_inputs(tokens: int, cols: int, seed: int) -> torch.Tensor:
    """(tokens, cols) with correlated features of different scales, as a layer's inputs are."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=g) / cols**0.5 + torch.eye(cols)
    scale = torch.rand(cols, generator=g) * 3 + 0.2
    return (torch.randn(tokens, cols, generator=g) @ mix) * scale


def layer(rows: int, cols: int, tokens: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 100)
    return torch.randn(rows, cols, generator=g), correlated_inputs(tokens, cols, seed)


def hessian_of(x: torch.Tensor) -> torch.Tensor:
    acc = HessianAccumulator(x.shape[1], torch.device("cpu"), name="fc")
    acc.add(x)
    return acc.hessian


def obs_reference(
    W: np.ndarray, H: np.ndarray, block: int, density: float | None, pattern: tuple[int, int] | None
) -> tuple[np.ndarray, np.ndarray]:
    """The OBS view, float64, no Cholesky and no lazy updates: for column j, the inverse Hessian of
    the columns not yet fixed, G = (H[j:, j:])⁻¹, recomputed; saliency w_j²/G_00; removing w_j
    moves the free columns by −w_j/G_00 · G[0, :]. Masks: per block (whole block, ties by flat
    index) or per group of M (from the updated weights), as the paper."""
    W, H = W.astype(np.float64).copy(), H.astype(np.float64).copy()
    H += 0.01 * np.mean(np.diag(H)) * np.eye(len(H))
    rows, cols = W.shape
    inv = [np.linalg.inv(H[j:, j:]) for j in range(cols)]
    keep = np.ones_like(W, dtype=bool)
    for start in range(0, cols, block):
        end = min(start + block, cols)
        if density is not None:
            sal = np.stack([W[:, j] ** 2 / inv[j][0, 0] for j in range(start, end)], axis=1)  # (rows, B)
            k = keep_count(rows * end, density) - keep_count(rows * start, density)
            order = np.argsort(sal.reshape(-1), kind="stable")
            block_keep = np.ones(sal.size, dtype=bool)
            block_keep[order[: sal.size - k]] = False
            keep[:, start:end] = block_keep.reshape(sal.shape)
        for j in range(start, end):
            if pattern is not None and (j - start) % pattern[1] == 0:
                n, m = pattern
                sal = np.stack([W[:, c] ** 2 / inv[c][0, 0] for c in range(j, j + m)], axis=1)  # (rows, M)
                order = np.argsort(sal, axis=1, kind="stable")
                for r in range(rows):
                    keep[r, j + order[r, : m - n]] = False
            G = inv[j]
            removed = np.where(keep[:, j], 0.0, W[:, j])  # (rows,)
            W[:, j:] -= np.outer(removed / G[0, 0], G[0, :])
    return np.where(keep, W, 0.0), keep


def output_error(W: torch.Tensor, W_hat: torch.Tensor, x: torch.Tensor) -> float:
    return float(((x.double() @ (W.double() - W_hat.double()).T) ** 2).sum())


def row_topk_mask(
    scores: torch.Tensor, density: float | None, pattern: tuple[int, int] | None
) -> torch.Tensor:
    if pattern is not None:
        n, m = pattern
        groups = scores.reshape(scores.shape[0], -1, m)
        mask = torch.zeros_like(groups, dtype=torch.bool)
        mask.scatter_(2, groups.topk(n, dim=2).indices, True)
        return mask.reshape(scores.shape)
    k = keep_count(scores.shape[1], density)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    return mask.scatter_(1, scores.topk(k, dim=1).indices, True)


# 1. agreement with the independent implementation


@pytest.mark.parametrize(
    ("shape", "density", "pattern", "block"),
    [
        ((16, 64), 0.5, None, 16),
        ((16, 64), 0.3, None, 24),
        ((16, 64), None, (2, 4), 16),
        ((16, 64), None, (1, 4), 8),
        ((8, 136), 0.4, None, 128),  # the default block, a partial last block, H⁻¹ by halves
        ((8, 136), None, (2, 4), 128),
    ],
)
def test_matches_float64_obs_reference(
    shape: tuple[int, int], density: float | None, pattern: tuple[int, int] | None, block: int
) -> None:
    W, x = layer(*shape, 4 * shape[1], seed=0)
    H = hessian_of(x)
    result = sparsegpt_solve(W, H, density=density, pattern=pattern, block_size=block, name="fc")
    ref_w, ref_keep = obs_reference(W.numpy(), H.numpy(), block, density, pattern)
    np.testing.assert_array_equal(result.mask.numpy(), ref_keep)
    np.testing.assert_allclose(result.weight.numpy(), ref_w, rtol=1e-4, atol=1e-4)
    assert result.retries == 0 and result.damping == 0.01


def test_error_is_half_the_summed_err_squared_and_estimates_output_error() -> None:
    W, x = layer(8, 32, 512, seed=3)
    result = sparsegpt_solve(W, hessian_of(x), density=0.5, block_size=32, damp=1e-6)
    # with almost no damping, ½·Σ err² = ½·δᵀHδ per row = ‖δX‖²/n
    assert result.error == pytest.approx(output_error(W, result.weight, x) / x.shape[0], rel=1e-3)


@pytest.mark.parametrize("cols", [200, 300, 700])
def test_inverse_factor_is_the_upper_cholesky_factor_of_the_damped_inverse(cols: int) -> None:
    from prunecli.scoring.sparsegpt import _inverse_factor

    H = hessian_of(correlated_inputs(2 * cols, cols, seed=cols)).double()
    H = (H + H.T) / 2  # float32 XᵀX is symmetric only to rounding
    U, damping, retries = _inverse_factor(H, 0.01, "fc")
    damped = H + 0.01 * H.diagonal().mean() * torch.eye(cols, dtype=torch.float64)
    expected = torch.linalg.cholesky(torch.linalg.inv(damped), upper=True)
    assert (damping, retries) == (0.01, 0) and torch.equal(U, U.triu())
    torch.testing.assert_close(U, expected, rtol=1e-9, atol=1e-9)


# 2. reconstruction against Wanda and magnitude


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("density", "pattern"), [(0.5, None), (None, (2, 4))])
def test_reconstructs_better_than_wanda_and_magnitude(
    seed: int, density: float | None, pattern: tuple[int, int] | None
) -> None:
    W, x = layer(32, 128, 512, seed)
    result = sparsegpt_solve(W, hessian_of(x), density=density, pattern=pattern, block_size=32)
    wanda = W * row_topk_mask(W.abs() * x.norm(dim=0), density, pattern)
    magnitude = W * row_topk_mask(W.abs(), density, pattern)
    ours = output_error(W, result.weight, x)
    assert ours < output_error(W, wanda, x)
    assert ours < output_error(W, magnitude, x)


# 3. counts


def test_two_four_keeps_exactly_two_of_every_four() -> None:
    W, x = layer(24, 96, 200, seed=4)
    result = sparsegpt_solve(W, hessian_of(x), pattern=(2, 4), block_size=32)
    per_group = result.mask.reshape(24, 24, 4).sum(-1)
    assert torch.equal(per_group, torch.full_like(per_group, 2))
    assert torch.equal(result.weight != 0, result.mask)


@pytest.mark.parametrize("density", [0.5, 0.3, 0.77, 0.01, 0.0])
def test_unstructured_keeps_round_n_d_exactly_spread_over_blocks(density: float) -> None:
    W, x = layer(9, 70, 200, seed=5)  # 70 columns: blocks of 16, 16, 16, 16, 6
    result = sparsegpt_solve(W, hessian_of(x), density=density, block_size=16)
    assert int(result.mask.sum()) == keep_count(9 * 70, density)
    assert not result.weight[~result.mask].any()
    for start in range(0, 70, 16):
        share = 9 * min(16, 70 - start) * density
        assert abs(int(result.mask[:, start : start + 16].sum()) - share) <= 1


def test_density_one_leaves_the_layer_untouched() -> None:
    W, x = layer(4, 16, 50, seed=6)
    x[:, 3] = 0
    result = sparsegpt_solve(W, hessian_of(x), density=1.0)
    assert torch.equal(result.weight, W) and bool(result.mask.all()) and result.error == 0.0


def test_same_inputs_same_bits() -> None:
    W, x = layer(16, 64, 128, seed=7)
    H = hessian_of(x)
    for kwargs in ({"density": 0.4}, {"pattern": (2, 4)}):
        a, b = sparsegpt_solve(W, H, block_size=16, **kwargs), sparsegpt_solve(W, H, block_size=16, **kwargs)
        assert torch.equal(a.weight, b.weight) and torch.equal(a.mask, b.mask) and a.error == b.error


def test_ties_prune_the_lower_flat_index_first() -> None:
    W = torch.ones(2, 4)  # identical saliencies everywhere (H = I)
    result = sparsegpt_solve(W, torch.eye(4), density=0.5, block_size=4)
    assert result.mask.tolist() == [[False, False, False, False], [True, True, True, True]]
    result = sparsegpt_solve(W, torch.eye(4), pattern=(1, 4), block_size=4)
    assert result.mask.tolist() == [[False, False, False, True], [False, False, False, True]]


# 4. dead inputs


def test_dead_inputs_are_zeroed_and_pruned_first() -> None:
    W, x = layer(8, 32, 128, seed=8)
    x[:, [5, 17]] = 0
    H = hessian_of(x)
    result = sparsegpt_solve(W, H, density=0.5, block_size=16)
    assert torch.isfinite(result.weight).all()
    assert not result.mask[:, [5, 17]].any() and not result.weight[:, [5, 17]].any()
    assert int(result.mask.sum()) == keep_count(8 * 32, 0.5)
    assert H.diagonal()[5] == 0  # the caller's Hessian is not edited

    two_four = sparsegpt_solve(W, H, pattern=(2, 4), block_size=16)
    assert torch.equal(two_four.mask.reshape(8, 8, 4).sum(-1), torch.full((8, 8), 2))
    assert not two_four.mask[:, [5, 17]].any()


def test_a_group_with_more_dead_inputs_than_it_prunes_keeps_fewer() -> None:
    W, x = layer(4, 8, 64, seed=9)
    x[:, 0:3] = 0  # three of the first group's four inputs are dead
    result = sparsegpt_solve(W, hessian_of(x), pattern=(2, 4), block_size=8)
    assert result.mask[:, :4].tolist() == [[False, False, False, True]] * 4
    assert torch.equal(result.mask[:, 4:].sum(1), torch.full((4,), 2))


# 5. Cholesky failures


def test_indefinite_hessian_is_retried_with_more_damping() -> None:
    W, x = layer(8, 32, 16, seed=10)  # 16 tokens, 32 inputs: H is singular
    G = hessian_of(x)
    H = G - 0.03 * G.diagonal().mean() * torch.eye(32)  # smallest eigenvalue -0.03·mean: fails at 0.01
    result = sparsegpt_solve(W, H, density=0.5, block_size=16)
    assert result.retries == 1 and result.damping == pytest.approx(0.1)
    assert torch.isfinite(result.weight).all()


def test_hopeless_hessian_names_the_layer() -> None:
    H = torch.diag(torch.tensor([1.0, 1.0, 1.0, -100.0]))  # mean(diag) < 0: damping cannot help
    with pytest.raises(ScoreError) as info:
        sparsegpt_solve(torch.ones(2, 4), H, density=0.5, name="model.layers.3.mlp.up_proj")
    assert info.value.exit_code == 3
    assert info.value.one_line() == (
        "the Hessian of layer 'model.layers.3.mlp.up_proj' is not positive definite even with "
        "damping 10·mean(diag H). use more (or more varied) calibration tokens, or a larger `damp`."
    )


def test_nan_hessian_is_refused() -> None:
    H = torch.eye(4)
    H[1, 2] = float("nan")
    with pytest.raises(ScoreError, match="Hessian of layer 'fc2' holds NaN or Inf"):
        sparsegpt_solve(torch.ones(2, 4), H, density=0.5, name="fc2")


# 6. NaN/Inf activations


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_activations_name_the_layer(bad: float) -> None:
    acc = HessianAccumulator(4, torch.device("cpu"), name="blocks.0.fc1")
    acc.add(torch.ones(3, 4))
    x = torch.ones(2, 5, 4, dtype=torch.bfloat16)
    x[1, 2, 3] = bad
    with pytest.raises(ScoreError) as info:
        acc.add(x)
    assert info.value.exit_code == 3
    assert info.value.one_line() == (
        "NaN or infinite activations reach layer 'blocks.0.fc1'. "
        "check the checkpoint and the calibration data, or compute in float32."
    )


def test_accumulator_is_the_running_mean_over_tokens() -> None:
    x = correlated_inputs(70, 12, seed=11)
    acc = HessianAccumulator(12, "cpu", name="fc")
    for part in (x[:10].reshape(2, 5, 12), x[10:11], x[11:11], x[11:].to(torch.float64)):
        acc.add(part)
    assert acc.tokens == 70 and acc.hessian.dtype == torch.float32
    torch.testing.assert_close(acc.hessian.double(), 2 / 70 * x.double().T @ x.double(), rtol=1e-5, atol=1e-5)


def test_a_layer_that_never_ran_has_no_hessian() -> None:
    with pytest.raises(ScoreError, match="layer 'fc' saw no calibration tokens"):
        _ = HessianAccumulator(4, "cpu", name="fc").hessian


# 7. transposed storage and 8. dtypes


def test_transposed_equals_solving_the_transpose() -> None:
    W, x = layer(12, 32, 100, seed=12)
    H = hessian_of(x)
    for kwargs in ({"density": 0.5}, {"pattern": (2, 4)}):
        stored = sparsegpt_solve(W.T.contiguous(), H, transposed=True, block_size=16, **kwargs)
        plain = sparsegpt_solve(W, H, block_size=16, **kwargs)
        assert stored.weight.shape == (32, 12)
        assert torch.equal(stored.weight, plain.weight.T) and torch.equal(stored.mask, plain.mask.T)


def test_bf16_in_bf16_out_computed_in_float32() -> None:
    W, x = layer(16, 32, 100, seed=13)
    W = W.to(torch.bfloat16)
    H = hessian_of(x)
    result = sparsegpt_solve(W, H, density=0.5, block_size=16)
    reference = sparsegpt_solve(W.float(), H, density=0.5, block_size=16)
    assert result.weight.dtype == torch.bfloat16 and result.mask.dtype == torch.bool
    assert torch.equal(result.weight, reference.weight.to(torch.bfloat16))
    assert torch.equal(result.mask, reference.mask) and not result.weight[~result.mask].any()


def test_conv_weight_is_solved_flattened() -> None:
    g = torch.Generator().manual_seed(14)
    W = torch.randn(4, 2, 2, 2, generator=g)  # (out, in, kh, kw) -> (4, 8)
    H = hessian_of(correlated_inputs(40, 8, seed=14))
    result = sparsegpt_solve(W, H, pattern=(2, 4), block_size=8)
    flat = sparsegpt_solve(W.reshape(4, 8), H, pattern=(2, 4), block_size=8)
    assert result.weight.shape == W.shape and torch.equal(result.weight.reshape(4, 8), flat.weight)


# arguments


def test_bad_arguments_say_what_to_change() -> None:
    W, H = torch.ones(2, 6), torch.eye(6)
    with pytest.raises(UsageError, match="give exactly one of `density` and `pattern`"):
        sparsegpt_solve(W, H, density=0.5, pattern=(2, 4))
    with pytest.raises(UsageError) as info:
        sparsegpt_solve(W, H, pattern=(2, 4), name="fc")
    assert info.value.one_line() == (
        "`pattern` 2:4 needs the input dimension of layer 'fc' (6) and `block_size` (128) to be "
        "multiples of 4. exclude 'fc' or pick a block size that 4 divides."
    )
    with pytest.raises(
        UsageError, match="the Hessian of layer 'fc' is \\(4, 4\\); its weight needs \\(6, 6\\)"
    ):
        sparsegpt_solve(W, torch.eye(4), density=0.5, name="fc")
    with pytest.raises(UsageError, match=r"`density` 1\.5 is outside"):
        sparsegpt_solve(W, H, density=1.5)


def test_symmetrize_in_place_is_bit_for_bit_the_mean_with_the_transpose() -> None:
    from prunecli.scoring.sparsegpt import _symmetrize

    H = torch.randn(700, 700, generator=torch.Generator().manual_seed(3))
    expected = (H + H.t()) / 2
    _symmetrize(H, rows=128)  # bands that do not divide the size
    assert torch.equal(H, expected)


def test_consuming_the_hessian_gives_the_same_solve() -> None:

    generator = torch.Generator().manual_seed(4)
    weight = torch.randn(24, 40, generator=generator)
    acc = HessianAccumulator(40, "cpu")
    acc.add(torch.randn(64, 40, generator=generator))
    kept = acc.hessian.clone()
    plain = sparsegpt_solve(weight, acc.hessian, density=0.5, block_size=16)
    assert torch.equal(acc.hessian, kept)  # not consumed: untouched
    consumed = sparsegpt_solve(weight, acc.hessian, density=0.5, block_size=16, consume=True)
    assert torch.equal(consumed.weight, plain.weight) and torch.equal(consumed.mask, plain.mask)
