"""Losses and gradients with respect to chosen weights, through `torch.func.functional_call`.

Scorers swap in their own weight tensors (θ, θ⊙m, |θ|) without touching the module's
parameters, so scoring never edits the model it was given.
"""

from __future__ import annotations

import math

import torch

from prunecli.calibration.context import Batch
from prunecli.calibration.forward import forward
from prunecli.calibration.losses import compute_loss
from prunecli.scoring.topk import topk_masks
from prunecli.selection.threshold import keep_count


def leaf_weights(model: torch.nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """Detached copies of the named parameters that require grad (the scoring leaves)."""
    params = dict(model.named_parameters())
    return {n: params[n].detach().clone().requires_grad_(True) for n in names}


def batch_loss(
    model: torch.nn.Module,
    weights: dict[str, torch.Tensor],
    batch: Batch,
    loss: str,
    temperature: float = 1.0,
) -> torch.Tensor:
    """The loss of one batch with `weights` in place of the model's own."""
    inputs, labels = batch
    logits = forward(model, inputs, weights)  # (B, K), or (B, T, V) for a language model
    return compute_loss(loss, logits / temperature, labels)


def mean_gradient(
    model: torch.nn.Module,
    weights: dict[str, torch.Tensor],
    batches: list[Batch],
    loss: str,
    progress: object,
    wrt: list[str] | None = None,
) -> dict[str, torch.Tensor]:
    """The signed gradient averaged over batches (multi-batch variant (a) of methods.md §2).

    `wrt` names the weights to differentiate (default: all of `weights`); the others still
    take part in the forward pass, with no gradient computed for them.
    """
    return loss_and_gradient(model, weights, batches, loss, progress, wrt)[1]


def loss_and_gradient(
    model: torch.nn.Module,
    weights: dict[str, torch.Tensor],
    batches: list[Batch],
    loss: str,
    progress: object,
    wrt: list[str] | None = None,
) -> tuple[float, dict[str, torch.Tensor]]:
    """(L, ∂L/∂w), both averaged over the batches, as 0 + Σ over batches, then ÷ the count;
    `wrt` as in `mean_gradient`. Under torch.distributed each rank sums its share of the
    batches and the sums are added across ranks (`prunecli.distributed`)."""
    from prunecli.distributed import add_across, share, world_size

    names = list(weights) if wrt is None else wrt
    total: dict[str, torch.Tensor] = {}
    value = 0.0
    for batch in share(batches):  # this rank's batches (all of them in one process)
        batch_value = batch_loss(model, weights, batch, loss)
        grads = torch.autograd.grad(batch_value, [weights[n] for n in names]) if names else ()
        for name, grad in zip(names, grads, strict=True):
            if name in total:
                total[name] += grad
            else:
                total[name] = grad + 0.0  # 0 + g: -0.0 becomes +0.0, as a running sum from zero
        value += float(batch_value.detach())
        progress.advance()
    if world_size() > 1:
        device = next(iter(weights.values())).device
        summed = torch.tensor([value], dtype=torch.float64, device=device)
        add_across([*total.values(), summed])
        value = float(summed)
    return value / len(batches), {n: g.div_(len(batches)) for n, g in total.items()}


def global_topk(scores: dict[str, torch.Tensor], density: float) -> dict[str, torch.Tensor]:
    """Exact global top-k masks (k = round(N·d)) by the same rule as `apply`."""
    return keep_top(scores, keep_count(sum(s.numel() for s in scores.values()), density))


def keep_top(scores: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """Exact global masks keeping the k highest scores (ties: lower flat index pruned first)."""
    return dict(zip(scores, topk_masks(list(scores.values()), k), strict=True))


def step_counts(total: int, densities: list[float], reference: str) -> list[int]:
    """How many weights each step of an iterative method keeps.

    Intermediate steps count as the method's reference code does: SynFlow prunes
    ⌊(1−d_t)·N⌋ ("synflow"), FORCE keeps ⌊d_t·N⌋ ("force"). The last step keeps
    round(N·d), exactly what `apply` keeps at that density, so the two agree.
    """
    eps = 1e-9
    if reference == "synflow":
        counts = [total - math.floor((1.0 - d) * total + eps) for d in densities[:-1]]
    else:
        counts = [math.floor(d * total + eps) for d in densities[:-1]]
    return [*counts, keep_count(total, densities[-1])]
