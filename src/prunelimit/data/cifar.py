"""CIFAR-10 and CIFAR-100 from the standard python-pickle batches.

Layout (as extracted from the official tarballs):
``<root>/cifar-10-batches-py/data_batch_1 .. data_batch_5, test_batch`` (labels under ``b"labels"``),
``<root>/cifar-100-python/train, test`` (fine labels under ``b"fine_labels"``). Each batch is a
Python 2 pickle of a dict whose ``b"data"`` is uint8 (n, 3072): 1024 red, then green, then blue
values of a 32x32 image in row-major order. Read with ``RestrictedUnpickler``, never ``pickle.load``.
Train augmentation as in the original: reflect-pad 4, random 32x32 crop, horizontal flip.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchvision import transforms

from prunelimit.data.common import ImageTensorDataset, missing_data_error, require_paths, run_download
from prunelimit.data.info import DatasetInfo
from prunelimit.data.registry import dataset_info, register_dataset
from prunelimit.data.safe_pickle import restricted_load

# dataset -> (folder, train files, test files, label key, number of classes)
_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", 100),
}


def cifar_train_augment() -> transforms.Compose:
    """Acts on one float (3, 32, 32) tensor; same result as on the PIL image, since cropping and
    flipping commute with the 0..1 scaling."""
    return transforms.Compose([
        transforms.RandomCrop(32, padding=4, padding_mode="reflect"),
        transforms.RandomHorizontalFlip(),
    ])


def read_cifar_batch(path: Path, dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (uint8 (n, 3, 32, 32), int64 (n,)), with every field checked."""
    label_key, num_classes = _LAYOUT[dataset][3], _LAYOUT[dataset][4]
    try:
        with open(path, "rb") as f:
            batch = restricted_load(f, encoding="bytes")
    except ValueError as e:  # includes UnsafePickleError
        raise missing_data_error(dataset, path, f"was refused: {e}") from e
    except Exception as e:  # truncated or not a pickle at all
        raise missing_data_error(dataset, path, f"is not a readable CIFAR batch ({type(e).__name__}: {e})") from e
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise missing_data_error(dataset, path, f"lacks the keys b'data' and {label_key!r} (has {keys})")
    data, labels = batch[b"data"], np.asarray(batch[label_key])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise missing_data_error(dataset, path, f"has b'data' of {desc}; expected uint8 (n, 3072)")
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise missing_data_error(dataset, path, f"has {labels.shape} labels for {data.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise missing_data_error(dataset, path, f"has labels outside 0..{num_classes - 1}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _download(dataset: str, root: Path) -> None:
    from torchvision.datasets import CIFAR10, CIFAR100
    from torchvision.datasets.utils import download_and_extract_archive

    # Only torchvision's downloader (checksum + extraction); its dataset classes use plain pickle.load.
    cls = CIFAR10 if dataset == "cifar10" else CIFAR100
    download_and_extract_archive(cls.url, str(root), filename=cls.filename, md5=cls.tgz_md5)


def cifar_dataset(dataset: str, root: Path, train: bool, download: bool, augment: bool) -> ImageTensorDataset:
    folder, train_files, test_files, _, _ = _LAYOUT[dataset]
    paths = [root / folder / name for name in (train_files if train else test_files)]
    if download and not all(p.is_file() for p in paths):
        run_download(dataset, root, lambda: _download(dataset, root))
    require_paths(dataset, paths)
    parts = [read_cifar_batch(p, dataset) for p in paths]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts]))  # (N, 3, 32, 32) uint8
    labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))  # (N,)
    info = dataset_info(dataset)
    return ImageTensorDataset(images, labels, info.mean, info.std,
                              augment=cifar_train_augment() if (train and augment) else None)


@register_dataset(DatasetInfo(
    "cifar10", 10, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010),
    "CIFAR-10, 50 000 train / 10 000 test, 32x32 colour, 10 classes.",
    "Set download: true (command line: --download), or extract cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html "
    "into <data_path> so that <data_path>/cifar-10-batches-py/data_batch_1 exists."))
def _cifar10(root: Path, train: bool, *, download: bool, augment: bool) -> ImageTensorDataset:
    return cifar_dataset("cifar10", root, train, download, augment)


@register_dataset(DatasetInfo(
    "cifar100", 100, (3, 32, 32), (0.507, 0.487, 0.441), (0.267, 0.256, 0.276),
    "CIFAR-100 (fine labels), 50 000 train / 10 000 test, 32x32 colour, 100 classes.",
    "Set download: true (command line: --download), or extract cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html "
    "into <data_path> so that <data_path>/cifar-100-python/train exists."))
def _cifar100(root: Path, train: bool, *, download: bool, augment: bool) -> ImageTensorDataset:
    return cifar_dataset("cifar100", root, train, download, augment)
