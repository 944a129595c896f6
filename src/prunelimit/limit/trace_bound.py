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
"""
from __future__ import annotations

import math

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
