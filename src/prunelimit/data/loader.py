"""DataLoaders whose sample order is a pure function of (seed, epoch), in one process or many.

``batch_size`` is the total over all processes, as in the original GP recipe (lr 0.1024 for a
total batch of 256): each rank loads ``batch_size // world_size``. Call
``set_loader_epoch(loader, epoch)`` before every epoch; a resumed run that calls it with the same
epoch sees exactly the same order, whatever happened before in the process.
"""
from __future__ import annotations

import warnings
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset, TensorDataset
from torch.utils.data.dataloader import default_collate

from prunelimit import dist
from prunelimit.data.common import ImageTensorDataset
from prunelimit.errors import PrunelimitError


class EpochShuffleSampler(Sampler[int]):
    """Single-process shuffling: epoch e visits ``torch.randperm(n, generator=seeded(seed + e))``.

    Unlike ``RandomSampler`` fed by the loader's generator, the order does not depend on how many
    numbers the loader drew from that generator before (worker seeds, persistent workers)."""

    def __init__(self, num_samples: int, seed: int = 0):
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=g).tolist())

    def __len__(self) -> int:
        return self.num_samples


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PrunelimitError(f"make_loader: {name} must be an integer >= {minimum}, got {value!r}")
    return value


def per_rank_batch_size(batch_size: int, world_size: int) -> int:
    """``batch_size // world_size``; ``ValueError`` when there are more processes than samples per step."""
    _check_int("batch_size", batch_size, 1)
    if batch_size < world_size:
        raise PrunelimitError(f"batch_size {batch_size} is the total over all {world_size} processes and must be at "
                         f"least {world_size}; raise batch_size or start fewer processes")
    if batch_size % world_size:
        warnings.warn(f"batch_size {batch_size} is not divisible by {world_size} processes; each loads "
                      f"{batch_size // world_size}, so the effective total is "
                      f"{batch_size // world_size * world_size}", stacklevel=3)
    return batch_size // world_size


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, workers: int = 0, seed: int = 0,
                drop_last: bool = False, device: torch.device | str | None = None) -> DataLoader:
    """A ``DataLoader`` over ``dataset`` loading ``batch_size // world_size`` samples per rank per step.

    Distributed (``prunelimit.dist.is_distributed()``): ``DistributedSampler(shuffle, seed, drop_last)``,
    each rank a disjoint share. Otherwise ``EpochShuffleSampler(seed)`` when shuffling. The loader's
    own generator (worker seeds, hence augmentation in workers) is reseeded by ``set_loader_epoch``;
    workers are not persistent, because persistent workers keep their first epoch's seeds.
    Memory is pinned when ``device`` is a CUDA device.
    """
    world = dist.world_size()
    per_rank = per_rank_batch_size(batch_size, world)
    _check_int("workers", workers, 0)
    _check_int("seed", seed, 0)
    sampler: Sampler[int] | None = None
    if dist.is_distributed():
        # num_replicas/rank passed explicitly so the sampler and our dist helpers always agree
        sampler = DistributedSampler(dataset, num_replicas=world, rank=dist.rank(), shuffle=shuffle,
                                     seed=seed, drop_last=drop_last)
    elif shuffle:
        sampler = EpochShuffleSampler(len(dataset), seed=seed)
    pin = device is not None and torch.device(device).type == "cuda"
    loader = DataLoader(dataset, batch_size=per_rank, sampler=sampler, shuffle=False, num_workers=workers,
                        drop_last=drop_last, pin_memory=pin, generator=torch.Generator().manual_seed(seed))
    loader.seed = seed  # read back by set_loader_epoch
    return loader


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """Make the next pass over ``loader`` the one for ``epoch``: the sampler's epoch and the loader's
    generator (reseeded as ``seed + epoch``) are set, so the order depends only on (seed, epoch)."""
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise PrunelimitError(f"set_loader_epoch: epoch must be an integer >= 0, got {epoch!r}")
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    seed = getattr(loader, "seed", 0)
    if loader.generator is not None:
        loader.generator.manual_seed(seed + epoch)


class _BatchReader(Dataset):
    """A dataset read one batch at a time: ``__getitems__`` returns ``[(x (B, ...), y (B,))]`` and ``_first``
    unpacks it, skipping ``default_collate``'s per-sample stacking. Single items read through unchanged."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[index]


class _WholeBatch(_BatchReader):
    """An ``ImageTensorDataset`` read one batch at a time (normalised, augmented per sample when configured)."""

    def __getitems__(self, indices):
        d = self.dataset
        idx = torch.as_tensor(indices, dtype=torch.int64)
        x = d.images[idx].to(torch.float32) * d.scale
        if d.augment is not None:
            x = torch.stack([d.augment(xi) for xi in x])
        return [((x - d.mean) / d.std, d.labels[idx])]


class _TensorBatch(_BatchReader):
    """A two-tensor ``TensorDataset`` (the user's own ``(inputs, targets)``) read one batch at a time."""

    def __getitems__(self, indices):
        idx = torch.as_tensor(indices, dtype=torch.int64)
        x, y = self.dataset.tensors
        return [(x[idx], y[idx])]


def _first(batch):
    return batch[0] if len(batch) == 1 and isinstance(batch[0][1], torch.Tensor) else default_collate(batch)


def eval_batches(dataset: Dataset, batch_size: int, *, indices=None, workers: int = 0,
                 pin_memory: bool = False) -> DataLoader:
    """A fixed-order loader for evaluation and Hessian statistics (no shuffling, no sampler).

    ``indices``: read only these samples (a rank's shard). In-memory datasets (``ImageTensorDataset``)
    are gathered a whole batch at a time: a sweep evaluates the same sets a thousand times, and
    per-sample reads plus collation cost more than the model on small networks."""
    fast = isinstance(dataset, ImageTensorDataset) or (isinstance(dataset, TensorDataset)
                                                        and len(dataset.tensors) == 2)
    base: Dataset = dataset
    if fast:
        base = _WholeBatch(dataset) if isinstance(dataset, ImageTensorDataset) else _TensorBatch(dataset)
    if indices is not None:
        base = Subset(base, list(indices))
    return DataLoader(base, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=pin_memory,
                      collate_fn=_first if fast else None)
