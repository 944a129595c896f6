"""ImageNet models from torchvision, built with ``weights=None`` (nothing is downloaded).

torchvision is imported inside the factories so ``import prunelimit`` stays fast. With an
``input_shape`` whose C is not 3 the stem convolution is rebuilt for C channels.
"""
from __future__ import annotations

from torch import nn

from .common import in_channels, probability, replace_conv_in_channels
from .registry import register_model


@register_model("resnet50", default_num_classes=1000)
def resnet50(num_classes: int, input_shape: tuple[int, int, int] | None = None) -> nn.Module:
    """torchvision ResNet-50 (ImageNet, 224x224; GP paper), 25.6 M parameters at 1000 classes."""
    from torchvision.models import resnet50 as build
    model = build(weights=None, num_classes=num_classes)
    model.conv1 = replace_conv_in_channels(model.conv1, in_channels(input_shape))
    return model


@register_model("mobilenet_v2", default_num_classes=1000)
def mobilenet_v2(num_classes: int, input_shape: tuple[int, int, int] | None = None,
                 dropout: float = 0.2) -> nn.Module:
    """torchvision MobileNetV2 (ImageNet, 224x224; GP paper), 3.5 M parameters at 1000 classes."""
    from torchvision.models import mobilenet_v2 as build
    model = build(weights=None, num_classes=num_classes, dropout=probability(dropout, "dropout", "mobilenet_v2"))
    model.features[0][0] = replace_conv_in_channels(model.features[0][0], in_channels(input_shape))
    return model


@register_model("efficientnet_b2", default_num_classes=1000)
def efficientnet_b2(num_classes: int, input_shape: tuple[int, int, int] | None = None,
                    dropout: float = 0.3) -> nn.Module:
    """torchvision EfficientNet-B2 (ImageNet, 288x288; GP paper), 9.1 M parameters at 1000 classes."""
    from torchvision.models import efficientnet_b2 as build
    model = build(weights=None, num_classes=num_classes, dropout=probability(dropout, "dropout", "efficientnet_b2"))
    model.features[0][0] = replace_conv_in_channels(model.features[0][0], in_channels(input_shape))
    return model
