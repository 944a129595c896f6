"""The Lanczos basis in host memory: the device decision, and runs whose rows are streamed one at a time
giving the Ritz values of the in-memory run (on CPU the streaming path runs with CPU "device" rows)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from prunelimit.errors import PrunelimitError
from prunelimit.spectrum import HessianOperator, MatrixOperator, slq_spectrum, top_eigenvalues
from prunelimit.spectrum import eigen as eigen_module
from prunelimit.spectrum import lanczos as lanczos_module
from prunelimit.spectrum.checkpoint import LanczosCheckpoint
from prunelimit.spectrum.host_basis import DEVICE_SHARE, RowStreamer, resolve_basis_device
from prunelimit.spectrum.lanczos import _LanczosRun, rademacher, tridiagonal_eigh

torch.set_num_threads(1)
GiB = 1 << 30


def test_decision_from_free_and_needed_bytes():
    cuda = torch.device("cuda:0")
    fits = int(DEVICE_SHARE * 10 * GiB)
    assert resolve_basis_device("auto", cuda, fits, free_bytes=10 * GiB)[0] == cuda
    device, why = resolve_basis_device("auto", cuda, fits + 1, free_bytes=10 * GiB)
    assert device == torch.device("cpu") and "host memory" in why and "10.0 GiB free" in why
    assert resolve_basis_device("same", cuda, 100 * GiB, free_bytes=1)[0] == cuda     # forced: no check
    assert resolve_basis_device("cpu", cuda, 1, free_bytes=100 * GiB)[0] == torch.device("cpu")
    for setting in ("auto", "same", "cpu"):     # a CPU operator's basis is in host memory whatever the setting
        assert resolve_basis_device(setting, "cpu", 100 * GiB)[0] == torch.device("cpu")
    with pytest.raises(PrunelimitError, match="basis_device='gpu'"):
        resolve_basis_device("gpu", cuda, 1, free_bytes=1)


def test_streamed_projection_is_modified_gram_schmidt():
    gen = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(50, 6, generator=gen, dtype=torch.float64))
    rows = Q.T.contiguous()                                    # (6, 50) orthonormal rows
    w = torch.randn(50, generator=gen, dtype=torch.float64)
    expected = w - rows.T @ (rows @ w)
    coef = RowStreamer(50, torch.float64, "cpu").project_out(rows, w)
    torch.testing.assert_close(w, expected, rtol=0, atol=1e-13)
    assert coef.shape == (6,) and (rows @ w).abs().max() < 1e-13


def spiked(dim: int = 60, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
    lam = torch.cat([torch.tensor([40.0, 25.0, -12.0]), torch.randn(dim - 3, generator=gen, dtype=torch.float64)])
    return (Q * lam) @ Q.T


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_host_basis_run_gives_the_in_memory_ritz_values(dtype):
    op = MatrixOperator(spiked().to(dtype))
    start = rademacher(2, op.dim, 3, dtype)
    runs = {}
    for host in (False, True):
        run = _LanczosRun(op, start, 30, host_basis=host)
        run.advance(30)
        runs[host] = run
    assert runs[True].host_basis and runs[True].basis.device.type == "cpu"
    for p in range(2):
        (ritz, vecs), (ref, ref_vecs) = (tridiagonal_eigh(*runs[h].tridiagonal(p)) for h in (True, False))
        if dtype == torch.float64:   # the same numbers up to the order of the round-off
            torch.testing.assert_close(ritz, ref, rtol=1e-10, atol=1e-10)
            continue
        # float32: unconverged interior Ritz values move by 1e-3 with ANY change of rounding (the in-memory
        # run is that far from float64 Lanczos too); the converged outliers and the quadrature agree
        torch.testing.assert_close(ritz[[0, -2, -1]], ref[[0, -2, -1]], rtol=2e-6, atol=0)
        for k in (1, 2):
            assert float((vecs[0] ** 2 * ritz ** k).sum()) == pytest.approx(float((ref_vecs[0] ** 2 * ref ** k).sum()),
                                                                            rel=1e-5)
    if dtype == torch.float64:
        torch.testing.assert_close(runs[True].basis, runs[False].basis, rtol=0, atol=1e-10)


def test_host_basis_through_a_breakdown_and_a_checkpoint_resume(tmp_path):
    """Three distinct eigenvalues: the Krylov space closes after 3 steps and Lanczos restarts; all Ritz values
    are then exact eigenvalues. A run killed after 5 steps resumes into the same numbers."""
    gen = torch.Generator().manual_seed(1)
    Q, _ = torch.linalg.qr(torch.randn(9, 9, generator=gen, dtype=torch.float64))
    lam = torch.tensor([3.0, 3.0, 3.0, 1.0, 1.0, 1.0, -2.0, -2.0, -2.0], dtype=torch.float64)
    op = MatrixOperator((Q * lam) @ Q.T)
    start = rademacher(1, 9, 0, torch.float64)
    plain = _LanczosRun(op, start, 9, host_basis=True)
    plain.advance(9)
    assert plain.restarts[0]
    torch.testing.assert_close(tridiagonal_eigh(*plain.tridiagonal(0))[0], lam.sort().values, rtol=0, atol=1e-10)
    killed = _LanczosRun(op, start, 9, host_basis=True, checkpoint=LanczosCheckpoint(tmp_path, every=2))
    killed.advance(5)
    resumed = _LanczosRun(op, start, 9, host_basis=True, checkpoint=LanczosCheckpoint(tmp_path, every=2))
    assert resumed.j == 4                       # the last save
    resumed.advance_to(9)
    assert torch.equal(resumed.alpha, plain.alpha) and torch.equal(resumed.beta, plain.beta)


def test_public_functions_with_the_streamed_basis(monkeypatch):
    """slq_spectrum and top_eigenvalues on a Hessian with the host-memory path forced (a CPU operator would
    otherwise keep its basis where it is): the same nodes, weights and eigenpairs as in memory."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    gen = torch.Generator().manual_seed(2)
    op = HessianOperator(model, nn.functional.cross_entropy,
                         [(torch.randn(20, 5, generator=gen), torch.randint(0, 3, (20,), generator=gen))])
    same = slq_spectrum(op, 24, 2, seed=1), top_eigenvalues(op, 3, seed=1)
    monkeypatch.setattr(lanczos_module, "wants_host_basis", lambda *a: True)
    monkeypatch.setattr(eigen_module, "wants_host_basis", lambda *a: True)
    streamed = slq_spectrum(op, 24, 2, seed=1, basis_device="cpu"), top_eigenvalues(op, 3, seed=1, basis_device="cpu")
    for a, b in zip(same[0], streamed[0]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(same[1][0], streamed[1][0], rtol=1e-6, atol=0)
    assert (same[1][1] * streamed[1][1]).sum(dim=1).abs().min() > 1 - 1e-5      # the same eigenvectors


@pytest.mark.gpu
def test_cuda_operator_with_a_pinned_host_basis():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 10)).cuda()
    x, y = torch.randn(256, 16, device="cuda"), torch.randint(0, 10, (256,), device="cuda")
    op = HessianOperator(model, nn.functional.cross_entropy, [(x[:128], y[:128]), (x[128:], y[128:])])
    start = rademacher(2, op.dim, 0, op.dtype, "cuda")
    runs = {}
    for host in (False, True):
        runs[host] = _LanczosRun(op, start, 40, host_basis=host)
        runs[host].advance(40)
    assert runs[True].basis.is_pinned() and runs[True].basis.device.type == "cpu"
    assert runs[False].basis.device.type == "cuda"
    for p in range(2):
        torch.testing.assert_close(tridiagonal_eigh(*runs[True].tridiagonal(p))[0],
                                   tridiagonal_eigh(*runs[False].tridiagonal(p))[0], rtol=1e-5, atol=1e-6)
    host_nodes = slq_spectrum(op, 40, 2, seed=3, basis_device="cpu")[0]
    same_nodes = slq_spectrum(op, 40, 2, seed=3, basis_device="same")[0]
    torch.testing.assert_close(host_nodes, same_nodes, rtol=1e-5, atol=1e-6)
    device, why = resolve_basis_device("auto", op.device, 1 << 50)   # a petabyte never fits: host memory
    assert device.type == "cpu" and "free on cuda" in why


def test_host_basis_with_partial_reorthogonalisation():
    """reorthogonalize='partial' orthogonalises against the streamed basis when its estimate says so."""
    op = MatrixOperator(spiked())
    start = rademacher(2, op.dim, 3, torch.float64)
    ritz = {}
    for host in (False, True):
        run = _LanczosRun(op, start, 30, host_basis=host, reorthogonalize="partial")
        run.advance(30)
        ritz[host] = [tridiagonal_eigh(*run.tridiagonal(p))[0] for p in range(2)]
    for p in range(2):
        torch.testing.assert_close(ritz[True][p], ritz[False][p], rtol=1e-10, atol=1e-10)
