"""``dataset: imagefolder``: the user's own images in class folders, with no code to write.

``data_path`` is a folder with ``train/<class>/*`` and ``test/<class>/*`` (``val/`` is accepted for the
test split), read with torchvision's ``ImageFolder`` as RGB; classes are numbered in sorted folder-name
order and both splits must have the same class folders. ``data.image_size`` ([height, width]) is
required: every image is resized to it. Normalisation: ``data.mean`` / ``data.std`` when given, else
computed once from the training split at that size (one pass over its images; give them to skip it).
``augment`` (train split): a random horizontal flip and a random crop of the resized image padded by
1/8 of its size, as the CIFAR recipes do.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from prunelimit.data.info import DatasetInfo
from prunelimit.data.registry import per_channel, register_dataset
from prunelimit.errors import PrunelimitError

HOW_TO = ("Set data_path to a folder with train/<class>/<images> and test/<class>/<images> (or val/), and "
          "data.image_size to [height, width].")
INFO = DatasetInfo("imagefolder", 0, (0, 0, 0), (), (),
                   "your images: data_path/train/<class>/* and data_path/test/<class>/*, resized to data.image_size",
                   HOW_TO)


def _split_dir(root: Path, train: bool) -> Path:
    names = ("train",) if train else ("test", "val")
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise PrunelimitError(f"imagefolder: {root} has no {' or '.join(n + '/' for n in names)} folder. {HOW_TO}")


def _size(image_size) -> tuple[int, int]:
    if image_size is None:
        raise PrunelimitError(f"imagefolder needs data.image_size ([height, width] every image is resized to). {HOW_TO}")
    return int(image_size[0]), int(image_size[1])


def _folder(root: Path, train: bool, transform) -> datasets.ImageFolder:
    split = _split_dir(root, train)
    try:
        return datasets.ImageFolder(str(split), transform=transform)
    except (FileNotFoundError, RuntimeError) as e:   # no class folders / no images in them
        raise PrunelimitError(f"imagefolder: {split}: {e}. {HOW_TO}") from None


def _stamp(root: Path) -> tuple[str, int, int]:
    """Cache key of a folder: its path and the modification times of its two splits (a class folder added
    or removed changes them)."""
    root = root.resolve()
    return str(root), _split_dir(root, True).stat().st_mtime_ns, _split_dir(root, False).stat().st_mtime_ns


@lru_cache(maxsize=4)
def _classes(root: str, *_stamps: int) -> tuple[str, ...]:
    train = _folder(Path(root), True, None).classes
    test = _folder(Path(root), False, None).classes
    if train != test:
        only = sorted(set(train) ^ set(test))
        raise PrunelimitError(f"imagefolder: {root}: the train and test splits have different class folders "
                              f"(only in one of them: {', '.join(only[:5])}); both need the same classes")
    return tuple(train)


@lru_cache(maxsize=4)
def _train_stats(size: tuple[int, int], root: str, *_stamps: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std of every train pixel at ``size`` (one pass, float64 sums)."""
    folder = _folder(Path(root), True, transforms.Compose([transforms.Resize(size), transforms.ToTensor()]))
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    count = 0
    for x, _ in DataLoader(folder, batch_size=64):
        x = x.to(torch.float64)                       # (B, 3, H, W)
        total += x.sum(dim=(0, 2, 3))
        total_sq += (x * x).sum(dim=(0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(0).sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _normalisation(root: Path, size, mean, std) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if mean is None or std is None:
        computed = _train_stats(size, *_stamp(root))
        mean = computed[0] if mean is None else mean
        std = computed[1] if std is None else std
    mean, std = per_channel(mean, 3), per_channel(std, 3)
    for key, v in (("mean", mean), ("std", std)):
        if len(v) != 3:
            raise PrunelimitError(f"data.{key} needs 3 values (imagefolder images are read as RGB); got {list(v)}")
    return tuple(mean), tuple(std)


def describe_imagefolder(root: Path, image_size=None, mean=None, std=None) -> DatasetInfo:
    size = _size(image_size)
    classes = _classes(*_stamp(root))
    mean, std = _normalisation(root, size, mean, std)
    return DatasetInfo("imagefolder", len(classes), (3, *size), mean, std,
                       f"your images from {root}: {len(classes)} classes, resized to {size[0]}x{size[1]}", HOW_TO)


@register_dataset(INFO, describe=describe_imagefolder, options=("image_size", "mean", "std"))
def imagefolder_dataset(root: Path, train: bool, *, download: bool = False, augment: bool = True,
                        image_size=None, mean=None, std=None) -> datasets.ImageFolder:
    size = _size(image_size)
    _classes(*_stamp(root))   # same class folders in both splits, or a clear error
    mean, std = _normalisation(root, size, mean, std)
    steps = [transforms.Resize(size)]
    if train and augment:
        pad = max(1, min(size) // 8)
        steps += [transforms.RandomCrop(size, padding=pad, padding_mode="reflect"), transforms.RandomHorizontalFlip()]
    steps += [transforms.ToTensor(), transforms.Normalize(mean, std)]
    return _folder(root, train, transforms.Compose(steps))
