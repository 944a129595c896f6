"""The embedded default: scikit-learn's bundled 8x8 digits, no network and no files needed.

1797 images, 10 classes, split once and for all with
``train_test_split(test_size=0.2, stratify=y, random_state=0)``: 1437 train / 360 test, every class
in the same proportion in both. Pixels (0..16) are divided by 16, then standardised with the mean and
std of all train-split pixels, so the train split has mean 0 and std 1 exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from prunelimit.data.common import ImageTensorDataset
from prunelimit.data.info import DatasetInfo
from prunelimit.data.registry import register_dataset

DIGITS_NUM_TRAIN = 1437
DIGITS_NUM_TEST = 360
DIGITS_SPLIT_SEED = 0
# Mean and population std of all train-split pixels after / 16; a test recomputes them from the split.
DIGITS_MEAN = 0.30538339422407795
DIGITS_STD = 0.3761191680900195


@dataclass(frozen=True)
class DigitsSplit:
    train_images: np.ndarray  # float32 (1437, 1, 8, 8), pixels / 16
    train_labels: np.ndarray  # int64 (1437,)
    test_images: np.ndarray  # float32 (360, 1, 8, 8)
    test_labels: np.ndarray  # int64 (360,)
    mean: float  # mean of all train-split pixels (after / 16)
    std: float  # std of all train-split pixels (population std, ddof=0)


@lru_cache(maxsize=1)
def digits_split() -> DigitsSplit:
    """The fixed, deterministic stratified split (computed once per process)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None]  # (1797, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y, random_state=DIGITS_SPLIT_SEED)
    mean = float(x_tr.astype(np.float64).mean())
    std = float(x_tr.astype(np.float64).std())
    for a in (x_tr, x_te, y_tr, y_te):
        a.setflags(write=False)  # shared through the cache: nobody may edit it in place
    return DigitsSplit(x_tr, y_tr, x_te, y_te, mean, std)


def digits_dataset(train: bool) -> ImageTensorDataset:
    """The train or test split as an in-memory dataset; ``.tensors`` gives it as one batch."""
    s = digits_split()
    images, labels = (s.train_images, s.train_labels) if train else (s.test_images, s.test_labels)
    return ImageTensorDataset(torch.tensor(images), torch.tensor(labels), (DIGITS_MEAN,), (DIGITS_STD,))


@register_dataset(DatasetInfo(
    "digits", 10, (1, 8, 8), (DIGITS_MEAN,), (DIGITS_STD,),
    f"scikit-learn's bundled 8x8 handwritten digits (1797 images), fixed stratified split "
    f"{DIGITS_NUM_TRAIN} train / {DIGITS_NUM_TEST} test; pixels/16 standardised with the train mean/std.",
    "Bundled with scikit-learn (sklearn.datasets.load_digits); nothing to download."), downloads=False)
def _digits(root, train: bool, *, download: bool, augment: bool) -> ImageTensorDataset:
    return digits_dataset(train)
