"""Optimal Brain Damage: ½·θ_j²·H_jj (LeCun, Denker & Solla 1990, NeurIPS).

OBD's score is the second-order estimate of the loss increase caused by removing weight j,
assuming g ≈ 0 (a trained network) and a diagonal Hessian (methods.md §7). Higher = keep: a
larger estimated increase matters more. H_jj may be negative away from a minimum; the score is
kept signed, so such weights (whose removal is estimated to lower the loss) go first.

The Hessian diagonal of the mean loss over the calibration batches comes from:
- `hessian="exact"`: one Hessian-vector product per weight (batched with torch.func); for
  small models only, refused above `max_params` (100,000 by default);
- `hessian="hutchinson"`: E[v⊙Hv] over K Rademacher vectors v (seeded), any size;
- `hessian="fisher"`: the empirical Fisher F_jj, mean of per-sample g² (as Torch-Pruning's
  GroupHessianImportance, which also drops the ½).
`first_order=True` is the at-initialisation variant ΔL_j ≈ −g_j·θ_j + ½·θ_j²·H_jj: the signed
estimated loss change of setting θ_j to zero, negative where removal is estimated to help.
Needs calibration batches (labels optional). Eval mode.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prunecli.distributed import add_across, mine, share
from prunecli.scoring.options import MethodOptions, check_counts, option
from prunecli.scoring.registry import register_model_method

if TYPE_CHECKING:
    import torch

    from prunecli.calibration.context import Batch, ScoreResult, ScoringContext

HESSIANS = ("exact", "hutchinson", "fisher")
DEFAULT_SAMPLES = 100
DEFAULT_EXACT_LIMIT = 100_000


@dataclass(frozen=True)
class ObdOptions(MethodOptions):
    """How OBD gets its Hessian diagonal (see the module's docstring).

    Recorded: `hessian`, `obd_first_order`, and `hutchinson_samples` with the Hutchinson
    estimate only. Not recorded: `max_params` and `chunk_size` (they never change the scores).
    """

    hessian: str = "exact"
    hutchinson_samples: int = DEFAULT_SAMPLES
    first_order: bool = option(False, key="obd_first_order")
    max_params: int = option(DEFAULT_EXACT_LIMIT, recorded=False)
    chunk_size: int | None = option(None, recorded=False)

    def __post_init__(self) -> None:
        _check_hessian(self.hessian)
        check_counts(hutchinson_samples=self.hutchinson_samples, max_params=self.max_params)

    def params(self) -> dict[str, Any]:
        recorded = super().params()
        if self.hessian != "hutchinson":
            del recorded["hutchinson_samples"]
        return recorded


def obd_scores(
    model: torch.nn.Module,
    names: list[str],
    batches: list[Batch],
    loss: str = "ce",
    *,
    hessian: str = "exact",
    first_order: bool = False,
    samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
    max_params: int = DEFAULT_EXACT_LIMIT,
    chunk_size: int | None = None,
    progress: object = None,
) -> dict[str, torch.Tensor]:
    """½θ²H_jj for each named weight, or with `first_order` −gθ + ½θ²H_jj.

    Args:
        hessian: "exact", "hutchinson" (`samples` Rademacher vectors from `seed`) or "fisher".
        max_params: the most weights the exact Hessian diagonal accepts.

    Example:
        >>> scores = obd_scores(model, ["fc1.weight", "fc2.weight"], [(x, y)], hessian="exact")
    """
    from prunecli.progress import NoProgress
    from prunecli.scoring.functional import leaf_weights, mean_gradient

    progress = progress or NoProgress()
    diagonal = hessian_diagonal(
        model, names, batches, loss, hessian=hessian, samples=samples, seed=seed,
        max_params=max_params, chunk_size=chunk_size, progress=progress,
    )  # fmt: skip
    theta = leaf_weights(model, names)
    scores = {n: 0.5 * theta[n].detach() ** 2 * diagonal[n] for n in names}
    if first_order:
        grads = mean_gradient(model, theta, batches, loss, progress)
        scores = {n: s - grads[n] * theta[n].detach() for n, s in scores.items()}
    return scores


def hessian_diagonal(
    model: torch.nn.Module,
    names: list[str],
    batches: list[Batch],
    loss: str = "ce",
    *,
    hessian: str = "exact",
    samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
    max_params: int = DEFAULT_EXACT_LIMIT,
    chunk_size: int | None = None,
    progress: object = None,
) -> dict[str, torch.Tensor]:
    """H_jj of the loss averaged over `batches`, for each named weight (see `obd_scores`)."""
    from prunecli.progress import NoProgress
    from prunecli.scoring.exact import vmappable
    from prunecli.scoring.taylor import empirical_fisher

    progress = progress or NoProgress()
    _check_hessian(hessian)
    check_counts(hutchinson_samples=samples, max_params=max_params)
    if hessian == "fisher":
        return empirical_fisher(model, names, batches, loss, chunk_size, progress)
    params = dict(model.named_parameters())
    theta = {n: params[n].detach() for n in names}
    total = sum(w.numel() for w in theta.values())
    if hessian == "exact" and total > max_params:
        raise _too_many(total, max_params)
    net, chunk = vmappable(model), chunk_size or max(1, min(64, 2**24 // total))
    flat = _exact(net, theta, batches, loss, chunk, progress) if hessian == "exact" else (
        _hutchinson(net, theta, batches, loss, samples, seed, chunk, progress)
    )  # fmt: skip
    return _unflatten(flat, theta)


def progress_steps(
    hessian: str, batches: list[Batch], total: int, samples: int, chunk_size: int | None
) -> int:
    """How many times `hessian_diagonal` advances the progress bar (Fisher excluded)."""
    chunk = chunk_size or max(1, min(64, 2**24 // max(1, total)))
    return len(batches) * -(-(total if hessian == "exact" else samples) // chunk)


def _exact(
    net: torch.nn.Module,
    theta: dict[str, torch.Tensor],
    batches: list[Batch],
    loss: str,
    chunk: int,
    progress: object,
) -> torch.Tensor:
    """diag H as one flat vector: H e_j for a chunk of basis vectors e_j at a time."""
    import torch
    from torch.func import vmap

    total = sum(w.numel() for w in theta.values())
    first = next(iter(theta.values()))
    diagonal = torch.zeros(total, dtype=first.dtype, device=first.device)  # (N,)
    for batch in share(batches):  # this rank's (all of them in one process)
        hvp = _hvp(net, theta, batch, loss)
        for start in range(0, total, chunk):
            index = torch.arange(start, min(start + chunk, total), device=first.device)  # (c,)
            rows = torch.arange(index.numel(), device=first.device)
            basis = torch.zeros(index.numel(), total, dtype=first.dtype, device=first.device)  # (c, N)
            basis[rows, index] = 1
            diagonal[index] += _flatten(vmap(hvp)(_unflatten(basis, theta)))[rows, index]
            progress.advance()
    add_across([diagonal])
    return diagonal / len(batches)


def _hutchinson(
    net: torch.nn.Module,
    theta: dict[str, torch.Tensor],
    batches: list[Batch],
    loss: str,
    samples: int,
    seed: int,
    chunk: int,
    progress: object,
) -> torch.Tensor:
    """diag H ≈ mean of v⊙Hv over Rademacher v, drawn on the CPU so every device agrees."""
    import torch
    from torch.func import vmap

    total = sum(w.numel() for w in theta.values())
    first = next(iter(theta.values()))
    generator = torch.Generator().manual_seed(seed)
    estimate = torch.zeros(total, dtype=first.dtype, device=first.device)  # (N,)
    for index, batch in enumerate(batches):
        hvp = _hvp(net, theta, batch, loss) if mine(index) else None
        for start in range(0, samples, chunk):
            count = min(chunk, samples - start)
            v = torch.randint(0, 2, (count, total), generator=generator).to(first.device, first.dtype) * 2 - 1
            if hvp is None:  # another rank's batch: its probes are drawn all the same, to stay in step
                continue
            estimate += (v * _flatten(vmap(hvp)(_unflatten(v, theta)))).sum(0)  # (N,)
            progress.advance()
    add_across([estimate])
    return estimate / (len(batches) * samples)


def _hvp(net: torch.nn.Module, theta: dict[str, torch.Tensor], batch: Batch, loss: str) -> Callable[..., Any]:
    """v -> Hv for one batch's loss: the vjp of its gradient (H is symmetric)."""
    from torch.func import grad, vjp

    from prunecli.scoring.functional import batch_loss

    _, vjp_fn = vjp(grad(lambda w: batch_loss(net, w, batch, loss)), theta)
    return lambda v: vjp_fn(v)[0]


def _flatten(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """{name: (c, *shape)} -> (c, N), names in order."""
    import torch

    return torch.cat([t.reshape(t.shape[0], -1) for t in tensors.values()], dim=1)


def _unflatten(flat: torch.Tensor, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """(N,) or (c, N) -> {name: shape} or {name: (c, *shape)}."""
    lead, out, start = flat.shape[:-1], {}, 0
    for name, w in like.items():
        out[name] = flat[..., start : start + w.numel()].reshape(*lead, *w.shape)
        start += w.numel()
    return out


def _check_hessian(hessian: str) -> None:
    from prunecli.errors import UsageError

    if hessian not in HESSIANS:
        raise UsageError(f"unknown `hessian` {hessian!r}", f"choose one of: {', '.join(HESSIANS)}",
                         option="hessian", value=hessian, allowed=HESSIANS)  # fmt: skip


def _too_many(total: int, max_params: int) -> Exception:
    from prunecli.errors import UsageError

    return UsageError(
        f"the exact Hessian diagonal needs one Hessian-vector product per weight, and this model "
        f"has {total:,} prunable weights (limit: {max_params:,})",
        "use `hessian` hutchinson (with `hutchinson_samples` K), or raise `max_params`",
        option="max_params",
        value=max_params,
    )


@register_model_method(
    "obd",
    summary="½θ²H_jj: Optimal Brain Damage (exact, Hutchinson or Fisher Hessian diagonal)",
    paper="LeCun et al. 1990 (NeurIPS)",
    data="batches",
    labels="optional",
    bn_mode="eval",
    second_order=True,
    options=ObdOptions,
    requirements=(f"`hessian` {'|'.join(HESSIANS)}",),
)
def obd_method(ctx: ScoringContext, options: ObdOptions) -> ScoreResult:
    from prunecli.calibration.context import ScoreResult
    from prunecli.scoring.taylor import fisher_chunks

    hessian, first_order, chunk = options.hessian, bool(options.first_order), options.chunk_size
    total = sum(p.numel() for n, p in ctx.model.named_parameters() if n in set(ctx.names))
    mine_only = share(ctx.batches)  # the batches this rank computes on (all of them in one process)
    steps = fisher_chunks(mine_only, chunk, total) if hessian == "fisher" else (
        progress_steps(hessian, mine_only, total, options.hutchinson_samples, chunk)
    )  # fmt: skip
    ctx.progress.stage(f"OBD: Hessian diagonal ({hessian})", steps + first_order * len(mine_only))
    scores = obd_scores(
        ctx.model, ctx.names, ctx.batches, ctx.loss, hessian=hessian, first_order=first_order,
        samples=options.hutchinson_samples, seed=ctx.seed, max_params=options.max_params,
        chunk_size=chunk, progress=ctx.progress,
    )  # fmt: skip
    return ScoreResult(scores)
