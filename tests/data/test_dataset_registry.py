"""The dataset registry: built-ins register themselves, users add their own, no import cycle."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prunelimit.data import DatasetInfo, ImageTensorDataset, create_dataset, dataset_info, list_datasets
from prunelimit.data import registry
from prunelimit.data.digits import DIGITS_MEAN, DIGITS_STD, digits_split
from prunelimit.errors import PrunelimitError

SRC = str(Path(__file__).resolve().parents[2] / "src")


def test_digits_constants_match_the_split_they_describe():
    digits_split.cache_clear()
    s = digits_split()
    assert DIGITS_MEAN == pytest.approx(s.mean, rel=1e-12)
    assert DIGITS_STD == pytest.approx(s.std, rel=1e-12)
    x = create_dataset("digits", train=True).tensors[0]  # normalised with the constants
    assert float(x.double().mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(x.double().std(unbiased=False)) == pytest.approx(1.0, abs=1e-6)


def test_builtins_are_listed_smallest_first():
    assert list_datasets()[:6] == ["digits", "mnist", "cifar10", "cifar100", "tinyimagenet", "imagenet"]
    assert dataset_info("CIFAR-10").name == "cifar10"


@pytest.mark.parametrize("module", ["common", "info", "digits", "registry", "mnist", "cifar", "folders", "loader"])
def test_every_data_module_imports_first_in_a_fresh_interpreter(module):
    """The old data/common <-> info <-> digits cycle broke depending on which module came first."""
    code = f"import prunelimit.data.{module}; import prunelimit.data as d; print(len(d.list_datasets()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": SRC},
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) >= 6


@pytest.fixture
def user_dataset():
    info = DatasetInfo("twoblobs", 2, (1, 2, 2), (0.0,), (1.0,), "two Gaussian blobs", "generated")
    seen = []

    @registry.register_dataset(info)
    def twoblobs(root, train, *, download, augment):
        seen.append((root, train, download, augment))
        g = torch.Generator().manual_seed(0 if train else 1)
        y = torch.arange(8) % 2
        x = torch.randn(8, 1, 2, 2, generator=g) + 3 * y.view(-1, 1, 1, 1)
        return ImageTensorDataset(x, y, info.mean, info.std)

    yield seen
    del registry._DATASETS["twoblobs"]


def test_a_registered_dataset_is_created_by_name(user_dataset, tmp_path):
    assert "twoblobs" in list_datasets()
    ds = create_dataset("Two-Blobs", tmp_path, train=False, augment=False)
    assert len(ds) == 8 and dataset_info("twoblobs").num_classes == 2
    assert user_dataset == [(tmp_path, False, False, False)]


def test_registration_mistakes_are_refused(user_dataset):
    with pytest.raises(PrunelimitError, match="already registered"):
        registry.register_dataset(dataset_info("twoblobs"))(lambda *a, **k: None)
    with pytest.raises(PrunelimitError, match="lower case"):
        registry.register_dataset(DatasetInfo("My_Data", 2, (1, 1, 1), (0.0,), (1.0,), "", ""))
    with pytest.raises(PrunelimitError, match="Did you mean 'twoblobs'"):
        dataset_info("twoblob")
