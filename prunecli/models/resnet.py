"""ResNets: ResNet-20/32 for 32×32 input (CIFAR) and ResNet-18/50 for 224×224 input (ImageNet).

The ImageNet models follow torchvision's architecture and state-dict keys (conv1, bn1,
layer1.0.conv1, layer1.0.downsample.0, fc), with the stride on the 3×3 conv of a bottleneck
("ResNet v1.5"), so torchvision checkpoints load into them.
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """CIFAR block: two 3×3 convs with BN; a 1×1 conv + BN shortcut when the shape changes."""

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


def resnet20(num_classes: int = 10) -> CifarResNet:
    """ResNet-20 for 32×32 input: 3 blocks a stage, ≈0.27M parameters."""
    return CifarResNet(3, num_classes)


def resnet32(num_classes: int = 10) -> CifarResNet:
    """ResNet-32 for 32×32 input: 5 blocks a stage, ≈0.46M parameters."""
    return CifarResNet(5, num_classes)


def _downsample(cin: int, cout: int, stride: int) -> nn.Sequential | None:
    """torchvision's projection shortcut: 1×1 conv + BN, only when the shape changes."""
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class ImageNetBasicBlock(nn.Module):
    """ResNet-18/34 block: 3×3 conv (stride) → 3×3 conv, each with BN, plus the shortcut."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(cin, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    """ResNet-50 block: 1×1 reduce → 3×3 (stride) → 1×1 expand ×4, each with BN, plus the shortcut."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = _downsample(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        return torch.relu(self.bn3(self.conv3(out)) + identity)


class ImageNetResNet(nn.Module):
    """ResNet for 224×224 input (He et al. 2016): 7×7/2 conv, 3×3/2 max pool, four stages, fc.

    Args:
        block: ImageNetBasicBlock (ResNet-18/34) or Bottleneck (ResNet-50/101/152).
        blocks_per_stage: e.g. [2, 2, 2, 2] for ResNet-18, [3, 4, 6, 3] for ResNet-50.
        num_classes: output size.
    """

    def __init__(self, block: type[ImageNetBasicBlock | Bottleneck], blocks_per_stage: list[int],
                 num_classes: int = 1000) -> None:  # fmt: skip
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin, stages = 64, []
        for i, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks_per_stage, strict=True)):
            blocks = [block(cin, planes, 1 if i == 0 else 2)]
            cin = planes * block.expansion
            blocks += [block(cin, planes) for _ in range(count - 1)]
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))  # (N, 64, 56, 56)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (N, 512·expansion, 7, 7)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 1000) -> ImageNetResNet:
    """ResNet-18 for 224×224 input: basic blocks [2, 2, 2, 2], ≈11.69M parameters."""
    return ImageNetResNet(ImageNetBasicBlock, [2, 2, 2, 2], num_classes)


def resnet50(num_classes: int = 1000) -> ImageNetResNet:
    """ResNet-50 for 224×224 input: bottlenecks [3, 4, 6, 3], ≈25.56M parameters."""
    return ImageNetResNet(Bottleneck, [3, 4, 6, 3], num_classes)
