"""Fully connected and small conv networks for 28×28 input: LeNet-300-100, LeNet-5 and a configurable MLP.

All of them accept (N, 1, 28, 28) images; the MLPs flatten any input, so (N, 784) works too,
and LeNet-5 reshapes (N, 784) to (N, 1, 28, 28).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import nn


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


class MLP(nn.Module):
    """ReLU MLP that flattens its input: in_features → hidden[0] → ... → num_classes.

    Layers are named fc1, fc2, ...; with the defaults the keys and shapes are LeNet-300-100's,
    so the two load each other's checkpoints.

    Args:
        in_features: size of one flattened example.
        hidden: hidden layer widths (an int for a single hidden layer; empty for a linear model).
        num_classes: output size.
        bias: whether the linear layers have biases.

    Example:
        >>> MLP(in_features=3072, hidden=(512, 256), num_classes=100)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 100])
    """

    def __init__(self, in_features: int = 784, hidden: Sequence[int] | int = (300, 100),
                 num_classes: int = 10, bias: bool = True) -> None:  # fmt: skip
        super().__init__()
        widths = [hidden] if isinstance(hidden, int) else list(hidden)
        sizes = [in_features, *widths, num_classes]
        if not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes):
            raise ValueError(f"layer sizes must be positive integers, got {sizes}")
        for i, (fan_in, fan_out) in enumerate(pairwise(sizes), start=1):
            self.add_module(f"fc{i}", nn.Linear(fan_in, fan_out, bias=bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)  # (N, in_features)
        *hidden, last = self.children()
        for layer in hidden:
            x = torch.relu(layer(x))
        return last(x)
