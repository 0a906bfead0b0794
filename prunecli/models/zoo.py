"""The papers' networks by name: LeNet-300-100, LeNet-5 (Caffe), VGG-16 (BN) and ResNet-20.

Every model takes (N, C, H, W) images; the MLPs flatten their input, so (N, 784) works too,
and LeNet-5 reshapes (N, 784) to (N, 1, 28, 28).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from prunecli.errors import UsageError


class LeNet300100(nn.Module):
    """784-300-100-10 fully connected network (LeCun et al. 1998), as in SNIP's MNIST runs."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)  # (N, 784)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class LeNet5(nn.Module):
    """LeNet-5, Caffe variant: conv 20 → pool → conv 50 → pool → fc 500 → fc 10 (431K weights)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(800, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, 1, 28, 28)  # accepts (N, 784) too
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)  # (N, 20, 12, 12)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)  # (N, 50, 4, 4)
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


VGG16_LAYERS = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG(nn.Module):
    """VGG with batch norm for 32×32 input (CIFAR): conv stack, then one linear classifier."""

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


class BasicBlock(nn.Module):
    """Two 3×3 convs with BN; a 1×1 conv + BN shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32×32 input (He et al. 2016): 16/32/64 channels, n blocks a stage."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages, cin = [], 16
        for cout, stride in [(16, 1), (32, 2), (64, 2)]:
            blocks = [BasicBlock(cin, cout, stride)]
            blocks += [BasicBlock(cout, cout, 1) for _ in range(blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))  # (N, 64, 8, 8)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


ZOO: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "lenet-300-100": (LeNet300100, (1, 28, 28)),
    "lenet-5": (LeNet5, (1, 28, 28)),
    "vgg16": (lambda: VGG(VGG16_LAYERS), (3, 32, 32)),
    "resnet20": (lambda: CifarResNet(3), (3, 32, 32)),
}


def build_model(name: str) -> nn.Module:
    """A fresh model from the zoo (PyTorch's default init; see `init.initialize`)."""
    try:
        factory, _ = ZOO[name]
    except KeyError:
        raise UsageError(f"unknown architecture {name!r}", f"choose one of: {', '.join(ZOO)}") from None
    return factory()


def input_shape(name: str) -> tuple[int, ...]:
    """One example's input shape for a zoo model (no batch dimension)."""
    return ZOO[name][1]
