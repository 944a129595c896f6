"""Dataset registry and loaders, on tiny files written in the datasets' real on-disk formats."""
from __future__ import annotations

import gzip
import os
import pickle
import re
import struct
import warnings
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

import prunelimit.dist
from prunelimit.data import (DataConfig, EpochShuffleSampler, create_dataset, dataset_from_config,
                             dataset_info, list_datasets, make_loader, restricted_load, set_loader_epoch)
from prunelimit.data import cifar as cifar_module
from prunelimit.data import mnist as mnist_module
from prunelimit.data.digits import digits_split

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN, CIFAR100_STD = (0.507, 0.487, 0.441), (0.267, 0.256, 0.276)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------- file writers
def write_idx(path: Path, magic: int, array: np.ndarray, gz: bool = False) -> None:
    """idx format: big-endian int32 magic, one big-endian int32 per dimension, then the raw bytes."""
    blob = struct.pack(">i", magic) + b"".join(struct.pack(">i", d) for d in array.shape)
    blob += array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(blob)
    else:
        path.write_bytes(blob)


def cifar_row(pixel) -> np.ndarray:
    """One CIFAR 'data' row (3072,) from pixel(c, h, w): 1024 red, 1024 green, 1024 blue, row-major."""
    row = np.zeros(3072, dtype=np.uint8)
    for c in range(3):
        for h in range(32):
            for w in range(32):
                row[c * 1024 + h * 32 + w] = pixel(c, h, w)
    return row


def write_pickle(path: Path, obj, rename_numpy_core: bool = False) -> None:
    blob = pickle.dumps(obj, protocol=2)  # the originals are Python 2, protocol-2 pickles
    if rename_numpy_core:  # the real files name numpy.core.multiarray (numpy 1.x); GLOBAL is plain text
        blob = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blob)


def python2_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A CIFAR batch pickled the way the real files are: Python 2 protocol 2, str opcodes, numpy 1.x names.

    Written opcode by opcode, because Python 3's pickler spells bytes with _codecs.encode instead."""
    def text(b: bytes) -> bytes:  # Python 2 str: SHORT_BINSTRING / BINSTRING
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b

    def integer(v: int) -> bytes:  # BININT
        return b"J" + struct.pack("<i", v)

    dtype = (b"cnumpy\ndtype\n" + text(b"u1") + integer(0) + integer(1) + b"\x87R(" + integer(3) + text(b"|")
             + b"NNN" + integer(-1) + integer(-1) + integer(0) + b"tb")
    array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + integer(0) + b"\x85" + text(b"b")
             + b"\x87R(" + integer(1) + integer(data.shape[0]) + integer(data.shape[1]) + b"\x86" + dtype
             + b"\x89" + text(data.astype(np.uint8).tobytes()) + b"tb")
    label_list = b"](" + b"".join(integer(v) for v in labels) + b"e"
    return b"\x80\x02}(" + text(b"data") + array + text(b"labels") + label_list + b"u."


def constant_rows(values: list[tuple[int, int, int]]) -> np.ndarray:
    return np.stack([np.repeat(np.array(v, dtype=np.uint8), 1024) for v in values])  # (n, 3072)


def write_cifar10(root: Path, rename_numpy_core: bool = False) -> None:
    folder = root / "cifar-10-batches-py"
    for b in range(1, 6):  # two images per batch, colours depend on the batch
        data = constant_rows([(10 * b, 20 * b, 30 * b), (255, 0, 128)])
        write_pickle(folder / f"data_batch_{b}", {b"batch_label": b"training batch", b"labels": [b, 9 - b],
                                                  b"data": data, b"filenames": [b"a.png", b"b.png"]},
                     rename_numpy_core)
    write_pickle(folder / "test_batch", {b"labels": [3, 1, 4], b"data": constant_rows([(1, 2, 3)] * 3)},
                 rename_numpy_core)


def jpeg(path: Path, size: tuple[int, int], color, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, "JPEG", quality=100)


# --------------------------------------------------------------------------- registry and config
def test_registry_lists_all_datasets_with_consistent_info():
    assert list_datasets() == ["digits", "mnist", "cifar10", "cifar100", "tinyimagenet", "imagenet", "arrays",
                               "imagefolder"]   # the last two read the user's files (tests/test_user_data.py)
    expected = {"digits": (10, (1, 8, 8)), "mnist": (10, (1, 28, 28)), "cifar10": (10, (3, 32, 32)),
                "cifar100": (100, (3, 32, 32)), "tinyimagenet": (200, (3, 64, 64)),
                "imagenet": (1000, (3, 224, 224))}
    for name, (classes, shape) in expected.items():
        info = dataset_info(name)
        assert (info.num_classes, info.input_shape) == (classes, shape)
        assert len(info.mean) == len(info.std) == shape[0] and info.how_to_get
    assert dataset_info("CIFAR-10").name == "cifar10" and dataset_info("Tiny_ImageNet").name == "tinyimagenet"


def test_data_config_validates_every_key():
    assert DataConfig().dataset == "digits" and DataConfig(dataset="MNIST").dataset == "mnist"
    with pytest.raises(ValueError, match=r"'dataset'.*'cifar'.*digits, mnist.*Did you mean 'cifar10'"):
        DataConfig(dataset="cifar")
    with pytest.raises(ValueError, match="'dataset'.*'svhn'"):
        DataConfig(dataset="svhn")
    with pytest.raises(ValueError, match="'workers'"):
        DataConfig(workers=-1)
    with pytest.raises(ValueError, match="'download'"):
        DataConfig(download="yes")
    with pytest.raises(ValueError, match="'use_full_data'"):
        DataConfig(use_full_data=1)
    with pytest.raises(ValueError, match="'data_path'"):
        DataConfig(data_path="  ")
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        create_dataset("nope", train=True)


# --------------------------------------------------------------------------- digits
def test_digits_split_is_fixed_stratified_and_standardised_with_train_stats():
    from sklearn.datasets import load_digits

    train, test = create_dataset("digits", train=True), create_dataset("digits", train=False)
    assert (len(train), len(test)) == (1437, 360)
    x, y = train.tensors
    assert x.shape == (1437, 1, 8, 8) and x.dtype == torch.float32 and train[0][0].shape == (1, 8, 8)
    # standardised with the train split's own pixel statistics: mean 0, population std 1
    assert abs(x.double().mean().item()) < 1e-6 and abs(x.double().std(unbiased=False).item() - 1) < 1e-5
    info = dataset_info("digits")
    full = load_digits()
    known = {(img.astype(np.int64).tobytes(), int(t)) for img, t in zip(full.images, full.target)}
    for ds in (train, test):  # undoing the normalisation gives the original 0..16 pixels of real samples
        xs, ys = ds.tensors
        raw = ((xs.double() * info.std[0] + info.mean[0]) * 16).numpy()
        assert np.abs(raw - raw.round()).max() < 1e-4
        assert all((r[0].round().astype(np.int64).tobytes(), int(t)) in known for r, t in zip(raw, ys))
    # stratified: each class is ~20 % of its members in the test split
    counts = np.bincount(full.target, minlength=10)
    test_counts = np.bincount(test.tensors[1].numpy(), minlength=10)
    assert np.all(np.abs(test_counts - 0.2 * counts) <= 1)
    # deterministic: recomputing from scratch gives the same split
    before = test.tensors[0].clone()
    digits_split.cache_clear()
    assert torch.equal(create_dataset("digits", train=False).tensors[0], before)


# --------------------------------------------------------------------------- MNIST
def test_mnist_reads_plain_and_gzipped_idx_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    train_imgs = np.stack([np.full((28, 28), v, np.uint8) for v in (0, 51, 255, 7, 100)])
    train_imgs[1, 3, 5] = 200  # one distinct pixel to check orientation
    write_idx(raw / "train-images-idx3-ubyte", 2051, train_imgs)
    write_idx(raw / "train-labels-idx1-ubyte", 2049, np.array([5, 0, 4, 1, 9]))
    write_idx(raw / "t10k-images-idx3-ubyte", 2051, np.full((3, 28, 28), 128), gz=True)
    write_idx(raw / "t10k-labels-idx1-ubyte", 2049, np.array([7, 2, 1]), gz=True)

    train = create_dataset("mnist", tmp_path, train=True)
    assert len(train) == 5 and [train[i][1] for i in range(5)] == [5, 0, 4, 1, 9]
    x, _ = train[1]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert x[0, 0, 0].item() == pytest.approx((51 / 255 - 0.1307) / 0.3081, abs=1e-6)
    assert x[0, 3, 5].item() == pytest.approx((200 / 255 - 0.1307) / 0.3081, abs=1e-6)
    test = create_dataset("mnist", str(tmp_path), train=False)
    assert [test[i][1] for i in range(3)] == [7, 2, 1]
    assert torch.allclose(test[0][0], torch.full((1, 28, 28), (128 / 255 - 0.1307) / 0.3081), atol=1e-6)


def test_mnist_errors_name_the_file_and_how_to_get_it(tmp_path, monkeypatch):
    raw = tmp_path / "MNIST" / "raw"
    missing = re.escape(str(raw / "train-images-idx3-ubyte"))
    with pytest.raises(ValueError, match=r"mnist: .*" + missing + r".*download: true"):
        create_dataset("mnist", tmp_path, train=True)
    write_idx(raw / "train-images-idx3-ubyte", 2049, np.zeros((2, 28, 28)))  # label magic on an image file
    write_idx(raw / "train-labels-idx1-ubyte", 2049, np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="magic number 2051.*found 2049"):
        create_dataset("mnist", tmp_path, train=True)
    write_idx(raw / "train-images-idx3-ubyte", 2051, np.zeros((2, 28, 28)))
    with pytest.raises(ValueError, match="3 labels for 2 images"):
        create_dataset("mnist", tmp_path, train=True)
    (raw / "train-images-idx3-ubyte").write_bytes(struct.pack(">iiii", 2051, 2, 28, 28) + b"\0" * 100)
    with pytest.raises(ValueError, match="truncated"):
        create_dataset("mnist", tmp_path, train=True)

    def offline(root):
        raise URLError("no network")

    monkeypatch.setattr(mnist_module, "_download", offline)
    with pytest.raises(ValueError, match="downloading into .*failed.*no network.*place the files yourself: "
                                         "Place train-images-idx3-ubyte") as failed:
        create_dataset("mnist", tmp_path / "empty", train=False, download=True)
    assert "download: true" not in str(failed.value)


def test_a_failed_download_removes_the_folders_it_created_and_only_those(tmp_path, monkeypatch):
    def half_then_offline(root):    # as torchvision does: make <root>/MNIST/raw, start a file, lose the network
        (root / "MNIST" / "raw").mkdir(parents=True)
        (root / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b partial")
        raise URLError("no network")

    monkeypatch.setattr(mnist_module, "_download", half_then_offline)
    mine = tmp_path / "mine"
    (mine / "keep").mkdir(parents=True)                     # the user's: exists before the command
    with pytest.raises(ValueError, match="downloading into .*failed"):
        create_dataset("mnist", mine / "new" / "deeper", train=False, download=True)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["mine", "mine/keep"]

    (mine / "MNIST").mkdir()                                # MNIST/ existed: only raw/ is the download's
    with pytest.raises(ValueError, match="downloading into .*failed"):
        create_dataset("mnist", mine, train=False, download=True)
    assert sorted(p.relative_to(mine).as_posix() for p in mine.rglob("*")) == ["MNIST", "keep"]

    def interrupted(root):                                  # Ctrl-C mid-download cleans up as well
        (root / "MNIST" / "raw").mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(mnist_module, "_download", interrupted)
    with pytest.raises(KeyboardInterrupt):
        create_dataset("mnist", mine / "other", train=False, download=True)
    assert not (mine / "other").exists() and (mine / "keep").is_dir()


# --------------------------------------------------------------------------- CIFAR
@pytest.mark.parametrize("rename_numpy_core", [False, True])
def test_cifar10_batches_load_with_closed_form_normalisation(tmp_path, rename_numpy_core):
    write_cifar10(tmp_path, rename_numpy_core)
    train = create_dataset("cifar10", tmp_path, train=True, augment=False)
    assert len(train) == 10 and [train[i][1] for i in range(10)] == [1, 8, 2, 7, 3, 6, 4, 5, 5, 4]
    for i, colour in [(0, (10, 20, 30)), (1, (255, 0, 128)), (8, (50, 100, 150))]:
        x, _ = train[i]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        for c in range(3):  # constant channel c -> (v/255 - mean_c) / std_c everywhere
            expected = (colour[c] / 255 - CIFAR10_MEAN[c]) / CIFAR10_STD[c]
            assert torch.allclose(x[c], torch.full((32, 32), expected), atol=1e-6)
    test = create_dataset("cifar10", tmp_path, train=False)
    assert [test[i][1] for i in range(3)] == [3, 1, 4]
    # a constant image stays constant under reflect padding, crop and flip
    augmented = create_dataset("cifar10", tmp_path, train=True, augment=True)
    assert torch.allclose(augmented[1][0], train[1][0], atol=1e-6)


def test_cifar10_reads_a_python2_pickle_like_the_real_files(tmp_path):
    rows = np.stack([cifar_row(lambda c, h, w: (c * 90 + h + 2 * w) % 256), constant_rows([(9, 8, 7)])[0]])
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.parent.mkdir(parents=True)
    path.write_bytes(python2_batch(rows, [6, 2]))
    test = create_dataset("cifar10", tmp_path, train=False)
    assert [test[0][1], test[1][1]] == [6, 2]
    x = test[0][0]
    for c, h, w in [(0, 0, 0), (1, 5, 9), (2, 31, 30)]:
        v = (c * 90 + h + 2 * w) % 256
        assert x[c, h, w].item() == pytest.approx((v / 255 - CIFAR10_MEAN[c]) / CIFAR10_STD[c], abs=1e-6)


def test_cifar_layout_and_augmentation_are_crops_of_the_reflect_padded_image(tmp_path):
    def pixel(c, h, w):
        return (c * 80 + h * 7 + w * 3) % 256

    write_pickle(tmp_path / "cifar-100-python" / "train",
                 {b"fine_labels": [99], b"coarse_labels": [19], b"data": cifar_row(pixel)[None]})
    expected = np.array([[[pixel(c, h, w) for w in range(32)] for h in range(32)] for c in range(3)], np.float64)
    plain = create_dataset("cifar100", tmp_path, train=True, augment=False)
    x, label = plain[0]
    assert label == 99
    mean, std = np.array(CIFAR100_MEAN)[:, None, None], np.array(CIFAR100_STD)[:, None, None]
    assert np.allclose(x.double().numpy(), (expected / 255 - mean) / std, atol=1e-5)

    padded = np.pad(expected, ((0, 0), (4, 4), (4, 4)), mode="reflect")  # (3, 40, 40)
    candidates = [img[:, i:i + 32, j:j + 32] for img in (padded, padded[:, :, ::-1])
                  for i in range(9) for j in range(9)]
    augmented = create_dataset("cifar100", tmp_path, train=True, augment=True)
    torch.manual_seed(0)
    seen = set()
    for _ in range(20):
        raw = augmented[0][0].double().numpy() * std + mean
        matches = [k for k, cand in enumerate(candidates) if np.allclose(raw * 255, cand, atol=1e-3)]
        assert matches, "augmented sample is not a crop of the reflect-padded (possibly flipped) image"
        seen.add(matches[0])
    assert len(seen) > 1  # it is actually random


def test_cifar100_test_split_and_bad_contents(tmp_path):
    write_pickle(tmp_path / "cifar-100-python" / "test",
                 {b"fine_labels": [0, 42], b"coarse_labels": [0, 1], b"data": constant_rows([(0, 0, 0), (9, 9, 9)])})
    test = create_dataset("cifar100", tmp_path, train=False)
    assert [test[i][1] for i in range(2)] == [0, 42]
    assert test[0][0][2, 0, 0].item() == pytest.approx(-0.441 / 0.276, abs=1e-6)
    write_pickle(tmp_path / "cifar-100-python" / "test", {b"fine_labels": [100], b"data": constant_rows([(0, 0, 0)])})
    with pytest.raises(ValueError, match="labels outside 0..99"):
        create_dataset("cifar100", tmp_path, train=False)
    write_pickle(tmp_path / "cifar-100-python" / "test", {b"labels": [1], b"data": constant_rows([(0, 0, 0)])})
    with pytest.raises(ValueError, match="fine_labels"):
        create_dataset("cifar100", tmp_path, train=False)
    write_pickle(tmp_path / "cifar-100-python" / "test",
                 {b"fine_labels": [1], b"data": np.zeros((1, 3072), np.float32)})
    with pytest.raises(ValueError, match=r"expected uint8 \(n, 3072\)"):
        create_dataset("cifar100", tmp_path, train=False)


class _RunsShell:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "cifar-10-batches-py"
    write_pickle(folder / "test_batch", {b"labels": [0], b"data": _RunsShell(marker)})
    with pytest.raises(ValueError, match=r"test_batch was refused: refusing to load (posix|nt)\.system"):
        create_dataset("cifar10", tmp_path, train=False)
    assert not marker.exists()
    # the same file through pickle.load would have run the command; the restricted loader refuses it
    with open(folder / "test_batch", "rb") as f, pytest.raises(ValueError, match="refusing"):
        restricted_load(f)
    with pytest.raises(ValueError, match="refusing to load builtins.eval"):
        restricted_load(__import__("io").BytesIO(b"\x80\x02cbuiltins\neval\nX\x04\x00\x00\x001+1q\x85R."))
    assert not marker.exists()


def test_cifar_missing_files_and_failed_download(tmp_path, monkeypatch):
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    with pytest.raises(ValueError, match=r"cifar10: " + re.escape(str(path)) + r" was not found.*download: true"):
        create_dataset("cifar10", tmp_path, train=True)
    missing = re.escape(str(tmp_path / "cifar-100-python" / "test"))
    with pytest.raises(ValueError, match=missing + ".*cifar-100-python.tar.gz"):
        create_dataset("cifar100", tmp_path, train=False)

    def offline(dataset, root):
        raise URLError("name resolution failed")

    monkeypatch.setattr(cifar_module, "_download", offline)
    with pytest.raises(ValueError, match="cifar10: download is on, but downloading into .*URLError.*name resolution "
                                         "failed.*network connection.*Extract cifar-10-python.tar.gz") as failed:
        create_dataset("cifar10", tmp_path, train=True, download=True)
    assert "download: true" not in str(failed.value)   # it is on already: no advice to turn it on
    assert "--download" not in str(failed.value)


# --------------------------------------------------------------------------- Tiny ImageNet
def make_tiny_imagenet(root: Path) -> dict[str, tuple[int, int, int]]:
    base = root / "tiny-imagenet-200"
    colours = {"n03": (200, 40, 90), "n01": (30, 160, 220), "n02": (120, 120, 120)}
    (base).mkdir(parents=True)
    (base / "wnids.txt").write_text("n03\nn01\nn02\n")  # not sorted on purpose
    for wnid, colour in colours.items():
        for k in range(2):
            jpeg(base / "train" / wnid / "images" / f"{wnid}_{k}.JPEG", (64, 64), colour)
    val = [("val_0.JPEG", "n02"), ("val_1.JPEG", "n03"), ("val_2.JPEG", "n01")]
    for name, wnid in val:
        jpeg(base / "val" / "images" / name, (64, 64), colours[wnid])
    jpeg(base / "val" / "images" / "val_3.JPEG", (64, 64), 77, mode="L")  # greyscale files exist in the real set
    lines = [f"{n}\t{w}\t0\t0\t63\t63" for n, w in val + [("val_3.JPEG", "n01")]]
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return colours


def test_tinyimagenet_folder_layout_labels_and_normalisation(tmp_path):
    colours = make_tiny_imagenet(tmp_path)
    train = create_dataset("tinyimagenet", tmp_path, train=True, augment=False)
    assert len(train) == 6 and [train[i][1] for i in range(6)] == [0, 0, 1, 1, 2, 2]  # n01, n02, n03
    x, label = train[5]
    assert x.shape == (3, 64, 64) and label == 2
    for c in range(3):  # JPEG of a flat colour decodes to within a couple of levels
        expected = (colours["n03"][c] / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        assert (x[c] - expected).abs().max().item() < 3 / 255 / IMAGENET_STD[c]
    val = create_dataset("tinyimagenet", tmp_path, train=False)
    assert [val[i][1] for i in range(4)] == [1, 2, 0, 0]
    grey = val[3][0]
    assert grey.shape == (3, 64, 64)
    assert abs(grey[0, 0, 0].item() - (77 / 255 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]) < 3 / 255 / IMAGENET_STD[0]
    assert create_dataset("tinyimagenet", tmp_path, train=True, augment=True)[0][0].shape == (3, 64, 64)


def test_tinyimagenet_errors_name_the_path(tmp_path):
    missing = re.escape(str(tmp_path / "tiny-imagenet-200" / "wnids.txt"))
    with pytest.raises(ValueError, match=missing + ".*tiny-imagenet-200.zip"):
        create_dataset("tinyimagenet", tmp_path, train=True)
    make_tiny_imagenet(tmp_path)
    ann = tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    ann.write_text("val_0.JPEG\tn99\t0\t0\t1\t1\n")
    with pytest.raises(ValueError, match="val_annotations.txt.*line 1"):
        create_dataset("tinyimagenet", tmp_path, train=False)
    ann.write_text("missing.JPEG\tn01\t0\t0\t1\t1\n")
    with pytest.raises(ValueError, match="missing.JPEG was not found"):
        create_dataset("tinyimagenet", tmp_path, train=False)
    for f in (tmp_path / "tiny-imagenet-200" / "train" / "n02" / "images").iterdir():
        f.unlink()
    with pytest.raises(ValueError, match=r"n02.images holds no \*\.JPEG"):
        create_dataset("tinyimagenet", tmp_path, train=True)


# --------------------------------------------------------------------------- ImageNet folders
def test_imagenet_folder_transforms_and_labels(tmp_path):
    for split in ("train", "val"):
        jpeg(tmp_path / "imagenet" / split / "n02" / "a.JPEG", (300, 280), (10, 200, 60))
        jpeg(tmp_path / "imagenet" / split / "n01" / "b.JPEG", (260, 400), (250, 5, 128))
    train = create_dataset("imagenet", tmp_path, train=True)  # found under <root>/imagenet/train
    assert len(train) == 2 and train[0][0].shape == (3, 224, 224) and [train[i][1] for i in range(2)] == [0, 1]
    val = create_dataset("imagenet", tmp_path / "imagenet", train=False)  # and under <root>/val
    x, label = val[0]
    assert x.shape == (3, 224, 224) and label == 0
    for c, v in enumerate((250, 5, 128)):
        assert (x[c] - (v / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]).abs().max().item() < 3 / 255 / IMAGENET_STD[c]


def test_imagenet_missing_or_empty_folders(tmp_path):
    missing_val = re.escape(str(tmp_path / "val"))
    with pytest.raises(ValueError, match=r"imagenet: " + missing_val + r" \(nor .*imagenet.val\).*image-net.org"):
        create_dataset("imagenet", tmp_path, train=False)
    (tmp_path / "train" / "n01").mkdir(parents=True)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "train")) + " is not a usable image folder"):
        create_dataset("imagenet", tmp_path, train=True)


# --------------------------------------------------------------------------- loaders
def indices(n: int) -> TensorDataset:
    return TensorDataset(torch.arange(n))


def epoch_order(loader, epoch: int) -> list[int]:
    set_loader_epoch(loader, epoch)
    return torch.cat([b[0] for b in loader]).tolist()


def test_loader_order_is_a_pure_function_of_seed_and_epoch():
    data = indices(50)
    a = make_loader(data, 8, shuffle=True, seed=3)
    first = [epoch_order(a, e) for e in range(3)]
    assert all(sorted(o) == list(range(50)) for o in first)
    assert first[0] != first[1] != first[2]
    b = make_loader(data, 16, shuffle=True, seed=3)  # a "resumed" run jumps straight to epoch 2
    assert epoch_order(b, 2) == first[2] and epoch_order(b, 0) == first[0]
    expected = torch.randperm(50, generator=torch.Generator().manual_seed(3 + 2)).tolist()  # documented rule
    assert first[2] == expected
    assert epoch_order(make_loader(data, 8, shuffle=True, seed=4), 2) != first[2]
    assert epoch_order(make_loader(data, 8, shuffle=False), 5) == list(range(50))
    assert isinstance(a.sampler, EpochShuffleSampler)


def test_loader_workers_reproduce_augmentation_per_epoch(tmp_path):
    write_cifar10(tmp_path)
    # not-constant images so that crops and flips change the pixels
    row = cifar_row(lambda c, h, w: (h * 8 + w * 3 + c * 40) % 256)
    write_pickle(tmp_path / "cifar-10-batches-py" / "data_batch_1", {b"labels": [0, 1], b"data": np.stack([row, row])})
    data = create_dataset("cifar10", tmp_path, train=True, augment=True)

    def epoch_images(loader, epoch):
        set_loader_epoch(loader, epoch)
        return torch.cat([images for images, _ in loader])

    loader = make_loader(data, 10, shuffle=True, workers=1, seed=7)
    run1 = [epoch_images(loader, e) for e in (0, 1)]
    fresh = make_loader(data, 10, shuffle=True, workers=1, seed=7)  # resumed at epoch 1 in a new process
    assert torch.equal(epoch_images(fresh, 1), run1[1])
    assert not torch.equal(run1[0], run1[1])


def test_per_rank_batch_and_disjoint_shards(monkeypatch):
    world = 4
    monkeypatch.setattr(prunelimit.dist, "is_distributed", lambda: True)
    monkeypatch.setattr(prunelimit.dist, "world_size", lambda: world)
    shards = []
    for r in range(world):
        monkeypatch.setattr(prunelimit.dist, "rank", lambda r=r: r)
        loader = make_loader(indices(1024), 256, shuffle=True, seed=1)
        assert loader.batch_size == 64
        set_loader_epoch(loader, 3)
        assert loader.sampler.epoch == 3
        shards.append(torch.cat([b[0] for b in loader]).tolist())
    assert all(len(s) == 256 for s in shards)
    assert sorted(sum(shards, [])) == list(range(1024))  # every sample exactly once over all ranks
    with pytest.raises(ValueError, match="batch_size 3 is the total over all 4 processes"):
        make_loader(indices(8), 3, shuffle=False)
    with pytest.warns(UserWarning, match="effective total is 8"):
        assert make_loader(indices(8), 10, shuffle=False).batch_size == 2


def test_loader_argument_errors_and_pinning():
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        make_loader(indices(4), 0, shuffle=True)
    with pytest.raises(ValueError, match="workers"):
        make_loader(indices(4), 2, shuffle=True, workers=-1)
    with pytest.raises(ValueError, match="epoch must be an integer >= 0"):
        set_loader_epoch(make_loader(indices(4), 2, shuffle=True), -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert make_loader(indices(4), 2, shuffle=True, device="cuda:0").pin_memory
    assert not make_loader(indices(4), 2, shuffle=True, device=torch.device("cpu")).pin_memory


def test_dataset_from_config_passes_settings(tmp_path):
    write_cifar10(tmp_path)
    cfg = DataConfig(dataset="CIFAR-10", data_path=str(tmp_path), augment=False)
    ds = dataset_from_config(cfg, train=True)
    assert len(ds) == 10 and ds.augment is None
