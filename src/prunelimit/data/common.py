"""Pieces the loaders share: an in-memory image dataset and the missing-file error."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset

from prunelimit import dist
from prunelimit.data.registry import dataset_info
from prunelimit.errors import PrunelimitError


class ImageTensorDataset(Dataset):
    """Images held in memory as one tensor; samples are ``(float32 (C, H, W), int label)``.

    ``images`` is uint8 (N, C, H, W) in 0..255 (scaled by 1/255, like ``ToTensor``) or float in
    0..1 (used as is). ``augment`` (optional) acts on one unnormalised float (C, H, W) sample;
    normalisation ``(x - mean) / std`` per channel comes last, as in the original pipelines.
    Keeping uint8 costs 1 byte per pixel; a sample is converted only when it is read.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: Sequence[float],
                 std: Sequence[float], augment: Callable[[torch.Tensor], torch.Tensor] | None = None):
        if images.ndim != 4 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise PrunelimitError(f"images must be (N, C, H, W) and labels (N,), got {tuple(images.shape)} "
                             f"and {tuple(labels.shape)}")
        if len(mean) != images.shape[1] or len(std) != images.shape[1]:
            raise PrunelimitError(f"mean/std need one value per channel ({images.shape[1]}), got {mean} / {std}")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.scale = 1.0 / 255.0 if images.dtype == torch.uint8 else 1.0
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)  # (C, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)  # (C, 1, 1)
        self.augment = augment
        self._full: tuple[torch.Tensor, torch.Tensor] | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = self.images[index].to(torch.float32) * self.scale  # (C, H, W) in 0..1
        if self.augment is not None:
            x = self.augment(x)
        return (x - self.mean) / self.std, int(self.labels[index])

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        """Batched read used by DataLoader: one gather and one normalisation for the whole batch instead of
        a Python call per sample (sweeps evaluate the same sets a thousand times)."""
        idx = torch.as_tensor(indices, dtype=torch.int64)
        x = self.images[idx].to(torch.float32) * self.scale  # (B, C, H, W) in 0..1
        if self.augment is not None:
            x = torch.stack([self.augment(xi) for xi in x])
        x = (x - self.mean) / self.std
        return list(zip(x.unbind(0), self.labels[idx].tolist()))

    @property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole set as one batch, without augmentation: (float32 (N, C, H, W), int64 (N,)).

        For full-data statistics (Hessian, loss spread) on small sets; built once, then cached."""
        if self._full is None:
            x = (self.images.to(torch.float32) * self.scale - self.mean) / self.std
            self._full = (x, self.labels)
        return self._full


def missing_data_error(dataset: str, path: str | os.PathLike, problem: str = "was not found") -> PrunelimitError:
    """The error for absent or unusable dataset files: what, the exact path, and how to get the data."""
    info = dataset_info(dataset)
    return PrunelimitError(f"{dataset}: {os.fspath(path)} {problem}. {info.how_to_get}")


def require_paths(dataset: str, paths: Sequence[Path]) -> None:
    """Raise ``missing_data_error`` for the first path in ``paths`` that does not exist."""
    for p in paths:
        if not p.exists():
            raise missing_data_error(dataset, p)


def _first_missing_folder(target: Path) -> Path | None:
    """The outermost folder on the way to ``target`` that does not exist yet (None: ``target`` exists)."""
    missing = None
    for folder in (target, *target.parents):
        if folder.exists():
            break
        missing = folder
    return missing


def run_download(dataset: str, target: Path, fetch: Callable[[], None]) -> None:
    """Run ``fetch`` on rank 0 only (the others wait), turning any failure into a clear ``ValueError``.
    A failed download removes the folders it created on the way to ``target`` (everything in them is
    its own), so a wrong ``data_path`` leaves no empty tree behind; folders that existed are left as they
    are (a partial file there fails the downloader's checksum next time and is fetched again)."""
    failure: Exception | None = None
    if dist.is_main():
        created = _first_missing_folder(Path(target).absolute())
        try:
            fetch()
        except BaseException as e:  # network, checksum and archive errors all mean "no data"; Ctrl-C too
            if created is not None and created.is_dir() and not created.is_symlink():
                shutil.rmtree(created, ignore_errors=True)
            if not isinstance(e, Exception):
                raise
            failure = e
    dist.barrier()
    if failure is not None:
        # download is already on: its "set download: true" advice would only send the user in a circle
        raise PrunelimitError(f"{dataset}: download is on, but downloading into {target} failed "
                              f"({type(failure).__name__}: {failure}). Check the network connection and that "
                              f"{target} can be created and written (data.data_path, --data-path), or place the "
                              f"files yourself: {manual_steps(dataset)}") from failure


def manual_steps(dataset: str) -> str:
    """The dataset's how-to-get text without its "Set download: true ..., or" opening: the manual way alone."""
    how = dataset_info(dataset).how_to_get
    if how.lower().startswith("set download") and ", or " in how:
        rest = how.split(", or ", 1)[1]
        return rest[:1].upper() + rest[1:]
    return how
