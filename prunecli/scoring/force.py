"""FORCE and Iter-SNIP: iterative connection sensitivity (de Jorge et al. 2021, ICLR).

At each step t = 1..T the network computes w = θ₀⊙m, the gradient is averaged over the
calibration batches, and the mask becomes the global top d_t (exponential schedule by
default, methods.md §5).
- FORCE: S = |θ₀⊙∇_w L|, so pruned weights still get a gradient and can be revived.
- Iter-SNIP: S = |w⊙∇_w L| with pruned weights ranked below every other, so masks only
  shrink.
The reference scores in train mode. Higher = keep.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from prunecli.distributed import share
from prunecli.scoring.options import IterativeOptions
from prunecli.scoring.registry import register_model_method

if TYPE_CHECKING:
    import torch

    from prunecli.calibration.context import Batch, ScoreResult, ScoringContext


@dataclass(frozen=True)
class ForceOptions(IterativeOptions):
    """FORCE and Iter-SNIP: 10 exponential steps by default (methods.md §5)."""

    iterations: int = 10


def iterative_snip_scores(
    model: torch.nn.Module,
    names: list[str],
    batches: list[Batch],
    density: float,
    iterations: int,
    *,
    revive: bool,
    schedule: str = "exp",
    loss: str = "ce",
    progress: object = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(last step's scores, final masks); `revive=True` is FORCE, False is Iter-SNIP.

    Iter-SNIP differentiates only the tensors with a weight alive. Masks and scores are the
    plain loop's (score every weight, `keep_top`), bit for bit (`MaskedLeaves`).

    Example:
        >>> scores, masks = iterative_snip_scores(model, names, [(x, y)], 0.05, 10, revive=True)
    """
    from prunecli.calibration.context import schedule_densities
    from prunecli.progress import NoProgress
    from prunecli.scoring.functional import mean_gradient, step_counts
    from prunecli.scoring.iterative import MaskedLeaves

    progress = progress or NoProgress()
    params = dict(model.named_parameters())
    theta0 = {n: params[n].detach() for n in names}
    # FORCE: S = |θ₀⊙g|, pruned weights may return; Iter-SNIP: pruned weights rank below all
    weights = MaskedLeaves(theta0, dead=None if revive else -1.0, revive=revive)
    total = sum(w.numel() for w in weights.leaves.values())
    counts = step_counts(total, schedule_densities(density, iterations, schedule), "force")
    for step, keep in enumerate(counts):
        grads = mean_gradient(model, weights.leaves, batches, loss, progress, wrt=weights.active())
        weights.score(grads)
        weights.select(keep, final=step == len(counts) - 1)
    return weights.scores(), weights.masks()


def _run(ctx: ScoringContext, options: ForceOptions, revive: bool) -> ScoreResult:
    from prunecli.calibration.context import ScoreResult

    ctx.progress.stage(
        f"{'FORCE' if revive else 'Iter-SNIP'}: steps × batches", options.iterations * len(share(ctx.batches))
    )
    scores, masks = iterative_snip_scores(
        ctx.model, ctx.names, ctx.batches, ctx.density, options.iterations,
        revive=revive, schedule=options.schedule, loss=ctx.loss, progress=ctx.progress,
    )  # fmt: skip
    return ScoreResult(scores, masks)


@register_model_method(
    "force",
    summary="iterative |θ₀⊙∇L(θ₀⊙m)|: pruned weights may be revived",
    paper="de Jorge et al. 2021 (ICLR)",
    data="batches",
    labels="optional",
    bn_mode="train",
    iterative=True,
    returns="masks",
    options=ForceOptions,
)
def force_method(ctx: ScoringContext, options: ForceOptions) -> ScoreResult:
    return _run(ctx, options, revive=True)


@register_model_method(
    "iter-snip",
    summary="iterative SNIP on the masked network: masks only shrink",
    paper="de Jorge et al. 2021 (ICLR)",
    data="batches",
    labels="optional",
    bn_mode="train",
    iterative=True,
    returns="masks",
    options=ForceOptions,
)
def iter_snip_method(ctx: ScoringContext, options: ForceOptions) -> ScoreResult:
    return _run(ctx, options, revive=False)
