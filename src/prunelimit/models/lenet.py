"""LeNet-5-Caffe, the GP paper's MNIST net."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .registry import register_model
from prunelimit.errors import PrunelimitError


class LeNet5Caffe(nn.Module):
    """conv 20@5x5 -> ReLU -> maxpool 2 -> conv 50@5x5 -> ReLU -> maxpool 2 -> fc 800 -> 500 -> classes.

    Module names (conv1, conv2, fc3, fc4) match the GP paper's checkpoints. It returns logits; the
    original returned log-probabilities, which cross-entropy treats identically."""

    def __init__(self, channels: int = 1, num_classes: int = 10, height: int = 28, width: int = 28):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        # Each 5x5 valid conv removes 4 pixels, each pool halves (floor): 28 -> 24 -> 12 -> 8 -> 4.
        h, w = ((height - 4) // 2 - 4) // 2, ((width - 4) // 2 - 4) // 2
        if h < 1 or w < 1:
            raise PrunelimitError(f"model 'lenet5caffe' needs inputs of at least 16x16 pixels, got {height}x{width}; "
                             f"it is designed for 28x28 MNIST")
        self.fc3 = nn.Linear(50 * h * w, 500)
        self.fc4 = nn.Linear(500, num_classes)

    def forward(self, x: Tensor) -> Tensor:  # (B, 1, 28, 28) -> (B, num_classes)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (B, 20, 12, 12)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (B, 50, 4, 4)
        x = F.relu(self.fc3(x.flatten(1)))  # (B, 500)
        return self.fc4(x)


@register_model("lenet5caffe", aliases=("LeNet5Caffe",))
def lenet5caffe(num_classes: int, input_shape: tuple[int, int, int] | None = None) -> LeNet5Caffe:
    """LeNet-5-Caffe (GP paper, MNIST): conv 20@5x5, maxpool, conv 50@5x5, maxpool, fc 800 -> 500 -> classes."""
    c, h, w = input_shape if input_shape is not None else (1, 28, 28)
    return LeNet5Caffe(c, num_classes, h, w)
