"""Top eigenvalues (Lanczos) and the trace (Hutchinson) of a Hessian operator."""
from __future__ import annotations

import math
import os
import warnings

import torch

from prunelimit.spectrum.checkpoint import LanczosCheckpoint
from prunelimit.spectrum.host_basis import wants_host_basis
from prunelimit.spectrum.lanczos import (_LanczosRun, _op_device, _op_dtype, memory_estimate, rademacher,
                                         tridiagonal_eigh)
from prunelimit.spectrum.operator import apply_operator
from prunelimit.errors import PrunelimitError


def top_eigenvalues(op, k: int, *, max_iter: int = 100, tol: float = 1e-4, seed: int = 0,
                    checkpoint: LanczosCheckpoint | str | os.PathLike | None = None, basis_device: str = "same"
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest ALGEBRAIC eigenvalues of H (descending) and their eigenvectors.

    Method: Lanczos with full re-orthogonalisation from a Rademacher start, grown one step at a
    time (at most ``max_iter`` steps = HVPs, capped at dim) until the top-k Ritz pairs have residual
    ‖H y − θ y‖ = |beta_m · s_mi| ≤ tol · max|θ|. Unlike power iteration (PyHessian), which converges
    to the largest-MAGNITUDE eigenvalues and so returns a negative one when the Hessian is indefinite,
    the top end of the Lanczos spectrum converges to the largest algebraic eigenvalues. A repeated
    eigenvalue is found once per Krylov block (more copies only after a breakdown restart).
    Returns (eigenvalues (k,) float64 CPU, eigenvectors (k, dim) unit rows in the operator's dtype);
    warns when ``max_iter`` steps did not reach ``tol``. ``checkpoint``: a resumable
    run, as in ``slq_spectrum``; ``basis_device`` as there (with a host-memory basis the Ritz vectors
    are formed in host memory and returned on the operator's device).
    """
    dim = op.dim
    if not isinstance(k, int) or not 1 <= k <= dim:
        raise PrunelimitError(f"top_k={k!r} must be an integer between 1 and the Hessian dimension {dim}")
    if not isinstance(max_iter, int) or max_iter < k:
        raise PrunelimitError(f"max_iter={max_iter!r} must be an integer >= top_k={k}")
    if not tol > 0:
        raise PrunelimitError(f"tol={tol!r} must be positive")
    capacity = min(max_iter, dim)
    start = rademacher(1, dim, seed, _op_dtype(op), _op_device(op))
    host = wants_host_basis(basis_device, _op_device(op), memory_estimate(dim, capacity, _op_dtype(op)))
    run = _LanczosRun(op, start, capacity, seed=seed, checkpoint=LanczosCheckpoint.of(checkpoint), host_basis=host)
    run.advance_to(min(capacity, max(k + 1, 2 * k)))   # a resumed run may be past this already
    while True:
        m = run.lengths[0]
        evals, evecs = tridiagonal_eigh(*run.tridiagonal(0))
        top = torch.arange(m - 1, m - 1 - min(k, m), -1)                  # indices of the largest Ritz values
        resid = run.residual[0] * evecs[m - 1, top].abs()                  # (k,) residual norms
        scale = evals.abs().max().clamp_min(1e-30)
        converged = m >= k and (bool(torch.all(resid <= tol * scale)) or m >= dim)
        if converged or m >= capacity or not run.active[0]:
            break
        run.advance(1)
    if m < k:
        raise PrunelimitError(f"the Krylov space closed after {m} steps, fewer than top_k={k}; the Hessian has "
                         f"fewer than {k} distinct directions reachable — lower top_k")
    if not converged:
        warnings.warn(f"top_eigenvalues: {m} Lanczos steps (max_iter={max_iter}) left relative residuals "
                      f"{(resid / scale).max().item():.2e} > tol={tol:g}; raise max_iter for more accuracy",
                      RuntimeWarning, stacklevel=2)
    basis = run.probe_basis(0)                                           # (m, dim)
    vectors = evecs[:, top].T.to(basis) @ basis                           # (k, dim) Ritz vectors
    vectors = vectors / vectors.double().norm(dim=1, keepdim=True).to(vectors)
    return evals[top].clone(), vectors.to(_op_device(op))


def hessian_trace(op, samples: int, *, seed: int = 0, batch: int = 8) -> tuple[float, float]:
    """Hutchinson's estimator tr(H) ≈ mean_i z_iᵀ H z_i over ``samples`` Rademacher vectors z_i.

    Returns (mean, standard error = sample std / sqrt(samples)); the error is nan for one sample.
    Exact (zero variance) when H is diagonal, because z_i² = 1. ``batch`` vectors share one HVP."""
    if not isinstance(samples, int) or samples < 1:
        raise PrunelimitError(f"trace_samples={samples!r} must be a positive integer")
    Z = rademacher(samples, op.dim, seed, _op_dtype(op), _op_device(op))
    values = []
    for first in range(0, samples, max(1, int(batch))):
        block = Z[first:first + batch]
        HZ = apply_operator(op, block)
        if not torch.isfinite(HZ).all():
            raise PrunelimitError(f"Hessian-vector product is not finite at trace sample {first}; the model/loss "
                             "has inf/nan at these weights")
        values.append((block.double() * HZ.double()).sum(dim=1).cpu())
    v = torch.cat(values)
    mean = v.mean().item()
    stderr = v.std(unbiased=True).item() / math.sqrt(samples) if samples > 1 else float("nan")
    return mean, stderr
