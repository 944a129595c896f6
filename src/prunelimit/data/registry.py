"""The dataset registry (``@register_dataset``, ``create_dataset``: one name -> one ready ``Dataset``) and
the data config section. The built-in datasets register themselves in their own modules."""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from torch.utils.data import Dataset

from prunelimit.data.info import DatasetInfo
from prunelimit.errors import PrunelimitError

DEFAULT_DATA_PATH = "datasets"
ARRAY_FILE_SUFFIXES = (".npz", ".pt", ".pth")   # a dataset value ending so is read as dataset: arrays


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "digits"  # registry name (list_datasets()); spelling variants like "CIFAR-10" are normalised
    data_path: str = DEFAULT_DATA_PATH  # folder holding the datasets' files (ignored by digits)
    download: bool = False  # fetch mnist/cifar10/cifar100 into data_path when their files are missing
    workers: int = 0  # DataLoader worker processes per rank (0 = load in the main process)
    augment: bool = True  # random crops/flips on the train split (False: the test transform)
    use_full_data: bool = True  # original key: Hessian and epsilon statistics use the whole training set
    mean: list[float] | float | None = None  # arrays/imagefolder: per-channel mean (one number: the same for
                                             # every channel); None: computed from the train split
    std: list[float] | float | None = None  # arrays/imagefolder: per-channel std (one number: every channel);
                                            # None: computed from the train split
    image_size: list[int] | int | None = None  # imagefolder: [height, width] every image is resized to;
                                               # one int: a square of that size

    def options(self) -> dict:
        """The keys that only datasets read from user files take (those that are set)."""
        return {k: getattr(self, k) for k in USER_DATA_OPTIONS if getattr(self, k) is not None}

    def __post_init__(self) -> None:
        if isinstance(self.dataset, (str, os.PathLike)) and os.fspath(self.dataset).endswith(ARRAY_FILE_SUFFIXES):
            # one config line for your own arrays: `dataset: mine.npz` = `dataset: arrays` + `data_path: mine.npz`
            if self.data_path not in (DEFAULT_DATA_PATH, os.fspath(self.dataset)):
                raise PrunelimitError(f"data key 'dataset' names the file {os.fspath(self.dataset)!r} and 'data_path' "
                                      f"is {self.data_path!r}; give the file in one of them (dataset: arrays, "
                                      f"data_path: FILE)")
            object.__setattr__(self, "data_path", os.fspath(self.dataset))  # frozen: normalised once, here
            object.__setattr__(self, "dataset", "arrays")
        object.__setattr__(self, "dataset", canonical_name(self.dataset, key="data key 'dataset'"))
        if isinstance(self.data_path, os.PathLike):
            object.__setattr__(self, "data_path", os.fspath(self.data_path))
        if not isinstance(self.data_path, str) or not self.data_path.strip():
            raise PrunelimitError(f"data key 'data_path' must be a folder path, got {self.data_path!r}")
        for key in ("download", "augment", "use_full_data"):
            if not isinstance(getattr(self, key), bool):
                raise PrunelimitError(f"data key {key!r} must be true or false, got {getattr(self, key)!r}")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise PrunelimitError(f"data key 'workers' must be an integer >= 0 (0 loads in the main process), "
                             f"got {self.workers!r}")
        for key in ("mean", "std"):
            v = getattr(self, key)
            one = isinstance(v, (int, float)) and not isinstance(v, bool)   # one number: every channel's
            values = [v] if one else v
            if values is not None and (not isinstance(values, (list, tuple)) or not values
                                       or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in values)):
                raise PrunelimitError(f"data key {key!r} must be a list of numbers, one per channel "
                                      f"(e.g. [0.5, 0.5, 0.5]), or one number for every channel; got {v!r}")
            if values is not None and key == "std" and min(values) <= 0:
                raise PrunelimitError(f"data key 'std' must be > 0 for every channel; got {v!r}")
            # a number stays a number (the datasets repeat it over their channels, which only they know)
            object.__setattr__(self, key, None if v is None else float(v) if one else [float(x) for x in v])
        if isinstance(self.image_size, int) and not isinstance(self.image_size, bool):
            object.__setattr__(self, "image_size", [self.image_size, self.image_size])
        if self.image_size is not None and (
                not isinstance(self.image_size, (list, tuple)) or len(self.image_size) != 2
                or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in self.image_size)):
            raise PrunelimitError(f"data key 'image_size' must be [height, width] (or one int) in pixels; "
                                  f"got {self.image_size!r}")
        if self.image_size is not None:
            object.__setattr__(self, "image_size", list(self.image_size))
        if self.download:
            refuse_download(self.dataset)
        unused = [k for k in self.options() if k not in _DATASETS.get(self.dataset, _NO_OPTIONS).options]
        if unused:
            takes = [n for n, e in _DATASETS.items() if e.options]
            raise PrunelimitError(f"data key(s) {', '.join(unused)} apply to the datasets read from your files "
                                  f"({', '.join(takes)}), not to {self.dataset!r}; remove them")


# ---- the registry -------------------------------------------------------------------------------
# A factory builds one split: factory(root: Path, train: bool, *, download: bool, augment: bool) -> Dataset
DatasetFactory = Callable[..., Dataset]


USER_DATA_OPTIONS = ("mean", "std", "image_size")


def per_channel(value: float | Sequence[float], channels: int) -> tuple[float, ...]:
    """``data.mean`` / ``data.std`` as one value per channel: a single number is every channel's."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value),) * channels
    return tuple(value)


@dataclass(frozen=True)
class _Entry:
    info: DatasetInfo
    factory: DatasetFactory
    # datasets read from the user's files: their facts come from the files, and the factory takes options
    describe: Callable[..., DatasetInfo] | None = None   # (root: Path, **options) -> DatasetInfo
    options: tuple[str, ...] = ()                         # which of USER_DATA_OPTIONS the factory takes
    downloads: bool = True                                # the factory fetches missing files when download=True


_NO_OPTIONS = _Entry(None, None)  # type: ignore[arg-type]


_DATASETS: dict[str, _Entry] = {}  # canonical name -> entry, in registration order (smallest first)


def _squash(name: str) -> str:
    return name.strip().lower().replace("-", "").replace("_", "")


def register_dataset(info: DatasetInfo, *, describe: Callable[..., DatasetInfo] | None = None,
                     options: tuple[str, ...] = (), downloads: bool = True):
    """Decorator: register ``factory(root, train, *, download, augment) -> Dataset`` as ``info.name``.

    A dataset whose classes and shape come from the user's files gives ``describe(root, **options) ->
    DatasetInfo`` and the ``options`` (data keys among ``USER_DATA_OPTIONS``) its factory and ``describe``
    take as keyword arguments; ``info`` is then what ``ls datasets`` shows (``num_classes`` 0).

    ``root`` is the data folder (a ``Path``); ``augment`` asks for the training transform on the train
    split; ``download`` allows fetching missing files; a factory that cannot fetch its files registers with
    ``downloads=False``, and ``download: true`` is then refused instead of ignored. Samples must be ``(float32 (C, H, W), int label)``
    with ``info``'s shape, normalised with ``info``'s mean/std. Names are matched case-insensitively
    with ``-``/``_`` ignored."""
    if _squash(info.name) != info.name:
        raise PrunelimitError(f"register_dataset: name {info.name!r} must be lower case without '-' or '_' "
                              f"(users may type {info.name.upper()!r} or with dashes; both map onto it)")

    def deco(factory: DatasetFactory) -> DatasetFactory:
        if info.name in _DATASETS:
            raise PrunelimitError(f"register_dataset: {info.name!r} is already registered")
        _DATASETS[info.name] = _Entry(info, factory, describe, tuple(options), downloads and describe is None)
        return factory

    return deco


def refuse_download(name: str) -> None:
    """Raise when ``download`` is asked of a dataset that cannot fetch its files (it would be ignored)."""
    entry = _DATASETS.get(name)
    if entry is None or entry.downloads:
        return
    why = ("is read from your own files at data_path and there is nothing to download" if entry.describe is not None
           else f"is not fetched automatically ({entry.info.how_to_get.rstrip('.')})")
    raise PrunelimitError(f"data key 'download' (data.download, --download) is true, but dataset {name!r} {why}; "
                          f"remove download")


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


def dataset_info(name: str, root: str | os.PathLike | None = None, **options) -> DatasetInfo:
    """Facts about dataset ``name`` (any spelling ``canonical_name`` accepts); for a dataset read from the
    user's files (``arrays``, ``imagefolder``) give ``root`` (and its options) to get the files' facts."""
    entry = _DATASETS[canonical_name(name)]
    if entry.describe is None or root is None:
        return entry.info
    return entry.describe(Path(root).expanduser(), **_check_options(entry, options))


def _check_options(entry: _Entry, options: dict) -> dict:
    unused = sorted(set(options) - set(entry.options))
    if unused:
        raise PrunelimitError(f"data key(s) {', '.join(unused)} do not apply to dataset {entry.info.name!r}; "
                              f"remove them")
    return options


def create_dataset(name: str, root: str | os.PathLike | None = None, *, train: bool,
                   download: bool = False, augment: bool = True, **options) -> Dataset:
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
    if download:
        refuse_download(entry.info.name)
    base = Path(DEFAULT_DATA_PATH if root is None else root).expanduser()
    return entry.factory(base, train, download=download, augment=augment, **_check_options(entry, options))


def dataset_from_config(cfg: DataConfig, *, train: bool, augment: bool | None = None) -> Dataset:
    """``create_dataset`` with the config's name, path, download, augment (unless given) and options."""
    return create_dataset(cfg.dataset, cfg.data_path, train=train, download=cfg.download,
                          augment=cfg.augment if augment is None else augment, **cfg.options())


def config_dataset_info(cfg: DataConfig) -> DatasetInfo:
    """``dataset_info`` of the configured dataset (from the user's files for arrays / imagefolder)."""
    return dataset_info(cfg.dataset, cfg.data_path, **cfg.options())
