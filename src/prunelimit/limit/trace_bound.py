"""A spectrum-free lower bound on the predicted pruning limit from the Hessian's trace alone.

DERIVED HERE, not taken from the limit paper (the derivation is in docs/HESSIAN.md). With the quadratic
model, g(R) = (1/D) Σ_i f(|λ_i|) with f(x) = 2ε / (2ε + R²x). f is convex in x ≥ 0, so by Jensen's
inequality the mean of f is at least f of the mean:

    g(R) >= 2ε / (2ε + R² · (1/D) Σ_i |λ_i|) = 2εD / (2εD + R² · Tr|H|).

h(p) = g(R(p)) - p falls with p, so the fixed point of the bound is at most that of g: the bound's
p* is a LOWER bound on the SLQ-predicted limit, computed from one number. Tr|H| = Tr H when H is
positive semi-definite; Hutchinson's estimator (20 HVPs) gives Tr H, so for an indefinite Hessian
(Tr H < Tr|H|) the figure is not a guaranteed bound — reported with that caveat — and a negative trace
gives no bound at all. It equals the SLQ prediction exactly when all |λ_i| are equal (Jensen is tight).

``spectrum_traces`` reads the run's own SLQ spectrum for what the Hutchinson figure cannot know: the
share of negative curvature, and Tr|H| = D Σ_j w_j |θ_j|. The bound from that Tr|H| is Jensen applied to
the SLQ measure itself, so it is always at or below the SLQ prediction (it needs the spectrum, though).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from prunelimit.errors import PrunelimitError
from prunelimit.limit.width import Prediction, predict_limit


def trace_bound_limit(trace: float, dim: int, eps: float, radius_fn, **kw) -> Prediction:
    """p* of the Jensen bound 2εD / (2εD + R(p)²·trace) = p (``radius_fn`` as in ``predict_limit``).

    ``trace``: Tr|H| (Tr H for a PSD Hessian), ``dim``: D, the Hessian's dimension. A trace <= 0 gives
    ``limit=None`` with the reason."""
    if not (isinstance(dim, int) and dim > 0):
        raise PrunelimitError(f"dim={dim!r} (the Hessian's dimension) must be a positive integer")
    if not math.isfinite(trace):
        raise PrunelimitError(f"trace={trace!r} must be a finite number")
    if trace <= 0:
        return Prediction(limit=None, keep_fraction=None, R_at_limit=None, g_at_limit=None, eps=float(eps),
                          flat_fraction=0.0, integer_R=False,
                          reason=f"the Hessian trace {trace:.4g} is not positive: no Jensen bound (it needs Tr|H| > 0)")
    # a one-point spectrum at the mean |λ| = trace / D with weight 1 IS the bound's g
    return predict_limit([trace / dim], [1.0], eps, radius_fn, **kw)


# A Ritz value below -NEGATIVE_TOL x the largest |Ritz value| counts as negative curvature: rounding
# leaves Ritz values of a PSD matrix (the Gauss-Newton one) at about -1e-7 of the top, not -1e-4.
NEGATIVE_TOL = 1e-4


@dataclass(frozen=True)
class SpectrumTraces:
    """What the SLQ spectrum says about the trace bound: ``negative_weight``, the share of its weight on
    eigenvalues below -NEGATIVE_TOL x max|θ| (H indefinite when > 0), and ``abs_trace``, Tr|H| = D Σ w_j |θ_j|
    (the number the bound needs; Hutchinson's estimator gives Tr H, the same only when nothing is negative)."""

    negative_weight: float
    abs_trace: float


def spectrum_traces(nodes, weights, dim: int) -> SpectrumTraces:
    """``SpectrumTraces`` of the SLQ ``nodes`` / ``weights`` (weights normalised to sum 1) of a D = ``dim``
    matrix."""
    theta = np.asarray(nodes, dtype=np.float64).ravel()
    w = np.asarray(weights, dtype=np.float64).ravel()
    if theta.size == 0 or theta.size != w.size or (w < 0).any() or w.sum() <= 0:
        raise PrunelimitError(f"SLQ nodes ({theta.size}) and weights ({w.size}) must be non-empty, of one length, "
                              f"with weights >= 0 and a positive sum")
    w = w / w.sum()
    negative = theta < -NEGATIVE_TOL * np.abs(theta).max()
    return SpectrumTraces(negative_weight=float(w[negative].sum()), abs_trace=float(dim * (w * np.abs(theta)).sum()))
