"""A model of stacked Linear layers for memory benchmarks (`--arch benchmarks/stacked.py:stacked`)."""

from __future__ import annotations

from torch import nn


def stacked(width: int = 4096, depth: int = 8, num_classes: int = 10) -> nn.Module:
    """`depth` bias-free width×width Linear+ReLU blocks, then a classifier: ≈ depth·width² weights."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width, bias=False), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, num_classes, bias=False))
