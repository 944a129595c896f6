"""MobileNetV2 for 32x32 inputs: the CIFAR-10 variant the GP paper used.

Compared with ImageNet MobileNetV2 the stem conv and the first stride-2 stage (24 channels) run at
stride 1, so a 32x32 image leaves the last stage at 4x4 instead of 1x1. As in that variant, every
stride-1 block has a residual connection, through a 1x1 conv + BN when the width changes, and the
activations are ReLU. Module names (conv1, layers.N.conv1, ..., linear) match the GP paper's checkpoints.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .common import in_channels
from .registry import register_model

# (expansion t, output channels c, blocks n, stride of the first block s); ImageNet has s=2 in row 2.
CIFAR_SETTING = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                 (6, 320, 1, 1))


class InvertedResidual(nn.Module):
    """1x1 expand (t*in) -> 3x3 depthwise (stride) -> 1x1 project, BN after each, ReLU after the first two."""

    def __init__(self, in_planes: int, out_planes: int, expansion: int, stride: int):
        super().__init__()
        planes = expansion * in_planes
        self.stride = stride
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, groups=planes, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride == 1 and in_planes != out_planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, bias=False), nn.BatchNorm2d(out_planes))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + self.shortcut(x) if self.stride == 1 else out


class MobileNetV2Cifar(nn.Module):
    def __init__(self, num_classes: int = 10, channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 32, 3, padding=1, bias=False)  # stride 1 (ImageNet: 2)
        self.bn1 = nn.BatchNorm2d(32)
        blocks, in_planes = [], 32
        for t, c, n, s in CIFAR_SETTING:
            for i in range(n):
                blocks.append(InvertedResidual(in_planes, c, t, s if i == 0 else 1))
                in_planes = c
        self.layers = nn.Sequential(*blocks)
        self.conv2 = nn.Conv2d(320, 1280, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(1280)
        self.linear = nn.Linear(1280, num_classes)

    def forward(self, x: Tensor) -> Tensor:  # (B, 3, 32, 32) -> (B, num_classes)
        x = self.layers(F.relu(self.bn1(self.conv1(x))))  # (B, 320, 4, 4)
        x = F.relu(self.bn2(self.conv2(x)))  # (B, 1280, 4, 4)
        return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))


@register_model("mobilenet_v2_cifar10", aliases=("mobilenet_v2_cifar",))
def mobilenet_v2_cifar10(num_classes: int, input_shape: tuple[int, int, int] | None = None) -> MobileNetV2Cifar:
    """MobileNetV2 for 32x32 (GP paper, CIFAR-10): stride-1 stem and stride-1 first 24-channel stage."""
    return MobileNetV2Cifar(num_classes, in_channels(input_shape))
