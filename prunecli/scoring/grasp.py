"""GraSP: gradient signal preservation, keep-score θ⊙(Hg) (Wang et al. 2020, ICLR).

The reference removes the highest −θ⊙Hg, so the keep-score is +θ⊙Hg (methods.md §3). H and
g are taken on logits divided by a temperature T (200 by default). Hg is a Hessian-gradient
product: g = Σ_b ∇L_b is detached, then Hg = Σ_b ∇(g·∇L_b). One batch means one batch: no
hidden halving. The reference scores in train mode (BN on batch statistics). Its
normalisation by |ΣS| leaves the ranking as is, so raw θ⊙Hg is returned.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prunecli.scoring.registry import register_model_method

if TYPE_CHECKING:
    import torch

    from prunecli.calibration.context import Batch, ScoreResult, ScoringContext


def grasp_scores(
    model: torch.nn.Module,
    names: list[str],
    batches: list[Batch],
    loss: str = "ce",
    temperature: float = 200.0,
    progress: object = None,
) -> dict[str, torch.Tensor]:
    """Keep-scores +θ⊙Hg summed over `batches` (higher = keep)."""
    import torch

    from prunecli.progress import NoProgress
    from prunecli.scoring.functional import batch_loss, leaf_weights

    progress = progress or NoProgress()
    theta = leaf_weights(model, names)
    leaves = list(theta.values())
    g = [torch.zeros_like(w) for w in leaves]
    for batch in batches:  # pass 1: g, detached
        grads = torch.autograd.grad(batch_loss(model, theta, batch, loss, temperature), leaves)
        for total, grad in zip(g, grads, strict=True):
            total += grad
        progress.advance()
    hg = [torch.zeros_like(w) for w in leaves]
    for batch in batches:  # pass 2: Hg = ∇(g · ∇L_b)
        grads = torch.autograd.grad(
            batch_loss(model, theta, batch, loss, temperature), leaves, create_graph=True
        )
        z = sum((gd * gr).sum() for gd, gr in zip(g, grads, strict=True))
        for total, part in zip(hg, torch.autograd.grad(z, leaves), strict=True):
            total += part
        progress.advance()
    return {n: w.detach() * h for (n, w), h in zip(theta.items(), hg, strict=True)}


@register_model_method(
    "grasp",
    summary="θ⊙Hg: keep weights whose removal would most reduce gradient flow (T=200)",
    paper="Wang et al. 2020 (ICLR)",
    needs="--arch and --data (labels optional)",
    data="batches",
    bn_mode="train",
)
def grasp_method(ctx: ScoringContext) -> ScoreResult:
    from prunecli.calibration.context import ScoreResult

    ctx.progress.stage("GraSP: Hessian-gradient products", 2 * len(ctx.batches))
    return ScoreResult(
        grasp_scores(ctx.model, ctx.names, ctx.batches, ctx.loss, ctx.temperature, ctx.progress)
    )
