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


def one_hot_mse(output, target):
    """A user's loss written by hand: MSE of the raw output against one-hot targets (= criterion "mse")."""
    return ((output - nn.functional.one_hot(target, output.shape[1]).to(output.dtype)) ** 2).mean()


@pytest.mark.parametrize("loss", ["regularized", pytest.param("data", marks=pytest.mark.slow)])
def test_loss_fn_gives_the_same_limits_as_the_equivalent_builtin_criterion(tmp_path, loss):
    # three routes to one loss: criterion="mse", loss_fn(output, target), pl.model_loss(fn(model, batch));
    # predicted limit, epsilon, the Hessian's spectrum and every actual limit must agree
    model, train, test = trained_digits_model()
    short = {"limit": {"sweep_points": 60, "loss": loss}, "spectrum": SHORT["spectrum"]}
    common = dict(l1_lambda=5e-4, show_progress=False, **short)
    builtin = pl.fundamental_limit(model, train, test, out=tmp_path / "b", criterion="mse", **common)
    by_output = pl.fundamental_limit(model, train, test, out=tmp_path / "o", loss_fn=one_hot_mse, **common)
    by_model = pl.fundamental_limit(model, train, test, out=tmp_path / "m", **common,
                                    loss_fn=pl.model_loss(lambda m, batch: one_hot_mse(m(batch[0]), batch[1])))
    assert builtin["loss"] == loss and 0.0 < builtin["predicted"]["prune_fraction"] < 1.0
    for got in (by_output, by_model):
        assert got["eps"] == pytest.approx(builtin["eps"], rel=1e-5)
        assert got["predicted"]["prune_fraction"] == pytest.approx(builtin["predicted"]["prune_fraction"], abs=1e-6)
    for rule, v in builtin["actual"].items():
        assert by_output["actual"][rule]["prune_fraction"] == v["prune_fraction"], rule
    # model_loss computes the output itself, so there is no accuracy: only the loss rule has a limit
    assert by_model["actual"]["loss_increase"]["prune_fraction"] == builtin["actual"]["loss_increase"]["prune_fraction"]
    assert by_model["actual"]["above_baseline"]["prune_fraction"] is None
    assert "accuracy" in by_model["actual"]["above_baseline"]["reason"]
    spectra = [json.loads((tmp_path / d / "limit" / "spectrum.json").read_text()) for d in "bom"]
    for s in spectra[1:]:
        np.testing.assert_allclose(s["nodes"], spectra[0]["nodes"], rtol=1e-4, atol=1e-7)
    assert "your loss_fn one_hot_mse" in (tmp_path / "o" / "config.yaml").read_text()


def test_loss_fn_argument_errors(tmp_path):
    model = nn.Linear(4, 3)
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    with pytest.raises(ValueError, match="not both"):
        pl.fundamental_limit(model, (x, y), (x, y), out=tmp_path, loss_fn=one_hot_mse, criterion="mse")
    with pytest.raises(ValueError, match="loss_fn must be"):
        pl.fundamental_limit(model, (x, y), (x, y), out=tmp_path, loss_fn="mse")
    with pytest.raises(ValueError, match=r"same, non-zero first dimension; got \(10, 4\), \(9, 4\)"):
        pl.fundamental_limit(model, ((x, x[:9]), y), (x, y), out=tmp_path, loss_fn=one_hot_mse)


def test_tiny_gpt2_gets_predicted_and_actual_limits_from_its_loss(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=24, n_positions=12, n_embd=16, n_layer=1, n_head=2,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(config)

    def sequences(n, seed):   # counting sequences (t, t+1, ...) mod V from random starts: learnable
        start = torch.randint(0, 24, (n, 1), generator=torch.Generator().manual_seed(seed))
        return (start + torch.arange(10)) % 24

    ids, test_ids = sequences(96, 0), sequences(32, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(60):   # a short training, so that pruning everything raises the loss
        opt.zero_grad()
        pl.causal_lm_loss(model(input_ids=ids[step % 3 * 32:][:32]), ids[step % 3 * 32:][:32]).backward()
        opt.step()
    with torch.no_grad():
        dense_loss = float(pl.causal_lm_loss(model(input_ids=ids), ids))
    assert dense_loss < 0.5 * np.log(24)
    mask = torch.ones_like(ids)
    result = pl.fundamental_limit(model, ({"input_ids": ids, "attention_mask": mask}, ids),
                                  ({"input_ids": test_ids, "attention_mask": torch.ones_like(test_ids)}, test_ids),
                                  loss_fn=pl.causal_lm_loss, batch_size=16, out=tmp_path, show_progress=False,
                                  limit={"rule": "loss_increase", "sweep_points": 40},
                                  spectrum={"lanczos_iter": 12, "trace_samples": 1, "top_k": 1})
    assert 0.0 < result["predicted"]["prune_fraction"] < 1.0
    assert 0.0 <= result["actual"]["loss_increase"]["prune_fraction"] < 1.0
    for rule in ("above_baseline", "acc_drop"):
        assert result["actual"][rule]["prune_fraction"] is None and "accuracy" in result["actual"][rule]["reason"]
    print("gpt2 dense loss", dense_loss, "predicted", result["predicted"]["prune_fraction"], "actual",
          result["actual"]["loss_increase"]["prune_fraction"], "eps", result["eps"])
    rows = (tmp_path / "limit" / "sweep.csv").read_text().splitlines()
    header, first = rows[0].split(","), rows[1].split(",")
    assert float(first[header.index("train_data_loss")]) == pytest.approx(dense_loss, rel=1e-4)


def test_one_training_batch_is_refused_before_any_work(tmp_path):
    x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    with pytest.raises(ValueError, match="one batch of batch_size 128; pass a smaller batch_size="):
        pl.fundamental_limit(nn.Linear(4, 3), (x, y), (x, y), out=tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_library_draws_no_progress_bars_into_a_log_file(tmp_path, capfd):
    # the README's call with stderr going to a file (capfd: not a terminal): no '\r' bar redraws, the same
    # policy as the command line; show_progress=True still draws them on request
    torch.manual_seed(0)
    model = pl.create_model("fc_small", num_classes=10, input_shape=(1, 1, 64))
    train = (torch.randn(256, 1, 1, 64), torch.randint(0, 10, (256,)))
    test = (torch.randn(64, 1, 1, 64), torch.randint(0, 10, (64,)))
    tiny = {"limit": {"sweep_points": 20, "epsilon": 0.1},
            "spectrum": {"lanczos_iter": 8, "lanczos_num": 1, "trace_samples": 1, "top_k": 1}}
    capfd.readouterr()
    pl.fundamental_limit(model, train, test, out=tmp_path / "quiet", batch_size=64, **tiny)
    assert "\r" not in capfd.readouterr().err
    pl.fundamental_limit(model, train, test, out=tmp_path / "bars", batch_size=64, show_progress=True, **tiny)
    assert capfd.readouterr().err.count("\r") > 10
