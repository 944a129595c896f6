"""The user's own data from the CLI: dataset arrays (.npz / .pt) and imagefolder, with no code."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from prunelimit.cli.main import main
from prunelimit.data import create_dataset, dataset_info
from prunelimit.data.arrays import load_arrays


def digits_npz(path, test_size=0.25):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x * 16).clip(0, 255).astype(np.uint8).reshape(-1, 8, 8)          # uint8 (N, H, W) images
    xt, xs, yt, ys = train_test_split(x, y, test_size=test_size, random_state=1, stratify=y)
    np.savez(path, x_train=xt, y_train=yt, x_test=xs, y_test=ys)
    return xt, yt, xs, ys


def test_npz_uint8_images_normalised_from_the_train_split(tmp_path):
    xt, yt, xs, ys = digits_npz(tmp_path / "d.npz")
    info = dataset_info("arrays", tmp_path / "d.npz")
    assert info.num_classes == 10 and info.input_shape == (1, 8, 8)
    pix = xt.astype(np.float64) / 255.0
    assert info.mean == pytest.approx((pix.mean(),)) and info.std == pytest.approx((pix.std(),))
    test = create_dataset("arrays", tmp_path / "d.npz", train=False)
    x0, y0 = test[3]
    np.testing.assert_allclose(x0.numpy()[0], (xs[3] / 255.0 - pix.mean()) / pix.std(), rtol=1e-5, atol=1e-6)
    assert y0 == ys[3] and len(test) == len(ys)
    train = create_dataset("arrays", tmp_path / "d.npz", train=True, mean=[0.5], std=[0.25])
    np.testing.assert_allclose(train[0][0].numpy()[0], (xt[0] / 255.0 - 0.5) / 0.25, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="data.mean has 3 value"):
        create_dataset("arrays", tmp_path / "d.npz", train=True, mean=[0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="do not apply to dataset 'arrays'"):
        create_dataset("arrays", tmp_path / "d.npz", train=True, image_size=[4, 4])


def test_pt_feature_vectors_and_no_unpickling(tmp_path):
    torch.manual_seed(0)
    data = {"x_train": torch.randn(40, 5), "y_train": torch.arange(40) % 3,
            "x_test": torch.randn(10, 5), "y_test": torch.arange(10) % 3}
    torch.save(data, tmp_path / "f.pt")
    info = dataset_info("arrays", tmp_path / "f.pt")
    assert info.num_classes == 3 and info.input_shape == (1, 1, 5)
    mean, std = data["x_train"].double().mean(), data["x_train"].double().std(unbiased=False)
    x, y = create_dataset("arrays", tmp_path / "f.pt", train=True)[7]
    torch.testing.assert_close(x.reshape(-1).double(), (data["x_train"][7].double() - mean) / std, rtol=1e-5, atol=1e-6)
    assert y == 1

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({**data, "extra": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="without unpickling code"):
        load_arrays(tmp_path / "evil.pt")
    assert not marker.exists()
    np.savez(tmp_path / "obj.npz", x_train=np.array([object()] * 3), y_train=[0, 1, 2], x_test=[[1.0]], y_test=[0])
    with pytest.raises(ValueError, match="object array"):
        load_arrays(tmp_path / "obj.npz")


@pytest.mark.parametrize("change, match", [
    (dict(y_test=None), "lacks y_test"),
    (dict(y_train=np.full(20, 0.5)), "integer class labels"),
    (dict(y_train=-np.ones(20, dtype=np.int64)), "negative label"),
    (dict(x_test=np.zeros((5, 3, 3), np.float32)), "same shape"),
    (dict(x_train=np.full((20, 4), np.nan, np.float32)), "NaN"),
    (dict(y_train=np.zeros(19, np.int64)), "19 labels for 20 samples"),
])
def test_array_file_errors_name_the_problem(tmp_path, change, match):
    arrays = {"x_train": np.zeros((20, 4), np.float32), "y_train": np.zeros(20, np.int64),
              "x_test": np.zeros((5, 4), np.float32), "y_test": np.zeros(5, np.int64)}
    arrays.update(change)
    np.savez(tmp_path / "bad.npz", **{k: v for k, v in arrays.items() if v is not None})
    with pytest.raises(ValueError, match=match):
        load_arrays(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="not a file"):
        load_arrays(tmp_path / "missing.npz")


def write_images(root, split, classes, n, size=(10, 12), seed=0):
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / split / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")


def test_imagefolder_resizes_and_normalises(tmp_path):
    write_images(tmp_path, "train", ["cat", "dog", "eel"], 4)
    write_images(tmp_path, "val", ["cat", "dog", "eel"], 2, seed=1)
    with pytest.raises(ValueError, match="image_size"):
        dataset_info("imagefolder", tmp_path)
    info = dataset_info("imagefolder", tmp_path, image_size=[6, 8])
    assert info.num_classes == 3 and info.input_shape == (3, 6, 8)
    # the computed normalisation is the population mean/std of every resized train pixel
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    raw = ImageFolder(str(tmp_path / "train"), transform=transforms.Compose([transforms.Resize((6, 8)),
                                                                             transforms.ToTensor()]))
    pixels = torch.stack([x for x, _ in raw]).double()          # (12, 3, 6, 8)
    assert info.mean == pytest.approx(tuple(pixels.mean(dim=(0, 2, 3)).tolist()), rel=1e-9)
    assert info.std == pytest.approx(tuple(pixels.std(dim=(0, 2, 3), unbiased=False).tolist()), rel=1e-6)
    test = create_dataset("imagefolder", tmp_path, train=False, image_size=[6, 8], mean=[0.5] * 3, std=[0.5] * 3)
    x, y = test[5]
    assert x.shape == (3, 6, 8) and y == 2 and len(test) == 6 and -1.0 <= float(x.min()) <= float(x.max()) <= 1.0
    write_images(tmp_path, "val", ["fox"], 1)
    with pytest.raises(ValueError, match="different class folders"):
        create_dataset("imagefolder", tmp_path, train=True, image_size=[6, 8])


def test_one_number_for_mean_or_std_is_every_channels(tmp_path):
    """`data.mean: 0.5` (a scalar) normalises every channel by it, from YAML as from the library."""
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    from prunelimit.config import ConfigError, load_config

    write_images(tmp_path, "train", ["cat", "dog"], 2)
    write_images(tmp_path, "val", ["cat", "dog"], 2, seed=1)
    (tmp_path / "c.yaml").write_text(f"data:\n  dataset: imagefolder\n  data_path: {tmp_path}\n"
                                     f"  image_size: [6, 8]\n  mean: 0.5\n  std: 0.25\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.data.options() == {"mean": 0.5, "std": 0.25, "image_size": [6, 8]}   # recorded as written
    info = dataset_info("imagefolder", tmp_path, **cfg.data.options())
    assert info.mean == (0.5, 0.5, 0.5) and info.std == (0.25, 0.25, 0.25)
    x, _ = create_dataset("imagefolder", tmp_path, train=False, **cfg.data.options())[3]
    raw = ImageFolder(str(tmp_path / "val"), transform=transforms.Compose([transforms.Resize((6, 8)),
                                                                           transforms.ToTensor()]))
    torch.testing.assert_close(x, (raw[3][0] - 0.5) / 0.25)
    digits_npz(tmp_path / "d.npz")                              # one channel: the same as [0.5]
    one = create_dataset("arrays", tmp_path / "d.npz", train=True, mean=0.5, std=2)[0][0]
    torch.testing.assert_close(one, create_dataset("arrays", tmp_path / "d.npz", train=True, mean=[0.5], std=[2.0])[0][0])
    with pytest.raises(ConfigError, match="data key 'std' must be > 0 for every channel; got 0"):
        load_config(None, ["data.dataset=imagefolder", f"data.data_path={tmp_path}", "data.std=0"])


def test_user_npz_runs_through_prunelimit_run_with_one_config_line(tmp_path, capsys):
    digits_npz(tmp_path / "mine.npz")
    out = tmp_path / "run"
    args = ["run", f"data.dataset={tmp_path / 'mine.npz'}",          # the one line: dataset: mine.npz
            "train.epochs=20", "limit.sweep_points=100", "spectrum.lanczos_iter=24", "spectrum.trace_samples=2",
            "finetune.epochs=1", "--out", out, "--no-progress"]
    assert main([str(a) for a in args]) == 0
    text = capsys.readouterr().out
    assert "fc_small on arrays" in text and "predicted (Gaussian width fixed point)" in text
    result = json.loads((out / "limit" / "result.json").read_text())
    assert result["loss"] == "data" and 0.5 < result["predicted"]["prune_fraction"] < 1.0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "arrays" and summary["dense"]["test_top1"] > 80


def test_imagefolder_runs_through_prunelimit_run(tmp_path, capsys):
    classes = ["a", "b"]
    write_images(tmp_path / "imgs", "train", classes, 12, size=(9, 7))
    write_images(tmp_path / "imgs", "test", classes, 4, size=(9, 7), seed=1)
    out = tmp_path / "run"
    args = ["run", "pipeline=limit", "data.dataset=imagefolder", f"data.data_path={tmp_path / 'imgs'}",
            "data.image_size=[6,6]", "train.epochs=3", "train.batch_size=8", "limit.sweep_points=10",
            "spectrum.lanczos_iter=6", "spectrum.trace_samples=1", "spectrum.top_k=1", "--out", out, "--no-progress"]
    assert main([str(a) for a in args]) == 0, capsys.readouterr().err
    assert "fc_small on imagefolder" in capsys.readouterr().out
    result = json.loads((out / "limit" / "result.json").read_text())
    assert result["num_weights"] == 3 * 6 * 6 * 300 + 300 * 100 + 100 * 2      # input (3, 6, 6), 2 classes
    assert main(["report", str(out)]) == 0 and "loss convention: data loss" in capsys.readouterr().out


@pytest.mark.parametrize("data_lines", ["dataset: arrays\n  data_path: mine.npz", "dataset: mine.npz",
                                        "dataset: imagefolder\n  data_path: imgs\n  image_size: [8, 8]"])
def test_download_is_refused_for_the_users_own_files(tmp_path, capsys, data_lines):
    # these datasets are the user's files: download would be ignored, so config validation refuses it
    (tmp_path / "c.yaml").write_text(f"data:\n  {data_lines}\n  download: true\n")
    assert main(["validate", str(tmp_path / "c.yaml")]) != 0
    captured = capsys.readouterr()
    line = captured.err.strip()   # one config: its own error is the one `error:` line, no count
    assert "'download' (data.download" in line and "remove download" in line and "\n" not in line
    (tmp_path / "ok.yaml").write_text(f"data:\n  {data_lines}\n  download: false\n")
    assert main(["validate", "--quiet", str(tmp_path / "ok.yaml")]) == 0
    (tmp_path / "mnist.yaml").write_text("data:\n  dataset: mnist\n  download: true\n")
    assert main(["validate", "--quiet", str(tmp_path / "mnist.yaml")]) == 0     # a dataset that downloads keeps it


def test_download_is_refused_from_the_command_line_and_the_python_api(tmp_path, capsys):
    digits_npz(tmp_path / "mine.npz")
    for argv in (["run", f"data.dataset={tmp_path / 'mine.npz'}", "data.download=true"],
                 ["prune", "--model", "fc_small", "--dataset", str(tmp_path / "mine.npz"), "--download"]):
        assert main(argv + ["--out", str(tmp_path / "r"), "--no-progress"]) == 2
        assert "data key 'download'" in capsys.readouterr().err
        assert not (tmp_path / "r").exists()
    with pytest.raises(ValueError, match="'arrays' is read from your own files"):
        create_dataset("arrays", tmp_path / "mine.npz", train=True, download=True)


@pytest.mark.parametrize("dataset", ["digits", "tinyimagenet", "imagenet"])
def test_download_is_refused_for_datasets_that_fetch_nothing(tmp_path, capsys, dataset):
    # these factories never download, so download: true would be ignored silently; validation says so instead
    (tmp_path / "c.yaml").write_text(f"data:\n  dataset: {dataset}\n  download: true\n")
    assert main(["validate", "--quiet", str(tmp_path / "c.yaml")]) != 0
    line = capsys.readouterr().err.strip()
    assert f"data key 'download' (data.download, --download) is true, but dataset '{dataset}'" in line
    assert "remove download" in line and "\n" not in line
    with pytest.raises(ValueError, match=f"dataset '{dataset}' is not fetched automatically"):
        create_dataset(dataset, tmp_path, train=False, download=True)


def test_image_size_as_one_int_is_a_square(tmp_path, capsys):
    write_images(tmp_path / "imgs", "train", ["a", "b"], 2, size=(9, 7))
    write_images(tmp_path / "imgs", "test", ["a", "b"], 1, size=(9, 7), seed=1)
    (tmp_path / "c.yaml").write_text(f"data:\n  dataset: imagefolder\n  data_path: {tmp_path / 'imgs'}\n"
                                     f"  image_size: 8\n")
    from prunelimit.config import load_config

    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.data.image_size == [8, 8]
    x, _ = create_dataset("imagefolder", cfg.data.data_path, train=False, **cfg.data.options())[0]
    assert x.shape == (3, 8, 8)
    for bad in ("0", "[8]", "eight", "true"):
        (tmp_path / "bad.yaml").write_text(f"data:\n  dataset: imagefolder\n  data_path: imgs\n  image_size: {bad}\n")
        with pytest.raises(ValueError, match="image_size"):
            load_config(tmp_path / "bad.yaml")
