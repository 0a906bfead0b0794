"""The zoo: the papers' networks by name, with one example's input shape each.

| name            | input      | classes | parameters |
|-----------------|------------|---------|------------|
| lenet-300-100   | 1×28×28    | 10      | 0.27M      |
| lenet-5         | 1×28×28    | 10      | 0.43M      |
| mlp             | 784        | 10      | 0.27M (784-300-100-10 by default) |
| vgg11/16/19     | 3×32×32    | 10      | 9.2M / 14.7M / 20.0M (with batch norm) |
| resnet20/32     | 3×32×32    | 10      | 0.27M / 0.46M |
| resnet18/50     | 3×224×224  | 1000    | 11.7M / 25.6M |

Every factory takes keyword arguments (at least `num_classes`), which `--arch-args` supplies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from torch import nn

from prunecli.errors import UsageError
from prunecli.models.lenet import MLP, LeNet5, LeNet300100
from prunecli.models.resnet import (
    BasicBlock,
    CifarResNet,
    resnet18,
    resnet20,
    resnet32,
    resnet50,
)
from prunecli.models.vgg import VGG, VGG16_LAYERS, vgg11, vgg16, vgg19

__all__ = [
    "VGG",
    "VGG16_LAYERS",
    "ZOO",
    "BasicBlock",
    "CifarResNet",
    "LeNet5",
    "LeNet300100",
    "ZooEntry",
    "build_model",
    "input_shape",
]


class ZooEntry(NamedTuple):
    """A zoo model: its factory (keyword arguments only) and one example's input shape."""

    factory: Callable[..., nn.Module]
    input_shape: tuple[int, ...]


ZOO: dict[str, ZooEntry] = {
    "lenet-300-100": ZooEntry(LeNet300100, (1, 28, 28)),
    "lenet-5": ZooEntry(LeNet5, (1, 28, 28)),
    "mlp": ZooEntry(MLP, (784,)),
    "vgg11": ZooEntry(vgg11, (3, 32, 32)),
    "vgg16": ZooEntry(vgg16, (3, 32, 32)),
    "vgg19": ZooEntry(vgg19, (3, 32, 32)),
    "resnet20": ZooEntry(resnet20, (3, 32, 32)),
    "resnet32": ZooEntry(resnet32, (3, 32, 32)),
    "resnet18": ZooEntry(resnet18, (3, 224, 224)),
    "resnet50": ZooEntry(resnet50, (3, 224, 224)),
}


def _entry(name: str) -> ZooEntry:
    try:
        return ZOO[name]
    except KeyError:
        raise UsageError(f"unknown architecture {name!r}", f"choose one of: {', '.join(ZOO)}") from None


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """A fresh zoo model (PyTorch's default init; see `init.initialize`).

    Example:
        >>> build_model("vgg16", num_classes=100).classifier.out_features
        100
    """
    return _entry(name).factory(**kwargs)


def input_shape(name: str, arch_args: Mapping[str, Any] | None = None) -> tuple[int, ...]:
    """One example's input shape for a zoo model (no batch dimension).

    The MLP's shape follows its `in_features` argument when one is given.
    """
    shape = _entry(name).input_shape
    in_features = (arch_args or {}).get("in_features")
    if name == "mlp" and isinstance(in_features, int) and not isinstance(in_features, bool):
        return (in_features,)
    return shape
