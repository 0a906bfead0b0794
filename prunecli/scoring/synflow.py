"""SynFlow: iterative synaptic flow, data-free (Tanaka et al. 2020, NeurIPS).

Every parameter and buffer is replaced by its absolute value on a copy of the model; an
all-ones input of one example's shape gives R = Σ f(1); S = |θ⊙∂R/∂θ| with the network
computing θ⊙m, so pruned weights score 0. Algorithm 1 of the paper: score, then keep the
global top d_t, for t = 1..T (100 exponential steps by default). Eval mode and float64 by
default: R overflows float32 in deep nets, and where it does not, float32's rounding still
flips near-ties at the threshold (240 of ResNet-20's 270,896 mask bits at 99% in 20 steps).
Higher = keep.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from prunecli.scoring.options import IterativeOptions
from prunecli.scoring.registry import register_model_method

if TYPE_CHECKING:
    import torch

    from prunecli.calibration.context import ScoreResult, ScoringContext


@dataclass(frozen=True)
class SynflowOptions(IterativeOptions):
    """100 exponential steps by default, as the paper."""

    iterations: int = 100


def synflow_scores(
    model: torch.nn.Module,
    names: list[str],
    input_shape: tuple[int, ...],
    density: float | None = None,
    iterations: int = 1,
    schedule: str = "exp",
    progress: object = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(last scores, final masks); with `density` None, one unmasked round and all-ones masks.

    Runs in the model's precision (float64 by default: R overflows float32 in deep nets, and
    float32's rounding changes the masks). A tensor whose weights are all pruned gets no
    gradient; masks and scores are the plain loop's, bit for bit (`MaskedLeaves`).

    Example:
        >>> scores, masks = synflow_scores(model.double(), ["fc1.weight", "fc2.weight"], (784,), 0.01, 100)
    """
    import torch
    from torch.func import functional_call

    from prunecli.calibration.context import schedule_densities
    from prunecli.progress import NoProgress
    from prunecli.scoring.functional import step_counts
    from prunecli.scoring.iterative import MaskedLeaves

    progress = progress or NoProgress()
    positive = _positive_copy(model)
    params = dict(positive.named_parameters())
    weights = MaskedLeaves({n: params[n].detach() for n in names})  # pruned: |g⊙0| = 0
    first = weights.leaves[names[0]]
    ones = torch.ones((1, *input_shape), dtype=first.dtype, device=first.device)
    total = sum(w.numel() for w in weights.leaves.values())
    counts = (
        [None]
        if density is None
        else step_counts(total, schedule_densities(density, iterations, schedule), "synflow")
    )
    for keep in counts:
        active = weights.active()
        flow = functional_call(positive, weights.leaves, (ones,), strict=False).sum()  # R
        grads = torch.autograd.grad(flow, [weights.leaves[n] for n in active]) if active else ()
        weights.score(dict(zip(active, grads, strict=True)))
        if keep is not None:
            weights.select(keep)
        progress.advance()
    return weights.scores(), weights.masks()


def _positive_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the model with every parameter and buffer replaced by its absolute value, as [SF]."""
    import copy

    import torch

    positive = copy.deepcopy(model)
    with torch.no_grad():
        for tensor in positive.state_dict().values():
            if tensor.is_floating_point():
                tensor.abs_()
    return positive


@register_model_method(
    "synflow",
    summary="|θ⊙∂R/∂θ| on |θ| with an all-ones input, pruned iteratively (data-free)",
    paper="Tanaka et al. 2020 (NeurIPS)",
    data="input-shape",
    bn_mode="eval",
    iterative=True,
    returns="masks",
    default_dtype="float64",
    options=SynflowOptions,
)
def synflow_method(ctx: ScoringContext, options: SynflowOptions) -> ScoreResult:
    from prunecli.calibration.context import ScoreResult

    ctx.progress.stage("SynFlow: iterations", options.iterations)
    scores, masks = synflow_scores(
        ctx.model, ctx.names, ctx.input_shape, ctx.density, options.iterations, options.schedule, ctx.progress
    )
    return ScoreResult(scores, masks)
