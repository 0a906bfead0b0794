"""GraSP: gradient signal preservation, keep-score θ⊙(Hg) (Wang et al. 2020, ICLR).

The reference removes the highest −θ⊙Hg, so the keep-score is +θ⊙Hg (methods.md §3). H and
g are taken on logits divided by a temperature T (200 by default). Hg is a Hessian-gradient
product: g = Σ_b ∇L_b is detached, then Hg = Σ_b ∇(g·∇L_b). One batch means one batch: no
hidden halving. The reference scores in train mode (BN on batch statistics). Its
normalisation by |ΣS| leaves the ranking as is, so raw θ⊙Hg is returned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from prunecli.distributed import share
from prunecli.errors import UsageError
from prunecli.scoring.options import MethodOptions
from prunecli.scoring.registry import register_model_method

if TYPE_CHECKING:
    import torch

    from prunecli.calibration.context import Batch, ScoreResult, ScoringContext


DEFAULT_TEMPERATURE = 200.0


@dataclass(frozen=True)
class GraspOptions(MethodOptions):
    """`temperature`: the logits are divided by it before the loss (200 in the reference)."""

    temperature: float = DEFAULT_TEMPERATURE

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise UsageError(f"`temperature` {self.temperature} must be positive", "GraSP uses 200",
                             option="temperature", value=self.temperature)  # fmt: skip


def grasp_scores(
    model: torch.nn.Module,
    names: list[str],
    batches: list[Batch],
    loss: str = "ce",
    temperature: float = DEFAULT_TEMPERATURE,
    progress: object = None,
) -> dict[str, torch.Tensor]:
    """Keep-scores +θ⊙Hg summed over `batches` (higher = keep)."""
    import torch

    from prunecli.distributed import add_across
    from prunecli.progress import NoProgress
    from prunecli.scoring.functional import batch_loss, leaf_weights

    progress = progress or NoProgress()
    theta = leaf_weights(model, names)
    leaves = list(theta.values())
    batches = share(batches)  # this rank's (all of them in one process); sums added across ranks
    g = [torch.zeros_like(w) for w in leaves]
    for batch in batches:  # pass 1: g, detached
        grads = torch.autograd.grad(batch_loss(model, theta, batch, loss, temperature), leaves)
        for total, grad in zip(g, grads, strict=True):
            total += grad
        progress.advance()
    add_across(g)
    hg = [torch.zeros_like(w) for w in leaves]
    for batch in batches:  # pass 2: Hg = ∇(g · ∇L_b)
        grads = torch.autograd.grad(
            batch_loss(model, theta, batch, loss, temperature), leaves, create_graph=True
        )
        z = sum((gd * gr).sum() for gd, gr in zip(g, grads, strict=True))
        for total, part in zip(hg, torch.autograd.grad(z, leaves), strict=True):
            total += part
        progress.advance()
    add_across(hg)
    return {n: w.detach() * h for (n, w), h in zip(theta.items(), hg, strict=True)}


@register_model_method(
    "grasp",
    summary="θ⊙Hg: keep weights whose removal would most reduce gradient flow (T=200)",
    paper="Wang et al. 2020 (ICLR)",
    data="batches",
    labels="optional",
    bn_mode="train",
    second_order=True,
    options=GraspOptions,
)
def grasp_method(ctx: ScoringContext, options: GraspOptions) -> ScoreResult:
    from prunecli.calibration.context import ScoreResult

    ctx.progress.stage("GraSP: Hessian-gradient products", 2 * len(share(ctx.batches)))
    return ScoreResult(
        grasp_scores(ctx.model, ctx.names, ctx.batches, ctx.loss, options.temperature, ctx.progress)
    )
