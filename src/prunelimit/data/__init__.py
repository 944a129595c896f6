"""Dataset registry and loaders.

    from prunelimit.data import create_dataset, make_loader, set_loader_epoch
    train_set = create_dataset("digits", train=True)          # embedded, no files needed
    loader = make_loader(train_set, 128, shuffle=True, seed=0)
    set_loader_epoch(loader, epoch)                            # before every epoch

Datasets: digits (scikit-learn, bundled), mnist, cifar10, cifar100, tinyimagenet, imagenet.
"""
from prunelimit.data.common import ImageTensorDataset
from prunelimit.data.info import DatasetInfo, canonical_name, dataset_info, list_datasets
from prunelimit.data.loader import EpochShuffleSampler, eval_batches, make_loader, per_rank_batch_size, set_loader_epoch
from prunelimit.data.registry import DataConfig, create_dataset, dataset_from_config
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
    "create_dataset",
    "dataset_from_config",
    "dataset_info",
    "list_datasets",
    "make_loader",
    "per_rank_batch_size",
    "restricted_load",
    "set_loader_epoch",
]
