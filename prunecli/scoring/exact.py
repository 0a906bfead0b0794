"""Exact (oracle) salience: |L(θ) − L(θ with θ_j = 0)| for every prunable weight.

The "oracle" criterion of Molchanov et al. 2017 (ICLR), method 40 of the Taylor_pruning
reference: the loss change of removing each weight alone, measured, not estimated
(methods.md §7). It costs one forward pass over the calibration batches per weight, so copies
of one tensor, each with a different entry zeroed, run together through `torch.func.vmap` in
chunks, on the model's device. Needs calibration batches (labels optional). Eval mode. Higher =
keep: a weight whose removal changes the loss more matters more. The loss is a difference of two
nearby values: in float32 it resolves |ΔL| only to about 1e-7·L, so small saliencies are noisy
(LeNet-5 on 100 MNIST digits: median 0.1% off float64, top 10% the same to 0.02%);
`--dtype float64` removes that noise. Cost, same case: about 2 s on one H200 (430,500 weights,
~0.01 forward passes per weight thanks to batching), hours on a 2-core CPU (~0.3 per weight).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prunecli.scoring.options import MethodOptions, check_counts, option
from prunecli.scoring.registry import register_model_method

if TYPE_CHECKING:
    import torch

    from prunecli.calibration.context import Batch, ScoreResult, ScoringContext

DEFAULT_MAX_PARAMS = 1_000_000
CPU_CHUNK = 64
MAX_CHUNK = 1024
PROBE_SECONDS = 5.0


@dataclass(frozen=True)
class ExactOptions(MethodOptions):
    """`max_params`: the most weights accepted (one forward pass each); `chunk_size`: perturbed
    copies evaluated together (None: by the device). Neither changes the scores, so neither is
    recorded."""

    max_params: int = option(DEFAULT_MAX_PARAMS, recorded=False)
    chunk_size: int | None = option(None, recorded=False)

    def __post_init__(self) -> None:
        check_counts(max_params=self.max_params)


def exact_scores(
    model: torch.nn.Module,
    names: list[str],
    batches: list[Batch],
    loss: str = "ce",
    max_params: int = DEFAULT_MAX_PARAMS,
    chunk_size: int | None = None,
    progress: object = None,
) -> dict[str, torch.Tensor]:
    """|L(θ) − L(θ with θ_j = 0)| for each named weight, L the mean loss over `batches`.

    Args:
        max_params: the most weights accepted; above it a UsageError says how long the run
            would take (timed on one chunk, or one forward pass per weight for big models).
        chunk_size: perturbed copies evaluated together; by default 64 on the CPU and, on
            CUDA, as many as a quarter of the free memory holds (at most 1024).

    Example:
        >>> scores = exact_scores(model, ["fc1.weight", "fc2.weight"], [(x, y)])
    """
    import torch

    from prunecli.progress import NoProgress

    progress = progress or NoProgress()
    check_counts(max_params=max_params, chunk_size=chunk_size or 1)
    params = dict(model.named_parameters())
    oracle = _Oracle(vmappable(model), {n: params[n].detach() for n in names}, batches, loss)
    total = sum(w.numel() for w in oracle.weights.values())
    with torch.no_grad():
        forward_s, peak_bytes = oracle.measure()
        chunk = chunk_size or oracle.default_chunk(peak_bytes)
        if total > max_params:
            raise _too_many(total, max_params, *oracle.estimate(chunk, forward_s))
        progress.stage(
            f"exact: chunks of {chunk} weights", sum(-(-w.numel() // chunk) for w in oracle.weights.values())
        )
        scores = {}
        for name, weight in oracle.weights.items():
            flat = torch.empty(weight.numel(), dtype=weight.dtype, device=weight.device)  # (n,)
            for start in range(0, weight.numel(), chunk):
                index = torch.arange(start, min(start + chunk, weight.numel()), device=weight.device)
                flat[index] = oracle.deltas(name, index)
                progress.advance()
            scores[name] = flat.view_as(weight)
        return scores


class _Oracle:
    """L(θ), and |L(θ) − L(θ with θ_j = 0)| for many j of one tensor at once (vmap)."""

    def __init__(
        self, net: torch.nn.Module, weights: dict[str, torch.Tensor], batches: list[Batch], loss: str
    ) -> None:
        self.net, self.weights, self.batches, self.loss_name = net, weights, batches, loss
        self.base: torch.Tensor | None = None

    def loss(self, weights: dict[str, torch.Tensor]) -> torch.Tensor:
        return mean_loss(self.net, weights, self.batches, self.loss_name)

    def deltas(self, name: str, index: torch.Tensor) -> torch.Tensor:
        """|L − L(copy)| for the copies of tensor `name` with entry index[i] zeroed, (c,)."""
        import torch
        from torch.func import vmap

        weight = self.weights[name]
        copies = weight.reshape(1, -1).repeat(index.numel(), 1)  # (c, n)
        copies[torch.arange(index.numel(), device=index.device), index] = 0
        losses = vmap(lambda w: self.loss({**self.weights, name: w}))(copies.view(-1, *weight.shape))  # (c,)
        return (self.base - losses).abs()

    def measure(self) -> tuple[float, int]:
        """Set L(θ); return (seconds of one forward pass over the batches, its CUDA peak bytes)."""
        import torch

        device = next(iter(self.weights.values())).device
        self.loss(self.weights).item()  # warm-up
        cuda = device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        self.base = self.loss(self.weights)
        self.base.item()  # waits for the device
        seconds = time.perf_counter() - start
        return seconds, (torch.cuda.max_memory_allocated(device) - before if cuda else 0)

    def default_chunk(self, peak_bytes: int) -> int:
        """64 on the CPU; on CUDA, the copies that fit in a quarter of the free memory."""
        import torch

        first = next(iter(self.weights.values()))
        if first.device.type != "cuda":
            return CPU_CHUNK
        largest = max(w.numel() for w in self.weights.values()) * first.element_size()
        free, _ = torch.cuda.mem_get_info(first.device)
        return max(1, min(MAX_CHUNK, int(0.25 * free) // max(1, peak_bytes + 2 * largest)))

    def estimate(self, chunk: int, forward_s: float) -> tuple[float, str]:
        """(seconds per weight, how it was found): a timed chunk of the largest tensor, or one
        forward pass per weight where timing a chunk would itself take long."""
        import torch

        if forward_s * chunk > PROBE_SECONDS:
            return forward_s, "one forward pass each"
        name = max(self.weights, key=lambda n: self.weights[n].numel())
        index = torch.arange(min(chunk, self.weights[name].numel()), device=self.weights[name].device)
        self.deltas(name, index).sum().item()  # warm-up (first calls of a shape are slow)
        start = time.perf_counter()
        self.deltas(name, index).sum().item()
        return (time.perf_counter() - start) / index.numel(), f"timed on {index.numel()} weights"


def mean_loss(
    net: torch.nn.Module, weights: dict[str, torch.Tensor], batches: list[Batch], loss: str
) -> torch.Tensor:
    """The loss averaged over batches, with `weights` in place of the model's own."""
    from prunecli.scoring.functional import batch_loss

    return sum(batch_loss(net, weights, batch, loss) for batch in batches) / len(batches)


def vmappable(model: torch.nn.Module) -> torch.nn.Module:
    """`model` itself in eval mode; in train mode, a copy whose batch norms use batch
    statistics without updating running ones (the same outputs), so torch.func can batch it."""
    import copy

    from torch.func import replace_all_batch_norm_modules_

    if not model.training:
        return model
    return replace_all_batch_norm_modules_(copy.deepcopy(model))


def _too_many(total: int, max_params: int, per_weight: float, basis: str) -> Exception:
    from prunecli.errors import UsageError

    return UsageError(
        f"exact salience needs one forward pass per weight: {total:,} weights would take about "
        f"{format_duration(total * per_weight)} ({per_weight * 1e3:.3g} ms per weight, {basis}); "
        f"the limit is {max_params:,} weights",
        "raise `max_params` to run it anyway, use fewer or smaller batches, "
        "or estimate instead: -m obd `hessian` hutchinson, or -m taylor",
        option="max_params",
        value=max_params,
    )


def format_duration(seconds: float) -> str:
    """A rough human duration: '0.3 s', '45 s', '12 min', '3.5 h', '2.1 days'."""
    if seconds < 10:
        return f"{seconds:.2g} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


@register_model_method(
    "exact",
    summary="|L(θ) − L(θ without θ_j)|: the measured loss change of removing each weight (oracle)",
    paper="Molchanov et al. 2017 (ICLR), the oracle criterion",
    data="batches",
    labels="optional",
    bn_mode="eval",
    options=ExactOptions,
    requirements=("one forward pass per weight (`max_params`)",),
)
def exact_method(ctx: ScoringContext, options: ExactOptions) -> ScoreResult:
    from prunecli.calibration.context import ScoreResult

    return ScoreResult(
        exact_scores(
            ctx.model, ctx.names, ctx.batches, ctx.loss,
            max_params=options.max_params, chunk_size=options.chunk_size, progress=ctx.progress,
        )
    )  # fmt: skip
