"""The dataset registry (``@register_dataset``, ``create_dataset``: one name -> one ready ``Dataset``) and
the data config section. The built-in datasets register themselves in their own modules."""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch.utils.data import Dataset

from prunelimit.data.info import DatasetInfo
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


# ---- the registry -------------------------------------------------------------------------------
# A factory builds one split: factory(root: Path, train: bool, *, download: bool, augment: bool) -> Dataset
DatasetFactory = Callable[..., Dataset]


@dataclass(frozen=True)
class _Entry:
    info: DatasetInfo
    factory: DatasetFactory


_DATASETS: dict[str, _Entry] = {}  # canonical name -> entry, in registration order (smallest first)


def _squash(name: str) -> str:
    return name.strip().lower().replace("-", "").replace("_", "")


def register_dataset(info: DatasetInfo):
    """Decorator: register ``factory(root, train, *, download, augment) -> Dataset`` as ``info.name``.

    ``root`` is the data folder (a ``Path``); ``augment`` asks for the training transform on the train
    split; ``download`` allows fetching missing files. Samples must be ``(float32 (C, H, W), int label)``
    with ``info``'s shape, normalised with ``info``'s mean/std. Names are matched case-insensitively
    with ``-``/``_`` ignored."""
    if _squash(info.name) != info.name:
        raise PrunelimitError(f"register_dataset: name {info.name!r} must be lower case without '-' or '_' "
                              f"(users may type {info.name.upper()!r} or with dashes; both map onto it)")

    def deco(factory: DatasetFactory) -> DatasetFactory:
        if info.name in _DATASETS:
            raise PrunelimitError(f"register_dataset: {info.name!r} is already registered")
        _DATASETS[info.name] = _Entry(info, factory)
        return factory

    return deco


def list_datasets() -> list[str]:
    """Registry names, smallest first."""
    return list(_DATASETS)


def canonical_name(name: str, key: str = "dataset") -> str:
    """Map a user-typed dataset name onto its registry name, or raise naming ``key``."""
    names = list(_DATASETS)
    if not isinstance(name, str):
        raise PrunelimitError(f"{key} must be a dataset name (one of {', '.join(names)}), got {name!r}")
    squashed = _squash(name)
    if squashed in _DATASETS:
        return squashed
    close = difflib.get_close_matches(squashed, names, n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise PrunelimitError(f"{key}: unknown dataset {name!r}; valid names are {', '.join(names)}.{hint}")


def dataset_info(name: str) -> DatasetInfo:
    """Facts about dataset ``name`` (any spelling ``canonical_name`` accepts)."""
    return _DATASETS[canonical_name(name)].info


def create_dataset(name: str, root: str | os.PathLike | None = None, *, train: bool,
                   download: bool = False, augment: bool = True) -> Dataset:
    """Dataset ``name`` (see ``list_datasets()``), split ``train``, with the original transforms.

    Samples are ``(float32 (C, H, W), int label)``. ``root`` is the data folder (default
    ``"datasets"``; ignored by digits). ``augment=False`` applies the test transform to the train
    split (sweeps and Hessians evaluate the train set unaugmented). ``download=True`` fetches
    mnist/cifar10/cifar100 when missing (rank 0 only). Missing or damaged files raise a
    ``PrunelimitError`` naming the path and how to get the data.
    """
    if not isinstance(train, bool):
        raise PrunelimitError(f"create_dataset: train must be True or False, got {train!r}")
    entry = _DATASETS[canonical_name(name)]
    base = Path(DEFAULT_DATA_PATH if root is None else root).expanduser()
    return entry.factory(base, train, download=download, augment=augment)


def dataset_from_config(cfg: DataConfig, *, train: bool) -> Dataset:
    """``create_dataset`` with the config's name, path, download and augment settings."""
    return create_dataset(cfg.dataset, cfg.data_path, train=train, download=cfg.download, augment=cfg.augment)
