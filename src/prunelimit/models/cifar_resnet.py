"""ResNets for 32x32 inputs: 3x3 stride-1 stem, no max-pool.

- ``resnet18_cifar`` / ``resnet50_cifar``: ImageNet ResNet-18/-50 stages (64..512 planes, strides
  1, 2, 2, 2) on a CIFAR stem, as in the limit paper and the GP paper's ResNet-50 for CIFAR-10.
  Module names (conv1, bn1, layer1..4, shortcut, linear) match the GP paper's checkpoints.
- ``resnet32_cifar10``: He et al. 2016, section 4.2: 3 stages of 5 basic blocks with 16/32/64
  channels and parameter-free "option A" shortcuts (stride-2 subsampling + zero channels), 0.46 M.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .common import in_channels
from .registry import register_model


class PadShortcut(nn.Module):
    """Option-A shortcut: take every ``stride``-th pixel and append zero channels up to ``out_planes``."""

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.stride, self.extra = stride, out_planes - in_planes

    def forward(self, x: Tensor) -> Tensor:  # (B, in, H, W) -> (B, out, H/stride, W/stride)
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


def _projection(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """1x1 conv + BN when shape changes, else an empty Sequential (identity)."""
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, pad_shortcut: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if pad_shortcut and (stride != 1 or in_planes != planes):
            self.shortcut: nn.Module = PadShortcut(in_planes, planes, stride)
        else:
            self.shortcut = _projection(in_planes, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (carries the stride) -> 1x1 expand by 4."""
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, 4 * planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * planes)
        self.shortcut = _projection(in_planes, 4 * planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """conv3x3 stem -> stages of residual blocks -> global average pool -> linear.

    ``stages`` = [(planes, blocks, stride), ...]; ``pad_shortcut`` selects option-A shortcuts."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], stages: list[tuple[int, int, int]],
                 num_classes: int, channels: int = 3, pad_shortcut: bool = False):
        super().__init__()
        stem = stages[0][0]
        self.conv1 = nn.Conv2d(channels, stem, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        in_planes = stem
        for i, (planes, blocks, stride) in enumerate(stages, start=1):
            layers = []
            for b in range(blocks):
                extra = {"pad_shortcut": pad_shortcut} if block is BasicBlock else {}
                layers.append(block(in_planes, planes, stride if b == 0 else 1, **extra))
                in_planes = planes * block.expansion
            setattr(self, f"layer{i}", nn.Sequential(*layers))
        self.num_stages = len(stages)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, 32, 32) -> (B, num_classes)
        x = F.relu(self.bn1(self.conv1(x)))
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{i}")(x)
        return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))


_IMAGENET_STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))  # (planes, stride of the first block)


def _imagenet_stages(blocks: tuple[int, int, int, int]) -> list[tuple[int, int, int]]:
    return [(planes, n, stride) for (planes, stride), n in zip(_IMAGENET_STAGES, blocks)]


@register_model("resnet18_cifar", aliases=("ResNet18",))
def resnet18_cifar(num_classes: int, input_shape: tuple[int, int, int] | None = None) -> CifarResNet:
    """ResNet-18 for 32x32 (limit paper): 3x3 stem, no max-pool, basic blocks [2, 2, 2, 2]."""
    return CifarResNet(BasicBlock, _imagenet_stages((2, 2, 2, 2)), num_classes, in_channels(input_shape))


@register_model("resnet50_cifar", aliases=("resnet50_cifar10", "ResNet50"))
def resnet50_cifar(num_classes: int, input_shape: tuple[int, int, int] | None = None) -> CifarResNet:
    """ResNet-50 for 32x32 (GP and limit papers): 3x3 stem, no max-pool, bottlenecks [3, 4, 6, 3]."""
    return CifarResNet(Bottleneck, _imagenet_stages((3, 4, 6, 3)), num_classes, in_channels(input_shape))


@register_model("resnet32_cifar10", aliases=("resnet32",))
def resnet32_cifar10(num_classes: int, input_shape: tuple[int, int, int] | None = None) -> CifarResNet:
    """ResNet-32 (He et al. 2016, CIFAR): 3x5 basic blocks, 16/32/64 channels, option-A shortcuts, 0.46 M."""
    stages = [(16, 5, 1), (32, 5, 2), (64, 5, 2)]
    return CifarResNet(BasicBlock, stages, num_classes, in_channels(input_shape), pad_shortcut=True)
