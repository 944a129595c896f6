"""VGG16 with batch norm for 32x32 inputs (the limit paper's VGG16).

The 13 convolutions of configuration D (3x3, padding 1, with bias, each followed by BN and ReLU) and
five 2x2 max-pools take a 32x32 image to 512x1x1; the classifier is a single 512 -> classes linear
layer, as in the limit paper (not the 4096-wide ImageNet head).
"""
from __future__ import annotations

from torch import Tensor, nn

from .common import in_channels
from .registry import register_model

CONFIG_D = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    def __init__(self, config: tuple = CONFIG_D, num_classes: int = 10, channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        for v in config:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                channels = v
        self.features = nn.Sequential(*layers)
        # Identity on 32x32 inputs (already 1x1); averages larger maps, e.g. 2x2 from 64x64 TinyImageNet.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:  # (B, 3, 32, 32) -> (B, 512, 1, 1) -> (B, num_classes)
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


@register_model("vgg16_bn", aliases=("VGG16",))
def vgg16_bn(num_classes: int, input_shape: tuple[int, int, int] | None = None) -> VGG:
    """VGG16 with batch norm for 32x32 (limit paper): 13 conv layers (config D), then 512 -> classes."""
    return VGG(CONFIG_D, num_classes, in_channels(input_shape))
