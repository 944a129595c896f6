"""GaussNewtonOperator against an explicit G = Jᵀ H_out J from torch.autograd.functional.jacobian/hessian."""
from __future__ import annotations

import collections
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from prunelimit.errors import PrunelimitError
from prunelimit.spectrum import (GaussNewtonOperator, HessianOperator, RestrictedOperator, hessian_trace,
                                 rademacher, slq_spectrum, top_eigenvalues)
from prunelimit.spectrum.gauss_newton import curvature_operator

torch.set_num_threads(1)
NAMES = ["0.weight", "0.bias", "2.weight", "2.bias"]


def net(seed: int = 0, outputs: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, outputs)).double()


def batches(loss: str, sizes=(6, 6, 4), seed: int = 1, outputs: int = 3):
    """Several batches, the last one ragged; integer classes for CE, real targets for MSE."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for n in sizes:
        x = torch.randn(n, 3, generator=gen, dtype=torch.float64)
        y = (torch.randint(0, outputs, (n,), generator=gen) if loss == "ce"
             else torch.randn(n, outputs, generator=gen, dtype=torch.float64))
        out.append((x, y))
    return out


LOSSES = {"ce": nn.functional.cross_entropy, "mse": nn.functional.mse_loss}


def explicit_gauss_newton(model, data, loss_fn):
    """G = (1/N) Σ_b J_bᵀ [∂²(n_b loss_b)/∂z_b²] J_b, each factor formed explicitly."""
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in NAMES]
    flat0 = torch.cat([params[n].detach().reshape(-1) for n in NAMES])
    total = sum(len(y) for _, y in data)
    G = torch.zeros(flat0.numel(), flat0.numel(), dtype=torch.float64)
    for x, y in data:
        def outputs(flat):
            chunks = flat.split([math.prod(s) for s in shapes])
            return functional_call(model, {n: c.view(s) for n, c, s in zip(NAMES, chunks, shapes)}, (x,))

        z = outputs(flat0).detach()
        J = torch.autograd.functional.jacobian(outputs, flat0).reshape(z.numel(), -1)        # (n·C, D)
        H_out = torch.autograd.functional.hessian(lambda zz: loss_fn(zz.view(z.shape), y) * len(y),
                                                  z.reshape(-1))                            # (n·C, n·C)
        G += J.T @ H_out @ J / total
    return G


@pytest.mark.parametrize("loss", ["ce", "mse"])
@pytest.mark.parametrize("cache", [True, False, "partial"])
def test_matches_explicit_gauss_newton_and_is_psd(loss, cache):
    model, data = net(), batches(loss)
    kwargs = {"cache_graph": cache}
    if cache == "partial":   # a budget for about one batch's forward graph: the rest is recomputed
        probe = GaussNewtonOperator(model, LOSSES[loss], data[:1], cache_graph=True)
        kwargs = {"cache_graph": "auto", "memory_budget": int(2.5 * probe.graph_bytes_first)}
    op = GaussNewtonOperator(model, LOSSES[loss], data, **kwargs)
    if cache == "partial":
        assert 0 < op.cached_batches < op.num_batches, op.cache_report
    assert op.param_names == NAMES and op.num_samples == 16 and op.curvature == "gauss_newton"
    G = explicit_gauss_newton(model, data, LOSSES[loss])
    V = torch.randn(3, op.dim, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    torch.testing.assert_close(op.matmat(V), V @ G, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(op.matmat(V), V @ G, rtol=1e-10, atol=1e-12)   # the cache survives an HVP
    exact = torch.linalg.eigvalsh(G)
    assert exact.min() > -1e-12 * exact.max()                           # PSD (the explicit one)
    nodes, weights = slq_spectrum(op, op.dim, 1, seed=3)                # all steps: the exact spectrum
    torch.testing.assert_close(nodes.sort().values, exact, rtol=1e-7, atol=1e-9)
    assert nodes.min() > -1e-9 * nodes.max()                            # PSD (the operator's)
    # the gradient through the cached forwards equals the explicit one
    params = dict(model.named_parameters())
    full = sum(LOSSES[loss](model(x), y) * len(y) for x, y in data) / 16
    g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(full, [params[n] for n in NAMES])])
    torch.testing.assert_close(op.gradient(), g, rtol=1e-10, atol=1e-12)


def test_differs_from_the_hessian_away_from_a_fit_and_equals_it_at_one():
    """G = H exactly when the loss's output gradient is zero (MSE on targets the model already predicts);
    away from that H has negative eigenvalues and G does not."""
    model, data = net(), batches("mse")
    with torch.no_grad():
        fitted = [(x, model(x)) for x, _ in data]
    eye = torch.eye(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    H = HessianOperator(model, nn.functional.mse_loss, fitted, lean_graphs=False).matmat(eye)
    G = GaussNewtonOperator(model, nn.functional.mse_loss, fitted).matmat(eye)
    torch.testing.assert_close(G, H, rtol=1e-10, atol=1e-13)
    H = HessianOperator(model, nn.functional.mse_loss, data, lean_graphs=False).matmat(eye)
    G = GaussNewtonOperator(model, nn.functional.mse_loss, data).matmat(eye)
    assert torch.linalg.eigvalsh(H).min() < -1e-4 and (G - H).abs().max() > 1e-3


def test_regularizer_top_k_trace_restricted_and_factory():
    """The regularizer's Hessian is added (2λI for λ‖θ‖²); top-k, Hutchinson and the restricted operator run
    on G unchanged; curvature_operator picks the class."""
    model, data = net(), batches("ce")
    lam = 0.05
    reg = lambda m: lam * sum(p.square().sum() for p in m.parameters())   # noqa: E731
    op = curvature_operator("gauss_newton", model, nn.functional.cross_entropy, data, regularizer=reg,
                            lean_graphs=True)
    G = explicit_gauss_newton(model, data, nn.functional.cross_entropy) + 2 * lam * torch.eye(op.dim).double()
    torch.testing.assert_close(op.matmat(torch.eye(op.dim, dtype=torch.float64)), G, rtol=1e-10, atol=1e-12)
    top, _ = top_eigenvalues(op, 3, max_iter=op.dim, tol=1e-8)
    torch.testing.assert_close(top, torch.linalg.eigvalsh(G).flip(0)[:3], rtol=1e-7, atol=1e-10)
    trace, _ = hessian_trace(op, 8, seed=4)
    Z = rademacher(8, op.dim, 4, torch.float64)                          # the same probes
    assert trace == pytest.approx(float(torch.einsum("id,de,ie->i", Z, G, Z).mean()), rel=1e-10)
    keep = torch.rand(4, 3, generator=torch.Generator().manual_seed(2)) > 0.4
    sub = RestrictedOperator(op, {"0.weight": keep})
    mask = torch.cat([keep.reshape(-1), torch.ones(op.dim - 12, dtype=torch.bool)])
    V = torch.randn(2, sub.dim, dtype=torch.float64)
    torch.testing.assert_close(sub.matmat(V), V @ G[mask][:, mask], rtol=1e-10, atol=1e-12)
    assert isinstance(curvature_operator("hessian", model, nn.functional.cross_entropy, data), HessianOperator)
    with pytest.raises(PrunelimitError, match="gauss_newton"):
        curvature_operator("fisher", model, nn.functional.cross_entropy, data)


class Structured(nn.Module):
    """``net()`` whose output is a dict / tuple / namedtuple holding the logits beside other tensors."""

    def __init__(self, kind: str):
        super().__init__()
        self.body, self.kind = net(), kind

    def forward(self, x):
        z = self.body(x)
        aux = (z * 2).sum(dim=1)                  # depends on the weights, but the loss never reads it
        if self.kind == "dict":
            return {"logits": z, "aux": aux, "ids": x.argmax(dim=1)}
        if self.kind == "namedtuple":
            return collections.namedtuple("Out", "aux logits")(aux, z)
        return aux, z


@pytest.mark.parametrize("kind, pick", [("dict", lambda out: out["logits"]), ("tuple", lambda out: out[1]),
                                        ("namedtuple", lambda out: out.logits)])
def test_structured_outputs_use_the_tensors_the_loss_reads(kind, pick):
    model, data = Structured(kind), batches("ce")
    op = GaussNewtonOperator(model, lambda out, y: nn.functional.cross_entropy(pick(out), y), data)
    G = explicit_gauss_newton(model.body, data, nn.functional.cross_entropy)
    V = torch.randn(2, op.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(op.matmat(V), V @ G, rtol=1e-10, atol=1e-12)


def test_refusals_name_the_fix():
    from prunelimit.train import model_loss

    model, data = net(), batches("ce")
    with pytest.raises(PrunelimitError, match="loss_fn\\(output, target\\)"):
        GaussNewtonOperator(model, model_loss(lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1])), data)

    class Classes(nn.Module):   # returns class ids: nothing to differentiate
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3).double()

        def forward(self, x):
            return self.fc(x).argmax(dim=1)

    with pytest.raises(PrunelimitError, match="returned Tensor for batch 0 with none"):
        GaussNewtonOperator(Classes(), lambda out, y: (out == y).double().mean(), data)


def test_batched_probes_true_is_refused_not_ignored():
    """G's product loops over the probes; batched_probes=True (the Hessian's vmap'd backward) would be a
    setting that silently does nothing, so it is refused, and "auto" records the loop it runs."""
    model, data = net(), batches("ce")
    for value in (True, "true"):
        with pytest.raises(PrunelimitError, match="the Gauss-Newton product always loops over the probes"):
            GaussNewtonOperator(model, nn.functional.cross_entropy, data, batched_probes=value)
        with pytest.raises(PrunelimitError, match="batched_probes"):
            curvature_operator("gauss_newton", model, nn.functional.cross_entropy, data, batched_probes=value)
    for value in ("auto", False, "false"):
        op = GaussNewtonOperator(model, nn.functional.cross_entropy, data, batched_probes=value)
        assert op.batched_hvp is False


def test_a_hessian_lanczos_state_is_never_resumed_as_gauss_newton(tmp_path):
    from prunelimit.spectrum.checkpoint import LanczosCheckpoint

    model, data = net(), batches("ce")
    H = HessianOperator(model, nn.functional.cross_entropy, data)
    G = GaussNewtonOperator(model, nn.functional.cross_entropy, data)
    assert (H.num_samples, H.loss, H.dim) == (G.num_samples, G.loss, G.dim)   # only the matrix tells them apart
    slq_spectrum(H, 6, 1, checkpoint=LanczosCheckpoint(tmp_path, every=2))     # leaves its state behind
    with pytest.raises(PrunelimitError, match="different run"):
        slq_spectrum(G, 6, 1, checkpoint=LanczosCheckpoint(tmp_path, every=2))
    slq_spectrum(H, 6, 1, checkpoint=LanczosCheckpoint(tmp_path, every=2))     # the Hessian's own state resumes
