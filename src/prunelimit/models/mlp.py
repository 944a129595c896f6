"""Fully-connected ReLU nets: the general ``mlp`` and the limit paper's FC / FC12, plus ``fc_small``."""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Sequence

from torch import nn

from .common import positive_ints
from .registry import register_model

FC_HIDDEN = (1000, 600, 300, 100)
FC12_HIDDEN = (1000, 900, 800, 750, 700, 650, 600, 500, 400, 200, 100)
FC_SMALL_HIDDEN = (300, 100)


class MLP(nn.Sequential):
    """flatten -> fc1 -> relu1 -> ... -> fc{L}; layers are named so pruning logs read ``fc3.weight``.

    Input (B, C, H, W) or (B, in_features) -> logits (B, num_classes)."""

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int):
        widths = [in_features, *hidden, num_classes]
        layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
        for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:]), start=1):
            layers.append((f"fc{i}", nn.Linear(fan_in, fan_out)))
            if i < len(widths) - 1:  # no activation after the output layer
                layers.append((f"relu{i}", nn.ReLU(inplace=True)))
        super().__init__(OrderedDict(layers))
        self.in_features = in_features
        self.hidden = tuple(hidden)


def build_mlp(num_classes: int, input_shape: tuple[int, int, int], hidden: Sequence[int], name: str) -> MLP:
    return MLP(math.prod(input_shape), positive_ints(hidden, "hidden", name), num_classes)


@register_model("mlp", needs_input_shape=True)
def mlp(num_classes: int, input_shape: tuple[int, int, int], hidden: Sequence[int] = FC_SMALL_HIDDEN) -> MLP:
    """Fully-connected ReLU net: C*H*W -> hidden... -> num_classes (option `hidden`, a list of widths)."""
    return build_mlp(num_classes, input_shape, hidden, "mlp")


@register_model("fc", aliases=("FC",), needs_input_shape=True)
def fc(num_classes: int, input_shape: tuple[int, int, int]) -> MLP:
    """Limit paper FC: C*H*W -> 1000 -> 600 -> 300 -> 100 -> num_classes, ReLU."""
    return build_mlp(num_classes, input_shape, FC_HIDDEN, "fc")


@register_model("fc12", aliases=("FC12",), needs_input_shape=True)
def fc12(num_classes: int, input_shape: tuple[int, int, int]) -> MLP:
    """Limit paper FC12: 12 linear layers, C*H*W -> 1000 -> 900 -> ... -> 200 -> 100 -> num_classes, ReLU."""
    return build_mlp(num_classes, input_shape, FC12_HIDDEN, "fc12")


@register_model("fc_small", needs_input_shape=True)
def fc_small(num_classes: int, input_shape: tuple[int, int, int]) -> MLP:
    """The embedded default's net: C*H*W -> 300 -> 100 -> num_classes, ReLU (64 inputs on digits)."""
    return build_mlp(num_classes, input_shape, FC_SMALL_HIDDEN, "fc_small")
