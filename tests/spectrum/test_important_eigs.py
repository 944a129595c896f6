"""Hessian-row norms at magnitude quantiles ("important eigenvalues", SPEC B4)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import helpers
from prunelimit.spectrum import HessianOperator, hessian_row_norms, plot_row_norms

torch.set_num_threads(1)


def net_with_flat_directions() -> nn.Module:
    """Linear(4,5) -> ReLU -> Linear(5,3), float64. Input feature 0 is always zero (so W1[:, 0] never
    affects the loss) and hidden unit 2 has a bias of -100 (a dead ReLU: W1[2, :] and W2[:, 2] never
    affect the loss). Their Hessian rows are exactly zero: 5 + 4 - 1 + 3 = 11 of the N = 35 weights."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    with torch.no_grad():
        net[0].bias[2] = -100.0
    return net


DEAD = {("0.weight", r * 4 + 0) for r in range(5)} | {("0.weight", 2 * 4 + c) for c in range(4)} \
    | {("2.weight", r * 5 + 2) for r in range(3)}


def batches(seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for n in (6, 4):
        x = torch.randn(n, 4, generator=gen, dtype=torch.float64)
        x[:, 0] = 0.0
        out.append((x, torch.randint(0, 3, (n,), generator=gen)))
    return out


def explicit_hessian(model, data):
    """The explicit Hessian (helpers.explicit_hessian) and each parameter's offset in its flat vector."""
    sizes = [p.numel() for _, p in model.named_parameters()]
    offsets = dict(zip((n for n, _ in model.named_parameters()), np.cumsum([0] + sizes)[:-1].tolist()))
    return helpers.explicit_hessian(model, data)[0], offsets


def test_row_norms_match_the_explicit_hessian():
    net, data = net_with_flat_directions(), batches()
    op = HessianOperator(net, nn.functional.cross_entropy, data)
    H, offsets = explicit_hessian(net, data)
    Q = 10
    result = hessian_row_norms(op, net, quantiles=Q, batch=3)
    # independent selection: numpy's stable argsort of |w| over the prunable weights in module order
    w = {"0.weight": net[0].weight.detach().numpy().ravel(), "2.weight": net[2].weight.detach().numpy().ravel()}
    mags = np.concatenate([np.abs(w["0.weight"]), np.abs(w["2.weight"])])
    order = np.argsort(mags, kind="stable")
    for i in range(Q):
        flat_idx = order[(i * mags.size) // Q]
        name, local = ("0.weight", flat_idx) if flat_idx < 20 else ("2.weight", flat_idx - 20)
        assert result.param_name[i] == name and int(result.index[i]) == local
        assert result.magnitude[i].item() == pytest.approx(mags[flat_idx])
        row = H[offsets[name] + local]
        assert result.row_l1[i].item() == pytest.approx(row.abs().sum().item(), rel=1e-10, abs=1e-14)
        assert bool(result.flat[i]) == ((name, local) in DEAD)
    assert result.quantile.tolist() == [i / Q for i in range(Q)]


def test_flat_fraction_counts_exactly_the_dead_weights():
    net, data = net_with_flat_directions(), batches()
    op = HessianOperator(net, nn.functional.cross_entropy, data)
    result = hessian_row_norms(op, net, quantiles=35)  # quantiles = N: every prunable weight once
    assert sorted(zip(result.param_name, result.index.tolist())) == sorted(
        [("0.weight", i) for i in range(20)] + [("2.weight", i) for i in range(15)])
    assert result.flat_count == len(DEAD) == 11
    assert result.flat_fraction == pytest.approx(11 / 35)
    assert torch.all(result.row_l1[result.flat] == 0)
    assert torch.all(result.row_l1[~result.flat] > 1e-3)
    # a threshold above every live row marks all as flat
    assert hessian_row_norms(op, net, quantiles=35, threshold=1e6).flat_fraction == 1.0


def test_row_norm_errors():
    net, data = net_with_flat_directions(), batches()
    only_last = [("2.weight", net[2].weight), ("2.bias", net[2].bias)]
    op = HessianOperator(net, nn.functional.cross_entropy, data, params=only_last)
    with pytest.raises(ValueError, match="prunable weight '0.weight' is not among the Hessian operator"):
        hessian_row_norms(op, net)
    with pytest.raises(ValueError, match="model Sequential has no prunable"):
        hessian_row_norms(op, nn.Sequential(nn.ReLU()))
    with pytest.raises(ValueError, match="row_quantiles"):
        hessian_row_norms(op, net, quantiles=0)
    with pytest.raises(ValueError, match="row_threshold"):
        hessian_row_norms(op, net, threshold=0.0)
    # include/exclude select the sampled layers
    assert set(hessian_row_norms(op, net, quantiles=5, include="2").param_name) == {"2.weight"}


def test_plot_row_norms_writes_png(tmp_path):
    net, data = net_with_flat_directions(), batches()
    result = hessian_row_norms(HessianOperator(net, nn.functional.cross_entropy, data), net, quantiles=35)
    path = plot_row_norms(tmp_path / "rows.png", result)
    with open(path, "rb") as f:
        assert f.read(4) == b"\x89PNG"
    assert len(result.rows()) == 35 and result.rows()[0]["quantile"] == 0.0
