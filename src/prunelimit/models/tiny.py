"""Tiny models for tests: a few hundred to a few thousand parameters, instant on CPU."""
from __future__ import annotations

from torch import Tensor, nn

from .common import in_channels
from .mlp import MLP
from .registry import register_model


class TinyCNN(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN -> ReLU -> global average pool -> linear.

    Any (C, H, W): the convolutions keep H x W (padding 1) and the pool removes it."""

    def __init__(self, channels: int, num_classes: int, width: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, num_classes)
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        return self.fc(self.pool(x).flatten(1))


@register_model("tiny_mlp", needs_input_shape=True)
def tiny_mlp(num_classes: int, input_shape: tuple[int, int, int]) -> MLP:
    """For tests only: flatten -> C*H*W -> 16 -> num_classes, ReLU."""
    return MLP(input_shape[0] * input_shape[1] * input_shape[2], (16,), num_classes)


@register_model("tiny_cnn")
def tiny_cnn(num_classes: int, input_shape: tuple[int, int, int] | None = None) -> TinyCNN:
    """For tests only: two 3x3 conv+BN+ReLU (8, 16 channels), global average pool, linear; any (C, H, W)."""
    return TinyCNN(in_channels(input_shape), num_classes)
