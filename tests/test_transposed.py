"""Weights stored transposed, (in, out) as GPT-2's Conv1D: rules per output work down each column.

`plan_masks(..., transposed=...)` masks such a tensor as the same scores stored (out, in) would
be masked, transposed back; Wanda scores Conv1D weights as |W_ji|·‖X_j‖ (row j, feature j).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from prunecli.apply.plan import KeySource, plan_masks
from prunecli.errors import UsageError
from prunecli.io.checkpoints import open_checkpoint
from prunecli.progress import NoProgress
from prunecli.scoring.registry import get_method
from prunecli.scoring.wanda import wanda_scores
from prunecli.selection.spec import SelectionSpec
from tests.conftest import save_f32
from tests.test_vectors import WANDA_W, WANDA_X


def tied_weights(out: int, inputs: int, seed: int = 0) -> np.ndarray:
    """(out, in) weights with few distinct magnitudes, so ties are broken by position."""
    rng = np.random.default_rng(seed)
    return (rng.integers(-6, 7, (out, inputs)) / 2).astype(np.float32)


def masks_of(
    tmp_path: Path, tensors: dict[str, np.ndarray], spec: SelectionSpec, transposed: frozenset[str]
) -> dict[str, np.ndarray]:
    """Magnitude masks of `tensors` (saved as a checkpoint) under `spec`."""
    path = save_f32(tmp_path / f"w{len(list(tmp_path.iterdir()))}.safetensors", tensors)
    with open_checkpoint(path) as ckpt:
        names = list(tensors)
        source = KeySource(ckpt, names, method=get_method("magnitude"))
        plan = plan_masks(source, names, spec, NoProgress(), transposed=transposed)
        return {n: plan.mask(n, source, np.empty(tensors[n].size, bool)).copy() for n in names}


def stored_and_reference(
    tmp_path: Path, weight: np.ndarray, spec: SelectionSpec
) -> tuple[np.ndarray, np.ndarray]:
    """(mask of weight.T stored (in, out) and named transposed, mask of weight stored (out, in))."""
    stored = masks_of(tmp_path, {"c.weight": weight.T.copy()}, spec, frozenset({"c.weight"}))["c.weight"]
    reference = masks_of(tmp_path, {"l.weight": weight}, spec, frozenset())["l.weight"]
    return stored, reference


@pytest.mark.parametrize("density", [0.3, 0.5, 0.75])
def test_row_scope_keeps_each_outputs_share_of_its_column(tmp_path: Path, density: float) -> None:
    weight = tied_weights(out=4, inputs=10)  # stored as (10, 4)
    stored, reference = stored_and_reference(tmp_path, weight, SelectionSpec(density, scope="row"))
    assert stored.shape == (10, 4)
    np.testing.assert_array_equal(stored.sum(axis=0), [round(density * 10 + 1e-9)] * 4)
    np.testing.assert_array_equal(stored, reference.T)


def test_two_four_keeps_two_of_every_four_inputs_down_each_column(tmp_path: Path) -> None:
    weight = tied_weights(out=6, inputs=8)  # stored as (8, 6)
    stored, reference = stored_and_reference(tmp_path, weight, SelectionSpec(0.5, pattern=(2, 4)))
    np.testing.assert_array_equal(stored.reshape(2, 4, 6).sum(axis=1), np.full((2, 6), 2))
    np.testing.assert_array_equal(stored, reference.T)


def test_two_four_on_transposed_wanda_scores_file(tmp_path: Path) -> None:
    """The hand-checked 2:4 mask of tests/test_vectors.py, its scores given (in, out) in a scores file."""
    scores = (np.abs(WANDA_W) * np.linalg.norm(WANDA_X, axis=0)).astype(np.float32)  # (out, in)
    ckpt_path = save_f32(tmp_path / "w.safetensors", {"c.weight": WANDA_W.T.astype(np.float32)})
    scores_path = save_f32(tmp_path / "s.safetensors", {"c.weight": scores.T.copy()})
    spec = SelectionSpec(0.5, pattern=(2, 4))
    with open_checkpoint(ckpt_path) as ckpt, open_checkpoint(scores_path) as score_file:
        source = KeySource(ckpt, ["c.weight"], scores=score_file)
        plan = plan_masks(source, ["c.weight"], spec, NoProgress(), transposed=frozenset({"c.weight"}))
        mask = plan.mask("c.weight", source, np.empty(16, bool))
    expected = [[0, 1, 0, 1, 0, 1, 1, 0], [0, 1, 1, 0, 1, 0, 0, 1]]  # (out, in)
    np.testing.assert_array_equal(mask.astype(int), np.array(expected).T)


def test_two_four_needs_the_input_dimension_divisible(tmp_path: Path) -> None:
    """Stored (6, 8): 8 columns would divide by 4, but the 6 inputs do not."""
    stored = tied_weights(out=8, inputs=6).T.copy()
    with pytest.raises(UsageError) as error:
        masks_of(tmp_path, {"c.weight": stored}, SelectionSpec(0.5, pattern=(2, 4)), frozenset({"c.weight"}))
    assert str(error.value) == "`pattern` 2:4 needs the input dimension of c.weight (6) to be a multiple of 4"


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("structure", ["filter", "channel"])
def test_structure_keeps_whole_columns_or_rows(tmp_path: Path, structure: str, scope: str) -> None:
    weight = np.random.default_rng(1).standard_normal((6, 5)).astype(np.float32)  # (out, in), no ties
    spec = SelectionSpec(0.5, scope=scope, structure=structure)
    stored, reference = stored_and_reference(tmp_path, weight, spec)
    np.testing.assert_array_equal(stored, reference.T)
    if structure == "filter":  # an output: a whole column of the stored (in, out) tensor
        kept = stored.all(axis=0)
        np.testing.assert_array_equal(stored, np.broadcast_to(kept, stored.shape))
        assert kept.sum() == 3  # round(6 outputs · 0.5)
    else:  # an input feature: a whole row
        kept = stored.all(axis=1)
        np.testing.assert_array_equal(stored, np.broadcast_to(kept[:, None], stored.shape))
        assert kept.sum() == 3  # round(5 inputs · 0.5), the half rounded up


@pytest.mark.parametrize("spec", [SelectionSpec(0.4), SelectionSpec(0.4, scope="layer", min_density=0.1)])
def test_unstructured_scopes_ignore_orientation(tmp_path: Path, spec: SelectionSpec) -> None:
    tensors = {"c.weight": tied_weights(out=6, inputs=10).T.copy(), "l.weight": tied_weights(5, 7, seed=2)}
    flipped = masks_of(tmp_path, tensors, spec, frozenset({"c.weight"}))
    plain = masks_of(tmp_path, tensors, spec, frozenset())
    for name in tensors:
        np.testing.assert_array_equal(flipped[name], plain[name])


class Conv1D(nn.Module):
    """A stand-in for transformers' Conv1D (GPT-2): weight stored (in, out), y = x·W + b."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.nf = weight.shape[1]
        self.weight = nn.Parameter(weight)  # (in, out)
        self.bias = nn.Parameter(torch.zeros(self.nf))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.bias


def test_wanda_scores_conv1d_rows_by_input_norms() -> None:
    weight = torch.tensor([[1.0, -2.0], [3.0, 0.5], [-4.0, 1.0]])  # (in=3, out=2)
    model = nn.Sequential(Conv1D(weight))
    batches = [  # (batch, tokens, in): ‖X_0‖ = √(3² + 4²) = 5, ‖X_1‖ = 1, ‖X_2‖ = 2
        (torch.tensor([[[3.0, 1.0, 0.0], [0.0, 0.0, 2.0]]]), None),
        (torch.tensor([[[4.0, 0.0, 0.0]]]), None),
    ]
    scores = wanda_scores(model, ["0.weight"], batches)["0.weight"]
    expected = [[1 * 5, 2 * 5], [3 * 1, 0.5 * 1], [4 * 2, 1 * 2]]
    torch.testing.assert_close(scores, torch.tensor(expected), rtol=0, atol=1e-6)


def test_wanda_conv1d_equals_the_linear_it_stands_for() -> None:
    weight = torch.tensor(WANDA_W, dtype=torch.float32)  # (out=2, in=8)
    linear = nn.Linear(8, 2)
    with torch.no_grad():
        linear.weight.copy_(weight)
    batches = [(torch.tensor(WANDA_X, dtype=torch.float32), None)]
    conv = wanda_scores(nn.Sequential(Conv1D(weight.T.clone())), ["0.weight"], batches)["0.weight"]
    dense = wanda_scores(nn.Sequential(linear), ["0.weight"], batches)["0.weight"]
    torch.testing.assert_close(conv, dense.T, rtol=0, atol=0)
    expected = np.abs(WANDA_W) * np.linalg.norm(WANDA_X, axis=0)  # (out, in)
    np.testing.assert_allclose(conv.numpy(), expected.T, rtol=1e-6)


def test_wanda_refuses_a_conv1d_lookalike_without_nf() -> None:
    class Conv1D(nn.Module):  # same name, but not transformers' layer: no `nf`
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(3, 2))

    with pytest.raises(UsageError) as error:
        wanda_scores(nn.Sequential(Conv1D()), ["0.weight"], [])
    assert str(error.value) == "wanda scores only Linear, Conv2d and Conv1D weights, not 0.weight"
