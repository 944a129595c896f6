"""Lanczos tridiagonalisation and stochastic Lanczos quadrature (SLQ) of a Hessian operator.

An operator is anything with ``dim``, ``matvec`` (and optionally ``matmat``, ``dtype``, ``device``):
``HessianOperator``, ``MatrixOperator`` or your own. Several starting vectors ("probes") run in
lock-step so each step is one batched HVP. The Lanczos basis lives in ONE preallocated buffer of
shape (probes, steps, dim) in the operator's dtype; the tridiagonal entries are float64.

Breakdown: when the new residual is (numerically) zero the Krylov space of the start vector is an
invariant subspace. As the original does, we restart with a fresh random vector orthogonalised against
the basis and record beta = 0 there, so the tridiagonal splits into blocks; every block's Ritz values
are eigenvalues of H, and the restarted blocks get zero quadrature weight (the start vector has no
component in them). ``steps <= dim`` always, so a fresh direction exists until the space is full.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from prunelimit import dist
from prunelimit.spectrum.operator import apply_operator
from prunelimit.errors import PrunelimitError

log = logging.getLogger(__name__)


def _op_dtype(op) -> torch.dtype:
    return getattr(op, "dtype", torch.float32)


def _op_device(op) -> torch.device:
    return torch.device(getattr(op, "device", "cpu"))


def rademacher(num: int, dim: int, seed: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """(num, dim) random ±1 entries from a CPU generator (the same numbers on every device/rank)."""
    gen = torch.Generator().manual_seed(int(seed))
    z = torch.randint(0, 2, (num, dim), generator=gen, dtype=torch.int8)
    return (z.to(dtype) * 2 - 1).to(device)


def memory_estimate(dim: int, steps: int, dtype=torch.float32, probes: int = 1) -> int:
    """Bytes of the Lanczos basis buffer (probes × steps × dim) plus a few working vectors."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return int(itemsize * dim * probes * (steps + 4))


def format_bytes(num: int) -> str:
    """1536 -> '1.5 KiB'."""
    value = float(num)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    raise AssertionError("unreachable")


def memory_message(dim: int, steps: int, dtype=torch.float32, probes: int = 1) -> str:
    """The line the CLI prints before Lanczos starts."""
    return (f"Lanczos basis: {probes} probe(s) x {steps} steps x {dim:,} parameters "
            f"({str(dtype).replace('torch.', '')}) = {format_bytes(memory_estimate(dim, steps, dtype, probes))}")


def _check_steps(steps: int, dim: int) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise PrunelimitError(f"lanczos_iter={steps!r} must be a positive integer")
    if steps > dim:
        raise PrunelimitError(f"lanczos_iter={steps} exceeds the Hessian dimension dim={dim}; "
                         f"use lanczos_iter <= {dim}")


@dataclass
class LanczosInfo:
    basis: torch.Tensor          # (steps_done, dim) orthonormal Lanczos vectors (a view of the buffer)
    steps: int                   # steps completed (< requested only when the space was exhausted)
    restarts: list[int] = field(default_factory=list)  # steps at which a breakdown forced a restart
    residual: float = 0.0        # norm of the last residual (before any restart): convergence measure


class _LanczosRun:
    """Lock-step Lanczos over P start vectors; ``advance`` extends all of them (up to ``capacity``)."""

    def __init__(self, op, start: torch.Tensor, capacity: int, *, reorthogonalize: bool = True,
                 seed: int = 0, show_progress: bool = False, desc: str = "Lanczos"):
        self.op, self.reorth, self.show_progress, self.desc = op, reorthogonalize, show_progress, desc
        dtype, device = _op_dtype(op), _op_device(op)
        P, dim = start.shape
        self.P, self.dim, self.capacity = P, dim, capacity
        self.basis = torch.empty(P, capacity, dim, dtype=dtype, device=device)  # the one flat buffer
        self.alpha = torch.zeros(P, capacity, dtype=torch.float64)
        self.beta = torch.zeros(P, max(capacity - 1, 0), dtype=torch.float64)
        self.residual = torch.zeros(P, dtype=torch.float64)  # raw ||w|| after the last step
        self.lengths = [0] * P                                 # steps done per probe
        self.active = [True] * P
        self.restarts: list[list[int]] = [[] for _ in range(P)]
        self.scale = torch.zeros(P, dtype=torch.float64)      # running max of |alpha|, beta ≈ ||H||
        self.gen = torch.Generator().manual_seed(int(seed) + 7919)  # restart vectors
        q = start.to(device=device, dtype=dtype)
        norms = q.double().norm(dim=1)
        if not torch.all(norms > 0):
            raise PrunelimitError("a Lanczos start vector is zero; pass a non-zero v0")
        self.q = q / norms.to(dtype)[:, None]
        self.q_prev = torch.zeros_like(self.q)
        self.beta_prev = torch.zeros(P, dtype=dtype, device=device)
        self.j = 0

    def _orthogonalize(self, w: torch.Tensor, upto: int) -> torch.Tensor:
        """Remove the components of each row of w (P, dim) along its probe's first ``upto`` vectors.

        Classical Gram-Schmidt as two batched matmuls (memory-bound: each pass reads the basis twice),
        repeated only when the pass removed a large part of w (the DGKS "twice is enough" test,
        ‖w'‖ < ‖w‖/√2). After the three-term recurrence the remaining components are at round-off
        level, so one pass is almost always enough."""
        Q = self.basis[:, :upto]                              # (P, upto, dim)
        before = w.double().norm(dim=1)
        for _ in range(2):
            coeff = torch.bmm(Q, w.unsqueeze(2))              # (P, upto, 1)
            w = w - torch.bmm(coeff.transpose(1, 2), Q).squeeze(1)
            after = w.double().norm(dim=1)
            if bool(torch.all(after >= before / math.sqrt(2))):
                break
            before = after
        return w

    def _restart_vector(self, p: int, upto: int) -> torch.Tensor | None:
        r = torch.randn(self.dim, generator=self.gen, dtype=torch.float64).to(self.basis)
        Q = self.basis[p, :upto]
        for _ in range(2):
            r = r - Q.T @ (Q @ r)
        norm = r.double().norm().item()
        if norm <= 1e-3:  # nothing left outside the basis (only possible when upto == dim)
            return None
        return r / norm

    def advance(self, steps: int) -> None:
        end = min(self.j + steps, self.capacity)
        eps = torch.finfo(self.basis.dtype).eps
        bar = tqdm(range(self.j, end), desc=self.desc, leave=False,
                   disable=not (self.show_progress and dist.is_main()))
        for j in bar:
            if not any(self.active):
                break
            self.basis[:, j] = self.q
            w = apply_operator(self.op, self.q)
            if not torch.isfinite(w).all():
                raise PrunelimitError(f"Hessian-vector product is not finite at step {j}; the model/loss has "
                                 "inf/nan at these weights (check the checkpoint, the data and the loss)")
            a = (self.q.double() * w.double()).sum(dim=1)                     # (P,) on the device
            w = w - a.to(w.dtype)[:, None] * self.q - self.beta_prev[:, None] * self.q_prev
            if self.reorth:
                w = self._orthogonalize(w, j + 1)
            b_dev = w.double().norm(dim=1)
            a, b = a.cpu(), b_dev.cpu()                                       # bookkeeping on CPU
            self.alpha[:, j] = a
            self.residual = b.clone()
            self.scale = torch.maximum(self.scale, torch.maximum(a.abs(), b))
            for p in range(self.P):
                if self.active[p]:
                    self.lengths[p] = j + 1
            self.j = j + 1
            if j + 1 == self.capacity:
                break
            q_next = w / b_dev.to(w.dtype).clamp_min(torch.finfo(w.dtype).tiny)[:, None]  # broken rows replaced below
            broke = b <= 100 * eps * self.scale
            for p in torch.nonzero(broke).flatten().tolist():
                if not self.active[p]:
                    q_next[p] = 0
                    continue
                r = self._restart_vector(p, j + 1)
                if r is None:
                    self.active[p] = False
                    q_next[p] = 0
                else:
                    q_next[p] = r
                    b[p] = 0.0
                    self.restarts[p].append(j + 1)
            self.beta[:, j] = b
            self.q_prev, self.q = self.q, q_next
            self.beta_prev = b.to(w.dtype).to(w.device)

    def tridiagonal(self, p: int, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.lengths[p] if length is None else length
        return self.alpha[p, :n].clone(), self.beta[p, :max(n - 1, 0)].clone()


def tridiagonal_eigh(alpha: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (ascending) and eigenvectors (columns) of the symmetric tridiagonal, in float64."""
    T = torch.diag(alpha.double())
    if beta.numel():
        T = T + torch.diag(beta.double(), 1) + torch.diag(beta.double(), -1)
    return torch.linalg.eigh(T)


def lanczos_tridiagonal(op, steps: int, *, v0: torch.Tensor | None = None, seed: int = 0,
                        reorthogonalize: bool = True, show_progress: bool = False
                        ) -> tuple[torch.Tensor, torch.Tensor, LanczosInfo]:
    """``steps`` Lanczos steps from ``v0`` (default: a Rademacher vector drawn with ``seed``).

    Returns (alpha (n,), beta (n-1,), info), float64 on CPU, with n = steps unless the Krylov space
    was exhausted. T = tridiag(beta, alpha, beta) has the Ritz values as eigenvalues."""
    _check_steps(steps, op.dim)
    if v0 is None:
        v0 = rademacher(1, op.dim, seed)[0]
    if v0.ndim != 1 or v0.numel() != op.dim:
        raise PrunelimitError(f"v0 must be a 1-D vector of length dim={op.dim}; got shape {tuple(v0.shape)}")
    run = _LanczosRun(op, v0.unsqueeze(0), steps, reorthogonalize=reorthogonalize, seed=seed,
                      show_progress=show_progress)
    run.advance(steps)
    alpha, beta = run.tridiagonal(0)
    info = LanczosInfo(basis=run.basis[0, :run.lengths[0]], steps=run.lengths[0],
                       restarts=run.restarts[0], residual=float(run.residual[0]))
    return alpha, beta, info


def slq_spectrum(op, steps: int, probes: int, *, seed: int = 0, show_progress: bool = False,
                 start: torch.Tensor | None = None, probe_batch: int | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Stochastic Lanczos quadrature: the spectral measure of H as nodes and weights.

    For each probe (a normalised Rademacher vector, or the rows of ``start`` (probes, dim)): run
    ``steps`` Lanczos steps, diagonalise T with ``torch.linalg.eigh``; nodes = Ritz values, weights =
    squared first components of T's eigenvectors (Gauss quadrature for v^T f(H) v). Returns
    (nodes (probes·steps,), weights (probes·steps,)) float64 on CPU with weights.sum() == 1, so
    Σ weights·f(nodes) ≈ tr f(H) / dim. ``probe_batch`` probes run together (default: all)."""
    _check_steps(steps, op.dim)
    if not isinstance(probes, int) or probes < 1:
        raise PrunelimitError(f"lanczos_num={probes!r} (number of SLQ probes) must be a positive integer")
    if start is None:
        start = rademacher(probes, op.dim, seed)
    elif start.shape != (probes, op.dim):
        raise PrunelimitError(f"start must have shape (probes, dim) = ({probes}, {op.dim}); got {tuple(start.shape)}")
    chunk = probes if probe_batch is None else max(1, int(probe_batch))
    log.info(memory_message(op.dim, steps, _op_dtype(op), chunk))
    nodes, weights = [], []
    for first in range(0, probes, chunk):
        block = start[first:first + chunk]
        run = _LanczosRun(op, block, steps, seed=seed + first, show_progress=show_progress,
                          desc=f"SLQ probes {first + 1}-{first + block.shape[0]}/{probes}")
        run.advance(steps)
        for p in range(block.shape[0]):
            evals, evecs = tridiagonal_eigh(*run.tridiagonal(p))
            nodes.append(evals)
            weights.append(evecs[0] ** 2)
        del run
    return torch.cat(nodes), torch.cat(weights) / probes
