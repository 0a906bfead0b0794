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

from prunecli.distributed import share
from prunecli.scoring.options import MethodOptions, check_counts
from prunecli.scoring.registry import register_model_method

if TYPE_CHECKING:
    import torch

    from prunecli.calibration.context import Batch, ScoreResult, ScoringContext
    from prunecli.scoring.iterative import MaskedLeaves

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
    for sparsity, weights in _steps(model, names, batches, density, steps, loss, progress, every=True):
        yield sparsity, _copies(weights.scores()), _copies(weights.masks())


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
    *_, (_, weights) = _steps(model, names, batches, density, steps, loss, progress, every=False)
    return weights.scores(), weights.masks()


def _steps(
    model: torch.nn.Module,
    names: list[str],
    batches: list[Batch],
    density: float,
    steps: int,
    loss: str,
    progress: object,
    every: bool,
) -> Iterator[tuple[float, MaskedLeaves]]:
    """The steps of SNIP-it, each yielding the loop's state. Masks only shrink, and tensors
    pruned away entirely get no gradient. Pruned weights get their −1 at every step with
    `every` (each step's scores are reported), else at the last."""
    from prunecli.progress import NoProgress
    from prunecli.scoring.functional import loss_and_gradient, step_counts
    from prunecli.scoring.iterative import MaskedLeaves

    progress = progress or NoProgress()
    params = dict(model.named_parameters())
    weights = MaskedLeaves({n: params[n].detach() for n in names}, dead=-1.0)
    schedule = snip_it_schedule(1.0 - density, steps)
    total = sum(w.numel() for w in weights.leaves.values())
    counts = step_counts(total, [1.0 - s for s in schedule], "force")
    for step, (sparsity, keep) in enumerate(zip(schedule, counts, strict=True)):
        value, grads = loss_and_gradient(model, weights.leaves, batches, loss, progress, weights.active())
        weights.score(grads, 1.0 / abs(value) if value != 0 else 1.0)
        weights.select(keep, shrink=True, final=every or step == len(counts) - 1)
        yield sparsity, weights


def _copies(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: t.clone() for n, t in tensors.items()}


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
        "SNIP-it: steps × batches", len(snip_it_schedule(1 - ctx.density, steps)) * len(share(ctx.batches))
    )
    scores, masks = snip_it_scores(
        ctx.model, ctx.names, ctx.batches, ctx.density, steps, ctx.loss, ctx.progress
    )
    return ScoreResult(scores, masks)
