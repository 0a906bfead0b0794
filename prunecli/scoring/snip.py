"""SNIP: connection sensitivity |g⊙θ| (Lee et al. 2019, ICLR).

S_j = |∂L/∂c_j| at c = 1 for the network θ⊙c, which equals |g_j·θ_j|. With several batches
the signed gradient is averaged first, then scored (multi-batch variant (a), methods.md §2).
Needs labelled calibration batches (or an unsupervised loss). BN in eval mode, as in the
reference. Higher = keep. The reference normalises by Σ S, which leaves the ranking as is,
so raw |g⊙θ| is returned.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prunecli.distributed import share
from prunecli.scoring.options import NoOptions
from prunecli.scoring.registry import register_model_method

if TYPE_CHECKING:
    import torch

    from prunecli.calibration.context import Batch, ScoreResult, ScoringContext


def snip_scores(
    model: torch.nn.Module, names: list[str], batches: list[Batch], loss: str = "ce", progress: object = None
) -> dict[str, torch.Tensor]:
    """|ḡ⊙θ| for each named weight, ḡ the gradient averaged over `batches`.

    Example:
        >>> scores = snip_scores(model, ["fc1.weight", "fc2.weight"], [(x, y)])
    """
    from prunecli.progress import NoProgress
    from prunecli.scoring.functional import leaf_weights, mean_gradient

    theta = leaf_weights(model, names)
    grads = mean_gradient(model, theta, batches, loss, progress or NoProgress())
    return {n: (grads[n] * theta[n].detach()).abs() for n in names}


@register_model_method(
    "snip",
    summary="|g⊙θ|: connection sensitivity (gradient averaged over batches)",
    paper="Lee et al. 2019 (ICLR)",
    data="batches",
    labels="optional",
    bn_mode="eval",
)
def snip_method(ctx: ScoringContext, options: NoOptions) -> ScoreResult:
    from prunecli.calibration.context import ScoreResult

    ctx.progress.stage("SNIP: gradients", len(share(ctx.batches)))
    return ScoreResult(snip_scores(ctx.model, ctx.names, ctx.batches, ctx.loss, ctx.progress))
