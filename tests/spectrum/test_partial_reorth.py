"""Partial re-orthogonalisation (Simon's omega estimates): the basis stays semi-orthogonal, fewer basis
vectors are read than with full re-orthogonalisation, and the Ritz values and the SLQ quadrature
agree with float64 Lanczos with full re-orthogonalisation."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from helpers_lanczos import diagonal_operator
from prunelimit.errors import PrunelimitError
from prunelimit.spectrum import HessianOperator, lanczos_tridiagonal, slq_spectrum
from prunelimit.spectrum.checkpoint import LanczosCheckpoint
from prunelimit.spectrum.lanczos import _LanczosRun, rademacher, tridiagonal_eigh

torch.set_num_threads(1)


def outlier_diagonal(dim: int, dtype) -> torch.Tensor:
    """A bulk in [-0.5, 1.5] and three separated outliers: Ritz values converge fast there, so without
    re-orthogonalisation ghost copies appear within a few dozen steps."""
    gen = torch.Generator().manual_seed(0)
    d = torch.rand(dim, generator=gen, dtype=torch.float64) * 2 - 0.5
    d[:3] = torch.tensor([9.0, 7.5, 7.4], dtype=torch.float64)
    return d.to(dtype)


def run(dtype, mode, dim=50_000, steps=80):
    r = _LanczosRun(diagonal_operator(outlier_diagonal(dim, dtype)), rademacher(1, dim, seed=5), steps,
                    reorthogonalize=mode)
    r.advance(steps)
    return r


def test_partial_keeps_semi_orthogonality_reads_less_and_matches_float64_full():
    steps = 80
    reference = tridiagonal_eigh(*run(torch.float64, True).tridiagonal(0))
    partial, full, plain = run(torch.float32, "partial"), run(torch.float32, True), run(torch.float32, False)
    basis = partial.probe_basis(0).double()
    loss = (basis @ basis.T - torch.eye(steps, dtype=torch.float64)).abs().max()
    assert loss <= math.sqrt(torch.finfo(torch.float32).eps)               # semi-orthogonal
    assert partial.omega[0].vectors_read < 0.6 * steps * (steps + 1) / 2    # full reads j+1 vectors per step
    assert partial.full_passes < steps and full.full_passes == steps
    for r in (partial, full):
        evals, evecs = tridiagonal_eigh(*r.tridiagonal(0))
        top = slice(-5, None)
        assert torch.all((evals[top] - reference[0][top]).abs() <= 1e-6 * reference[0][top].abs())
        # the quadrature: mean of the spectral measure (v^T H v) and its mass on the outliers
        assert abs(float((evals * evecs[0] ** 2).sum() - (reference[0] * reference[1][0] ** 2).sum())) < 1e-6
    # without any re-orthogonalisation the same run has ghosts: the check above can fail
    ghost = tridiagonal_eigh(*plain.tridiagonal(0))[0]
    assert (ghost > 8.9).sum() > 1


def test_partial_on_an_explicit_hessian_and_in_slq():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 4))
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(30, 6, generator=gen), torch.randint(0, 4, (30,), generator=gen)) for _ in range(2)]
    op = HessianOperator(net, nn.functional.cross_entropy, batches)
    H = torch.stack([op.matvec(e) for e in torch.eye(op.dim)]).double()
    H = (H + H.T) / 2
    exact = torch.linalg.eigvalsh(H)
    alpha, beta, info = lanczos_tridiagonal(op, op.dim // 2, seed=2, reorthogonalize="partial")
    ritz = tridiagonal_eigh(alpha, beta)[0]
    assert abs(float(ritz[-1] - exact[-1])) <= 1e-5 * float(exact.abs().max())
    assert abs(float(ritz[0] - exact[0])) <= 1e-5 * float(exact.abs().max())
    full = slq_spectrum(op, 40, 3, seed=4)
    partial = slq_spectrum(op, 40, 3, seed=4, reorthogonalize="partial")
    for f in (lambda x: x, lambda x: x ** 2):       # moments of the spectral measure
        assert float((partial[1] * f(partial[0])).sum()) == pytest.approx(float((full[1] * f(full[0])).sum()),
                                                                           rel=1e-5, abs=1e-7)


def test_partial_resumed_from_a_checkpoint_still_matches(tmp_path):
    d = outlier_diagonal(20_000, torch.float32)
    ref = slq_spectrum(diagonal_operator(d), 40, 1, seed=1, reorthogonalize="partial")[0]

    class Stop(Exception):
        pass

    class StopAfter:
        def __init__(self, limit):
            self.inner, self.count, self.limit = diagonal_operator(d), 0, limit
            self.dim, self.dtype, self.device = d.numel(), d.dtype, d.device

        def matmat(self, V, out=None):
            self.count += 1
            if self.count > self.limit:
                raise Stop
            return self.inner.matmat(V, out=out)

    with pytest.raises(Stop):
        slq_spectrum(StopAfter(25), 40, 1, seed=1, reorthogonalize="partial",
                     checkpoint=LanczosCheckpoint(tmp_path, every=4))
    resumed = slq_spectrum(StopAfter(10**9), 40, 1, seed=1, reorthogonalize="partial",
                           checkpoint=LanczosCheckpoint(tmp_path, every=4))[0]
    assert torch.allclose(resumed[-5:], ref[-5:], rtol=1e-6)
    with pytest.raises(PrunelimitError, match="different run"):     # full and partial states do not mix
        slq_spectrum(diagonal_operator(d), 40, 1, seed=1, reorthogonalize=True,
                     checkpoint=LanczosCheckpoint(tmp_path, every=4))


def test_an_unknown_mode_is_refused():
    with pytest.raises(PrunelimitError, match="reorthogonalize='sometimes' is invalid"):
        run(torch.float32, "sometimes", dim=100, steps=5)


class AsymmetricDiagonal(diagonal_operator):
    """diag(d) plus a non-symmetric error of 1e-5 of ||H|| coupling the outliers' coordinates, like a
    float32 HVP through a deep network (off by ~1e-6..1e-5 of ||H||, not exactly symmetric): far above
    the eps ||H|| of Simon's textbook rounding term."""

    def matmat(self, V, out=None):
        out = torch.mul(V, self.d, out=out)
        for a, b in ((0, 1), (1, 2), (2, 0)):
            out[:, a] += 1e-5 * float(self.d.abs().max()) * V[:, b]
        return out


@pytest.mark.parametrize("calibrated", [True, False])
def test_the_estimate_uses_the_measured_error_of_a_step(calibrated, monkeypatch):
    """With eps ||H|| as the rounding term the estimate misses this operator's loss of orthogonality
    (the basis ends far from orthogonal); with the error measured on the first steps it stays
    semi-orthogonal."""
    import prunelimit.spectrum.lanczos as lanczos

    if not calibrated:
        monkeypatch.setattr(lanczos, "CALIBRATION_STEPS", 0)
    dim, steps = 20_000, 80
    r = _LanczosRun(AsymmetricDiagonal(outlier_diagonal(dim, torch.float32)), rademacher(1, dim, seed=5), steps,
                    reorthogonalize="partial")
    r.advance(steps)
    basis = r.probe_basis(0).double()
    loss = float((basis @ basis.T - torch.eye(steps, dtype=torch.float64)).abs().max())
    semi = math.sqrt(torch.finfo(torch.float32).eps)
    if calibrated:
        assert loss <= semi and r.omega[0].noise > 10 * torch.finfo(torch.float32).eps
    else:
        assert loss > 0.1
