"""The lean Lanczos step: float64-accurate chunked reductions, float32 Ritz values against float64
references (a textbook float64 Lanczos on explicit Hessians), and HVPs written into caller buffers."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from prunelimit.spectrum import HessianOperator, MatrixOperator, lanczos_tridiagonal, slq_spectrum
from prunelimit.spectrum.lanczos import _LanczosRun, rademacher, tridiagonal_eigh
from prunelimit.spectrum.reductions import CHUNK, dot64, norm64, project64

torch.set_num_threads(1)


def reference_lanczos(H: torch.Tensor, v0: torch.Tensor, steps: int) -> torch.Tensor:
    """Ritz values (ascending) of ``steps`` float64 Lanczos steps with full re-orthogonalisation (twice),
    written out plainly from the textbook recurrence, independent of the code under test."""
    H, q = H.double(), v0.double() / v0.double().norm()
    Q, alphas, betas = [q], [], []
    for j in range(steps):
        w = H @ Q[-1]
        alphas.append(float(Q[-1] @ w))
        basis = torch.stack(Q)
        for _ in range(2):
            w = w - basis.T @ (basis @ w)
        if j + 1 < steps:
            betas.append(float(w.norm()))
            Q.append(w / betas[-1])
    T = torch.diag(torch.tensor(alphas)) + torch.diag(torch.tensor(betas), 1) + torch.diag(torch.tensor(betas), -1)
    return torch.linalg.eigvalsh(T)


def test_chunked_reductions_are_float64_accurate():
    gen = torch.Generator().manual_seed(0)
    dim = 3 * CHUNK + 123                                    # several chunks and a ragged tail
    x = torch.randn(2, dim, generator=gen)
    y = torch.randn(2, dim, generator=gen) + 0.5
    Q = torch.randn(5, dim, generator=gen)
    exact_dot = (x.double() * y.double()).sum(dim=1)
    scale = x.double().norm(dim=1) * y.double().norm(dim=1)
    assert torch.all((dot64(x, y) - exact_dot).abs() <= 1e-7 * scale)
    assert dot64(x, y).dtype == torch.float64
    assert torch.allclose(norm64(y), y.double().norm(dim=1), rtol=1e-7, atol=0)
    exact_proj = Q.double() @ y[0].double()
    assert torch.all((project64(Q, y[0]) - exact_proj).abs() <= 1e-7 * Q.double().norm(dim=1) * y[0].double().norm())


def small_mlp(seed: int = 0, dtype=torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 4)).to(dtype)


def mlp_batches(seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 6, generator=gen), torch.randint(0, 4, (n,), generator=gen)) for n in (9, 7)]


def explicit_mlp_hessian(model: nn.Module, batches) -> torch.Tensor:
    """float64 Hessian of the size-weighted mean cross-entropy over all parameters of ``small_mlp``."""
    ref = small_mlp().double()
    ref.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    names = [n for n, _ in ref.named_parameters()]
    shapes = [p.shape for _, p in ref.named_parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for _, p in ref.named_parameters()])
    total = sum(len(y) for _, y in batches)

    def loss(flat):
        parts = dict(zip(names, (c.view(s) for c, s in zip(flat.split([s.numel() for s in shapes]), shapes))))
        out = 0
        for x, y in batches:
            logits = torch.func.functional_call(ref, parts, (x.double(),))
            out = out + nn.functional.cross_entropy(logits, y) * len(y)
        return out / total

    return torch.autograd.functional.hessian(loss, flat0)


@pytest.mark.parametrize("cache", [True, False])
def test_float32_ritz_values_match_a_float64_reference_on_the_explicit_hessian(cache):
    model, batches = small_mlp(), mlp_batches()
    H = explicit_mlp_hessian(model, batches)
    op = HessianOperator(model, nn.functional.cross_entropy, batches, cache_graph=cache)
    assert op.dtype == torch.float32 and op.dim == H.shape[0]
    steps = 30
    v0 = rademacher(1, op.dim, seed=3)[0]
    alpha, beta, info = lanczos_tridiagonal(op, steps, v0=v0)
    ours = tridiagonal_eigh(alpha, beta)[0]
    reference = reference_lanczos(H, v0, steps)
    norm = H.abs().max()
    # extreme Ritz values (converged) within 1e-5 of themselves; all of them within 1e-5 of ||H||
    for k in (-1, -2, 0):
        assert abs(ours[k] - reference[k]) <= 1e-5 * abs(reference[k]) + 1e-7 * norm
    assert torch.all((ours - reference).abs() <= 1e-5 * norm)
    basis = info.basis.double()
    assert torch.allclose(basis @ basis.T, torch.eye(steps, dtype=torch.float64), atol=1e-5)


def test_float32_lanczos_at_scale_matches_float64_lanczos_on_the_same_matrix():
    """A diagonal operator with 2 M entries and well-separated outliers whose directions start with a
    7e-4 component: the float32 run's top Ritz values equal those of the same run in float64 to 1e-6
    relative (the issue asks 1e-5). Measured: 2.6e-7 with the blocked float32 projections (16 384-entry
    blocks summed in float64), 1e-6 with 65 536-entry blocks, 1e-4 with one unblocked float32 GEMV."""
    dim, steps = 2_000_000, 20
    gen = torch.Generator().manual_seed(0)
    diagonal = torch.rand(dim, generator=gen, dtype=torch.float64) * 2 - 0.5
    diagonal[:3] = torch.tensor([9.0, 7.5, 7.4], dtype=torch.float64)

    class Diagonal:
        def __init__(self, d):
            self.d, self.dim, self.dtype, self.device = d, d.numel(), d.dtype, d.device

        def matmat(self, V, out=None):
            return torch.mul(V, self.d, out=out) if out is not None else V * self.d

    v0 = rademacher(1, dim, seed=5)
    runs = {}
    for dtype in (torch.float32, torch.float64):
        run = _LanczosRun(Diagonal(diagonal.to(dtype)), v0, steps)
        run.advance(steps)
        runs[dtype] = tridiagonal_eigh(*run.tridiagonal(0))[0]
    top32, top64 = runs[torch.float32][-3:], runs[torch.float64][-3:]
    assert torch.all((top32 - top64).abs() <= 1e-6 * top64.abs())


def test_hvp_into_a_caller_buffer_equals_the_plain_product():
    model, batches = small_mlp(), mlp_batches()
    for cache in (True, False):
        op = HessianOperator(model, nn.functional.cross_entropy, batches, cache_graph=cache)
        V = rademacher(2, op.dim, seed=1)
        buf = torch.full_like(V, float("nan"))                # stale contents must not leak in
        result = op.matmat(V, out=buf)
        assert result.data_ptr() == buf.data_ptr()
        assert torch.allclose(buf, op.matmat(V), atol=1e-6)
    M = MatrixOperator(torch.eye(3))
    out = torch.empty(1, 3)
    assert M.matmat(torch.ones(1, 3), out=out).data_ptr() == out.data_ptr()


def test_slq_probes_in_lock_step_equal_probes_run_alone():
    gen = torch.Generator().manual_seed(2)
    A = torch.randn(40, 40, generator=gen)
    op = MatrixOperator((A + A.T).float())
    together = slq_spectrum(op, 10, 3, seed=4)
    apart = slq_spectrum(op, 10, 3, seed=4, probe_batch=1)
    assert torch.allclose(together[0], apart[0], atol=1e-5) and torch.allclose(together[1], apart[1], atol=1e-6)


def test_slq_without_reorthogonalisation_keeps_the_quadrature_a_probability_measure():
    lam = torch.linspace(-1.0, 1.0, 200, dtype=torch.float64)
    lam[-1] = 5.0                                        # a converging outlier: ghosts appear without reorth
    gen = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(200, 200, generator=gen, dtype=torch.float64))
    op = MatrixOperator(((Q * lam) @ Q.T).float())
    full = slq_spectrum(op, 60, 2, seed=1)
    plain = slq_spectrum(op, 60, 2, seed=1, reorthogonalize=False)
    for nodes, weights in (full, plain):
        assert abs(float(weights.sum()) - 1.0) < 1e-9
        assert abs(float(nodes.max()) - 5.0) < 1e-5
    # the outlier's quadrature mass (the probes' squared components along its eigenvector) is the same
    # either way: ghost copies split it rather than add to it
    mass = [float(w[n > 4.9].sum()) for n, w in (full, plain)]
    assert mass[0] > 1e-4 and abs(mass[0] - mass[1]) < 1e-6 * max(1.0, mass[0]) + 1e-7
    assert int((full[0] > 4.99).sum()) == 2               # one Ritz value per probe with re-orthogonalisation


def test_rows_with_large_components_along_old_vectors_take_the_measured_second_pass():
    """The step normalises inside the Gram-Schmidt update only when ‖c‖² (after the three-term update)
    is under half of ‖w‖²; an operator that puts a large component along q_0 into every product (not
    symmetric, so Lanczos' three-term update cannot remove it) takes the measured path with the DGKS
    second pass instead. Either way the basis comes out orthonormal."""
    dim, steps = 5000, 12
    gen = torch.Generator().manual_seed(3)
    d = torch.rand(dim, generator=gen) + 1
    z = torch.randn(dim, generator=gen) * 20
    v0 = rademacher(1, dim, seed=2)
    q0 = v0[0] / v0[0].norm()

    class PullsTowardsStart:
        dim, dtype, device = 5000, torch.float32, torch.device("cpu")

        def matmat(self, V, out=None):
            W = V * d + (V @ z)[:, None] * q0
            return out.copy_(W) if out is not None else W

    run = _LanczosRun(PullsTowardsStart(), v0, steps)
    run.advance(steps)
    assert run.second_passes > 0
    B = run.basis[:steps, 0].double()
    assert torch.allclose(B @ B.T, torch.eye(steps, dtype=torch.float64), atol=1e-5)
