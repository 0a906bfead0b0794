"""VGG-11/16/19 with batch norm for 32×32 input (CIFAR), as in the pruning-at-init papers."""

from __future__ import annotations

import torch
from torch import nn

VGG11_LAYERS: list[int | str] = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
VGG16_LAYERS: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                                 512, 512, 512, "M"]  # fmt: skip
VGG19_LAYERS: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
                                 512, 512, 512, 512, "M"]  # fmt: skip


class VGG(nn.Module):
    """VGG with batch norm for 32×32 input (CIFAR): conv stack, then one linear classifier.

    Args:
        layers: conv widths, with "M" for a 2×2 max pool (five pools take 32×32 to 1×1).
        num_classes: output size.
    """

    def __init__(self, layers: list[int | str], num_classes: int = 10) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        channels = 3
        for item in layers:
            if item == "M":
                blocks.append(nn.MaxPool2d(2))
            else:
                blocks += [nn.Conv2d(channels, int(item), 3, padding=1), nn.BatchNorm2d(int(item)), nn.ReLU()]
                channels = int(item)
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))  # features: (N, 512, 1, 1)


def vgg11(num_classes: int = 10) -> VGG:
    """VGG-11 (BN) for 32×32 input: 8 convs, ≈9.2M parameters with 10 classes."""
    return VGG(VGG11_LAYERS, num_classes)


def vgg16(num_classes: int = 10) -> VGG:
    """VGG-16 (BN) for 32×32 input: 13 convs, ≈14.7M parameters with 10 classes."""
    return VGG(VGG16_LAYERS, num_classes)


def vgg19(num_classes: int = 10) -> VGG:
    """VGG-19 (BN) for 32×32 input: 16 convs, ≈20.0M parameters with 10 classes."""
    return VGG(VGG19_LAYERS, num_classes)
