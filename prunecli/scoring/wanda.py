"""Wanda: |W_ij|·‖X_j‖₂, weights times input-activation norms (Sun et al. 2024, ICLR, "A Simple
and Effective Pruning Approach for Large Language Models").

X_j is input feature j of the layer over every calibration token: every row of a Linear layer's
input (all leading dimensions are tokens), and every column of a Conv2d's unfolded input
(`torch.nn.functional.unfold` with the conv's kernel, stride, padding and dilation; feature j
matches the weight flattened as (out, in·kh·kw), per group). transformers' `Conv1D` (GPT-2) takes
its input as a Linear does but stores its weight transposed, (in, out): its score is
|W_ji|·‖X_j‖, the norm of feature j times row j (transformers is never imported here; the module
is recognised by its class name and its `nf` attribute). The statistics are gathered by
forward pre-hooks during plain forward passes under `torch.no_grad()`: no labels, no backward
pass, the memory of inference (plus one unfolded input of a conv at a time). Scores are per
weight; the reference compares them within each output row (`apply --scope row`), which gives
every layer the same sparsity. Higher = keep. Unlike the reference, the network is not pruned
block by block while scoring: every layer sees the dense network's activations.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from prunecli.scoring.options import NoOptions
from prunecli.scoring.registry import register_model_method

if TYPE_CHECKING:
    import torch

    from prunecli.calibration.context import Batch, ScoreResult, ScoringContext


def wanda_scores(
    model: torch.nn.Module, names: list[str], batches: list[Batch], progress: object = None
) -> Mapping[str, torch.Tensor]:
    """|W|·‖X_j‖₂ for each named Linear, Conv2d or Conv1D weight, X over every calibration token.

    The scores are computed when read, one tensor at a time, so scoring a large model holds
    only the input statistics (one vector per layer) and one tensor of scores at a time.

    Example:
        >>> scores = wanda_scores(model, ["fc1.weight", "fc2.weight"], [(x, None)])
    """
    import torch

    from prunecli.calibration.context import LazyScores
    from prunecli.calibration.forward import forward
    from prunecli.distributed import add_across, share
    from prunecli.progress import NoProgress

    progress = progress or NoProgress()
    modules = _layers(model, names)
    squares: dict[str, torch.Tensor] = {}  # name -> Σ_tokens x_j², (in·kh·kw,)
    hooks = [
        module.register_forward_pre_hook(_accumulate(name, module, squares))
        for name, module in modules.items()
    ]
    try:
        with torch.no_grad():
            for inputs, _ in share(batches):  # this rank's batches (all of them in one process)
                forward(model, inputs)
                progress.advance()
    finally:
        for hook in hooks:
            hook.remove()
    add_across(squares[name] for name in modules if name in squares)
    return LazyScores(list(modules), lambda name: _scores(modules[name], squares.get(name)))


def input_columns(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The module's input as rows of features: (tokens, in) for Linear and Conv1D, (B·L, in·kh·kw) for Conv2d.

    Example:
        >>> input_columns(nn.Conv2d(1, 2, 3), torch.ones(1, 1, 4, 4)).shape
        torch.Size([4, 9])
    """
    import torch.nn.functional as F
    from torch import nn

    if isinstance(module, nn.Linear) or is_conv1d(module):
        return x.reshape(-1, x.shape[-1])
    x = x if x.dim() == 4 else x.unsqueeze(0)  # unbatched (C, H, W)
    x = F.pad(x, _padding(module), mode="constant" if module.padding_mode == "zeros" else module.padding_mode)
    cols = F.unfold(x, module.kernel_size, dilation=module.dilation, stride=module.stride)  # (B, C·kh·kw, L)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def is_conv1d(module: torch.nn.Module) -> bool:
    """Whether `module` is transformers' `Conv1D` (GPT-2): a Linear with its weight stored (in, out).

    Recognised by class name and its `nf` (output features) attribute, without importing transformers.
    """
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def _padding(conv: torch.nn.Conv2d) -> list[int]:
    """F.pad's (left, right, top, bottom) for the conv's padding, 'same' and 'valid' included."""
    if conv.padding == "valid":
        return [0, 0, 0, 0]
    if conv.padding == "same":
        sizes = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size, strict=True)]  # (h, w)
        return [sizes[1] // 2, sizes[1] - sizes[1] // 2, sizes[0] // 2, sizes[0] - sizes[0] // 2]
    return [conv.padding[1], conv.padding[1], conv.padding[0], conv.padding[0]]


def _accumulate(
    name: str, module: torch.nn.Module, squares: dict[str, torch.Tensor]
) -> Callable[[torch.nn.Module, tuple[torch.Tensor, ...]], None]:
    """A pre-hook adding Σ_tokens x_j² of the module's input to squares[name], in float64."""
    import torch

    def hook(_: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        total = input_columns(module, args[0]).pow(2).sum(0, dtype=torch.float64)  # (features,)
        squares[name] = squares[name] + total if name in squares else total

    return hook


def _scores(module: torch.nn.Module, squares: torch.Tensor | None) -> torch.Tensor:
    """|W|·‖X_j‖ shaped like the weight, in float32 or wider (bf16 scores would tie at the cut in
    many rows); a layer that never ran scores |W|·0."""
    import torch

    weight = module.weight.detach()
    weight = weight.to(torch.promote_types(weight.dtype, torch.float32))
    if squares is None:
        return torch.zeros_like(weight)
    norms = squares.sqrt().to(weight.dtype)  # (in·kh·kw,) over all groups
    if is_conv1d(module):
        return weight.abs() * norms[:, None]  # (in, out): row j times ‖X_j‖
    groups = getattr(module, "groups", 1)
    rows = weight.abs().reshape(groups, weight.shape[0] // groups, -1)  # (G, out/G, in/G·kh·kw)
    return (rows * norms.reshape(groups, 1, -1)).reshape(weight.shape)


def _layers(model: torch.nn.Module, names: list[str]) -> dict[str, torch.nn.Module]:
    """The Linear, Conv2d or Conv1D module that owns each `<module>.weight`; anything else is refused."""
    from torch import nn

    from prunecli.errors import UsageError

    modules = dict(model.named_modules())
    found, other = {}, []
    for name in names:
        owner, _, attr = name.rpartition(".")
        module = modules.get(owner)
        if attr == "weight" and (isinstance(module, (nn.Linear, nn.Conv2d)) or is_conv1d(module)):
            found[name] = module
        else:
            other.append(name)
    if other:
        raise UsageError(
            f"wanda scores only Linear, Conv2d and Conv1D weights, not {', '.join(other[:3])}"
            + (f" and {len(other) - 3} more" if len(other) > 3 else ""),
            "leave them out with `exclude` GLOB",
            option="exclude",
        )
    return found


@register_model_method(
    "wanda",
    summary="|W|·‖X_j‖₂: weight magnitude times input-feature norm (forward passes only)",
    paper="Sun et al. 2024 (ICLR)",
    data="batches",
    labels="unused",
    bn_mode="eval",
    default_scope="row",
    layerwise=lambda options, rule, results: _block_pruner(rule, results),
)
def wanda_method(ctx: ScoringContext, options: NoOptions) -> ScoreResult:
    from prunecli.calibration.context import ScoreResult

    ctx.progress.stage("Wanda: input statistics", len(ctx.batches))
    return ScoreResult(wanda_scores(ctx.model, ctx.names, ctx.batches, ctx.progress))


def _block_pruner(rule: object, results: object) -> object:
    """Wanda decided layer by layer while calibrating (`prune`'s block-by-block mode)."""
    from prunecli.scoring.layerwise import WandaPruner

    return WandaPruner(rule, results)
