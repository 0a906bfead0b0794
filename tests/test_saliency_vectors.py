"""methods.md §2 (SNIP), §3 (GraSP), §4 (SynFlow), §5 (FORCE, Iter-SNIP), §12 (losses) on N0.

Every vector is reproduced in float64 through the public scoring functions, to 1e-6
relative (the vectors are printed to 6 significant digits, hence the absolute slack).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from prunecli.scoring.force import iterative_snip_scores
from prunecli.scoring.grasp import grasp_scores
from prunecli.scoring.snip import snip_scores
from prunecli.scoring.synflow import synflow_scores

NAMES = ["fc1.weight", "fc2.weight"]
X = torch.tensor([[2, -0.5, 0.5], [0.5, -1, -1], [2, 2, 0.5]], dtype=torch.float64)
Y = torch.tensor([1, 1, 0])


class N0(nn.Module):
    """f(x) = W2·ReLU(W1·x), no biases (methods.md §0)."""

    def __init__(self, w1: list[list[float]], w2: list[list[float]], relu: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3, 2, bias=False).double()
        self.fc2 = nn.Linear(2, 2, bias=False).double()
        self.relu = relu
        with torch.no_grad():
            self.fc1.weight.copy_(torch.tensor(w1))
            self.fc2.weight.copy_(torch.tensor(w2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.fc1(x)
        return self.fc2(torch.relu(hidden) if self.relu else hidden)


def n0() -> N0:
    return N0([[0.5, -1, 0.25], [1, 0.5, -0.5]], [[1, -0.5], [-1.5, 2]])


def flat(scores: dict[str, torch.Tensor]) -> np.ndarray:
    return torch.cat([scores[n].reshape(-1) for n in NAMES]).detach().numpy()


def close(actual: np.ndarray, expected: list[float]) -> None:
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=5e-7)


def masks_of(masks: dict[str, torch.Tensor]) -> list[list[list[int]]]:
    return [masks[n].int().tolist() for n in NAMES]


SNIP = [0.643184, 0.888373, 0.101782, 0.378579, 1.276660, 0.411682, 0.571910, 0.248711, 0.857865, 0.994846]


def test_snip_full_batch() -> None:
    scores = flat(snip_scores(n0(), NAMES, [(X, Y)]))
    close(scores, SNIP)
    close(
        scores / scores.sum(),
        [0.100914, 0.139383, 0.015969, 0.059398, 0.200305, 0.064592, 0.089731, 0.039022, 0.134597, 0.156089],
    )


def test_snip_multi_batch_is_mean_gradient_then_score() -> None:
    batches = [(X[i : i + 1], Y[i : i + 1]) for i in range(3)]
    close(flat(snip_scores(n0(), NAMES, batches)), SNIP)  # variant (a): equal to the full batch


def test_snip_keep_five() -> None:
    from prunecli.scoring.functional import global_topk

    masks = global_topk(snip_scores(n0(), NAMES, [(X, Y)]), 0.5)
    assert masks_of(masks) == [[[1, 1, 0], [0, 1, 0]], [[0, 0], [1, 1]]]


def test_snip_unsupervised_losses() -> None:
    close(
        flat(snip_scores(n0(), NAMES, [(X, None)], loss="pseudo")),
        [0.398483, 0.361627, 0.002385, 0.795246, 0.181674, 0.004985, 0.303090, 0.123711, 0.454635, 0.494846],
    )
    close(
        flat(snip_scores(n0(), NAMES, [(X, None)], loss="uniform")),
        [0.122350, 0.263373, 0.049698, 0.586912, 0.547493, 0.203348, 0.134410, 0.186211, 0.201615, 0.744846],
    )
    close(
        flat(snip_scores(n0(), NAMES, [(X, Y)], loss="nll")),
        [0.625, 0.75, 0.0625, 1.333333, 0.666667, 0.208333, 0, 0.458333, 1.3125, 1.333333],
    )


def test_losses_values() -> None:
    from prunecli.calibration.losses import compute_loss

    logits = n0()(X)
    assert compute_loss("ce", logits, Y).item() == pytest.approx(3.079839, abs=5e-7)
    assert compute_loss("pseudo", logits, None).item() == pytest.approx(0.267339, abs=5e-7)
    assert compute_loss("uniform", logits, None).item() == pytest.approx(1.673589, abs=5e-7)
    assert compute_loss("nll", logits, Y).item() == pytest.approx(0.4375, abs=5e-7)


GRASP_T1 = [
    -2.339152,
    -3.128046,
    0.337114,
    3.907440,
    -1.884659,
    0.748874,
    -2.834249,
    -0.814835,
    -4.251373,
    -3.259340,
]  # fmt: skip  (the reference's −θ⊙Hg; prunecli keeps +θ⊙Hg)


def test_grasp_t1() -> None:
    from prunecli.scoring.functional import global_topk

    scores = grasp_scores(n0(), NAMES, [(X, Y)], temperature=1.0)
    close(-flat(scores), GRASP_T1)
    assert abs(flat(scores).sum()) == pytest.approx(13.518225, abs=5e-6)
    masks = global_topk(scores, 0.5)  # remove the 5 highest −θHg: W1 row 1 is wiped out
    assert masks_of(masks) == [[[1, 1, 0], [0, 0, 0]], [[1, 0], [1, 1]]]


def test_grasp_t200() -> None:
    from prunecli.scoring.functional import global_topk

    scores = grasp_scores(n0(), NAMES, [(X, Y)])
    expected = [
        -4.865827e-6,
        -5.846166e-6,
        4.888885e-7,
        7.094009e-7,
        -2.328892e-6,
        6.675884e-7,
        -1.548950e-5,
        -1.195874e-5,
        -2.323424e-5,
        -4.783496e-5,
    ]
    np.testing.assert_allclose(-flat(scores), expected, rtol=1e-6, atol=5e-13)
    normalised = -flat(scores) / (abs(flat(scores).sum()) + 1e-10)
    close(
        normalised,
        [
            -0.044359,
            -0.053296,
            0.004457,
            0.006467,
            -0.021231,
            0.006086,
            -0.141208,
            -0.109021,
            -0.211812,
            -0.436082,
        ],
    )
    assert masks_of(global_topk(scores, 0.5)) == [[[0, 1, 0], [0, 0, 0]], [[1, 1], [1, 1]]]


def test_grasp_two_batches() -> None:
    scores = flat(grasp_scores(n0(), NAMES, [(X[:1], Y[:1]), (X[1:], Y[1:])]))
    expected = [
        -0.062566,
        -0.054952,
        -0.000213,
        -0.001421,
        0.006453,
        -0.001461,
        -0.186384,
        -0.083976,
        -0.279576,
        -0.335905,
    ]
    close(-scores / (abs(scores.sum()) + 1e-10), expected)


def test_synflow_one_shot() -> None:
    scores, _ = synflow_scores(n0(), NAMES, (3,))
    close(flat(scores), [1.25, 2.5, 0.625, 2.5, 1.25, 1.25, 1.75, 1.0, 2.625, 4.0])
    assert scores["fc1.weight"].sum().item() == pytest.approx(9.375)
    assert scores["fc2.weight"].sum().item() == pytest.approx(9.375)


def tie_free() -> N0:
    return N0([[-0.5, 0.7, -1.3], [-1.2, 2.0, -0.6]], [[0.5, 1.1], [-0.8, -0.5]])


def test_synflow_iterative_vectors() -> None:
    scores, masks = synflow_scores(tie_free(), NAMES, (3,), density=0.4, iterations=1)
    close(flat(scores), [0.65, 0.91, 1.69, 1.92, 3.2, 0.96, 1.25, 4.18, 2.0, 1.9])
    assert masks_of(masks) == [[[0, 0, 0], [1, 1, 0]], [[0, 1], [1, 0]]]
    scores, masks = synflow_scores(tie_free(), NAMES, (3,), density=0.4, iterations=2)
    close(flat(scores), [0, 0, 1.69, 1.92, 3.2, 0, 0.65, 3.52, 1.04, 1.6])
    assert masks_of(masks) == [[[0, 0, 1], [1, 1, 0]], [[0, 1], [0, 0]]]


def test_synflow_conservation_bias_free_relu_mlp() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(20, 30, bias=False),
        nn.ReLU(),
        nn.Linear(30, 15, bias=False),
        nn.ReLU(),
        nn.Linear(15, 5, bias=False),
    ).double()
    names = ["0.weight", "2.weight", "4.weight"]
    scores, _ = synflow_scores(model, names, (20,))
    positive = nn.Sequential(*[m for m in model]).double()
    with torch.no_grad():
        for p in positive.parameters():
            p.abs_()
        flow = positive(torch.ones(1, 20, dtype=torch.float64)).sum().item()
    for name in names:
        assert scores[name].sum().item() == pytest.approx(flow, rel=1e-10)


def test_force_and_iter_snip_two_steps() -> None:
    f_scores, f_masks = iterative_snip_scores(n0(), NAMES, [(X, Y)], 0.5, 2, revive=True)
    close(
        flat(f_scores),
        [1.013751, 1.205353, 0.097792, 1.090099, 0.545050, 0.136262, 0.887641, 0.102197, 1.331462, 0.408787],
    )
    assert masks_of(f_masks) == [[[1, 1, 0], [1, 0, 0]], [[1, 0], [1, 0]]]  # W1[1,0] revived
    i_scores, i_masks = iterative_snip_scores(n0(), NAMES, [(X, Y)], 0.5, 2, revive=False)
    expected = np.array([1.013751, 1.205353, -1, -1, 0.545050, 0.136262, 0.887641, -1, 1.331462, 0.408787])
    close(flat(i_scores), expected)  # the three weights pruned at step 1 rank below all others
    assert masks_of(i_masks) == [[[1, 1, 0], [0, 1, 0]], [[1, 0], [1, 0]]]


def test_iterative_first_step_is_snip() -> None:
    _, step1 = iterative_snip_scores(n0(), NAMES, [(X, Y)], 0.5**0.5, 1, revive=True)
    assert masks_of(step1) == [[[1, 1, 0], [0, 1, 1]], [[1, 0], [1, 1]]]
