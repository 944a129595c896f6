"""Gaussian width of the loss sublevel set and the predicted pruning limit (SPEC B5).

With a quadratic loss model the sublevel set S(eps) = {w : L(w) <= L(w*) + eps} is an ellipsoid with
squared semi-axes r_i^2 = 2 eps / |lambda_i|. Its normalised squared Gaussian width seen from distance R is

    g(R) = (1/D) sum_i r_i^2 / (R^2 + r_i^2) = (1/D) sum_i 2 eps / (2 eps + R^2 |lambda_i|).

SLQ gives the spectrum as nodes lambda_j with weights w_j summing to 1 (they stand for (1/D) sum_i), and
the flat directions SLQ cannot resolve come as a point mass q at lambda ~ 0 that contributes 1 each:

    g(R) = (1 - q) * sum_j w_j * 2 eps / (2 eps + R^2 |lambda_j|) + q.

The predicted limit is the fixed point p* of g(R(p)) = p, R(p) the l2 norm of the weights removed at p.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from prunelimit import dist
from prunelimit.limit.ordering import MagnitudeOrdering
from prunelimit.errors import PrunelimitError
from prunelimit.train.batches import Objective


def _vector(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    arr = np.asarray(x, dtype=np.float64).reshape(-1)
    if arr.size == 0 or not np.isfinite(arr).all():
        raise PrunelimitError(f"{name} must be a non-empty sequence of finite numbers; got {arr.size} values"
                         f"{'' if arr.size == 0 else ' with NaN/Inf'}")
    return arr


def _spectrum(nodes, weights, eps, flat_fraction) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Validated (|lambda| [J], normalised weights [J], eps, q)."""
    lam, w = np.abs(_vector(nodes, "nodes")), _vector(weights, "weights")
    if lam.shape != w.shape:
        raise PrunelimitError(f"nodes and weights must have the same length; got {lam.size} nodes, {w.size} weights")
    if (w < 0).any() or w.sum() <= 0:
        raise PrunelimitError("SLQ weights must be >= 0 with a positive sum (squared first Lanczos components)")
    eps = float(eps)
    if not (math.isfinite(eps) and eps > 0):
        raise PrunelimitError(f"eps (the loss tolerance epsilon) must be a finite number > 0; got {eps}")
    q = float(flat_fraction)
    if not 0.0 <= q <= 1.0:
        raise PrunelimitError(f"flat_fraction q (the important-eigenvalue rate) must be in [0, 1]; got {q}")
    # normalising makes g(0) = 1 exactly, as the original's division by the density sum does.
    return lam, w / w.sum(), eps, q


def _g(lam: np.ndarray, w: np.ndarray, eps: float, q: float, radius: np.ndarray) -> np.ndarray:
    r2 = np.square(radius)[:, None]                          # [n, 1]
    frac = (2 * eps) / (2 * eps + r2 * lam[None, :])          # [n, J]; 1 where lambda == 0
    return (1 - q) * (frac @ w) + q                           # [n]


def normalized_gaussian_width(nodes, weights, eps: float, R, flat_fraction: float = 0.0):
    """g(R) for one R (returns float) or many (1-D tensor in -> float64 tensor, array in -> array)."""
    lam, w, eps, q = _spectrum(nodes, weights, eps, flat_fraction)
    radius = R.detach().cpu().double().numpy() if isinstance(R, torch.Tensor) else np.asarray(R, np.float64)
    if radius.ndim > 1 or not np.isfinite(radius).all() or (radius < 0).any():
        raise PrunelimitError("R must be a finite distance >= 0 or a 1-D sequence of them")
    g = _g(lam, w, eps, q, radius.reshape(-1))
    if radius.ndim == 0:
        return float(g[0])
    return torch.from_numpy(g) if isinstance(R, torch.Tensor) else g


@torch.no_grad()
def loss_epsilon(model: nn.Module, batches: Iterable, loss_fn: Callable, *, device: torch.device | str | None = None,
                 ddof: int = 1) -> tuple[float, list[float]]:
    """epsilon = standard deviation of the per-minibatch training loss at w* (model in eval mode).

    ``batches`` yields ``(inputs, targets)``; ``loss_fn(output, targets)`` returns the batch-mean loss (any
    batch layout and model output, or ``pl.model_loss(fn)``, as in training).
    ``ddof=1`` (sample std, our default) needs two or more batches; the original used ``np.std``, i.e.
    ``ddof=0``, which is ~1/(2 n_batches) smaller. The original also added the L1 term to every batch
    loss; a constant shift does not change the std, so it is left out.

    Under torchrun each rank's batch i must be its share of the global minibatch i (the pipeline shards
    the data as indices rank::world with per-rank batch = batch/world): per-batch loss sums and counts are
    all-reduced by batch index, so epsilon is the std over the same global minibatches as in one process.
    The returned per-batch losses are those global minibatch means.
    """
    if ddof not in (0, 1):
        raise PrunelimitError(f"ddof must be 0 (population std, the original's np.std) or 1 (sample std); got {ddof}")
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    sums: list[float] = []    # per local batch: mean loss x count
    counts: list[float] = []
    try:
        with torch.no_grad():
            for batch in batches:
                # any batch layout and loss (train/batches.py): dict/tuple inputs, raw outputs, model_loss
                loss, n, _, _ = Objective(None, loss_fn).forward(model, batch, device, where="loss_epsilon's batches")
                sums.append(float(loss) * n)
                counts.append(float(n))
    finally:
        model.train(was_training)
    if dist.is_distributed():
        lengths = torch.zeros(dist.world_size(), dtype=torch.float64, device=device)
        lengths[dist.rank()] = len(sums)
        n_batches = int(dist.all_reduce_sum(lengths).max().item())
        table = torch.zeros(2, n_batches, dtype=torch.float64, device=device)  # [sum, count] per global batch
        table[0, :len(sums)] = torch.tensor(sums, dtype=torch.float64)
        table[1, :len(counts)] = torch.tensor(counts, dtype=torch.float64)
        dist.all_reduce_sum(table)
        sums, counts = table[0].tolist(), table[1].tolist()
    losses = [s_ / c for s_, c in zip(sums, counts) if c > 0]
    if len(losses) < 2:
        raise PrunelimitError(f"loss_epsilon needs at least 2 minibatches to take a standard deviation; got {len(losses)}. "
                         f"Use a smaller batch size or give epsilon as a number")
    eps = float(np.std(np.asarray(losses, dtype=np.float64), ddof=ddof))
    if not eps > 0:
        raise PrunelimitError("every minibatch has the same training loss, so epsilon = std = 0; give epsilon as a "
                         "number (config key epsilon)")
    return eps, losses


@dataclass
class Prediction:
    limit: float | None            # predicted prune fraction p*; None when g(R(p)) = p has no root in [0, 1)
    keep_fraction: float | None    # 1 - limit
    R_at_limit: float | None       # R(p*) (the rounded R when integer_R)
    g_at_limit: float | None       # g(R(p*))
    eps: float                     # loss tolerance epsilon used in g
    flat_fraction: float           # point mass q at lambda ~ 0
    integer_R: bool                # True: the original's rounded-R grid search
    reason: str | None = None      # why limit is None
    curve: dict[str, list[float]] = field(default_factory=dict, repr=False)  # p, R, g for plots

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _radius_source(radius_fn) -> tuple[Callable[[float], float], MagnitudeOrdering | None]:
    if isinstance(radius_fn, MagnitudeOrdering):
        return radius_fn.radius, radius_fn
    owner = getattr(radius_fn, "__self__", None)   # the bound method ordering.radius: solve on exact counts
    if isinstance(owner, MagnitudeOrdering) and getattr(radius_fn, "__name__", "") == "radius":
        return owner.radius, owner
    if not callable(radius_fn):
        raise PrunelimitError(f"radius_fn must be a callable p -> R(p) or a MagnitudeOrdering; got "
                         f"{type(radius_fn).__name__}")

    def radius(p: float) -> float:
        r = float(radius_fn(p))
        if not (math.isfinite(r) and r >= 0):
            raise PrunelimitError(f"radius_fn({p}) returned {r}; R(p) must be a finite distance >= 0")
        return r

    return radius, None


def predict_limit(nodes, weights, eps: float, radius_fn, *, flat_fraction: float = 0.0, integer_R: bool = False,
                  tol: float = 1e-6, grid_points: int = 1000, curve_points: int = 501) -> Prediction:
    """Fixed point p* of g(R(p)) = p, with g from the SLQ ``nodes``/``weights`` plus the flat mass q.

    h(p) = g(R(p)) - p decreases (R grows with p, g falls with R) and h(0) = 1, so a root is bracketed
    once h < 0 somewhere below 1. ``radius_fn`` is ``ordering.radius`` (or the ordering itself): then R is a
    step function of the removed count k and the answer is exact, k*/N with k* the largest k satisfying
    g(R_k) >= k/N. Any other callable is bisected on continuous p to ``tol``. When h stays >= 0 up to
    p = 1 (everything removable per the theory) the result has ``limit=None`` and a ``reason``.

    ``integer_R=True`` reproduces the original: R rounded to the nearest integer, p* = the point of the
    grid i/grid_points where |g(round(R)) - p| is smallest. That breaks on small nets where R < 1: every
    R < 0.5 rounds to 0 (g = 1) and the prediction jumps to wherever R first reaches 0.5.
    """
    lam, w, eps, q = _spectrum(nodes, weights, eps, flat_fraction)
    radius, ordering = _radius_source(radius_fn)
    if not 0 < tol < 0.5:
        raise PrunelimitError(f"tol must be in (0, 0.5); got {tol}")
    for name, val in (("grid_points", grid_points), ("curve_points", curve_points)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 2:
            raise PrunelimitError(f"{name} must be an integer >= 2; got {val!r}")

    def g_of(r: float) -> float:
        return float(_g(lam, w, eps, q, np.array([round(r) if integer_R else r]))[0])

    limit, reason = None, None
    if integer_R:
        grid = np.arange(grid_points) / grid_points
        radii = ordering.radii(grid).numpy() if ordering is not None else np.array([radius(p) for p in grid])
        gs = _g(lam, w, eps, q, np.round(radii))                # np.round: half to even, like torch.round
        if (gs > grid).all():
            reason = (f"g(round(R(p))) > p at every grid point up to p = {grid[-1]}: no fixed point in [0, 1) "
                      f"(with R < 1 the rounding keeps R at 0 and g at 1; use integer_R=False)")
        else:
            limit = float(grid[int(np.argmin(np.abs(gs - grid)))])
    elif ordering is not None:
        n = ordering.num_weights

        def ok(k: int) -> bool:  # true for k <= k*, false above: g(R_k) falls and k/n rises with k
            return g_of(ordering.radius_of_count(k)) >= k / n

        if ok(n):
            reason = ("g(R(p)) >= p for every p up to 1: the theory allows removing all prunable weights; "
                      "no fixed point in [0, 1)")
        else:
            lo, hi = 0, n
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if ok(mid) else (lo, mid)
            limit = lo / n
    else:
        top = 1.0 - tol
        if g_of(radius(top)) >= top:
            reason = (f"g(R(p)) >= p up to p = {top}: the theory allows removing (almost) all prunable weights; "
                      f"no fixed point in [0, 1)")
        else:
            lo, hi = 0.0, top
            while hi - lo > tol:
                mid = 0.5 * (lo + hi)
                lo, hi = (mid, hi) if g_of(radius(mid)) >= mid else (lo, mid)
            limit = lo

    ps = np.linspace(0.0, 1.0, curve_points)
    rs = ordering.radii(ps).numpy() if ordering is not None else np.array([radius(p) for p in ps])
    gs = _g(lam, w, eps, q, np.round(rs) if integer_R else rs)
    r_lim = None if limit is None else (round(radius(limit)) if integer_R else radius(limit))
    return Prediction(limit=limit, keep_fraction=None if limit is None else 1.0 - limit,
                      R_at_limit=None if r_lim is None else float(r_lim),
                      g_at_limit=None if limit is None else g_of(radius(limit)),
                      eps=eps, flat_fraction=q, integer_R=integer_R, reason=reason,
                      curve={"p": ps.tolist(), "R": rs.tolist(), "g": gs.tolist()})
