"""MNIST from its standard on-disk layout ``<root>/MNIST/raw/*-idx?-ubyte[.gz]``.

The layout is torchvision's; we read the idx files ourselves so that both the plain and the
gzipped files work (torchvision only reads the plain ones) and a truncated or foreign file gives
an error naming it instead of an assert. Download goes through torchvision's MNIST downloader.
No augmentation (as in the original): ``ToTensor`` + normalise with mean 0.1307, std 0.3081.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from prunelimit.data.common import ImageTensorDataset, missing_data_error, run_download
from prunelimit.data.info import DatasetInfo
from prunelimit.data.registry import dataset_info, register_dataset

IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions (N, rows, cols)
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension (N,)


def _find_idx_file(raw: Path, stem: str) -> Path:
    for candidate in (raw / stem, raw / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise missing_data_error("mnist", raw / stem, "(nor its .gz) was not found")


def read_idx_ubyte(path: Path, magic: int) -> np.ndarray:
    """An idx file of unsigned bytes as an array of the shape its header gives (big-endian int32s)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise missing_data_error("mnist", path, f"could not be read ({e})") from e
    ndim = magic & 0xFF
    header = 4 * (1 + ndim)
    if len(data) < header or struct.unpack(">i", data[:4])[0] != magic:
        found = struct.unpack(">i", data[:4])[0] if len(data) >= 4 else None
        raise missing_data_error("mnist", path, f"is not an idx file with magic number {magic} (found {found}); "
                                                f"re-extract the original file")
    shape = struct.unpack(f">{ndim}i", data[4:header])
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise missing_data_error("mnist", path, f"holds {len(data) - header} data bytes but its header "
                                                f"{shape} needs {expected}; the file is truncated or damaged")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _download(root: Path) -> None:
    from torchvision.datasets import MNIST

    # torchvision fetches the four .gz files from its mirrors and extracts them into <root>/MNIST/raw.
    MNIST(str(root), train=True, download=True)


@register_dataset(DatasetInfo(
    "mnist", 10, (1, 28, 28), (0.1307,), (0.3081,),
    "MNIST handwritten digits, 60 000 train / 10 000 test, 28x28 grey.",
    "Set download: true (command line: --download), or place train-images-idx3-ubyte, train-labels-idx1-ubyte, "
    "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (plain or .gz) in <data_path>/MNIST/raw."))
def _mnist(root: Path, train: bool, *, download: bool, augment: bool) -> ImageTensorDataset:
    return mnist_dataset(root, train, download)


def mnist_dataset(root: Path, train: bool, download: bool) -> ImageTensorDataset:
    raw = root / "MNIST" / "raw"
    prefix = "train" if train else "t10k"
    stems = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    if download and not all((raw / s).is_file() or (raw / f"{s}.gz").is_file() for s in stems):
        run_download("mnist", raw, lambda: _download(root))
    images = read_idx_ubyte(_find_idx_file(raw, stems[0]), IDX_IMAGES_MAGIC)  # (N, 28, 28) uint8
    labels_path = _find_idx_file(raw, stems[1])
    labels = read_idx_ubyte(labels_path, IDX_LABELS_MAGIC)  # (N,) uint8
    if images.shape[1:] != (28, 28):
        raise missing_data_error("mnist", raw / stems[0], f"holds {images.shape[1]}x{images.shape[2]} images, "
                                                          f"not 28x28")
    if images.shape[0] != labels.shape[0]:
        raise missing_data_error("mnist", labels_path, f"has {labels.shape[0]} labels for {images.shape[0]} images")
    if labels.size and labels.max() > 9:
        raise missing_data_error("mnist", labels_path, f"contains label {int(labels.max())}; MNIST labels are 0..9")
    info = dataset_info("mnist")
    return ImageTensorDataset(torch.tensor(images[:, None]), torch.tensor(labels.astype(np.int64)),
                              info.mean, info.std)
