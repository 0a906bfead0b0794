"""SNIP-it: iterative elasticity |g⊙θ| / L (Verdenius et al. 2020, "Pruning via Iterative
Ranking of Sensitivity Statistics", arXiv:2006.00896).

At each step the network computes w = θ⊙m, the gradient ḡ and the loss L are averaged over the
calibration batches, the elasticity |ḡ⊙w| / |L| is ranked globally, and the mask keeps the top
of the still-kept weights (new mask = top-k AND old mask, so masks only shrink). The sparsity
steps are s_i = s* − (s* − 0.5)·0.5^i for i = 0..S, then s* (S = 5: 7 steps for s* = 0.95;
methods.md §6). Needs calibration batches (labels optional: unsupervised losses work too) and
the target sparsity at score time. Eval mode, as the reference. Higher = keep.

The reference code uses `nll_loss` on raw logits (`--loss nll` reproduces it); L may then be
negative, so it is divided by |L|, which never flips the ranking.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prunecli.scoring.options import MethodOptions, check_counts
from prunecli.scoring.registry import register_model_method

if TYPE_CHECKING:
    import torch

    from prunecli.calibration.context import Batch, ScoreResult, ScoringContext

DEFAULT_STEPS = 5


@dataclass(frozen=True)
class SnipItOptions(MethodOptions):
    """`iterations` is S, the halvings of the schedule; the schedule itself is SNIP-it's own
    (recorded as "snip-it"; a `schedule` given to every method does not apply)."""

    iterations: int = DEFAULT_STEPS
    schedule: str = field(default="snip-it", init=False)

    def __post_init__(self) -> None:
        check_counts(iterations=self.iterations)


def snip_it_schedule(sparsity: float, steps: int = DEFAULT_STEPS) -> list[float]:
    """The sparsity of each pruning step: s* − (s* − 0.5)·0.5^i for i = 0..steps, then s*.

    Steps at or above the target are dropped, so masks stay monotone and the last step is
    exactly s*: for s* <= 0.5 SNIP-it is a single SNIP step.

    Example:
        >>> [round(s, 7) for s in snip_it_schedule(0.95)]
        [0.5, 0.725, 0.8375, 0.89375, 0.921875, 0.9359375, 0.95]
    """
    levels = [sparsity - (sparsity - 0.5) * 0.5**i for i in range(steps + 1)]
    return [s for s in levels if s < sparsity] + [sparsity]


def snip_it_steps(
    model: torch.nn.Module,
    names: list[str],
    batches: list[Batch],
    density: float,
    steps: int = DEFAULT_STEPS,
    loss: str = "ce",
    progress: object = None,
) -> Iterator[tuple[float, dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
    """Yield (sparsity, elasticity, mask) after each step; pruned weights score −1."""
    import torch

    from prunecli.progress import NoProgress
    from prunecli.scoring.functional import keep_top, leaf_weights, step_counts

    progress = progress or NoProgress()
    theta0 = {n: w.detach() for n, w in leaf_weights(model, names).items()}
    masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in theta0.items()}
    schedule = snip_it_schedule(1.0 - density, steps)
    total = sum(w.numel() for w in theta0.values())
    for sparsity, keep in zip(
        schedule, step_counts(total, [1.0 - s for s in schedule], "force"), strict=True
    ):
        current = {n: (w * masks[n]).requires_grad_(True) for n, w in theta0.items()}
        value, grads = loss_and_gradient(model, current, batches, loss, progress)
        scale = 1.0 / abs(value) if value != 0 else 1.0
        scores = {
            n: torch.where(masks[n], (current[n].detach() * grads[n]).abs() * scale, -1.0) for n in names
        }
        masks = {n: kept & masks[n] for n, kept in keep_top(scores, keep).items()}
        yield sparsity, scores, masks


def snip_it_scores(
    model: torch.nn.Module,
    names: list[str],
    batches: list[Batch],
    density: float,
    steps: int = DEFAULT_STEPS,
    loss: str = "ce",
    progress: object = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(last step's elasticity, final masks) of SNIP-it at the target `density`.

    Args:
        density: the fraction kept at the end (1 − s*).
        steps: S, the number of halvings of the schedule (5 in the reference).

    Example:
        >>> scores, masks = snip_it_scores(model, ["fc1.weight", "fc2.weight"], [(x, y)], density=0.05)
    """
    *_, (_, scores, masks) = snip_it_steps(model, names, batches, density, steps, loss, progress)
    return scores, masks


def loss_and_gradient(
    model: torch.nn.Module,
    weights: dict[str, torch.Tensor],
    batches: list[Batch],
    loss: str,
    progress: object,
) -> tuple[float, dict[str, torch.Tensor]]:
    """(L, ∂L/∂w), both averaged over the batches."""
    import torch

    from prunecli.scoring.functional import batch_loss

    total = {n: torch.zeros_like(w) for n, w in weights.items()}
    value = 0.0
    for batch in batches:
        batch_value = batch_loss(model, weights, batch, loss)
        for name, grad in zip(weights, torch.autograd.grad(batch_value, list(weights.values())), strict=True):
            total[name] += grad
        value += float(batch_value.detach())
        progress.advance()
    return value / len(batches), {n: g / len(batches) for n, g in total.items()}


@register_model_method(
    "snip-it",
    summary="iterative elasticity |g⊙θ|/L on a halving sparsity schedule: masks only shrink",
    paper="Verdenius et al. 2020 (arXiv:2006.00896)",
    data="batches",
    labels="optional",
    bn_mode="eval",
    iterative=True,
    returns="masks",
    options=SnipItOptions,
    requirements=(f"`iterations` S ({DEFAULT_STEPS})",),
)
def snip_it_method(ctx: ScoringContext, options: SnipItOptions) -> ScoreResult:
    from prunecli.calibration.context import ScoreResult

    steps = options.iterations
    ctx.progress.stage(
        "SNIP-it: steps × batches", len(snip_it_schedule(1 - ctx.density, steps)) * len(ctx.batches)
    )
    scores, masks = snip_it_scores(
        ctx.model, ctx.names, ctx.batches, ctx.density, steps, ctx.loss, ctx.progress
    )
    return ScoreResult(scores, masks)
