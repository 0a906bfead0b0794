"""Named, seeded weight initialisation for conv and linear layers.

Weights of Conv and Linear layers follow the chosen scheme; their biases start at zero;
norm layers start at weight 1, bias 0. Same seed on CPU → bit-identical weights.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from prunecli.errors import UsageError


def _kaiming_normal(w: torch.Tensor) -> None:
    nn.init.kaiming_normal_(w, mode="fan_in", nonlinearity="relu")


SCHEMES: dict[str, Callable[[torch.Tensor], object]] = {
    "kaiming-normal": _kaiming_normal,
    "xavier-normal": nn.init.xavier_normal_,
    "xavier-uniform": nn.init.xavier_uniform_,
    "orthogonal": nn.init.orthogonal_,
}


def initialize(model: nn.Module, scheme: str = "kaiming-normal", seed: int = 0) -> nn.Module:
    """Re-initialise `model` in place with a named scheme, deterministically from `seed`."""
    if scheme not in SCHEMES:
        raise UsageError(f"unknown initialisation scheme {scheme!r}", f"choose one of: {', '.join(SCHEMES)}",
                         option="scheme", value=scheme, allowed=tuple(SCHEMES))  # fmt: skip
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
                    SCHEMES[scheme](module.weight)
                    if module.bias is not None:
                        module.bias.zero_()
                elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)):
                    if module.weight is not None:
                        module.weight.fill_(1.0)
                        module.bias.zero_()
    finally:
        torch.random.set_rng_state(generator_state)
    return model
