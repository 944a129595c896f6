"""Image-file datasets: Tiny ImageNet and ImageNet folders.

Tiny ImageNet (``<root>/tiny-imagenet-200/``): ``wnids.txt`` (one class id per line),
``train/<wnid>/images/*.JPEG``, ``val/images/*.JPEG`` with ``val/val_annotations.txt`` (tab separated:
file, wnid, bbox...). The val split serves as the test split (the official test split has no
labels). Classes are numbered in sorted wnid order, as ``ImageFolder`` numbers folders.
ImageNet: ``ImageFolder`` over ``<root>/train`` and ``<root>/val`` (or ``<root>/imagenet/...``).
Both normalise with the ImageNet mean/std.
"""
from __future__ import annotations

from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets, transforms

from prunelimit.data.common import missing_data_error, require_paths
from prunelimit.data.info import IMAGENET_MEAN, IMAGENET_STD, DatasetInfo
from prunelimit.data.registry import dataset_info, register_dataset


def _normalize(name: str) -> transforms.Normalize:
    info = dataset_info(name)
    return transforms.Normalize(info.mean, info.std)


def tinyimagenet_transform(train: bool, augment: bool) -> transforms.Compose:
    steps = [transforms.RandomCrop(64, padding=4), transforms.RandomHorizontalFlip()] if (train and augment) else []
    return transforms.Compose(steps + [transforms.ToTensor(), _normalize("tinyimagenet")])


def imagenet_transform(train: bool, augment: bool) -> transforms.Compose:
    if train and augment:
        steps = [transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip()]
    else:
        steps = [transforms.Resize(256), transforms.CenterCrop(224)]
    return transforms.Compose(steps + [transforms.ToTensor(), _normalize("imagenet")])


class ImageListDataset(Dataset):
    """``(path, label)`` pairs read with PIL as RGB (some Tiny ImageNet files are greyscale)."""

    def __init__(self, samples: list[tuple[Path, int]], transform, classes: list[str]):
        self.samples = samples
        self.targets = [label for _, label in samples]
        self.transform = transform
        self.classes = classes

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        with Image.open(path) as img:
            x = self.transform(img.convert("RGB"))
        return x, label


def _read_wnids(base: Path) -> list[str]:
    wnids_path = base / "wnids.txt"
    wnids = [line.strip() for line in wnids_path.read_text().splitlines() if line.strip()]
    if not wnids or len(set(wnids)) != len(wnids):
        raise missing_data_error("tinyimagenet", wnids_path, "must list distinct class ids, one per line")
    return sorted(wnids)


def _tiny_train_samples(base: Path, wnids: list[str]) -> list[tuple[Path, int]]:
    samples = []
    for label, wnid in enumerate(wnids):
        folder = base / "train" / wnid / "images"
        require_paths("tinyimagenet", [folder])
        files = sorted(folder.glob("*.JPEG"))
        if not files:
            raise missing_data_error("tinyimagenet", folder, "holds no *.JPEG images")
        samples += [(f, label) for f in files]
    return samples


def _tiny_val_samples(base: Path, wnids: list[str]) -> list[tuple[Path, int]]:
    ann_path = base / "val" / "val_annotations.txt"
    require_paths("tinyimagenet", [base / "val" / "images", ann_path])
    index = {w: i for i, w in enumerate(wnids)}
    samples = []
    for lineno, line in enumerate(ann_path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise missing_data_error("tinyimagenet", ann_path, f"line {lineno} ({line!r}) does not give "
                                                               f"'<file>\\t<wnid from wnids.txt>'")
        image = base / "val" / "images" / fields[0]
        require_paths("tinyimagenet", [image])
        samples.append((image, index[fields[1]]))
    if not samples:
        raise missing_data_error("tinyimagenet", ann_path, "lists no images")
    return samples


def tinyimagenet_dataset(root: Path, train: bool, augment: bool) -> ImageListDataset:
    base = root / "tiny-imagenet-200"
    require_paths("tinyimagenet", [base / "wnids.txt"])
    wnids = _read_wnids(base)
    samples = _tiny_train_samples(base, wnids) if train else _tiny_val_samples(base, wnids)
    return ImageListDataset(samples, tinyimagenet_transform(train, augment), wnids)


def imagenet_dataset(root: Path, train: bool, augment: bool) -> datasets.ImageFolder:
    split = "train" if train else "val"
    candidates = [root / split, root / "imagenet" / split]
    folder = next((c for c in candidates if c.is_dir()), None)
    if folder is None:
        raise missing_data_error("imagenet", candidates[0], f"(nor {candidates[1]}) was not found")
    try:
        return datasets.ImageFolder(str(folder), transform=imagenet_transform(train, augment))
    except (FileNotFoundError, OSError) as e:  # no class folders, or a class folder without images
        raise missing_data_error("imagenet", folder, f"is not a usable image folder ({e})") from e


@register_dataset(DatasetInfo(
    "tinyimagenet", 200, (3, 64, 64), IMAGENET_MEAN, IMAGENET_STD,
    "Tiny ImageNet, 100 000 train / 10 000 val (used as the test split), 64x64 colour, 200 classes; "
    "normalised with the ImageNet mean/std.",
    "Download http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it into <data_path> so that "
    "<data_path>/tiny-imagenet-200/wnids.txt exists (automatic download is not offered)."), downloads=False)
def _tinyimagenet(root: Path, train: bool, *, download: bool, augment: bool) -> ImageListDataset:
    return tinyimagenet_dataset(root, train, augment)


@register_dataset(DatasetInfo(
    "imagenet", 1000, (3, 224, 224), IMAGENET_MEAN, IMAGENET_STD,
    "ImageNet ILSVRC-2012 as an image folder, 1.28 M train / 50 000 val (used as the test split).",
    "Get ILSVRC-2012 from https://image-net.org (registration required) and arrange it as "
    "<data_path>/train/<wnid>/*.JPEG and <data_path>/val/<wnid>/*.JPEG (validation images sorted into "
    "class folders); <data_path>/imagenet/train and .../val are also accepted."), downloads=False)
def _imagenet(root: Path, train: bool, *, download: bool, augment: bool) -> datasets.ImageFolder:
    return imagenet_dataset(root, train, augment)
