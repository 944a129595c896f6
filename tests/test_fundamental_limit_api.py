"""pl.fundamental_limit: the whole limit workflow on the user's model and tensors in one call, with the
same result and files as the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import prunelimit as pl
from prunelimit.cli.main import main

@pytest.fixture(autouse=True)
def one_thread():
    # a net this small runs fastest on one thread (the CLI's default config says threads: 1 too)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SHORT = {"limit": {"sweep_points": 100}, "spectrum": {"lanczos_iter": 16, "trace_samples": 2, "top_k": 2}}


def trained_digits_model():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 1, 1, 64)
    xt, xs, yt, ys = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    xt, xs, yt, ys = map(torch.tensor, (xt, xs, yt, ys))
    torch.manual_seed(0)
    model = pl.create_model("fc_small", num_classes=10, input_shape=(1, 1, 64))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(15):
        for i in range(0, len(xt), 128):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(xt[i:i + 128]), yt[i:i + 128])
            (loss + 5e-4 * sum(p.abs().sum() for p in model.parameters())).backward()
            opt.step()
    return model, (xt, yt), (xs, ys)


def test_fundamental_limit_matches_the_cli_on_the_same_weights_and_data(tmp_path, capsys):
    model, train, test = trained_digits_model()
    torch.save(model.state_dict(), tmp_path / "dense.pt")
    np.savez(tmp_path / "d.npz", x_train=train[0].numpy(), y_train=train[1].numpy(), x_test=test[0].numpy(),
             y_test=test[1].numpy())
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    result = pl.fundamental_limit(model, train, test, out=tmp_path / "api", l1_lambda=5e-4, show_progress=False,
                                  **SHORT)
    assert all(torch.equal(v, dense[k]) for k, v in model.state_dict().items())   # the model is left dense
    # the CLI on the same weights (no training) and the same, un-normalised arrays
    args = ["run", "default", "pipeline=limit", f"data.dataset={tmp_path / 'd.npz'}", "data.mean=[0.0]",
            "data.std=[1.0]", f"model.checkpoint={tmp_path / 'dense.pt'}", "limit.sweep_points=100",
            "spectrum.lanczos_iter=16", "spectrum.trace_samples=2", "spectrum.top_k=2", "--out", tmp_path / "cli",
            "--no-progress"]
    assert main([str(a) for a in args]) == 0, capsys.readouterr().err
    cli = json.loads((tmp_path / "cli" / "limit" / "result.json").read_text())
    assert result == json.loads((tmp_path / "api" / "limit" / "result.json").read_text())
    assert result["predicted"]["prune_fraction"] == pytest.approx(cli["predicted"]["prune_fraction"], rel=1e-6)
    assert result["eps"] == pytest.approx(cli["eps"], rel=1e-6)
    for rule, v in cli["actual"].items():
        assert result["actual"][rule]["prune_fraction"] == v["prune_fraction"], rule
    for name in ("sweep.csv", "spectrum.json", "density.csv", "result.json", "result.txt", "sweep.png",
                 "gaussian_width.png", "spectral_density.png"):
        assert (tmp_path / "api" / "limit" / name).exists(), name
    assert (tmp_path / "api" / "summary.json").exists() and (tmp_path / "api" / "config.yaml").exists()
    # a second call with other settings computes afresh in the same folder (nothing stale is reused)
    again = pl.fundamental_limit(model, torch.utils.data.TensorDataset(*train),
                                 torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*test), batch_size=64),
                                 out=tmp_path / "api", show_progress=False,
                                 limit={"sweep_points": 50, "loss": "regularized"}, spectrum=SHORT["spectrum"])
    assert again["loss"] == "regularized"
    assert len((tmp_path / "api" / "limit" / "sweep.csv").read_text().splitlines()) == 51


def test_fundamental_limit_input_errors(tmp_path):
    model = nn.Linear(4, 3)
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    with pytest.raises(ValueError, match="train must be"):
        pl.fundamental_limit(model, [1, 2, 3], (x, y), out=tmp_path)
    with pytest.raises(ValueError, match="same, non-zero first"):
        pl.fundamental_limit(model, (x, y[:5]), (x, y), out=tmp_path)
    with pytest.raises(ValueError, match="limit.loss"):
        pl.fundamental_limit(model, (x, y), (x, y), out=tmp_path, limit={"loss": "l2"})
    with pytest.raises(ValueError, match="nn.Module"):
        pl.fundamental_limit(lambda t: t, (x, y), (x, y), out=tmp_path)
