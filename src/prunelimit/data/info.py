"""What a dataset is: classes, input shape, normalisation, where its files come from.

``DatasetInfo`` is the record each dataset registers with ``@register_dataset`` (see ``registry.py``);
this module imports nothing else from the package, so the dataset modules, the registry and the
shared helpers in ``common.py`` can all use it without an import cycle.
"""
from __future__ import annotations

from dataclasses import dataclass

# ImageNet statistics; TinyImageNet is a 64x64 subset of ImageNet, so it uses them too.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DatasetInfo:
    name: str  # canonical registry name, e.g. "cifar10"
    num_classes: int  # number of labels; labels are 0 .. num_classes-1
    input_shape: tuple[int, int, int]  # (C, H, W) of one sample as the model sees it
    mean: tuple[float, ...]  # per-channel mean subtracted by the normalisation
    std: tuple[float, ...]  # per-channel std divided by the normalisation
    description: str  # one line: what the data is and how it is split
    how_to_get: str  # one sentence: where to put or how to fetch the files
