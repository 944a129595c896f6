"""Dataset registry and loaders.

    from prunelimit.data import create_dataset, make_loader, set_loader_epoch
    train_set = create_dataset("digits", train=True)          # embedded, no files needed
    loader = make_loader(train_set, 128, shuffle=True, seed=0)
    set_loader_epoch(loader, epoch)                            # before every epoch

Datasets: digits (scikit-learn, bundled), mnist, cifar10, cifar100, tinyimagenet, imagenet, and your own files
with no code: arrays (a .npz/.pt with x_train, y_train, x_test, y_test) and imagefolder; add your own
with ``@register_dataset(DatasetInfo(...))`` on a factory ``(root, train, *, download, augment) -> Dataset``.
"""
from prunelimit.data.registry import (DataConfig, canonical_name, config_dataset_info, create_dataset,
                                     dataset_from_config, dataset_info, list_datasets, register_dataset)
from prunelimit.data.info import DatasetInfo
from prunelimit.data.common import ImageTensorDataset
from prunelimit.data.loader import EpochShuffleSampler, eval_batches, make_loader, per_rank_batch_size, set_loader_epoch
# the built-in datasets register themselves on import, smallest first (the order `ls datasets` shows)
from prunelimit.data import digits as _digits, mnist as _mnist, cifar as _cifar, folders as _folders  # noqa: F401
# then the two that read the user's own files (classes and shapes come from the files)
from prunelimit.data import arrays as _arrays, imagefolder as _imagefolder  # noqa: F401
from prunelimit.data.safe_pickle import RestrictedUnpickler, UnsafePickleError, restricted_load

__all__ = [
    "DataConfig",
    "DatasetInfo",
    "EpochShuffleSampler",
    "eval_batches",
    "ImageTensorDataset",
    "RestrictedUnpickler",
    "UnsafePickleError",
    "canonical_name",
    "config_dataset_info",
    "create_dataset",
    "dataset_from_config",
    "dataset_info",
    "list_datasets",
    "register_dataset",
    "make_loader",
    "per_rank_batch_size",
    "restricted_load",
    "set_loader_epoch",
]
