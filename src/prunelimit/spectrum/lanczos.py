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
import os
import time
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from prunelimit import dist
from prunelimit.errors import PrunelimitError
from prunelimit.spectrum.checkpoint import LanczosCheckpoint
from prunelimit.spectrum.host_basis import RowStreamer, allocate_host, orthogonalize_streamed, wants_host_basis
from prunelimit.spectrum.memory import format_bytes
from prunelimit.spectrum.operator import apply_operator
from prunelimit.spectrum.partial_reorth import CALIBRATION_STEPS, OrthogonalityEstimate
from prunelimit.spectrum.reductions import dot64, norm64, project64

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
    """Lock-step Lanczos over P start vectors; ``advance`` extends all of them (up to ``capacity``).

    The step is memory-bound at scale, so it touches each full-length vector as few times as possible:
    the current vector q_j IS row j of the basis buffer (no separate copies), the three-term update and
    the re-orthogonalisation are in place on the HVP's output w, the normalised residual is written
    straight into row j+1, and nothing full-length is allocated per step. Dot products and norms are
    float32 BLAS calls over chunks summed in float64 (reductions.py): float64-accurate without float64
    copies. Per step (P = 1, m = j+1 basis vectors): one dot (q, w), one fused update
    w -= alpha q + beta q_prev, one GEMV + one rank-m update against the basis (re-orthogonalisation;
    both read the m basis vectors, the only part that grows with j), one norm taken before that update
    (Pythagoras gives beta_j), and the update also divides by beta_j: no separate normalising pass.
    """

    def __init__(self, op, start: torch.Tensor, capacity: int, *, reorthogonalize: bool | str = True,
                 seed: int = 0, show_progress: bool = False, desc: str = "Lanczos",
                 checkpoint: LanczosCheckpoint | None = None, host_basis: bool = False):
        """``host_basis``: the basis in host memory, three working rows on the operator's device
        (host_basis.py); False: the basis on the operator's device."""
        self.op, self.show_progress, self.desc = op, show_progress, desc
        self.reorth = _reorth_mode(reorthogonalize)
        self.seed, self.checkpoint = int(seed), checkpoint
        dtype, device = _op_dtype(op), _op_device(op)
        P, dim = start.shape
        self.P, self.dim, self.capacity = P, dim, capacity
        # the one flat buffer, step-major: row j holds all probes' j-th vectors contiguously, so a
        # step writes (and a checkpoint appends) one contiguous block
        self.host_basis = host_basis
        if host_basis:   # rows j-1, j and w on the device; the basis in (pinned, for CUDA) host memory
            self.basis = allocate_host((capacity, P, dim), dtype, pin=device.type == "cuda")
            self._window = torch.empty(3, P, dim, dtype=dtype, device=device)
            self._streamer = RowStreamer(dim, dtype, device)
        else:
            self.basis = torch.empty(capacity, P, dim, dtype=dtype, device=device)
        self.alpha = torch.zeros(P, capacity, dtype=torch.float64)
        self.beta = torch.zeros(P, max(capacity - 1, 0), dtype=torch.float64)
        self.residual = torch.zeros(P, dtype=torch.float64)  # raw ||w|| after the last step
        self.lengths = [0] * P                                 # steps done per probe
        self.active = [True] * P
        self.restarts: list[list[int]] = [[] for _ in range(P)]
        self.scale = torch.zeros(P, dtype=torch.float64)      # running max of |alpha|, beta ≈ ||H||
        self.gen = torch.Generator().manual_seed(int(seed) + 7919)  # restart vectors
        self._scratch: torch.Tensor | None = None             # HVP output of the last step (no next row)
        self.hvp_seconds = self.bookkeeping_seconds = 0.0     # see _account
        self.second_passes = 0                                 # DGKS repeats of the re-orthogonalisation
        # reorthogonalize="partial": Simon's estimates of the loss of orthogonality, one per probe
        self.omega = ([OrthogonalityEstimate(capacity, torch.finfo(dtype).eps) for _ in range(P)]
                      if self.reorth == "partial" else None)
        self.full_passes = 0                                   # steps orthogonalised against the basis
        self.j = 0
        q = self._row(0)
        q.copy_(start)
        norms = norm64(q)
        if not torch.all(norms > 0):
            raise PrunelimitError("a Lanczos start vector is zero; pass a non-zero v0")
        for p in range(P):
            q[p].mul_(1.0 / float(norms[p]))
        if host_basis:
            self.basis[0].copy_(q)
        if checkpoint is not None and checkpoint.restore(self):
            log.info(f"{desc}: resumed at step {self.j} of {capacity} from {checkpoint.dir}")
            for estimate in self.omega or ():   # not saved: orthogonalise the next two steps instead
                estimate.resumed()
            if host_basis:   # the device rows of the restored step
                self._window[1].copy_(self.basis[self.j if self.j < capacity else capacity - 1])
                if 0 < self.j < capacity:
                    self._window[0].copy_(self.basis[self.j - 1])

    # Rows the step works on (P, dim), on the operator's device: row j of the basis itself, or with
    # the basis in host memory the device window [q_{j-1}, q_j, w], shifted by _commit after each step.
    def _row(self, j: int) -> torch.Tensor:
        return self._window[1 + j - self.j] if self.host_basis else self.basis[j]

    def _pair(self, j: int, p: int) -> torch.Tensor:
        """(2, dim): q_{j-1}, q_j of probe p."""
        return self._window[0:2, p] if self.host_basis else self.basis[j - 1:j + 1, p]

    def _commit(self, j: int) -> None:
        """Host basis: store the new row j+1 and shift the device window by one step."""
        if self.host_basis:
            self.basis[j + 1].copy_(self._window[2])
            self._window[0].copy_(self._window[1])
            self._window[1].copy_(self._window[2])

    def _orthogonalize(self, w: torch.Tensor, upto: int, only=None,
                       alpha: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, list[bool]]:
        """Remove in place the components of each row of w (P, dim) along its probe's first ``upto``
        basis vectors. Returns float64 (P,) tensors: the squared norms of the rows afterwards, and the
        total coefficient removed along the last basis vector (q_j) per row; and per row whether it was
        also normalised (only with ``alpha``, below).

        Classical Gram-Schmidt: coefficients c = Q w (chunked, float64 sums), then w -= Q^T c
        (one GEMV-transpose, in place). A second pass runs only when the first removed a large part
        of w (the DGKS "twice is enough" test ‖w'‖ < ‖w‖/√2), with ‖w‖² = ‖w'‖² + ‖c‖² for an
        orthonormal Q, so the test needs no extra norm. After the three-term recurrence the remaining
        components are at round-off level and one pass is almost always enough.

        ``alpha`` (P,) float64: the step's alpha_j estimates. Then the norm is taken BEFORE the update
        and ‖w'‖² = ‖w‖² - ‖c‖² (c is at round-off level here, so nothing cancels), and where the DGKS
        test passes and the step does not break down (the test ``advance`` applies) the update also
        divides by beta_j = ‖w'‖: the separate normalising pass (a read and a write of w) is saved.
        ``only``: the probes to orthogonalise (default all); the others' entries are left 0."""
        norms2 = torch.zeros(self.P, dtype=torch.float64)
        last = torch.zeros(self.P, dtype=torch.float64)
        normalised = [False] * self.P
        eps = torch.finfo(self.basis.dtype).eps
        for p in range(self.P) if only is None else only:
            self.full_passes += 1
            Q = self.basis[:upto, p]                                       # (upto, dim)
            if self.host_basis:                                            # streamed from host memory
                norms2[p], last[p], extra = orthogonalize_streamed(self._streamer, Q, w[p])
                self.second_passes += extra
                continue
            c = project64(Q, w[p])                                         # (upto,) float64
            if alpha is not None:
                before = float(dot64(w[p:p + 1], w[p:p + 1])[0])
                after = before - float(c.square().sum())
                beta = after ** 0.5 if after > 0 else 0.0
                a = float(alpha[p]) + float(c[-1])
                if after >= 0.5 * before and beta > 100 * eps * max(float(self.scale[p]), abs(a)):
                    w[p].addmv_(Q.T, (c * (-1.0 / beta)).to(w.dtype), beta=1.0 / beta)
                    norms2[p], last[p], normalised[p] = after, float(c[-1]), True
                    continue
            for attempt in range(2):
                if attempt:
                    c = project64(Q, w[p])
                w[p].addmv_(Q.T, c.to(w.dtype), alpha=-1)
                last[p] += float(c[-1])
                norms2[p] = float(dot64(w[p:p + 1], w[p:p + 1])[0])
                if attempt or norms2[p] >= 0.5 * (norms2[p] + float(c.square().sum())):
                    break
                self.second_passes += 1
        return norms2, last, normalised

    def _partial(self, w: torch.Tensor, j: int, a_dev: torch.Tensor) -> torch.Tensor:
        """Partial re-orthogonalisation (partial_reorth.py): the norms (P,) float64 of the rows of w after
        orthogonalising, against the whole basis, only those whose estimated loss of orthogonality
        passed sqrt(eps) (and the step after them). alpha_j stays the float64-accurate q_j.w."""
        norms2 = dot64(w, w)
        alpha = self.alpha.clone()
        alpha[:, j] = a_dev.cpu()
        for p in range(self.P):
            beta_j = float(norms2[p].clamp_min(0).sqrt())
            norm_h = max(float(self.scale[p]), abs(float(alpha[p, j])), beta_j)
            chosen = self.omega[p].due(j, alpha[p], self.beta[p], beta_j, norm_h) if self.active[p] else None
            if self.active[p] and j < CALIBRATION_STEPS and not self.host_basis:   # measure the step's error
                self.omega[p].calibrate(project64(self.basis[:j + 1, p], w[p]), norm_h)
                chosen = torch.arange(j + 1)
            if chosen is None:
                continue
            if self.host_basis:   # streamed from host memory: against the whole basis
                again, _, _ = self._orthogonalize(w, j + 1, only=[p])
                norms2[p] = again[p]
                continue
            self.full_passes += 1
            for first, last in _runs(chosen.tolist()):   # contiguous runs of rows: views, no copies
                Q = self.basis[first:last + 1, p]
                w[p].addmv_(Q.T, project64(Q, w[p]).to(w.dtype), alpha=-1)
            norms2[p] = dot64(w[p:p + 1], w[p:p + 1])[0]
        return norms2.clamp_min(0).sqrt()

    def _restart_vector(self, p: int, upto: int) -> torch.Tensor | None:
        r = torch.randn(self.dim, generator=self.gen, dtype=torch.float64).to(self.basis)
        Q = self.basis[:upto, p]
        for _ in range(2):
            r.addmv_(Q.T, project64(Q, r).to(r.dtype), alpha=-1)
        norm = float(norm64(r[None])[0])
        if norm <= 1e-3:  # nothing left outside the basis (only possible when upto == dim)
            return None
        return r.mul_(1.0 / norm)

    def advance(self, steps: int) -> None:
        end = min(self.j + steps, self.capacity)
        eps = torch.finfo(self.basis.dtype).eps
        bar = tqdm(range(self.j, end), desc=self.desc, leave=False,
                   disable=not (self.show_progress and dist.is_main()))
        for j in bar:
            if not any(self.active):
                break
            q = self._row(j)                                                   # (P, dim)
            # w = H q is written straight into the next basis row, updated there in place and
            # normalised there: the step allocates no full-length vector
            last = j + 1 == self.capacity
            if last and self._scratch is None:
                self._scratch = self._window[2] if self.host_basis else torch.empty_like(q)
            started = time.perf_counter()
            w = apply_operator(self.op, q, out=self._scratch if last else self._row(j + 1))
            hvp_done = time.perf_counter()
            # alpha_j = q_j·w. With re-orthogonalisation a float32 estimate suffices here: the exact
            # remainder (alpha_j - estimate) q_j stays in w and the float64-accurate projection onto
            # the basis measures and removes it, so alpha_j = estimate + c_j (one dot product saved).
            a_dev = (torch.stack([torch.dot(q[p], w[p]) for p in range(self.P)]).double()
                     if self.reorth is True else dot64(q, w))                                            # (P,) float64
            # w -= alpha_j q_j + beta_{j-1} q_{j-1}: one in-place GEMV over the two vectors per probe
            for p in range(self.P):
                if j == 0:
                    w[p].add_(q[p], alpha=-float(a_dev[p]))
                else:
                    coef = torch.tensor([-float(self.beta[p, j - 1]), -float(a_dev[p])], dtype=w.dtype)
                    w[p].addmv_(self._pair(j, p).T, coef.to(w.device))
            normalised = [False] * self.P   # rows already divided by beta_j
            if self.reorth == "partial":
                b_dev = self._partial(w, j, a_dev)
            elif self.reorth:
                a_dev = a_dev.to(w.dtype).double().cpu()   # the float32 alpha used above
                norms2, remainder, normalised = self._orthogonalize(w, j + 1, alpha=a_dev)
                a_dev = a_dev + remainder
                b_dev = norms2.sqrt()
            else:
                b_dev = norm64(w)
            a, b = a_dev.cpu(), b_dev.cpu()                                   # bookkeeping on CPU
            if not (torch.isfinite(a).all() and torch.isfinite(b).all()):  # a non-finite w makes both so
                raise PrunelimitError(f"Hessian-vector product is not finite at step {j}; the model/loss has "
                                 "inf/nan at these weights (check the checkpoint, the data and the loss)")
            self.alpha[:, j] = a
            self.residual = b.clone()
            self.scale = torch.maximum(self.scale, torch.maximum(a.abs(), b))
            for p in range(self.P):
                if self.active[p]:
                    self.lengths[p] = j + 1
            self.j = j + 1
            if last:
                self._account(started, hvp_done)
                self._maybe_save()
                break
            broke = b <= 100 * eps * self.scale
            for p in range(self.P):
                if not broke[p]:
                    if not normalised[p]:
                        w[p].mul_(1.0 / float(b[p]))
                    continue
                r = self._restart_vector(p, j + 1) if self.active[p] else None
                if r is None:
                    self.active[p] = False
                    w[p].zero_()
                else:
                    w[p].copy_(r)
                    b[p] = 0.0
                    self.restarts[p].append(j + 1)
                    if self.omega is not None:   # r is orthogonal to the whole basis
                        self.omega[p].restart(j)
            self.beta[:, j] = b
            self._commit(j)
            self._account(started, hvp_done)
            self._maybe_save()

    def _maybe_save(self) -> None:
        if self.checkpoint is not None and self.checkpoint.due(self):
            self.checkpoint.save(self)

    def advance_to(self, steps: int) -> None:
        """Advance until ``steps`` steps are done (no-op if a restored run is already past them)."""
        self.advance(max(0, steps - self.j))

    def _account(self, started: float, hvp_done: float) -> None:
        # wall time of the HVPs and of everything else in the steps (the "Lanczos overhead"); on CUDA
        # the .cpu() of alpha/beta synchronises once per step, so the split is approximate there
        now = time.perf_counter()
        self.hvp_seconds += hvp_done - started
        self.bookkeeping_seconds += now - hvp_done

    def probe_basis(self, p: int) -> torch.Tensor:
        """(steps done, dim) orthonormal Lanczos vectors of probe p (a view of the buffer)."""
        return self.basis[:self.lengths[p], p]

    def tridiagonal(self, p: int, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.lengths[p] if length is None else length
        return self.alpha[p, :n].clone(), self.beta[p, :max(n - 1, 0)].clone()


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """Sorted indices as (first, last) runs of consecutive values."""
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and runs[-1][1] == i - 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


def _reorth_mode(value) -> bool | str:
    """True (full re-orthogonalisation), False (none) or "partial" (partial_reorth.py)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "partial"):
        return {"true": True, "false": False, "partial": "partial"}[value.lower()]
    raise PrunelimitError(f"reorthogonalize={value!r} is invalid; use true (full), false (none) or 'partial' "
                          "(only when the estimated loss of orthogonality passes sqrt(eps))")


def tridiagonal_eigh(alpha: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (ascending) and eigenvectors (columns) of the symmetric tridiagonal, in float64."""
    T = torch.diag(alpha.double())
    if beta.numel():
        T = T + torch.diag(beta.double(), 1) + torch.diag(beta.double(), -1)
    return torch.linalg.eigh(T)


def lanczos_tridiagonal(op, steps: int, *, v0: torch.Tensor | None = None, seed: int = 0,
                        reorthogonalize: bool = True, show_progress: bool = False, basis_device: str = "same"
                        ) -> tuple[torch.Tensor, torch.Tensor, LanczosInfo]:
    """``steps`` Lanczos steps from ``v0`` (default: a Rademacher vector drawn with ``seed``).

    Returns (alpha (n,), beta (n-1,), info), float64 on CPU, with n = steps unless the Krylov space
    was exhausted. T = tridiag(beta, alpha, beta) has the Ritz values as eigenvalues. ``basis_device``:
    "same" (the operator's device), "cpu" (host memory, rows streamed; host_basis.py) or "auto"."""
    _check_steps(steps, op.dim)
    if v0 is None:
        v0 = rademacher(1, op.dim, seed)[0]
    if v0.ndim != 1 or v0.numel() != op.dim:
        raise PrunelimitError(f"v0 must be a 1-D vector of length dim={op.dim}; got shape {tuple(v0.shape)}")
    host = wants_host_basis(basis_device, _op_device(op), memory_estimate(op.dim, steps, _op_dtype(op)))
    run = _LanczosRun(op, v0.unsqueeze(0), steps, reorthogonalize=reorthogonalize, seed=seed,
                      show_progress=show_progress, host_basis=host)
    run.advance(steps)
    alpha, beta = run.tridiagonal(0)
    info = LanczosInfo(basis=run.probe_basis(0), steps=run.lengths[0],
                       restarts=run.restarts[0], residual=float(run.residual[0]))
    return alpha, beta, info


def slq_spectrum(op, steps: int, probes: int, *, seed: int = 0, show_progress: bool = False,
                 start: torch.Tensor | None = None, probe_batch: int | None = None,
                 checkpoint: LanczosCheckpoint | str | os.PathLike | None = None,
                 reorthogonalize: bool = True, basis_device: str = "same") -> tuple[torch.Tensor, torch.Tensor]:
    """Stochastic Lanczos quadrature: the spectral measure of H as nodes and weights.

    For each probe (a normalised Rademacher vector, or the rows of ``start`` (probes, dim)): run
    ``steps`` Lanczos steps, diagonalise T with ``torch.linalg.eigh``; nodes = Ritz values, weights =
    squared first components of T's eigenvectors (Gauss quadrature for v^T f(H) v). Returns
    (nodes (probes·steps,), weights (probes·steps,)) float64 on CPU with weights.sum() == 1, so
    Σ weights·f(nodes) ≈ tr f(H) / dim. ``probe_batch`` probes run together (default: all).

    ``checkpoint`` (a ``LanczosCheckpoint`` or a directory): save the Lanczos state every few steps
    (checkpoint.py) and resume from it, so a killed run continues with identical Ritz values; one
    subdirectory per group of probes. The caller removes it (``clear()``) once the result is stored.
    ``reorthogonalize=False``: the plain three-term recurrence (the basis is still kept, for
    checkpoints): cheaper steps at scale, at the accuracy benchmarks/bench_reorth.py measures.
    ``basis_device``: "same" (the operator's device), "cpu" (host memory, one row at a time on the
    accelerator; host_basis.py) or "auto" (host memory when the accelerator's free memory lacks room)."""
    _check_steps(steps, op.dim)
    if not isinstance(probes, int) or probes < 1:
        raise PrunelimitError(f"lanczos_num={probes!r} (number of SLQ probes) must be a positive integer")
    if start is None:
        start = rademacher(probes, op.dim, seed)
    elif start.shape != (probes, op.dim):
        raise PrunelimitError(f"start must have shape (probes, dim) = ({probes}, {op.dim}); got {tuple(start.shape)}")
    chunk = probes if probe_batch is None else max(1, int(probe_batch))
    checkpoint = LanczosCheckpoint.of(checkpoint)
    log.info(memory_message(op.dim, steps, _op_dtype(op), chunk))
    host = wants_host_basis(basis_device, _op_device(op), memory_estimate(op.dim, steps, _op_dtype(op), chunk))
    nodes, weights = [], []
    for first in range(0, probes, chunk):
        block = start[first:first + chunk]
        ckpt = checkpoint.child(f"probes_{first}") if checkpoint is not None else None
        run = _LanczosRun(op, block, steps, seed=seed + first, show_progress=show_progress,
                          desc=f"SLQ probes {first + 1}-{first + block.shape[0]}/{probes}", checkpoint=ckpt,
                          reorthogonalize=reorthogonalize, host_basis=host)
        run.advance_to(steps)
        for p in range(block.shape[0]):
            evals, evecs = tridiagonal_eigh(*run.tridiagonal(p))
            nodes.append(evals)
            weights.append(evecs[0] ** 2)
        del run
    return torch.cat(nodes), torch.cat(weights) / probes
