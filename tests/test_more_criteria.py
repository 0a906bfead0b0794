"""methods.md §6 (SNIP-it), §7 (exact salience, OBD, Fisher), §8 (Taylor), §9 (Wanda) on N0.

Vectors are reproduced in float64 through the public scoring functions, to 1e-6 relative with
5e-7 absolute slack (they are printed to 6 significant digits), as in test_saliency_vectors.py.
The end-to-end tests run each method through the CLI on real MNIST digits: the 2,000 that ship
with prunecli (the `mnist_train` fixture in conftest.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunecli.errors import UsageError
from prunecli.scoring.exact import exact_scores
from prunecli.scoring.obd import hessian_diagonal, obd_scores
from prunecli.scoring.snip_it import snip_it_schedule, snip_it_scores, snip_it_steps
from prunecli.scoring.taylor import empirical_fisher, taylor_scores
from prunecli.scoring.wanda import wanda_scores
from tests.test_saliency_vectors import NAMES, X, Y, close, flat, masks_of, n0

NEW_METHODS = ("snip-it", "obd", "exact", "taylor", "wanda")

# §7 table
EXACT = [0.401149, 1.525857, 0.115779, 0.187797, 1.203268, 0.462994, 0.433067, 0.224897, 0.558241, 0.646873]
H_DIAG = [2.123446, 0.487715, 0.487715, 2.132039, 0.496308, 0.488252, 0.272468, 0.200021, 0.272468, 0.200021]
OBD = [0.265431, 0.243858, 0.015241, 1.066020, 0.062039, 0.061032, 0.136234, 0.025003, 0.306526, 0.400041]
OBD_FIRST = [
    -0.377753, -0.644515, 0.117023, 0.687440, -1.214621, 0.472713, -0.435676, -0.223709, -0.551339, -0.594804
]  # fmt: skip
FISHER = [3.093859, 1.432438, 1.432438, 11.409997, 9.748576, 1.952197, 0.494949, 2.816107, 0.494949, 2.816107]
HALF_THETA2_FISHER = [
    0.386732, 0.716219, 0.044764, 5.704999, 1.218572, 0.244025, 0.247474, 0.352013, 0.556817, 5.632214
]  # fmt: skip
# §8
TAYLOR = [0.413685, 0.789207, 0.010360, 0.143322, 1.629860, 0.169482, 0.327081, 0.061857, 0.735932, 0.989718]


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 3)).double()


MLP_NAMES = ["0.weight", "2.weight", "4.weight"]


def mlp_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(16, 6, generator=generator, dtype=torch.float64)
    return [(x[:8], torch.arange(8) % 3), (x[8:], torch.arange(8) % 3)]


# §6 SNIP-it


def test_snip_it_first_step_is_the_elasticity() -> None:
    scores, masks = snip_it_scores(n0(), NAMES, [(X, Y)], density=0.5)  # s* = 0.5: one step
    close(
        flat(scores),
        [0.208837, 0.288448, 0.033048, 0.122922, 0.414522, 0.133670, 0.185695, 0.080755, 0.278542, 0.323019],
    )
    assert masks_of(masks) == [[[1, 1, 0], [0, 1, 0]], [[0, 0], [1, 1]]]  # SNIP's ranking, keep 5


def test_snip_it_schedule() -> None:
    expected = [0.5, 0.725, 0.8375, 0.89375, 0.921875, 0.9359375, 0.95]
    assert snip_it_schedule(0.95) == pytest.approx(expected, abs=1e-12)
    assert snip_it_schedule(0.95, steps=0) == pytest.approx([0.5, 0.95])
    assert snip_it_schedule(0.5) == [0.5]  # steps at or above the target are dropped
    assert snip_it_schedule(0.3) == [0.3]
    assert snip_it_schedule(0.0) == [0.0]


def test_snip_it_masks_only_shrink() -> None:
    steps = list(snip_it_steps(mlp(), MLP_NAMES, mlp_batches(), density=0.05))
    assert [s for s, _, _ in steps] == pytest.approx(snip_it_schedule(0.95))
    previous = {
        n: torch.ones_like(p, dtype=torch.bool) for n, p in mlp().named_parameters() if n in MLP_NAMES
    }
    counts = []
    for _, scores, masks in steps:
        for name in MLP_NAMES:
            assert not (masks[name] & ~previous[name]).any()  # new ⊆ old
            assert (scores[name][~previous[name]] == -1).all()  # pruned earlier: below every kept weight
        counts.append(sum(int(m.sum()) for m in masks.values()))
        previous = masks
    assert counts == [51, 28, 16, 10, 8, 6, 5]  # ⌊N·d_i⌋ of N = 103, then round(103 · 0.05)
    _, final = snip_it_scores(mlp(), MLP_NAMES, mlp_batches(), density=0.05)
    assert all(torch.equal(final[n], previous[n]) for n in MLP_NAMES)


# §7 exact salience


def test_exact_salience() -> None:
    close(flat(exact_scores(n0(), NAMES, [(X, Y)])), EXACT)
    close(flat(exact_scores(n0(), NAMES, [(X, Y)], chunk_size=3)), EXACT)  # chunks do not matter


def test_exact_matches_a_loop_with_train_mode_batch_norm() -> None:
    torch.manual_seed(0)
    layers = [nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 2)]
    model = nn.Sequential(*layers).double()
    model.train()
    names = ["0.weight", "4.weight"]
    batch = (torch.randn(5, 2, 4, 4, dtype=torch.float64), torch.tensor([0, 1, 1, 0, 1]))
    running = model[1].running_mean.clone()
    scores = exact_scores(model, names, [batch], chunk_size=7)
    assert torch.equal(model[1].running_mean, running)  # the model's buffers are left alone
    with torch.no_grad():
        base = F.cross_entropy(model(batch[0]), batch[1])
        for name in names:
            weight = model.get_parameter(name).view(-1)
            for j in range(weight.numel()):
                kept = weight[j].item()
                weight[j] = 0
                assert scores[name].view(-1)[j].item() == pytest.approx(
                    abs(base - F.cross_entropy(model(batch[0]), batch[1])).item(), rel=1e-9, abs=1e-12
                )
                weight[j] = kept


def test_exact_refuses_big_models_with_a_time_estimate() -> None:
    with pytest.raises(UsageError) as info:
        exact_scores(n0(), NAMES, [(X, Y)], max_params=5, chunk_size=3)
    text = info.value.one_line()
    assert "one forward pass per weight: 10 weights would take about " in text
    assert "ms per weight, timed on 3 weights); the limit is 5 weights" in text
    assert "`max_params`" in text and "hutchinson" in text


# §7 OBD


def test_hessian_diagonal_and_obd() -> None:
    close(flat(hessian_diagonal(n0(), NAMES, [(X, Y)])), H_DIAG)
    close(flat(hessian_diagonal(n0(), NAMES, [(X, Y)], chunk_size=3)), H_DIAG)
    close(flat(obd_scores(n0(), NAMES, [(X, Y)])), OBD)


def test_obd_first_order_is_signed() -> None:
    close(flat(obd_scores(n0(), NAMES, [(X, Y)], first_order=True)), OBD_FIRST)


def test_obd_hutchinson_converges_and_is_seeded() -> None:
    estimate = flat(
        hessian_diagonal(n0(), NAMES, [(X, Y)], hessian="hutchinson", samples=20000, chunk_size=5000)
    )
    np.testing.assert_allclose(estimate, H_DIAG, rtol=0.06, atol=0.02)
    again = hessian_diagonal(n0(), NAMES, [(X, Y)], hessian="hutchinson", samples=64, seed=3)
    assert np.array_equal(flat(again), flat(hessian_diagonal(n0(), NAMES, [(X, Y)], hessian="hutchinson",
                                                           samples=64, seed=3, chunk_size=64)))  # fmt: skip
    other = hessian_diagonal(n0(), NAMES, [(X, Y)], hessian="hutchinson", samples=64, seed=4)
    assert not np.array_equal(flat(again), flat(other))


def test_obd_with_the_empirical_fisher() -> None:
    close(flat(empirical_fisher(n0(), NAMES, [(X, Y)])), FISHER)
    close(flat(empirical_fisher(n0(), NAMES, [(X[:2], Y[:2]), (X[2:], Y[2:])], chunk_size=1)), FISHER)
    close(flat(obd_scores(n0(), NAMES, [(X, Y)], hessian="fisher")), HALF_THETA2_FISHER)


def test_obd_refusals() -> None:
    with pytest.raises(UsageError, match="one Hessian-vector product per weight") as info:
        obd_scores(n0(), NAMES, [(X, Y)], max_params=9)
    assert "`hessian` hutchinson" in info.value.one_line()
    with pytest.raises(UsageError, match="unknown `hessian` 'lanczos'"):
        obd_scores(n0(), NAMES, [(X, Y)], hessian="lanczos")
    with pytest.raises(UsageError, match="`hutchinson_samples` 0 must be at least 1"):
        obd_scores(n0(), NAMES, [(X, Y)], hessian="hutchinson", samples=0)


# §8 Taylor


def test_taylor_per_weight() -> None:
    close(flat(taylor_scores(n0(), NAMES, [(X, Y)])), TAYLOR)


def test_taylor_fisher_is_the_mean_of_per_sample_squares() -> None:
    close(flat(taylor_scores(n0(), NAMES, [(X, Y)], fisher=True)) / 2, HALF_THETA2_FISHER)  # θ²F_jj


def test_taylor_per_neuron_aggregates() -> None:
    from prunecli.progress import NoProgress
    from prunecli.scoring.functional import leaf_weights, mean_gradient

    rows = taylor_scores(n0(), NAMES, [(X, Y)])["fc1.weight"]  # (2, 3)
    theta = leaf_weights(n0(), NAMES)
    grads = mean_gradient(n0(), theta, [(X, Y)], "ce", NoProgress())
    signed = (grads["fc1.weight"] * theta["fc1.weight"]).detach()  # gθ of W1, (2, 3)
    w1 = theta["fc1.weight"].detach()
    close(rows.sum(1).numpy(), [1.213251, 1.942664])  # Σ(gθ)²
    close((signed.sum(1) ** 2).numpy(), [2.044256, 1.546434])  # (Σgθ)²
    close(rows.sqrt().sum(1).numpy(), [1.633338, 2.066920])  # Σ|gθ|
    close(w1.abs().sum(1).numpy(), [1.75, 2.0])  # ‖w‖₁
    close(w1.norm(dim=1).numpy(), [1.145644, 1.224745])  # ‖w‖₂


# §9 Wanda

W = [[1, -2, 0.5, 3, -0.25, 1.5, -1, 0.75], [-0.5, 1, 4, -1, 2, -0.1, 0.3, -3]]
TOKENS = [(1, 0, 2, 0.5, 1, -1, 0.5, 0), (2, 1, 0, 0.5, -1, 2, 0, 1), (0, 1, 1, 1, 0.5, 0, -2, 1)]


def test_wanda_linear() -> None:
    layer = nn.Linear(8, 2, bias=False).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(W))
    model = nn.Sequential(layer)
    tokens = torch.tensor(TOKENS, dtype=torch.float64)
    scores = wanda_scores(model, ["0.weight"], [(tokens[:2], None), (tokens[2:], None)])["0.weight"]
    close(scores[0].numpy(), [2.236068, 2.828427, 1.118034, 3.674235, 0.375, 3.354102, 2.061553, 1.060660])
    close(scores[1].numpy(), [1.118034, 1.414214, 8.944272, 1.224745, 3.0, 0.223607, 0.618466, 4.242641])
    close(
        (scores / torch.tensor(W).abs()).numpy()[0],
        [2.236068, 1.414214, 2.236068, 1.224745, 1.5, 2.236068, 2.061553, 1.414214],
    )  # fmt: skip  ‖X_j‖
    keep = torch.zeros_like(scores, dtype=torch.int64).scatter_(1, scores.topk(4, dim=1).indices, 1)
    assert keep.tolist() == [[1, 1, 0, 1, 0, 1, 0, 0], [0, 1, 1, 0, 1, 0, 0, 1]]  # 50% per row
    assert not layer._forward_pre_hooks  # hooks removed


def _patches(conv: nn.Conv2d, x: torch.Tensor, pads: tuple[int, int, int, int]) -> torch.Tensor:
    """Every receptive field by explicit slicing: (B·L, C·kh·kw), for checking against unfold."""
    x = F.pad(x, pads)
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
    out = []
    for b in range(x.shape[0]):
        for i in range(0, x.shape[2] - dh * (kh - 1), sh):
            for j in range(0, x.shape[3] - dw * (kw - 1), sw):
                field = x[b, :, i : i + dh * (kh - 1) + 1 : dh, j : j + dw * (kw - 1) + 1 : dw]  # (C, kh, kw)
                out.append(field.reshape(-1))
    return torch.stack(out)


@pytest.mark.parametrize(
    ("kwargs", "pads"),
    [
        ({"stride": 1, "padding": 1}, (1, 1, 1, 1)),
        ({"stride": 2, "padding": (0, 1), "dilation": 2}, (1, 1, 0, 0)),
        ({"padding": "same", "dilation": (1, 2)}, (2, 2, 1, 1)),
        ({"groups": 2, "padding": 1}, (1, 1, 1, 1)),
    ],
)
def test_wanda_conv2d_matches_hand_unfolding(kwargs: dict, pads: tuple[int, int, int, int]) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, **kwargs).double()
    model = nn.Sequential(conv)
    x = torch.randn(2, 4, 6, 7, dtype=torch.float64)
    scores = wanda_scores(model, ["0.weight"], [(x, None)])["0.weight"]
    cols = _patches(conv, x, pads)  # (B·L, 4·3·3)
    groups = conv.groups
    norms = cols.norm(dim=0).reshape(groups, -1)  # (G, in/G·9)
    weight = conv.weight.detach().abs().reshape(groups, 6 // groups, -1)  # (G, out/G, in/G·9)
    expected = (weight * norms[:, None, :]).reshape(conv.weight.shape)
    torch.testing.assert_close(scores, expected, rtol=1e-12, atol=1e-12)


def test_wanda_refuses_other_tensors() -> None:
    with pytest.raises(UsageError, match=r"only Linear, Conv2d and Conv1D weights, not 0\.bias"):
        wanda_scores(nn.Sequential(nn.Linear(3, 2)), ["0.bias"], [(torch.ones(1, 3), None)])


# Registry and method-level options


def test_new_methods_are_listed() -> None:
    from prunecli.scoring import all_methods, get_method

    listed = {m.name: m for m in all_methods()}
    for name in NEW_METHODS:
        assert listed[name].paper and listed[name].needs and listed[name].needs_model
        assert listed[name].data == "batches" and listed[name].bn_mode == "eval"
    assert get_method("snip-it").iterative and not get_method("obd").iterative


def test_listing_methods_imports_no_torch() -> None:
    probe = "import sys; from prunecli.scoring import all_methods as a; a(); print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr


def _context(model: nn.Module, names: list[str], batches: list, seed: int = 0) -> object:
    from prunecli.calibration.context import ScoringContext

    return ScoringContext(model=model, names=names, batches=batches, seed=seed)


def test_methods_read_their_options() -> None:
    from prunecli.scoring import all_methods, get_method
    from prunecli.scoring.options import build_options

    def run(name: str, seed: int = 0, **options: object) -> np.ndarray:
        method = get_method(name)
        typed = build_options(method, options, {}, all_methods())  # as the score pipeline does
        return flat(method.model_scorer(_context(n0(), NAMES, [(X, Y)], seed=seed), typed).scores)

    close(run("obd"), OBD)
    close(run("obd", obd_first_order=True), OBD_FIRST)
    close(run("obd", hessian="fisher"), HALF_THETA2_FISHER)
    assert np.array_equal(run("obd", hessian="hutchinson", hutchinson_samples=50, seed=1),
                          run("obd", hessian="hutchinson", hutchinson_samples=50, seed=1))  # fmt: skip
    close(run("taylor"), TAYLOR)
    close(run("taylor", fisher=True) / 2, HALF_THETA2_FISHER)
    close(run("exact"), EXACT)
    with pytest.raises(UsageError, match="the limit is 4 weights"):
        run("exact", max_params=4)
    with pytest.raises(UsageError, match="limit: 4"):
        run("obd", max_params=4)


# End to end through the CLI on real MNIST digits (shipped with prunecli)


@pytest.fixture(scope="module")
def lenet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from prunecli.models.initialize import init_checkpoint

    path = tmp_path_factory.mktemp("init") / "lenet.safetensors"
    init_checkpoint("lenet-300-100", path, seed=0)
    return path


@pytest.fixture(scope="module")
def tiny_mlp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from prunecli.models.initialize import init_checkpoint

    path = tmp_path_factory.mktemp("init") / "mlp.safetensors"
    init_checkpoint("mlp", path, seed=0, arch_args={"hidden": [8]})
    return path


def _prune(cli, data: Path, checkpoint: Path, method: str, arch: list[str], out: Path, *extra: str):
    return cli("prune", checkpoint, "-m", method, *arch, "--data", data, "--batch-size", "32", "-s", "0.9",
               "-o", out, "--json", *extra)  # fmt: skip


@pytest.mark.parametrize(
    ("method", "extra"), [("wanda", []), ("taylor", []), ("snip-it", ["--iterations", "5"])]
)
def test_prune_lenet_300_100(
    cli, lenet: Path, tmp_path: Path, method: str, extra: list[str], mnist_train: Path
) -> None:
    r = _prune(cli, mnist_train, lenet, method, ["--arch", "lenet-300-100"], tmp_path / "out", *extra)
    assert r.code == 0, r.err
    manifest = json.loads(r.out)
    assert manifest["totals"]["kept"] == 26620  # round(0.1 · 266,200), iterative masks included
    assert all(0 < t["density"] < 1 for t in manifest["tensors"] if t["pruned"])


@pytest.mark.parametrize("method", ["exact", "obd"])
def test_prune_tiny_mlp(cli, tiny_mlp: Path, tmp_path: Path, method: str, mnist_train: Path) -> None:
    arch = ["--arch", "mlp", "--arch-args", '{"hidden": [8]}']
    r = _prune(cli, mnist_train, tiny_mlp, method, arch, tmp_path / "out")
    assert r.code == 0, r.err


def test_obd_exact_refuses_lenet_300_100(cli, lenet: Path, tmp_path: Path, mnist_train: Path) -> None:
    r = _prune(cli, mnist_train, lenet, "obd", ["--arch", "lenet-300-100"], tmp_path / "out")
    assert r.code == 2 and "266,200 prunable weights" in r.err and "--hessian hutchinson" in r.err


def test_method_options_are_refused_where_they_do_nothing(tmp_path: Path) -> None:
    from prunecli.cli.app import run

    init = tmp_path / "i.safetensors"
    assert run(["init", "--arch", "mlp", "--arch-args", '{"hidden": [8]}', "-o", str(init)]) == 0
    base = [
        "score",
        str(init),
        "--arch",
        "mlp",
        "--arch-args",
        '{"hidden": [8]}',
        "--data",
        "random:784",
        "--batch-size",
        "4",
        "-o",
        str(tmp_path / "s.safetensors"),
    ]
    assert run([*base, "-m", "taylor", "--hessian", "hutchinson"]) == 2
    assert run([*base, "-m", "snip", "--fisher"]) == 2
    assert run([*base, "-m", "taylor", "--fisher", "--loss", "uniform"]) == 0
