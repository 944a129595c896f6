"""What each dataset is: classes, input shape, normalisation, and where its files come from.

Names are matched case-insensitively with ``-``/``_`` ignored, so ``CIFAR-10``, ``cifar_10`` and
``cifar10`` are the same dataset; anything else is a ``ValueError`` with a did-you-mean.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from prunelimit.errors import PrunelimitError

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


_STATIC: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        "mnist", 10, (1, 28, 28), (0.1307,), (0.3081,),
        "MNIST handwritten digits, 60 000 train / 10 000 test, 28x28 grey.",
        "Set download: true (command line: --download) to fetch it into <data_path>/MNIST/raw, or place train-images-idx3-ubyte, "
        "train-labels-idx1-ubyte, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (plain or .gz) there."),
    "cifar10": DatasetInfo(
        "cifar10", 10, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010),
        "CIFAR-10, 50 000 train / 10 000 test, 32x32 colour, 10 classes.",
        "Set download: true (command line: --download), or extract cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html "
        "into <data_path> so that <data_path>/cifar-10-batches-py/data_batch_1 exists."),
    "cifar100": DatasetInfo(
        "cifar100", 100, (3, 32, 32), (0.507, 0.487, 0.441), (0.267, 0.256, 0.276),
        "CIFAR-100 (fine labels), 50 000 train / 10 000 test, 32x32 colour, 100 classes.",
        "Set download: true (command line: --download), or extract cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html "
        "into <data_path> so that <data_path>/cifar-100-python/train exists."),
    "tinyimagenet": DatasetInfo(
        "tinyimagenet", 200, (3, 64, 64), IMAGENET_MEAN, IMAGENET_STD,
        "Tiny ImageNet, 100 000 train / 10 000 val (used as the test split), 64x64 colour, 200 classes; "
        "normalised with the ImageNet mean/std.",
        "Download http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it into <data_path> so that "
        "<data_path>/tiny-imagenet-200/wnids.txt exists (automatic download is not offered)."),
    "imagenet": DatasetInfo(
        "imagenet", 1000, (3, 224, 224), IMAGENET_MEAN, IMAGENET_STD,
        "ImageNet ILSVRC-2012 as an image folder, 1.28 M train / 50 000 val (used as the test split).",
        "Get ILSVRC-2012 from https://image-net.org (registration required) and arrange it as "
        "<data_path>/train/<wnid>/*.JPEG and <data_path>/val/<wnid>/*.JPEG (validation images sorted into "
        "class folders); <data_path>/imagenet/train and .../val are also accepted."),
}

_ORDER = ("digits", "mnist", "cifar10", "cifar100", "tinyimagenet", "imagenet")


def list_datasets() -> list[str]:
    """Registry names, smallest first."""
    return list(_ORDER)


def canonical_name(name: str, key: str = "dataset") -> str:
    """Map a user-typed dataset name onto its registry name, or raise ``ValueError`` naming ``key``."""
    if not isinstance(name, str):
        raise PrunelimitError(f"{key} must be a dataset name (one of {', '.join(_ORDER)}), got {name!r}")
    squashed = name.strip().lower().replace("-", "").replace("_", "")
    if squashed in _ORDER:
        return squashed
    close = difflib.get_close_matches(squashed, _ORDER, n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise PrunelimitError(f"{key}: unknown dataset {name!r}; valid names are {', '.join(_ORDER)}.{hint}")


def dataset_info(name: str) -> DatasetInfo:
    """Facts about dataset ``name`` (any spelling ``canonical_name`` accepts)."""
    name = canonical_name(name)
    if name == "digits":
        # The digits statistics are measured on our fixed train split, so they come from that module.
        from prunelimit.data.digits import DIGITS_NUM_TEST, DIGITS_NUM_TRAIN, digits_split

        split = digits_split()
        return DatasetInfo(
            "digits", 10, (1, 8, 8), (split.mean,), (split.std,),
            f"scikit-learn's bundled 8x8 handwritten digits (1797 images), fixed stratified split "
            f"{DIGITS_NUM_TRAIN} train / {DIGITS_NUM_TEST} test; pixels/16 standardised with the train "
            f"mean/std.",
            "Bundled with scikit-learn (sklearn.datasets.load_digits); nothing to download.")
    return _STATIC[name]
