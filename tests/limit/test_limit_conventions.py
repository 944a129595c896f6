"""The limit pipeline's declared loss: epsilon, the Hessian and the loss rule use one loss (limit.loss)."""
from __future__ import annotations

import pytest
import torch

from prunelimit.config.loader import load_config
from prunelimit.limit import loss_epsilon
from prunelimit.pipeline.common import build_model, load_data, setup
from prunelimit.pipeline.limit import hessian_setup
from prunelimit.train import l1_penalty, make_criterion


def _setup(tmp_path, loss: str):
    cfg = load_config("default", [f"limit.loss={loss}", f"out={tmp_path / loss}", "show_progress=false"])
    ctx = setup(cfg)
    data = load_data(cfg)
    model = build_model(cfg)
    return cfg, ctx, data, model


def test_data_loss_hessian_has_no_l1_term_and_regularized_adds_it(tmp_path):
    cfg, ctx, data, model = _setup(tmp_path, "data")
    get_op, loss_fn, loader = hessian_setup(ctx, model, data)
    op = get_op()
    assert op.regularizer is None           # no L1 term back-propagated through any HVP
    crit = make_criterion(cfg.train, data.num_classes)
    x, y = next(iter(loader))
    with torch.no_grad():
        assert float(loss_fn(model(x), y)) == pytest.approx(float(crit(model(x), y)), rel=1e-6)

    cfg_r, ctx_r, _, _ = _setup(tmp_path, "regularized")
    get_op_r, loss_fn_r, loader_r = hessian_setup(ctx_r, model, data)
    op_r = get_op_r()
    assert op_r.regularizer is not None
    lam = cfg.train.l1_lambda
    with torch.no_grad():
        shift = lam * float(l1_penalty(model, cfg.train.l1_params))
        assert float(loss_fn_r(model(x), y)) == pytest.approx(float(crit(model(x), y)) + shift, rel=1e-6)
    # |theta| is piecewise linear: its Hessian is zero wherever no parameter is exactly 0, so both operators
    # give the same products, and the constant shift leaves epsilon (a standard deviation) unchanged
    torch.manual_seed(0)
    v = torch.randn(op.dim)
    torch.testing.assert_close(op.matvec(v), op_r.matvec(v), rtol=1e-5, atol=1e-6)
    eps_d, _ = loss_epsilon(model, loader, loss_fn, ddof=0)
    eps_r, _ = loss_epsilon(model, loader_r, loss_fn_r, ddof=0)
    assert eps_d == pytest.approx(eps_r, rel=1e-4)


def test_old_sweep_table_in_a_finished_run_is_evaluated_again(tmp_path, capsys):
    import csv

    from prunelimit.cli.main import main
    from prunelimit.limit.sweep import LOSS_COLUMNS

    out = tmp_path / "run"
    args = ["run", "pipeline=limit", "train.epochs=5", "limit.sweep_points=20", "spectrum.lanczos_iter=8",
            "spectrum.trace_samples=1", "spectrum.top_k=1", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    path = out / "limit" / "sweep.csv"
    with open(path, newline="") as f:
        table = list(csv.DictReader(f))
    with open(path, "w", newline="") as f:   # as an older prunelimit wrote it
        keep = [c for c in table[0] if c not in LOSS_COLUMNS]
        w = csv.DictWriter(f, keep, extrasaction="ignore")
        w.writeheader()
        w.writerows(table)
    capsys.readouterr()
    assert main(args) == 0
    assert "was written before the data-loss columns existed; evaluating it again" in capsys.readouterr().out
    with open(path, newline="") as f:
        again = list(csv.DictReader(f))
    assert [r["train_data_loss"] for r in again] == [r["train_data_loss"] for r in table]
