"""SynFlow: iterative synaptic flow, data-free (Tanaka et al. 2020, NeurIPS).

Every parameter and buffer is replaced by its absolute value on a copy of the model; an
all-ones input of one example's shape gives R = Σ f(1); S = |θ⊙∂R/∂θ| with the network
computing θ⊙m, so pruned weights score 0. Algorithm 1 of the paper: score, then keep the
global top d_t, for t = 1..T (100 exponential steps by default). Eval mode and float64 by
default (R overflows float32 in deep nets). Higher = keep.
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
    """(last scores, final masks); with `density` None, one unmasked round and all-ones masks."""
    import copy

    import torch
    from torch.func import functional_call

    from prunecli.calibration.context import schedule_densities
    from prunecli.progress import NoProgress
    from prunecli.scoring.functional import keep_top, leaf_weights, step_counts

    progress = progress or NoProgress()
    positive = copy.deepcopy(model)
    with torch.no_grad():
        for tensor in positive.state_dict().values():  # parameters and buffers, as [SF]
            if tensor.is_floating_point():
                tensor.abs_()
    theta = leaf_weights(positive, names)
    masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in theta.items()}
    first = next(iter(theta.values()))
    ones = torch.ones((1, *input_shape), dtype=first.dtype, device=first.device)
    total = sum(w.numel() for w in theta.values())
    counts = (
        [None]
        if density is None
        else step_counts(total, schedule_densities(density, iterations, schedule), "synflow")
    )
    for keep in counts:
        masked = {n: w * masks[n] for n, w in theta.items()}
        flow = functional_call(positive, masked, (ones,), strict=False).sum()  # R
        grads = torch.autograd.grad(flow, list(theta.values()))
        scores = {n: (g * w.detach()).abs() for (n, w), g in zip(theta.items(), grads, strict=True)}
        if keep is not None:
            masks = keep_top(scores, keep)
        progress.advance()
    return scores, masks


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
