"""Partial re-orthogonalisation (Simon's PRO) for the Lanczos run: re-orthogonalise only when needed.

Full re-orthogonalisation reads the whole basis twice per step, so at 128 steps x 11 M parameters it
costs more than a third of a ResNet-18 HVP on 64 images. Lanczos does not need an orthonormal basis to
give accurate Ritz values, only a SEMI-orthogonal one (|q_i . q_k| <= sqrt(eps)): T is then the
projection of H onto an orthonormal basis of the same space up to O(eps ||H||) (Simon 1984, "The
Lanczos algorithm with partial reorthogonalization"). Orthogonality is lost at a rate the tridiagonal
itself tells, so it can be ESTIMATED without touching the basis, by Simon's recurrence for
omega_{j+1,k} ~ q_{j+1} . q_k:

    beta_j omega_{j+1,k} = beta_k omega_{j,k+1} + (alpha_k - alpha_j) omega_{j,k} + beta_{k-1} omega_{j,k-1}
                           - beta_{j-1} omega_{j-1,k}  (+ a rounding term of size eps ||H||, signed to grow |omega|)

When max_k |omega_{j+1,k}| passes sqrt(eps), the new vector AND the next one are orthogonalised against
the whole basis (the next one inherits the loss through the recurrence) and their estimates reset to eps.
The steps in between cost one float64-accurate norm. The rounding term is MEASURED: the first
``CALIBRATION_STEPS`` steps are orthogonalised fully and the components they remove give the error a
step injects (for a network's float32 HVP ~1e-6 of ||H||, 10x eps; with eps ||H|| instead the
estimate missed the loss on ResNet-18: |q_i . q_k| reached 2.4e-2 at 128 steps), times NOISE_MARGIN
(without it a test operator with a 1e-5 asymmetric error ended at 7.4e-4 > sqrt(eps); with it 5e-5). This file keeps the estimates (a few float64
scalars per step and probe); lanczos.py asks ``due`` each step. Accuracy and cost against full
re-orthogonalisation: benchmarks/bench_hessian.py (ResNet-18, 128 steps) and tests/spectrum.
"""
from __future__ import annotations

import math

import torch


CALIBRATION_STEPS = 4
NOISE_MARGIN = 4.0   # the few measured components understate the error of later steps (tests: 2x)


class OrthogonalityEstimate:
    """Simon's omega estimates of one probe's Lanczos vectors, for a working precision ``eps``."""

    def __init__(self, capacity: int, eps: float):
        self.eps, self.threshold, self.eta = eps, math.sqrt(eps), eps ** 0.75
        self.previous = torch.zeros(capacity + 1, dtype=torch.float64)   # omega_{j-1, .}
        self.current = torch.zeros(capacity + 1, dtype=torch.float64)    # omega_{j, .}
        self.current[0] = 1.0
        self.forced = 0              # steps still to orthogonalise whatever the estimate says
        self.reorthogonalisations = 0
        self.vectors_read = 0        # basis vectors the orthogonalisations read (full: j per step)
        self.last_set = torch.zeros(capacity + 1, dtype=torch.bool)
        self.resume = 0
        self.noise = eps             # relative error of a step's update, measured (see ``calibrate``)

    def due(self, j: int, alpha: torch.Tensor, beta: torch.Tensor, beta_j: float, norm_h: float
            ) -> torch.Tensor | None:
        """Advance the estimates to omega_{j+1, .} for the new residual of norm ``beta_j`` (alpha[:j+1],
        beta[:j] of this probe: float64). Returns the indices k of the basis vectors q_k the new vector
        must be orthogonalised against (ascending), or None when it stays semi-orthogonal."""
        new = torch.zeros_like(self.current)
        if j > 0 and beta_j > 0:
            k = torch.arange(j)
            cur, prev = self.current, self.previous
            acc = beta[k] * cur[k + 1] + (alpha[k] - alpha[j]) * cur[k]
            acc[1:] += beta[k[1:] - 1] * cur[k[1:] - 1]
            acc -= beta[j - 1] * prev[k]
            rounding = self.noise * norm_h
            new[:j] = (acc + torch.where(acc >= 0, rounding, -rounding)) / beta_j
        new[j] = self.noise * norm_h / beta_j if beta_j > 0 else 1.0   # the three-term update's own loss
        new[j + 1] = 1.0
        chosen = None
        if self.forced:             # the vector after an orthogonalised one (or after a resume)
            self.forced -= 1
            chosen = torch.nonzero((new[:j] > self.eta) | (new[:j] < -self.eta) | self.last_set[:j]).flatten()
            if self.resume:         # the estimates were lost: everything
                chosen, self.resume = torch.arange(j + 1), self.resume - 1
        elif j > 0 and bool(new[:j].abs().max() > self.threshold):
            # Simon/Larsen: against every q_k whose estimate passed eps^(3/4), not only the ones past
            # sqrt(eps): after a converged Ritz value the loss concentrates on a few of them
            chosen = torch.nonzero(new[:j].abs() > self.eta).flatten()
            self.forced = 1         # the next vector inherits the loss through the recurrence
        self.last_set = torch.zeros(self.current.numel(), dtype=torch.bool)
        if chosen is not None:
            new[chosen] = self.eps
            self.last_set[chosen] = True
            self.reorthogonalisations += 1
            self.vectors_read += chosen.numel()
        self.previous, self.current = self.current, new
        return chosen

    def calibrate(self, coefficients: torch.Tensor, norm_h: float) -> None:
        """The first steps are orthogonalised fully; the components they remove (q_k . w after the
        three-term update, ``coefficients``) are the error a step injects: float32 rounding of the
        update AND the HVP's own error (a float32 HVP through a deep network is ~1e-6 of ||H|| off,
        and not exactly symmetric), far above eps ||H|| for a network. Simon's rounding term uses it."""
        self.vectors_read += coefficients.numel()
        if norm_h > 0:
            self.noise = max(self.noise, NOISE_MARGIN * float(coefficients.abs().max()) / norm_h)

    def restart(self, j: int) -> None:
        """The run restarted at j+1 with a vector orthogonalised against the whole basis."""
        self.current[:j + 1] = self.eps

    def resumed(self) -> None:
        """A run restored from a checkpoint (the estimates are not saved): orthogonalise its next two
        vectors, after which the estimates are exact again (eps)."""
        self.forced = self.resume = 2
