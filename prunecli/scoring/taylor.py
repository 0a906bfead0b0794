"""Taylor importance (g⊙θ)² and its empirical-Fisher variant (Molchanov et al. 2019, CVPR,
"Importance Estimation for Neural Network Pruning").

- Default: I_j = (ḡ_j·θ_j)², ḡ the gradient of the mean loss, averaged over the calibration
  batches (methods.md §8). A group's "sum of squares" criterion is the sum of these over the
  group; the gate criterion (Σ g·θ)² needs the signed products, not these scores.
- `fisher=True`: the mean over samples of the per-sample (g_i,j·θ_j)², i.e. θ_j²·F_jj with
  F_jj the empirical Fisher diagonal; per-sample gradients come from
  `torch.func.vmap(torch.func.grad(...))`. The two differ: the square of a mean is not the mean
  of squares (methods.md §7 table).
Needs calibration batches (labels optional). Eval mode (per-sample gradients have no batch
statistics, so train-mode batch norm is refused with the Fisher variant). Higher = keep.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from prunecli.distributed import add_across, share
from prunecli.scoring.options import MethodOptions, option
from prunecli.scoring.registry import register_model_method

if TYPE_CHECKING:
    import torch

    from prunecli.calibration.context import Batch, ScoreResult, ScoringContext


@dataclass(frozen=True)
class TaylorOptions(MethodOptions):
    """`fisher`: the empirical-Fisher variant; `chunk_size` (not recorded): examples whose
    per-sample gradients are held at once."""

    fisher: bool = False
    chunk_size: int | None = option(None, recorded=False)


def taylor_scores(
    model: torch.nn.Module,
    names: list[str],
    batches: list[Batch],
    loss: str = "ce",
    fisher: bool = False,
    chunk_size: int | None = None,
    progress: object = None,
) -> dict[str, torch.Tensor]:
    """(ḡ⊙θ)² for each named weight, or with `fisher` the mean over samples of (g_i⊙θ)².

    Args:
        chunk_size: examples whose per-sample gradients are held at once (Fisher only);
            by default as many as fit in about 2^26 numbers.

    Example:
        >>> scores = taylor_scores(model, ["fc1.weight", "fc2.weight"], [(x, y)], fisher=True)
    """
    from prunecli.progress import NoProgress
    from prunecli.scoring.functional import leaf_weights, mean_gradient

    progress = progress or NoProgress()
    if fisher:
        theta = {n: w.detach() for n, w in leaf_weights(model, names).items()}
        diagonal = empirical_fisher(model, names, batches, loss, chunk_size, progress)
        return {n: theta[n] ** 2 * diagonal[n] for n in names}
    theta = leaf_weights(model, names)
    grads = mean_gradient(model, theta, batches, loss, progress)
    return {n: (grads[n] * theta[n].detach()) ** 2 for n in names}


def empirical_fisher(
    model: torch.nn.Module,
    names: list[str],
    batches: list[Batch],
    loss: str = "ce",
    chunk_size: int | None = None,
    progress: object = None,
) -> dict[str, torch.Tensor]:
    """F_jj = mean over every example of the per-sample squared gradient g_i,j².

    Example:
        >>> diagonal = empirical_fisher(model, ["fc1.weight"], [(x, y)])
    """
    import torch
    from torch.func import functional_call, grad, vmap

    from prunecli.calibration.forward import logits_of
    from prunecli.calibration.losses import compute_loss
    from prunecli.progress import NoProgress
    from prunecli.scoring.exact import vmappable

    progress = progress or NoProgress()
    _refuse_train_mode_batch_norm(model)
    net = vmappable(model)
    params = dict(model.named_parameters())
    theta = {n: params[n].detach() for n in names}
    chunk = chunk_size or _default_chunk(sum(w.numel() for w in theta.values()))

    def sample_loss(w: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        logits = logits_of(functional_call(net, w, (x.unsqueeze(0),), strict=False))  # (1, K) or (1, T, V)
        return compute_loss(loss, logits, None if y is None else y.unsqueeze(0))

    total = {n: torch.zeros_like(w) for n, w in theta.items()}
    count = 0
    for inputs, labels in share(batches):  # this rank's (all of them in one process)
        for start in range(0, len(inputs), chunk):
            x = inputs[start : start + chunk]
            y = None if labels is None else labels[start : start + chunk]
            per_sample = vmap(grad(sample_loss), in_dims=(None, 0, None if y is None else 0))(theta, x, y)
            for name, g in per_sample.items():  # g: (c, *shape)
                total[name] += (g**2).sum(0)
            count += len(x)
            progress.advance()
    counted = torch.tensor([float(count)], dtype=torch.float64, device=next(iter(theta.values())).device)
    add_across([*total.values(), counted])
    return {n: t / counted.item() for n, t in total.items()}


def fisher_chunks(batches: list[Batch], chunk_size: int | None, total_params: int) -> int:
    """How many per-sample-gradient chunks `empirical_fisher` runs (for progress bars)."""
    chunk = chunk_size or _default_chunk(total_params)
    return sum(-(-len(inputs) // chunk) for inputs, _ in batches)


def _default_chunk(total_params: int) -> int:
    return max(1, min(256, 2**26 // max(1, total_params)))


def _refuse_train_mode_batch_norm(model: torch.nn.Module) -> None:
    from torch.nn.modules.batchnorm import _BatchNorm

    from prunecli.errors import UsageError

    if model.training and any(isinstance(m, _BatchNorm) for m in model.modules()):
        raise UsageError(
            "per-sample gradients (the empirical Fisher) are undefined with train-mode batch norm",
            "use `bn_mode` eval",
            option="bn_mode",
            value="train",
        )


@register_model_method(
    "taylor",
    summary="(g⊙θ)²: first-order Taylor importance; `fisher`: mean of per-sample (g⊙θ)²",
    paper="Molchanov et al. 2019 (CVPR)",
    data="batches",
    labels="optional",
    bn_mode="eval",
    options=TaylorOptions,
    requirements=("`fisher` for the empirical Fisher",),
)
def taylor_method(ctx: ScoringContext, options: TaylorOptions) -> ScoreResult:
    from prunecli.calibration.context import ScoreResult

    fisher, chunk = bool(options.fisher), options.chunk_size
    if fisher:
        total = sum(p.numel() for n, p in ctx.model.named_parameters() if n in set(ctx.names))
        chunks = fisher_chunks(share(ctx.batches), chunk, total)
        ctx.progress.stage("Taylor: per-sample gradients (Fisher)", chunks)
    else:
        ctx.progress.stage("Taylor: gradients", len(share(ctx.batches)))
    return ScoreResult(
        taylor_scores(ctx.model, ctx.names, ctx.batches, ctx.loss, fisher, chunk, ctx.progress)
    )
