"""Signal propagation (methods.md §11, §12): Jacobian singular values, the path check, and
approximate isometry, on the spec's vectors and on LeNet-300-100 with real MNIST (the digits that
ship with prunecli: conftest's `mnist_train`)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from prunecli.analysis.signal import (
    jacobian_singular_value_array,
    jacobian_singular_values,
    path_check,
    signal_report,
)
from prunecli.apply.isometry import approximate_isometry, isometry_gradient, isometry_penalty
from prunecli.errors import InputError, UsageError

# methods.md §0: the reference toy network N0, PyTorch layout [out, in]
W1 = [[0.5, -1, 0.25], [1, 0.5, -0.5]]
W2 = [[1, -0.5], [-1.5, 2]]
X = [[2, -0.5, 0.5], [0.5, -1, -1], [2, 2, 0.5]]

# methods.md §12: isometry vectors
W = [[1, 0.5, 0], [0.2, 2, -1]]
C = [[1, 1, 0], [0, 1, 1]]


def n0(relu: bool = True, dtype: torch.dtype = torch.float64) -> nn.Sequential:
    layers = [nn.Linear(3, 2, bias=False), nn.ReLU(), nn.Linear(2, 2, bias=False)]
    model = nn.Sequential(*(layers if relu else [layers[0], layers[2]])).to(dtype)
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor(W1))
        model[-1].weight.copy_(torch.tensor(W2))
    return model


def t64(values: list) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# ------------------------------------------------------------------------------------ Jacobian


def test_jsv_of_linear_n0() -> None:
    # J = W2·W1 = [[0, -1.25, 0.5], [1.25, 2.5, -1.375]] for every input
    sv = jacobian_singular_value_array(n0(relu=False), t64(X))
    assert sv.shape == (3, 2)
    torch.testing.assert_close(sv, t64([[3.353240, 0.520967]] * 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(jacobian_singular_value_array(n0(relu=False), np.array(X)), sv)  # numpy in
    summary = jacobian_singular_values(n0(relu=False), t64(X))
    assert (summary["examples"], summary["count"]) == (3, 6)
    assert summary["max"] == pytest.approx(3.353240, abs=1e-6)
    assert summary["min"] == pytest.approx(0.520967, abs=1e-6)
    assert summary["mean"] == pytest.approx((3.353240 + 0.520967) / 2, abs=1e-6)
    assert summary["std"] == pytest.approx((3.353240 - 0.520967) / 2, abs=1e-6)  # population std


def test_jsv_masks_act_like_zeroed_weights_and_leave_the_model_alone() -> None:
    model = n0().train()
    before = {n: p.clone() for n, p in model.named_parameters()}
    masks = {"0.weight": np.array(C, dtype=bool), "2.weight": t64([[1, 0], [1, 1]])}
    masked = jacobian_singular_value_array(
        model, [(t64(X[:2]), None), (t64(X[2:]), torch.tensor([0]))], masks
    )
    zeroed = n0()
    with torch.no_grad():
        zeroed[0].weight.mul_(t64(C))
        zeroed[2].weight[0, 1] = 0
    torch.testing.assert_close(masked, jacobian_singular_value_array(zeroed, t64(X), chunk_size=1))
    assert model.training and all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_bad_masks_are_input_errors() -> None:
    with pytest.raises(InputError, match="matches no parameter"):
        jacobian_singular_values(n0(), t64(X), {"fc9.weight": np.ones((2, 3))})
    with pytest.raises(InputError, match=r"has shape \[3, 2\], but the parameter has shape \[2, 3\]"):
        path_check(n0(), None, {"0.weight": np.ones((3, 2))}, (3,))
    with pytest.raises(InputError, match=r"no mask for '2\.weight'"):
        path_check(n0(), ["0.weight", "2.weight"], {"0.weight": np.ones((2, 3))}, (3,))


# ---------------------------------------------------------------------------------- path check


def test_path_check_n0_and_collapse() -> None:
    ones = {"0.weight": np.ones((2, 3)), "2.weight": np.ones((2, 2))}
    assert path_check(n0(), ["0.weight", "2.weight"], ones, (3,)) == pytest.approx(9.375, abs=1e-12)
    assert path_check(n0(), ["0.weight"], None, (3,)) == pytest.approx(9.375, abs=1e-12)  # no masks
    assert path_check(n0(dtype=torch.float32), None, ones, (3,)) == pytest.approx(9.375, abs=1e-12)
    collapsed = {"0.weight": np.zeros((2, 3)), "2.weight": np.ones((2, 2))}
    assert path_check(n0(), None, collapsed, (3,)) == 0.0
    # §11: GraSP's T = 1 mask wipes out W1 row 1 only, a partial collapse: some path survives
    partial = {"0.weight": np.array([[1, 1, 1], [0, 0, 0]]), "2.weight": np.ones((2, 2))}
    assert path_check(n0(), None, partial, (3,)) == pytest.approx(1.75 * 2.5)  # Σ|W1 row 0| · Σ|W2 col 0|
    report = signal_report(n0(), collapsed, (3,), t64(X))
    assert report["synflow_r"] == 0.0 and not report["connected"] and report["jacobian"]["max"] == 0.0
    assert signal_report(n0(), None, (3,))["jacobian"] is None


def test_path_check_does_not_touch_the_model() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert path_check(model, None, None, (3,)) > 0
    assert model.training and all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


# -------------------------------------------------------------------------- approximate isometry


def test_isometry_penalty_gradient_and_one_step() -> None:
    assert isometry_penalty(t64(W), t64(C)) == pytest.approx(4.25, abs=1e-12)
    grad, penalty = isometry_gradient(t64(W), t64(C))
    assert penalty == pytest.approx(4.25, abs=1e-12)
    torch.testing.assert_close(grad, t64([[0.117647, 1, 0], [0, 4, -1.882353]]), atol=1e-6, rtol=0)
    weights = {"w": t64(W)}
    new, report = approximate_isometry(weights, {"w": np.array(C, dtype=bool)}, steps=1, lr=0.1)
    torch.testing.assert_close(new["w"], t64([[0.988235, 0.4, 0], [0, 1.6, -0.811765]]), atol=1e-6, rtol=0)
    assert torch.equal(weights["w"], t64(W))  # the input is not changed
    nan_pruned = t64(W)
    nan_pruned[0, 2] = float("nan")  # whatever a pruned entry holds, it does not matter
    again, _ = approximate_isometry({"w": nan_pruned}, {"w": np.array(C, dtype=bool)}, steps=1, lr=0.1)
    assert torch.equal(again["w"], new["w"])
    assert report["penalty_before"] == pytest.approx(4.25) and report["steps"] == 1 and report["lr"] == 0.1


def numpy_isometry_sgd(w: np.ndarray, c: np.ndarray, steps: int, lr: float = 0.1) -> np.ndarray:
    """An independent implementation: the closed-form gradient 2·C⊙(AM)/‖A‖_F, A = MMᵀ − I."""
    w = w * c
    for _ in range(steps):
        m = w * c
        a = m @ m.T - np.eye(len(m))
        w = w - lr * (2 * (a @ m) / np.sqrt((a * a).sum())) * c
    return w


def test_isometry_matches_an_independent_implementation() -> None:
    # Up to ~300 steps rounding differences stay below 1e-7; by 1,000 they are of order 0.1 (see below).
    new, _ = approximate_isometry({"w": t64(W)}, {"w": t64(C)}, steps=100)
    np.testing.assert_allclose(new["w"].numpy(), numpy_isometry_sgd(np.array(W), np.array(C), 100), atol=1e-8)


def test_isometry_ten_thousand_steps_hover_near_isometry() -> None:
    # Fixed-step SGD on an unsquared norm does not converge: near the optimum every step has
    # length ~2·lr however small the penalty, so the row norms keep jumping around 1, and
    # where they are after 10,000 steps depends on every rounding (another CPU or torch build
    # lands elsewhere). What holds on every platform:
    new, report = approximate_isometry({"w": t64(W)}, {"w": t64(C)}, steps=10_000)
    w = new["w"]
    assert (w[t64(C) == 0] == 0).all() and not torch.signbit(w[t64(C) == 0]).any()  # pruned: exactly +0
    assert abs(float(w[0, 1])) < 1e-12  # the rows became orthogonal
    row = w[1, 1:] / w[1, 1:].norm()  # row 1 only ever rescales once orthogonal
    torch.testing.assert_close(row, t64([0.868081, -0.493397]) / 0.998501, atol=1e-5, rtol=0)
    (layer,) = report["layers"]
    assert report["penalty_before"] == 4.25 and report["penalty_after"] < 0.5
    # masked W: MMᵀ = [[1.25, 1], [1, 5]] has eigenvalues 5.25 and 1
    assert layer["singular_values_before"]["max"] == pytest.approx(math.sqrt(5.25))
    assert layer["singular_values_before"]["min"] == pytest.approx(1.0)
    assert 0.7 < layer["singular_values_after"]["min"] <= layer["singular_values_after"]["max"] < 1.25


@pytest.mark.xfail(
    strict=False, reason="the point reached after 10,000 steps depends on rounding (see above)"
)
def test_isometry_ten_thousand_steps_spec_vector() -> None:
    # The §12 vector: reproduced with torch 2.13 on x86-64 CPUs here (stepping as torch.optim.SGD
    # does, on the autograd gradient of torch.linalg.norm, float64); torch 2.11 elsewhere lands
    # at W[0, 0] = 0.8418 instead. Informative only: it cannot fail the suite.
    new, report = approximate_isometry({"w": t64(W)}, {"w": t64(C)}, steps=10_000)
    torch.testing.assert_close(new["w"], t64([[0.992535, 0, 0], [0, 0.868081, -0.493397]]), atol=1e-5, rtol=0)
    (layer,) = report["layers"]
    assert report["penalty_after"] == pytest.approx(0.015173, abs=1e-5)
    assert layer["singular_values_after"]["max"] == pytest.approx(0.998501, abs=1e-5)
    assert layer["singular_values_after"]["min"] == pytest.approx(0.992535, abs=1e-5)


def test_isometry_conv_float32_dense_and_already_orthogonal() -> None:
    gen = torch.Generator().manual_seed(0)
    conv = torch.randn(4, 2, 3, 3, generator=gen)  # float32, (out, in, kh, kw)
    mask = torch.rand(4, 2, 3, 3, generator=gen) < 0.5
    eye = torch.eye(5, dtype=torch.float64)
    calls = []

    class Progress:
        def stage(self, description: str, total: int) -> None:
            calls.append((description, total))

        def advance(self) -> None:
            calls[-1] = (calls[-1][0], calls[-1][1] - 1)

    new, report = approximate_isometry(
        {"conv.weight": conv, "fc.weight": eye}, {"conv.weight": mask}, steps=200, progress=Progress()
    )
    assert new["conv.weight"].dtype == torch.float32 and new["conv.weight"].shape == conv.shape
    assert (new["conv.weight"][~mask] == 0).all() and (new["conv.weight"][mask] != 0).all()
    layers = {r["name"]: r for r in report["layers"]}
    assert layers["conv.weight"]["penalty_after"] < 0.2 * layers["conv.weight"]["penalty_before"]
    # penalty exactly 0: the gradient is 0, not NaN, and no step moves the weight. (A merely
    # near-orthogonal W does move: the unsquared norm's gradient has length ~2 however small A is.)
    assert layers["fc.weight"]["penalty_before"] == layers["fc.weight"]["penalty_after"] == 0.0
    assert torch.equal(new["fc.weight"], eye)
    assert calls == [("isometry: conv.weight", 0), ("isometry: fc.weight", 0)]
    same, report0 = approximate_isometry({"w": t64(W)}, {"w": t64(C)}, steps=0)
    torch.testing.assert_close(same["w"], t64(W) * t64(C))
    assert report0["penalty_before"] == report0["penalty_after"] == pytest.approx(4.25)


def test_isometry_refuses_bad_input() -> None:
    with pytest.raises(InputError, match="1-D"):
        approximate_isometry({"fc.bias": torch.ones(3)}, {}, steps=1)
    with pytest.raises(InputError, match="has no weight"):
        approximate_isometry({"w": t64(W)}, {"v": t64(C)}, steps=1)
    with pytest.raises(InputError, match=r"has shape \[3, 2\]"):
        approximate_isometry({"w": t64(W)}, {"w": np.ones((3, 2))}, steps=1)
    with pytest.raises(UsageError):
        approximate_isometry({"w": t64(W)}, {}, steps=-1)
    with pytest.raises(UsageError):
        approximate_isometry({"w": t64(W)}, {}, steps=1, lr=0.0)


# ----------------------------------------------------------------- with masks from an apply run


def test_masks_from_an_apply_folder(cli, mlp_ckpt: Path, tmp_path: Path) -> None:
    from prunecli.models.lenet import MLP

    assert cli("apply", mlp_ckpt, "-m", "magnitude", "-s", "0.5", "-o", tmp_path / "o").code == 0
    model = MLP(in_features=12, hidden=16, num_classes=4)
    inputs = torch.randn(6, 12, generator=torch.Generator().manual_seed(0))
    summary = jacobian_singular_values(model, inputs, tmp_path / "o")
    assert summary["examples"] == 6 and summary["count"] == 24
    assert path_check(model, None, tmp_path / "o" / "manifest.json", (12,)) > 0


# ------------------------------------------------------------------ the paper's finding on MNIST


def test_random_pruning_hurts_signal_more_than_snip_on_mnist(mnist_train: Path) -> None:
    """Lee et al. 2020, Fig. 1: at 99% sparsity the Jacobian singular values of a randomly pruned
    LeNet-300-100 drop far below SNIP's. Measured here (seed 0, 32 held-out examples): dense mean
    ≈ 1.34, SNIP ≈ 0.11, random ≈ 0.003; seeds 1-3 give the same order with similar margins."""
    from prunecli.models import resolve_model
    from prunecli.models.init import initialize
    from prunecli.scoring.functional import global_topk
    from prunecli.scoring.snip import snip_scores

    data = np.load(mnist_train)  # the first 132 official training digits
    images = torch.from_numpy(data["images"][:132].astype(np.float32) / 255).unsqueeze(1)  # (132, 1, 28, 28)
    labels = torch.from_numpy(data["labels"][:132].astype(np.int64))
    model = initialize(resolve_model("lenet-300-100"), "kaiming-normal", seed=0)
    names = ["fc1.weight", "fc2.weight", "fc3.weight"]
    snip = global_topk(snip_scores(model, names, [(images[:100], labels[:100])]), 0.01)
    gen = torch.Generator().manual_seed(0)
    params = dict(model.named_parameters())
    random = global_topk({n: torch.rand(params[n].shape, generator=gen) for n in names}, 0.01)
    assert sum(int(m.sum()) for m in snip.values()) == sum(int(m.sum()) for m in random.values()) == 2662

    probe = images[100:]  # 32 examples SNIP did not see
    dense = jacobian_singular_values(model, probe)["mean"]
    snip_mean = jacobian_singular_values(model, probe, snip)["mean"]
    random_mean = jacobian_singular_values(model, probe, random)["mean"]
    assert dense > snip_mean > 10 * random_mean  # measured: 1.34 > 0.11 > 10 × 0.003
    assert path_check(model, names, snip, (1, 28, 28)) > path_check(model, names, random, (1, 28, 28)) > 0
