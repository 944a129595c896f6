"""Wide residual networks (Zagoruyko & Komodakis 2016) for 32x32 inputs, as used by the GP paper.

WRN-D-K: a 3x3 stem with 16 channels, then three stages of (D-4)/6 pre-activation basic blocks with
16K, 32K, 64K channels (strides 1, 2, 2), BN-ReLU, global average pool, linear. Module names
(``block1.layer.0.convShortcut`` ...) match the GP paper's released WRN-28-8 checkpoint.
"""
from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from .common import in_channels, positive_int, probability
from .registry import register_model, register_name_pattern
from prunelimit.errors import PrunelimitError


class WideBasicBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3, plus a 1x1 projection when the width changes."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, padding=1, bias=False)
        self.dropout = dropout
        self.equal_in_out = in_planes == out_planes and stride == 1
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(in_planes, out_planes, 1, stride=stride,
                                                                     bias=False)

    def forward(self, x: Tensor) -> Tensor:  # (B, in, H, W) -> (B, out, H/stride, W/stride)
        pre = F.relu(self.bn1(x))
        # Identity blocks add the raw input; projection blocks project the pre-activated input
        # (the WRN reference behaviour, which the published numbers come from).
        shortcut = x if self.convShortcut is None else self.convShortcut(pre)
        out = F.relu(self.bn2(self.conv1(pre)))
        out = F.dropout(out, p=self.dropout, training=self.training)
        return self.conv2(out) + shortcut


class WideStage(nn.Module):
    def __init__(self, blocks: int, in_planes: int, out_planes: int, stride: int, dropout: float):
        super().__init__()
        self.layer = nn.Sequential(*[
            WideBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, dropout)
            for i in range(blocks)])

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen_factor: int, num_classes: int = 10, dropout: float = 0.3,
                 channels: int = 3):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise PrunelimitError(f"WideResNet depth (option 'depth', or D in 'wrn-D-K') must be 6n+4 with n >= 1 "
                             f"(10, 16, 22, 28, 40, ...); got depth={depth}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = nn.Conv2d(channels, widths[0], 3, padding=1, bias=False)
        self.block1 = WideStage(n, widths[0], widths[1], 1, dropout)
        self.block2 = WideStage(n, widths[1], widths[2], 2, dropout)
        self.block3 = WideStage(n, widths[2], widths[3], 2, dropout)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        self._reference_init()

    def _reference_init(self) -> None:
        # The WRN reference init: conv weights N(0, 2/(k*k*out_channels)), BN (1, 0), linear bias 0.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:  # (B, 3, 32, 32) -> (B, num_classes)
        x = self.block3(self.block2(self.block1(self.conv1(x))))  # (B, 64K, 8, 8)
        x = F.relu(self.bn1(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


@register_model("wide_resnet")
def wide_resnet(num_classes: int, input_shape: tuple[int, int, int] | None = None, depth: int = 28,
                widen_factor: int = 10, dropout: float = 0.3) -> WideResNet:
    """WideResNet-depth-widen_factor for 32x32 inputs (pre-activation blocks; options depth, widen_factor, dropout)."""
    positive_int(depth, "depth", "wide_resnet")
    positive_int(widen_factor, "widen_factor", "wide_resnet")
    return WideResNet(depth, widen_factor, num_classes, probability(dropout, "dropout", "wide_resnet"),
                      in_channels(input_shape))


def _fixed_wide_resnet(depth: int, widen_factor: int):
    def factory(num_classes: int, input_shape: tuple[int, int, int] | None = None,
                dropout: float = 0.3) -> WideResNet:
        return wide_resnet(num_classes, input_shape, depth, widen_factor, dropout)
    return factory


for _depth, _k in ((16, 8), (16, 10), (22, 8), (28, 8)):
    _describe = f"WideResNet-{_depth}-{_k} (GP paper, CIFAR-10, dropout 0.3)"
    register_model(f"wrn-{_depth}-{_k}", description=_describe)(_fixed_wide_resnet(_depth, _k))

# Any other wrn-D-K spelling builds wide_resnet with that depth and width.
register_name_pattern(r"wrn-(\d+)-(\d+)", "wide_resnet",
                      lambda m: {"depth": int(m.group(1)), "widen_factor": int(m.group(2))}, "wrn-40-4")
