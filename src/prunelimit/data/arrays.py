"""``dataset: arrays``: the user's own data as arrays in one file, with no code to write.

``data_path`` names a ``.npz`` (``numpy.savez``) or ``.pt`` (``torch.save`` of a dict of tensors) file
holding ``x_train``, ``y_train``, ``x_test``, ``y_test``:

- ``x_*``: (N, C, H, W) images, (N, H, W) single-channel images, or (N, D) feature vectors (seen as
  (1, 1, D) "images", for fully connected models). uint8 is scaled by 1/255 like ``ToTensor``; floats
  are used as they are.
- ``y_*``: (N,) integer class labels 0 .. C-1; the number of classes is the largest label + 1.

Normalisation per channel ``(x - mean) / std``: ``data.mean`` / ``data.std`` when given, else computed
from the training split (population std over every pixel of the channel). There is no augmentation.

Nothing is unpickled: ``.npz`` is read with ``allow_pickle=False`` and ``.pt`` with
``torch.load(weights_only=True)``, which only rebuilds tensors and plain containers.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from prunelimit.data.common import ImageTensorDataset
from prunelimit.data.info import DatasetInfo
from prunelimit.data.registry import per_channel, register_dataset
from prunelimit.errors import PrunelimitError

KEYS = ("x_train", "y_train", "x_test", "y_test")
HOW_TO = ("Set data_path to a .npz or .pt file with x_train, y_train, x_test, y_test, e.g. "
          "numpy.savez('mine.npz', x_train=..., y_train=..., x_test=..., y_test=...).")
INFO = DatasetInfo("arrays", 0, (0, 0, 0), (), (),
                   "your arrays: a .npz/.pt file (data_path) with x_train, y_train, x_test, y_test; classes, shape "
                   "and (unless data.mean/std) normalisation from the file", HOW_TO)


@dataclass(frozen=True)
class ArraySplits:
    x_train: torch.Tensor   # (N, C, H, W), uint8 or float32
    y_train: torch.Tensor   # (N,) int64
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]  # of the train split, per channel, after the uint8 scaling
    std: tuple[float, ...]


def _read(path: Path) -> dict:
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        except ValueError as e:   # an object array needs pickle: refused
            raise PrunelimitError(f"arrays: {path} holds an object array ({e}); store plain numeric arrays") from None
    if path.suffix in (".pt", ".pth"):
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:   # weights_only refuses anything but tensors and plain containers
            raise PrunelimitError(f"arrays: {path} cannot be read as tensors without unpickling code ({e}); save a "
                                  f"dict of tensors with torch.save") from None
        if not isinstance(data, dict):
            raise PrunelimitError(f"arrays: {path} holds a {type(data).__name__}; save a dict with keys "
                                  f"{', '.join(KEYS)}")
        return data
    raise PrunelimitError(f"arrays: data_path {str(path)!r} must be a .npz or .pt file. {HOW_TO}")


def _images(x, key: str, path: Path) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    if t.dtype == torch.bool or not (t.is_floating_point() or t.dtype == torch.uint8):
        raise PrunelimitError(f"arrays: {path}: {key} has dtype {t.dtype}; use float or uint8 values")
    if t.ndim == 2:
        t = t[:, None, None, :]        # (N, D) -> (N, 1, 1, D)
    elif t.ndim == 3:
        t = t[:, None]                 # (N, H, W) -> (N, 1, H, W)
    if t.ndim != 4 or t.shape[0] == 0:
        raise PrunelimitError(f"arrays: {path}: {key} has shape {tuple(t.shape)}; expected (N, C, H, W), (N, H, W) "
                              f"or (N, D) with N > 0")
    if t.is_floating_point():
        t = t.to(torch.float32)
        if not torch.isfinite(t).all():
            raise PrunelimitError(f"arrays: {path}: {key} contains NaN or Inf")
    return t.contiguous()


def _labels(y, key: str, n: int, path: Path) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(y)) if not isinstance(y, torch.Tensor) else y
    if t.is_floating_point() and t.numel() and bool((t == t.round()).all()):
        t = t.to(torch.int64)          # integral floats (e.g. from a CSV) are fine
    if t.is_floating_point() or t.dtype == torch.bool or t.is_complex():
        raise PrunelimitError(f"arrays: {path}: {key} must hold integer class labels 0..C-1; got dtype {t.dtype}")
    t = t.reshape(-1).to(torch.int64)
    if t.shape[0] != n:
        raise PrunelimitError(f"arrays: {path}: {key} has {t.shape[0]} labels for {n} samples")
    if int(t.min()) < 0:
        raise PrunelimitError(f"arrays: {path}: {key} has a negative label ({int(t.min())}); labels are 0..C-1")
    return t


def _channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    scale = 1.0 / 255.0 if x.dtype == torch.uint8 else 1.0
    xd = x.to(torch.float64).transpose(0, 1).reshape(x.shape[1], -1) * scale   # (C, N*H*W)
    mean = xd.mean(dim=1)
    std = xd.std(dim=1, unbiased=False)
    # a constant channel (std 0) is only centred: dividing by 0 would make it NaN
    std = torch.where(std > 0, std, torch.ones_like(std))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


@lru_cache(maxsize=4)
def _load(path: str, mtime_ns: int, size: int) -> ArraySplits:
    """The file's splits, cached per (path, modification time, size): train, test and info read it once."""
    p = Path(path)
    raw = _read(p)
    missing = [k for k in KEYS if k not in raw]
    if missing:
        raise PrunelimitError(f"arrays: {p} lacks {', '.join(missing)} (it has {', '.join(sorted(raw)) or 'nothing'}). "
                              f"{HOW_TO}")
    x_tr, x_te = _images(raw["x_train"], "x_train", p), _images(raw["x_test"], "x_test", p)
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise PrunelimitError(f"arrays: {p}: x_train samples are {tuple(x_tr.shape[1:])} but x_test samples are "
                              f"{tuple(x_te.shape[1:])}; both splits need the same shape")
    y_tr, y_te = _labels(raw["y_train"], "y_train", len(x_tr), p), _labels(raw["y_test"], "y_test", len(x_te), p)
    num_classes = int(max(y_tr.max(), y_te.max())) + 1
    mean, std = _channel_stats(x_tr)
    return ArraySplits(x_tr, y_tr, x_te, y_te, num_classes, mean, std)


def load_arrays(path: str | os.PathLike) -> ArraySplits:
    p = Path(path).expanduser()
    if not p.is_file():
        raise PrunelimitError(f"arrays: data_path {str(p)!r} is not a file. {HOW_TO}")
    st = p.stat()
    return _load(str(p.resolve()), st.st_mtime_ns, st.st_size)


def _normalisation(splits: ArraySplits, mean, std, path: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    channels = splits.x_train.shape[1]
    mean = splits.mean if mean is None else per_channel(mean, channels)
    std = splits.std if std is None else per_channel(std, channels)
    for key, v in (("mean", mean), ("std", std)):
        if len(v) != channels:
            raise PrunelimitError(f"data.{key} has {len(v)} value(s) but {path} has {channels} channel(s); give one "
                                  f"per channel")
    return mean, std


def describe_arrays(root: Path, mean=None, std=None) -> DatasetInfo:
    splits = load_arrays(root)
    mean, std = _normalisation(splits, mean, std, root)
    return DatasetInfo("arrays", splits.num_classes, tuple(splits.x_train.shape[1:]), mean, std,
                       f"your arrays from {root}: {len(splits.y_train)} train / {len(splits.y_test)} test, "
                       f"{splits.num_classes} classes", HOW_TO)


@register_dataset(INFO, describe=describe_arrays, options=("mean", "std"))
def arrays_dataset(root: Path, train: bool, *, download: bool = False, augment: bool = False, mean=None,
                   std=None) -> ImageTensorDataset:
    splits = load_arrays(root)
    mean, std = _normalisation(splits, mean, std, root)
    x, y = (splits.x_train, splits.y_train) if train else (splits.x_test, splits.y_test)
    return ImageTensorDataset(x, y, mean, std)
