"""The data config section and ``create_dataset``: one name -> one ready ``Dataset``."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from prunelimit.data.info import canonical_name
from prunelimit.errors import PrunelimitError

DEFAULT_DATA_PATH = "datasets"


@dataclass
class DataConfig:
    dataset: str = "digits"  # registry name (list_datasets()); spelling variants like "CIFAR-10" are normalised
    data_path: str = DEFAULT_DATA_PATH  # folder holding the datasets' files (ignored by digits)
    download: bool = False  # fetch mnist/cifar10/cifar100 into data_path when their files are missing
    workers: int = 0  # DataLoader worker processes per rank (0 = load in the main process)
    augment: bool = True  # random crops/flips on the train split (False: the test transform)
    use_full_data: bool = True  # original key: Hessian and epsilon statistics use the whole training set

    def __post_init__(self) -> None:
        self.dataset = canonical_name(self.dataset, key="data key 'dataset'")
        if isinstance(self.data_path, os.PathLike):
            self.data_path = os.fspath(self.data_path)
        if not isinstance(self.data_path, str) or not self.data_path.strip():
            raise PrunelimitError(f"data key 'data_path' must be a folder path, got {self.data_path!r}")
        for key in ("download", "augment", "use_full_data"):
            if not isinstance(getattr(self, key), bool):
                raise PrunelimitError(f"data key {key!r} must be true or false, got {getattr(self, key)!r}")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise PrunelimitError(f"data key 'workers' must be an integer >= 0 (0 loads in the main process), "
                             f"got {self.workers!r}")


def create_dataset(name: str, root: str | os.PathLike | None = None, *, train: bool,
                   download: bool = False, augment: bool = True) -> Dataset:
    """Dataset ``name`` (see ``list_datasets()``), split ``train``, with the original transforms.

    Samples are ``(float32 (C, H, W), int label)``. ``root`` is the data folder (default
    ``"datasets"``; ignored by digits). ``augment=False`` applies the test transform to the train
    split (sweeps and Hessians evaluate the train set unaugmented). ``download=True`` fetches
    mnist/cifar10/cifar100 when missing (rank 0 only). Missing or damaged files raise ``ValueError``
    naming the path and how to get the data.
    """
    if not isinstance(train, bool):
        raise PrunelimitError(f"create_dataset: train must be True or False, got {train!r}")
    name = canonical_name(name)
    base = Path(DEFAULT_DATA_PATH if root is None else root).expanduser()
    if name == "digits":
        from prunelimit.data.digits import digits_dataset

        return digits_dataset(train)
    if name == "mnist":
        from prunelimit.data.mnist import mnist_dataset

        return mnist_dataset(base, train, download)
    if name in ("cifar10", "cifar100"):
        from prunelimit.data.cifar import cifar_dataset

        return cifar_dataset(name, base, train, download, augment)
    from prunelimit.data.folders import imagenet_dataset, tinyimagenet_dataset

    if name == "tinyimagenet":
        return tinyimagenet_dataset(base, train, augment)
    return imagenet_dataset(base, train, augment)


def dataset_from_config(cfg: DataConfig, *, train: bool) -> Dataset:
    """``create_dataset`` with the config's name, path, download and augment settings."""
    return create_dataset(cfg.dataset, cfg.data_path, train=train, download=cfg.download, augment=cfg.augment)
