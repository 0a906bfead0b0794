"""One forward pass, whatever the model takes and returns: the logits every loss starts from.

Inputs are a float batch (images, features) or a batch of token ids. Token batches mark padding
with id −1 (`calibration.tokens.PAD`), so one integer tensor carries both the ids and the
attention mask: the model gets the ids with padding set to 0 and, only when there is padding,
`attention_mask`. The output may be a tensor, a `ModelOutput` (transformers), a dict or a tuple;
the logits are its `logits` entry, or its first element.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

PAD = -1  # the id that marks a padded position in a token batch


def model_call(inputs: torch.Tensor) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The positional and keyword arguments a model is called with for `inputs`."""
    if inputs.is_floating_point():
        return (inputs,), {}
    padded = inputs < 0
    if not bool(padded.any()):
        return (inputs,), {}
    return (inputs.clamp(min=0),), {"attention_mask": (~padded).long()}


def logits_of(output: Any) -> torch.Tensor:
    """The logits of a model's output: a tensor, `.logits`, `["logits"]` or the first element."""
    import torch

    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, Mapping):
        logits = output.get("logits")
    if logits is None and isinstance(output, (tuple, list)) and output:
        logits = output[0]
    if not isinstance(logits, torch.Tensor):
        from prunecli.errors import InputError

        raise InputError(
            f"the model returned {type(output).__name__}, with no logits tensor in it",
            "make the model return logits, a tuple starting with them, or an object with .logits",
        )
    return logits


def forward(
    model: torch.nn.Module, inputs: torch.Tensor, weights: Mapping[str, torch.Tensor] | None = None
) -> torch.Tensor:
    """The model's logits for `inputs`, with `weights` in place of its own when given."""
    args, kwargs = model_call(inputs)
    if weights is None:
        return logits_of(model(*args, **kwargs))
    from torch.func import functional_call

    return logits_of(functional_call(model, dict(weights), args, kwargs, strict=False))
