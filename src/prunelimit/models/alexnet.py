"""AlexNet for 224x224 inputs, with the limit paper's x7 nearest-neighbour upsampling of CIFAR images.

Two layouts, both with torchvision's ``features`` / ``avgpool`` / ``classifier`` module names:
- ``variant="paper"`` (default): the limit paper's AlexNet: conv 96@11 stride 4, 256@5, 384@3,
  384@3, 256@3 with three 3x3/2 max-pools, then 256*5*5 -> 4096 -> 4096 -> classes, ReLU, no dropout.
- ``variant="torchvision"``: torchvision's AlexNet (64/192/384/256/256 channels, dropout 0.5).
"""
from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from .common import in_channels, positive_int
from .registry import register_model
from prunelimit.errors import PrunelimitError

VARIANTS = ("paper", "torchvision")
# Smallest input side the feature stack takes: conv1 (11/4) and three 3/2 max-pools must leave >= 1 pixel.
MIN_SIDE = {"paper": 65, "torchvision": 63}


def _paper_layers(channels: int, num_classes: int) -> tuple[nn.Sequential, nn.Module, nn.Sequential]:
    features = nn.Sequential(
        nn.Conv2d(channels, 96, 11, stride=4, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),  # 224 -> 26
        nn.Conv2d(96, 256, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),  # -> 12
        nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 384, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),  # -> 5
    )
    # At 224x224 the maps are already 5x5 and this pool is the identity; it lets other sizes through.
    avgpool = nn.AdaptiveAvgPool2d((5, 5))
    classifier = nn.Sequential(
        nn.Linear(256 * 5 * 5, 4096), nn.ReLU(inplace=True),
        nn.Linear(4096, 4096), nn.ReLU(inplace=True),
        nn.Linear(4096, num_classes),
    )
    return features, avgpool, classifier


def _torchvision_layers(channels: int, num_classes: int) -> tuple[nn.Sequential, nn.Module, nn.Sequential]:
    from torchvision.models import AlexNet as TorchvisionAlexNet
    tv = TorchvisionAlexNet(num_classes=num_classes)
    if channels != 3:
        tv.features[0] = nn.Conv2d(channels, 64, 11, stride=4, padding=2)
    return tv.features, tv.avgpool, tv.classifier


class AlexNet(nn.Module):
    def __init__(self, num_classes: int = 10, channels: int = 3, upsample: int = 1, variant: str = "paper"):
        super().__init__()
        self.upsample = upsample
        build = _paper_layers if variant == "paper" else _torchvision_layers
        self.features, self.avgpool, self.classifier = build(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, 32, 32) -x7-> (B, C, 224, 224) -> (B, num_classes)
        if self.upsample > 1:
            x = F.interpolate(x, scale_factor=self.upsample, mode="nearest")
        x = self.avgpool(self.features(x))
        return self.classifier(x.flatten(1))


@register_model("alexnet", aliases=("AlexNet",))
def alexnet(num_classes: int, input_shape: tuple[int, int, int] | None = None, upsample: int | None = None,
            variant: str = "paper") -> AlexNet:
    """AlexNet for 224x224 (limit paper); upsamples 32x32 inputs x7 inside forward (options upsample, variant)."""
    if variant not in VARIANTS:
        raise PrunelimitError(f"option 'variant' of model 'alexnet' must be one of {', '.join(VARIANTS)}; got {variant!r}")
    if upsample is None:
        upsample = 7 if input_shape is not None and input_shape[1:] == (32, 32) else 1
    positive_int(upsample, "upsample", "alexnet")
    if input_shape is not None and min(input_shape[1:]) * upsample < MIN_SIDE[variant]:
        side = min(input_shape[1:])
        raise PrunelimitError(f"model 'alexnet' needs inputs of at least {MIN_SIDE[variant]} pixels a side after "
                         f"upsampling, got {side} x upsample={upsample}; pass upsample={math.ceil(224 / side)} "
                         f"to feed it {side}->{side * math.ceil(224 / side)} as designed")
    return AlexNet(num_classes, in_channels(input_shape), upsample, variant)
