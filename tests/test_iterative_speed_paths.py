"""The iterative methods' fast loops (issue 17) give the plain loops' masks and scores, bit for bit.

Each reference below is the loop as it was before: fresh θ⊙m leaves, every weight scored as a
new tensor, every weight ranked with `keep_top` (a radix select). The fast loops keep θ, θ⊙m,
the scores and the mask in flat buffers (`MaskedLeaves`), select on the scores' bits with a
sampled band (`keep_largest`), rank pruned weights at 0 and re-rank with −1 only where that
could matter, and differentiate no tensor pruned away entirely; none of that may change a
mask or a score.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from prunecli.calibration.context import schedule_densities
from prunecli.progress import NoProgress
from prunecli.scoring import iterative, topk
from prunecli.scoring.force import iterative_snip_scores
from prunecli.scoring.functional import keep_top, loss_and_gradient, mean_gradient, step_counts
from prunecli.scoring.iterative import MaskedLeaves
from prunecli.scoring.snip_it import snip_it_schedule, snip_it_scores, snip_it_steps
from prunecli.scoring.synflow import synflow_scores
from prunecli.scoring.topk import bit_keys, keep_largest, topk_masks

Scores = dict[str, torch.Tensor]


def reference_synflow(
    model: nn.Module, names: list[str], shape: tuple[int, ...], density: float, iterations: int,
    schedule: str = "exp",
) -> tuple[Scores, Scores]:  # fmt: skip
    positive = copy.deepcopy(model)
    with torch.no_grad():
        for tensor in positive.state_dict().values():
            if tensor.is_floating_point():
                tensor.abs_()
    params = dict(positive.named_parameters())
    theta = {n: params[n].detach().clone().requires_grad_(True) for n in names}
    masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in theta.items()}
    ones = torch.ones((1, *shape), dtype=theta[names[0]].dtype)
    total = sum(w.numel() for w in theta.values())
    for keep in step_counts(total, schedule_densities(density, iterations, schedule), "synflow"):
        masked = {n: w * masks[n] for n, w in theta.items()}
        flow = functional_call(positive, masked, (ones,), strict=False).sum()
        grads = torch.autograd.grad(flow, list(theta.values()))
        scores = {n: (g * w.detach()).abs() for (n, w), g in zip(theta.items(), grads, strict=True)}
        masks = keep_top(scores, keep)
    return scores, masks


def reference_iterative_snip(
    model: nn.Module, names: list[str], batches: list, density: float, iterations: int, revive: bool,
    schedule: str = "exp",
) -> tuple[Scores, Scores]:  # fmt: skip
    params = dict(model.named_parameters())
    theta0 = {n: params[n].detach().clone() for n in names}
    masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in theta0.items()}
    total = sum(w.numel() for w in theta0.values())
    for keep in step_counts(total, schedule_densities(density, iterations, schedule), "force"):
        current = {n: (w * masks[n]).requires_grad_(True) for n, w in theta0.items()}
        grads = mean_gradient(model, current, batches, "ce", NoProgress())
        if revive:
            scores = {n: (theta0[n] * grads[n]).abs() for n in names}
        else:
            scores = {n: torch.where(masks[n], (current[n].detach() * grads[n]).abs(), -1.0) for n in names}
        masks = keep_top(scores, keep)
    return scores, masks


def reference_snip_it(model: nn.Module, names: list[str], batches: list, density: float, steps: int) -> list:
    params = dict(model.named_parameters())
    theta0 = {n: params[n].detach().clone() for n in names}
    masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in theta0.items()}
    schedule = snip_it_schedule(1.0 - density, steps)
    total = sum(w.numel() for w in theta0.values())
    out = []
    for sparsity, keep in zip(
        schedule, step_counts(total, [1.0 - s for s in schedule], "force"), strict=True
    ):
        current = {n: (w * masks[n]).requires_grad_(True) for n, w in theta0.items()}
        value, grads = loss_and_gradient(model, current, batches, "ce", NoProgress())
        scale = 1.0 / abs(value) if value != 0 else 1.0
        scores = {
            n: torch.where(masks[n], (current[n].detach() * grads[n]).abs() * scale, -1.0) for n in names
        }
        masks = {n: kept & masks[n] for n, kept in keep_top(scores, keep).items()}
        out.append((sparsity, scores, masks))
    return out


def same(a: Scores, b: Scores) -> bool:
    """Equal names, dtypes and values (NaN equal to NaN; -0.0 and +0.0 told apart)."""
    return list(a) == list(b) and all(
        a[n].dtype == b[n].dtype and torch.equal(bit_keys(a[n].contiguous()), bit_keys(b[n].contiguous()))
        if a[n].is_floating_point()
        else torch.equal(a[n], b[n])
        for n in a
    )


def weight_names(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1]


def zoo(arch: str, dtype: torch.dtype = torch.float64) -> nn.Module:
    from prunecli.models import resolve_model
    from prunecli.models.init import initialize

    return initialize(resolve_model(arch), "kaiming-normal", 0).eval().requires_grad_(False).to(dtype)


@pytest.fixture
def sampled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bound the k-th largest from a sample at any size (as for 2^16 keys and more)."""
    monkeypatch.setattr(topk, "SAMPLE_FROM", 64)


@pytest.fixture
def torch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Select and mask with torch, as on CUDA, on the CPU."""
    monkeypatch.setattr(topk, "on_numpy", lambda tensor: False)
    monkeypatch.setattr(iterative, "on_numpy", lambda tensor: False)


class GradCalls:
    """Records how many tensors each `torch.autograd.grad` call differentiates."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sizes: list[int] = []
        grad = torch.autograd.grad

        def counting(outputs: torch.Tensor, inputs: list, **kwargs: object) -> tuple:
            self.sizes.append(len(inputs))
            return grad(outputs, inputs, **kwargs)

        monkeypatch.setattr(torch.autograd, "grad", counting)


# SynFlow


@pytest.mark.usefixtures("sampled")
@pytest.mark.parametrize(
    ("arch", "density", "iterations", "dtype"),
    [("lenet-300-100", 0.01, 20, torch.float64), ("lenet-5", 0.02, 8, torch.float32),
     ("resnet20", 0.02, 4, torch.float64)],
)  # fmt: skip
def test_synflow_matches_the_plain_loop(
    arch: str, density: float, iterations: int, dtype: torch.dtype
) -> None:
    from prunecli.models import default_input_shape

    model = zoo(arch, dtype)
    names, shape = weight_names(model), default_input_shape(arch)
    got = synflow_scores(model, names, shape, density, iterations)
    assert all(map(same, got, reference_synflow(model, names, shape, density, iterations)))


def dead_path_mlp() -> tuple[nn.Module, list[str]]:
    """A bias-free MLP whose hidden units 0 and 1 lead nowhere: 20 of its 80 weights score 0."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 8, bias=False), nn.ReLU(), nn.Linear(8, 4, bias=False)).double()
    with torch.no_grad():
        model[2].weight[:, :2] = 0.0
    return model, ["0.weight", "2.weight"]


@pytest.mark.parametrize(("density", "iterations", "schedule"), [(0.95, 1, "exp"), (0.5, 10, "linear")])
def test_synflow_ties_with_the_pruned_at_zero(density: float, iterations: int, schedule: str) -> None:
    """Alive weights scoring 0 tie with the pruned ones; the flat index decides, as before."""
    model, names = dead_path_mlp()
    got = synflow_scores(model, names, (6,), density, iterations, schedule)
    assert all(map(same, got, reference_synflow(model, names, (6,), density, iterations, schedule)))


def test_synflow_with_tied_scores_across_tensors() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 7), nn.ReLU(), nn.Linear(7, 3)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randint(-2, 3, p.shape) / 2)  # many equal scores: ties break by flat index
    names = ["0.weight", "2.weight", "4.weight"]
    for iterations in (1, 3, 9):
        got = synflow_scores(model, names, (5,), 0.2, iterations)
        assert all(map(same, got, reference_synflow(model, names, (5,), 0.2, iterations)))


def test_synflow_on_a_100_layer_mlp() -> None:
    torch.manual_seed(1)
    layers: list[nn.Module] = [nn.Linear(16, 24, bias=False)]
    for _ in range(98):
        layers += [nn.ReLU(), nn.Linear(24, 24, bias=False)]
    layers += [nn.ReLU(), nn.Linear(24, 10, bias=False)]
    model = nn.Sequential(*layers).double()
    names = weight_names(model)
    scores, masks = synflow_scores(model, names, (16,), 0.05, 10)
    assert all(map(same, (scores, masks), reference_synflow(model, names, (16,), 0.05, 10)))
    assert sum(int(m.sum()) for m in masks.values()) == round(0.05 * sum(m.numel() for m in masks.values()))


class TwoPaths(nn.Module):
    """Two parallel layers, the second damped by 1e-6: its weights are pruned first."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(20, 10), nn.Linear(20, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) + 1e-6 * self.b(x)


def test_tensors_pruned_away_get_no_gradient(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(5)
    model, names = TwoPaths().double(), ["a.weight", "b.weight"]
    batches = [(torch.randn(16, 20, dtype=torch.float64), torch.randint(0, 10, (16,)))]
    calls = GradCalls(monkeypatch)
    got = iterative_snip_scores(model, names, batches, 0.3, 3, revive=False)
    assert calls.sizes == [2, 2, 1] and not got[1]["b.weight"].any()  # b is gone after step 2
    assert all(map(same, got, reference_iterative_snip(model, names, batches, 0.3, 3, False)))
    calls.sizes.clear()
    got = synflow_scores(model, names, (20,), 0.3, 3)
    assert calls.sizes == [2, 2, 1] and not got[1]["b.weight"].any()
    assert all(map(same, got, reference_synflow(model, names, (20,), 0.3, 3)))
    calls.sizes.clear()
    iterative_snip_scores(model, names, batches, 0.3, 3, revive=True)  # FORCE may revive b
    assert calls.sizes == [2, 2, 2]


def test_bfloat16_synflow_matches_the_plain_loop() -> None:
    torch.manual_seed(8)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 5)).to(torch.bfloat16)
    names = ["0.weight", "2.weight"]
    got = synflow_scores(model, names, (12,), 0.1, 5)
    assert all(map(same, got, reference_synflow(model, names, (12,), 0.1, 5)))


class Mixed(nn.Module):
    """A bfloat16 layer feeding a float32 one: scores rank in float32, as with `topk_masks`."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 16).to(torch.bfloat16), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x.to(torch.bfloat16))).float())


def test_mixed_precision_matches_the_plain_loop() -> None:
    torch.manual_seed(9)
    model, names = Mixed(), ["a.weight", "b.weight"]
    batches = [(torch.randn(10, 8), torch.randint(0, 4, (10,)))]
    runs = [
        (synflow_scores(model, names, (8,), 0.2, 4), reference_synflow(model, names, (8,), 0.2, 4)),
        *[
            (
                iterative_snip_scores(model, names, batches, 0.2, 4, revive=revive),
                reference_iterative_snip(model, names, batches, 0.2, 4, revive),
            )
            for revive in (True, False)
        ],
    ]
    for (scores, masks), (ref_scores, ref_masks) in runs:
        assert same(masks, ref_masks)
        assert all(torch.equal(scores[n], ref_scores[n].float()) for n in names)
        assert scores["a.weight"].dtype == torch.float32  # the widest of the two


# FORCE and Iter-SNIP


def small_cnn(dtype: torch.dtype = torch.float32) -> tuple[nn.Module, list[str], list]:
    torch.manual_seed(6)
    model = nn.Sequential(
        nn.Conv2d(1, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 10),
    ).to(dtype).train()  # fmt: skip
    g = torch.Generator().manual_seed(7)
    x = torch.randn(24, 1, 10, 10, generator=g, dtype=dtype)
    y = torch.randint(0, 10, (24,), generator=g)
    return model, ["0.weight", "3.weight", "8.weight"], [(x[:12], y[:12]), (x[12:], y[12:])]


@pytest.mark.usefixtures("sampled")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("revive", [True, False])
def test_force_and_iter_snip_match_the_plain_loop(dtype: torch.dtype, revive: bool) -> None:
    model, names, batches = small_cnn(dtype)
    for density, iterations in [(0.03, 6), (0.5, 3)]:
        got = iterative_snip_scores(model, names, batches, density, iterations, revive=revive)
        assert all(
            map(same, got, reference_iterative_snip(model, names, batches, density, iterations, revive))
        )


def test_iter_snip_keeping_more_than_alive_revives_as_the_plain_loop() -> None:
    """The last step keeps round(N·d), one more than the step before's ⌊N·d_t⌋: the plain loop
    keeps the highest-indexed pruned weight (a tie at −1); so must the fast one."""
    counts = step_counts(4, schedule_densities(0.375, 40, "linear"), "force")
    assert counts[-1] > counts[-2]
    torch.manual_seed(4)
    model, names = nn.Sequential(nn.Linear(2, 2, bias=False)).double(), ["0.weight"]
    batches = [(torch.randn(6, 2, dtype=torch.float64), torch.tensor([0, 1, 0, 1, 1, 0]))]
    for revive in (False, True):
        got = iterative_snip_scores(model, names, batches, 0.375, 40, revive=revive, schedule="linear")
        assert all(
            map(same, got, reference_iterative_snip(model, names, batches, 0.375, 40, revive, "linear"))
        )


def test_snip_it_keeping_more_than_alive_keeps_the_alive_only() -> None:
    """As above, but SNIP-it ANDs the top k with the old mask: nothing comes back."""
    schedule = snip_it_schedule(0.625, 40)
    counts = step_counts(4, [1.0 - s for s in schedule], "force")
    assert counts[-1] > counts[-2]
    torch.manual_seed(4)
    model, names = nn.Sequential(nn.Linear(2, 2, bias=False)).double().eval(), ["0.weight"]
    batches = [(torch.randn(6, 2, dtype=torch.float64), torch.tensor([0, 1, 0, 1, 1, 0]))]
    reference = reference_snip_it(model, names, batches, 0.375, 40)
    assert all(map(same, snip_it_scores(model, names, batches, 0.375, 40), reference[-1][1:]))
    assert int(reference[-1][2]["0.weight"].sum()) == counts[-2]


# SNIP-it


@pytest.mark.usefixtures("sampled")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_snip_it_matches_the_plain_loop(dtype: torch.dtype) -> None:
    model, names, batches = small_cnn(dtype)
    model.eval()
    reference = reference_snip_it(model, names, batches, 0.02, 5)
    steps = list(snip_it_steps(model, names, batches, 0.02, 5))
    assert len(steps) == len(reference)
    for (s, scores, masks), (ref_s, ref_scores, ref_masks) in zip(steps, reference, strict=True):
        assert s == ref_s and same(masks, ref_masks) and same(scores, ref_scores)
    assert all(map(same, snip_it_scores(model, names, batches, 0.02, 5), reference[-1][1:]))


# the torch path (CUDA's), run on the CPU


@pytest.mark.usefixtures("torch_path")
def test_the_torch_path_matches_the_plain_loops() -> None:
    model, names = dead_path_mlp()
    for density, iterations, schedule in [(0.95, 1, "exp"), (0.5, 10, "linear"), (0.1, 6, "exp")]:
        got = synflow_scores(model, names, (6,), density, iterations, schedule)
        assert all(map(same, got, reference_synflow(model, names, (6,), density, iterations, schedule)))
    model, names, batches = small_cnn()
    for revive in (True, False):
        got = iterative_snip_scores(model, names, batches, 0.05, 5, revive=revive)
        assert all(map(same, got, reference_iterative_snip(model, names, batches, 0.05, 5, revive)))
    reference = reference_snip_it(model.eval(), names, batches, 0.05, 5)
    assert all(map(same, snip_it_scores(model, names, batches, 0.05, 5), reference[-1][1:]))


# selection


def keep_largest_mask(values: torch.Tensor, k: int) -> torch.Tensor:
    out = torch.empty(values.numel(), dtype=torch.bool)
    keep_largest(bit_keys(values), k, out)
    return out


@pytest.mark.parametrize("path", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1000, 300_001])  # the second samples a band
def test_keep_largest_matches_topk_masks(
    monkeypatch: pytest.MonkeyPatch, path: str, dtype: type, n: int
) -> None:
    if path == "torch":
        monkeypatch.setattr(topk, "on_numpy", lambda tensor: False)
    rng = np.random.default_rng(n)
    values = np.abs(rng.standard_normal(n)).astype(dtype)
    values[rng.integers(0, n, n // 3)] = 0.5  # a large tie
    values[rng.integers(0, n, n // 10)] = 0.0
    values[rng.integers(0, n, n // 10)] = -1.0  # the pruned weights' score
    values[:5] = [np.inf, np.nan, 0.0, np.inf, 1e-30]
    parts = [torch.from_numpy(p.copy()) for p in np.split(values, [n // 7, n // 2])]
    for k in (0, 1, 2, 7, n // 100, n // 3, n // 2, n - n // 3, n - n // 10, n - 1, n):
        assert torch.equal(keep_largest_mask(torch.from_numpy(values), k), torch.cat(topk_masks(parts, k))), k


@pytest.mark.usefixtures("sampled")
def test_a_band_that_misses_falls_back_to_every_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(topk, "SAMPLE", 16)  # 16 keys: the six outliers go unseen
    partitioned: list[int] = []
    kth_of_band = topk._kth_of_band
    monkeypatch.setattr(
        topk, "_kth_of_band", lambda band, *a: partitioned.append(band.size) or kth_of_band(band, *a)
    )
    few_high = np.zeros(5000)
    few_high[::997] = 3.0  # the sample sees zeros only: the band [0, 0] has the k-th below it
    few_low = np.full(5000, 2.0)
    few_low[::997] = 1.0  # the band [2, 2] lies above the k-th
    for values, k in [(few_high, 2), (few_high, 5), (few_low, 4999), (few_low, 4996)]:
        expected = torch.cat(topk_masks([torch.from_numpy(values)], k))
        assert torch.equal(keep_largest_mask(torch.from_numpy(values), k), expected), k
    assert partitioned == [5000] * 4


@pytest.mark.usefixtures("sampled")
def test_a_mass_of_ties_at_the_band_floor_is_counted_not_partitioned(monkeypatch: pytest.MonkeyPatch) -> None:
    """Late SynFlow steps: most scores are the pruned weights' zeros, and the band starts at 0."""
    partitioned: list[int] = []
    kth_of_band = topk._kth_of_band
    monkeypatch.setattr(
        topk, "_kth_of_band", lambda band, *a: partitioned.append(band.size) or kth_of_band(band, *a)
    )
    values = np.zeros(20_000)
    values[::50] = np.random.default_rng(0).random(400) + 0.5  # 2% alive
    for k in (300, 400, 401, 5000):  # among the alive, the lowest alive, then zeros (ties)
        expected = torch.cat(topk_masks([torch.from_numpy(values)], k))
        assert torch.equal(keep_largest_mask(torch.from_numpy(values), k), expected), k
    assert max(partitioned) <= 400


def test_keep_largest_returns_the_lowest_key_kept() -> None:
    values = torch.tensor([3.0, 1.0, 2.0, 2.0, 2.0, 0.0])
    out = torch.empty(6, dtype=torch.bool)
    assert keep_largest(bit_keys(values), 3, out) == int(bit_keys(torch.tensor([2.0]))[0])
    assert out.tolist() == [True, False, False, True, True, False]  # ties: the last ones kept
    assert keep_largest(bit_keys(values), 6, out) == 0 and out.all()
    assert keep_largest(bit_keys(values), 0, out) is None and not out.any()


def test_masked_leaves_rank_pruned_weights_at_dead() -> None:
    """A tie at 0 between an alive weight and a pruned one is settled with the pruned at −1."""
    leaves = MaskedLeaves({"w": torch.tensor([3.0, 0.0, 2.0, 5.0])}, dead=-1.0)
    leaves.score({"w": torch.ones(4)})
    leaves.select(3)  # prunes w[1], whose θ is 0
    assert leaves.masks()["w"].tolist() == [True, False, True, True]
    leaves.score({"w": torch.tensor([0.0, 1.0, 1.0, 1.0])})  # w[0] alive at 0, w[1] pruned at 0
    leaves.select(3)
    assert leaves.masks()["w"].tolist() == [True, False, True, True]  # w[0] kept, though lower
    assert leaves.scores()["w"].tolist() == [0.0, -1.0, 2.0, 5.0]
    assert leaves.leaves["w"].tolist() == [3.0, 0.0, 2.0, 5.0]
