"""Approximate dynamical isometry (Lee et al. 2020, ICLR; methods.md §12): the data-free fix of a
pruned network's signal propagation, and `apply --isometry-steps`, which runs it per tensor.

`approximate_isometry` minimises Σ_l ‖(C_l⊙W_l)(C_l⊙W_l)ᵀ − I‖_F by plain SGD on the masked
weights; pruned entries stay exactly zero. Layers do not interact, so apply runs it tensor by
tensor inside its streaming pass. Imports torch only when used.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from prunecli.errors import InputError, UsageError

if TYPE_CHECKING:
    import torch

_SAME_MODEL = "the masks were made for another model or configuration; prune this model's checkpoint"
Refiner = Callable[[str, np.ndarray, np.ndarray, str], np.ndarray]


def isometry_refiner(steps: int, lr: float) -> tuple[Refiner, dict[str, Any]]:
    """A per-tensor refiner for apply, and the report it fills (for the manifest)."""
    report: dict[str, Any] = {
        "steps": steps,
        "lr": lr,
        "penalty_before": 0.0,
        "penalty_after": 0.0,
        "layers": [],
    }

    def refine(name: str, raw: np.ndarray, mask: np.ndarray, dtype: str) -> np.ndarray:
        import torch

        from prunecli.io.torch_files import raw_to_torch, torch_to_raw

        weight = raw_to_torch(raw, dtype)
        new, layer = approximate_isometry({name: weight}, {name: torch.from_numpy(mask.copy())}, steps, lr)
        report["penalty_before"] += layer["penalty_before"]
        report["penalty_after"] += layer["penalty_after"]
        report["layers"] += layer["layers"]
        return torch_to_raw(new[name])

    return refine, report


def isometry_penalty(weight: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """‖(C⊙W)(C⊙W)ᵀ − I_out‖_F for one weight, W viewed as (out, −1) (unsquared)."""
    import torch

    w = _matrix(weight, mask).double()  # (out, d)
    return float(torch.linalg.matrix_norm(w @ w.T - torch.eye(w.shape[0], dtype=w.dtype, device=w.device)))


def _matrix(weight: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    w = weight.detach() if mask is None else weight.detach() * mask.to(weight.device, weight.dtype)
    return w.reshape(w.shape[0], -1)  # (out, in·kh·kw)


def isometry_gradient(weight: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(∂/∂W ‖(C⊙W)(C⊙W)ᵀ − I‖_F, the penalty), the gradient shaped like `weight`.

    Analytically 2·C⊙(AM)/‖A‖_F with M = C⊙W (out, d) and A = MMᵀ − I; computed by autograd
    of `torch.linalg.norm`, the arithmetic `approximate_isometry` steps with.
    """
    grad, penalty = _penalty_grad(weight.detach(), mask.to(weight.device, weight.dtype))
    return grad, float(penalty)


def _penalty_grad(w: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    w = w.detach().requires_grad_(True)
    with torch.enable_grad():
        m = (w * c).reshape(w.shape[0], -1)  # (out, d)
        eye = torch.eye(m.shape[0], dtype=m.dtype, device=m.device)
        penalty = torch.linalg.norm(m @ m.T - eye)  # unsquared Frobenius norm
        (grad,) = torch.autograd.grad(penalty, w)
    return grad, penalty.detach()


def _sv_summary(weight: torch.Tensor) -> dict[str, float]:
    import torch

    sv = torch.linalg.svdvals(weight.reshape(weight.shape[0], -1).double())
    return {"min": float(sv.min()), "max": float(sv.max()), "mean": float(sv.mean())}


def approximate_isometry(
    weights: Mapping[str, torch.Tensor],
    masks: Mapping[str, Any],
    steps: int,
    lr: float = 0.1,
    progress: object = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Enforce approximate dynamical isometry on pruned weights, data-free ([SPP] §12).

    Minimises Σ_l ‖(C_l⊙W_l)(C_l⊙W_l)ᵀ − I‖_F (unsquared Frobenius norm; PyTorch layout, W_l
    viewed as (out, −1)) by plain SGD: W ← W − lr·∇, `steps` times. The layers do not interact,
    so each is optimised on its own. The work runs in float64 on each weight's device; results
    come back in the weight's dtype with every pruned entry exactly +0. A layer with more
    outputs than inputs (out > d) cannot reach a zero penalty: WWᵀ has rank at most d.

    Args:
        weights: name → weight (2-D or more: Linear, Conv); every one is optimised. Biases and
            norm weights (1-D) are refused.
        masks: name → bool or 0/1 mask (True = keep); a weight without a mask counts as dense.
        steps: SGD steps (the paper: 10,000); 0 only reports.
        lr: learning rate (the paper: 0.1).
        progress: an object with `stage(description, total)` and `advance()` (one per step).

    Returns:
        (new weights keyed like `weights`, report): `steps`, `lr`, `penalty_before`,
        `penalty_after` (sums over layers), and `layers`: per weight `name`, `shape`,
        `penalty_before`, `penalty_after`, `singular_values_before` and `singular_values_after`
        (`min`, `max`, `mean` of the singular values of C⊙W viewed as (out, −1)).

    Raises:
        UsageError: steps < 0 or lr not positive and finite.
        InputError: a mask for no weight, a mask of another shape, or a 1-D weight.

    Example:
        >>> new, report = approximate_isometry({"fc1.weight": w1, "fc2.weight": w2}, masks, 10000)
        >>> report["penalty_before"], report["penalty_after"]
    """
    from prunecli.progress import NoProgress
    from prunecli.training.masks import load_masks

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise UsageError(f"isometry steps must be a whole number >= 0, not {steps!r}", "e.g. 10000")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise UsageError(f"isometry learning rate must be positive, not {lr!r}", "e.g. 0.1")
    loaded = load_masks(masks)
    _check_isometry_inputs(weights, loaded)
    progress = progress or NoProgress()
    new, layers = {}, []
    for name, weight in weights.items():
        progress.stage(f"isometry: {name}", steps)
        new[name], record = _isometry_layer(name, weight, loaded.get(name), steps, lr, progress)
        layers.append(record)
    report = {
        "steps": steps,
        "lr": lr,
        "penalty_before": sum(r["penalty_before"] for r in layers),
        "penalty_after": sum(r["penalty_after"] for r in layers),
        "layers": layers,
    }
    return new, report


def _check_isometry_inputs(weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> None:
    for name in masks:
        if name not in weights:
            raise InputError(
                f"mask {name!r} has no weight among the ones given", "pass its weight, or drop it"
            )
    for name, weight in weights.items():
        if weight.dim() < 2 or not weight.is_floating_point():
            raise InputError(
                f"{name!r} is a {weight.dim()}-D {weight.dtype} tensor; isometry applies to float weight "
                "matrices and conv kernels",
                "leave biases and norm weights out (the paper excludes them)",
            )
        if name in masks and tuple(masks[name].shape) != tuple(weight.shape):
            raise InputError(
                f"mask {name!r} has shape {list(masks[name].shape)}, but the weight has shape "
                f"{list(weight.shape)}",
                _SAME_MODEL,
            )


def _isometry_layer(
    name: str, weight: torch.Tensor, mask: torch.Tensor | None, steps: int, lr: float, progress: Any
) -> tuple[torch.Tensor, dict[str, Any]]:
    """SGD on one layer in float64; returns the weight in its own dtype and the layer's record."""
    import torch

    keep = torch.ones_like(weight, dtype=torch.bool) if mask is None else mask.to(weight.device)
    c = keep.to(torch.float64)
    w = weight.detach().to(torch.float64).masked_fill(~keep, 0.0)  # (out, ...) pruned: +0, even if NaN
    before = {"penalty": isometry_penalty(w), "sv": _sv_summary(w)}
    for _ in range(steps):
        grad, _ = _penalty_grad(w, c)
        w.add_(grad, alpha=-lr)  # as torch.optim.SGD steps (lr, no momentum)
        progress.advance()
    w.masked_fill_(~keep, 0.0)  # +0, whatever the arithmetic gave
    record = {
        "name": name,
        "shape": list(weight.shape),
        "penalty_before": before["penalty"],
        "penalty_after": isometry_penalty(w),
        "singular_values_before": before["sv"],
        "singular_values_after": _sv_summary(w),
    }
    return w.to(weight.dtype), record
