"""Small helpers shared by the model families."""
from __future__ import annotations

from typing import Sequence

from torch import nn
from prunelimit.errors import PrunelimitError


def in_channels(input_shape: tuple[int, int, int] | None, default: int = 3) -> int:
    """Channels of one example: C of ``input_shape`` (C, H, W), or ``default`` when it is not given."""
    return default if input_shape is None else input_shape[0]


def replace_conv_in_channels(conv: nn.Conv2d, channels: int) -> nn.Conv2d:
    """``conv`` rebuilt for ``channels`` input channels (same kernel, stride, padding, bias); ``conv``
    itself when it already has them. Used to put 1-channel inputs through ImageNet stems."""
    if conv.in_channels == channels:
        return conv
    if conv.groups != 1:
        raise PrunelimitError(f"cannot change the input channels of a grouped stem convolution ({conv})")
    new = nn.Conv2d(channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                    dilation=conv.dilation, bias=conv.bias is not None, padding_mode=conv.padding_mode)
    # torchvision initialises its stems this way; keep the rebuilt one consistent with the rest.
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    return new


def positive_int(value, option: str, model: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PrunelimitError(f"option {option!r} of model {model!r} must be a positive integer, got {value!r}")
    return value


def positive_ints(values: Sequence[int], option: str, model: str) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise PrunelimitError(f"option {option!r} of model {model!r} must be a list of positive integers, "
                         f"e.g. [300, 100]; got {values!r}")
    return tuple(positive_int(v, option, model) for v in values)


def probability(value, option: str, model: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise PrunelimitError(f"option {option!r} of model {model!r} must be a probability in [0, 1), got {value!r}")
    return float(value)
