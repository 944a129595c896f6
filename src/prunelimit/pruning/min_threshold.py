"""GP with a Minimum Threshold (GP+MT): every layer keeps at least ``floor`` weights.

MT is a percentage of N (0.05 means 0.05 %): floor = int(N * MT / 100), exactly the original's
expression. Every layer keeps at least min(n_l, floor) weights (a layer with n_l <= floor stays
dense) and exactly k = floor(sparsity * N + 0.5) weights are pruned in total. Two modes:

- ``proportional`` — the published pipeline (SPEC A2): start from each layer's GP sparsity, zero it
  for layers with n_l <= floor, rescale the rest to the target, clamp layers that would keep fewer
  than ``floor`` weights and rescale the unclamped ones again; then prune every layer on its own by
  its own magnitudes. Done here in exact integer arithmetic: a layer's share is
  weight_l * rest / total, where weight_l is its GP count and rest is the budget the clamped layers
  leave; integer counts by largest remainder.
- ``global`` — what the paper's text describes (water-filling): prune the globally smallest weights,
  skipping any layer that has reached its floor. Equivalently: GP over the union of every layer's
  own cap_l = n_l - min(n_l, floor) smallest weights.

Both modes first check that the floors leave room: sum_l min(n_l, floor) <= N - k.
"""
from __future__ import annotations

import logging
import math
import numbers
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from .magnitude import check_keeps_some, global_magnitude_cuts, prunable_layers
from .select import (NO_CUT, Cut, Pool, Workspace, check_sparsity, key_space, layer_cut, mask_from_cut, prune_count,
                     smallest_cuts)
from prunelimit.errors import PrunelimitError

logger = logging.getLogger("prunelimit")

MT_MODES = ("proportional", "global")
LAYER_SPARSITY_COLUMNS = ("Layer Index", "Layer Name", "Layer Weights", "GP Weights Pruned", "Weights Pruned",
                          "Kept Weights", "Sparsity", "Clamped by Floor", "Dense by Floor")


@dataclass(frozen=True)
class LayerPlan:
    name: str  # parameter name as in model.named_parameters()
    n: int  # weights in the layer (n_l)
    gp_pruned: int  # how many plain GP prunes here
    pruned: int  # how many GP+MT prunes here
    kept: int  # n - pruned
    sparsity: float  # pruned / n
    clamped: bool  # the floor limited this layer (it would have lost more without it)
    dense_by_floor: bool  # n <= floor: the layer is left dense


@dataclass(frozen=True)
class MTPlan:
    """The per-layer decision GP+MT masks are made from."""

    mode: str
    sparsity: float
    min_threshold: float  # percent of N
    floor: int  # int(N * min_threshold / 100)
    N: int
    k: int  # pruned in total
    layers: tuple[LayerPlan, ...]

    @property
    def clamped_layers(self) -> list[str]:
        return [layer.name for layer in self.layers if layer.clamped]

    @property
    def dense_layers(self) -> list[str]:
        return [layer.name for layer in self.layers if layer.dense_by_floor]

    def rows(self) -> list[list]:
        """Rows for ``layer_sparsities.csv``, in the order of ``LAYER_SPARSITY_COLUMNS``."""
        return [[i, lp.name, lp.n, lp.gp_pruned, lp.pruned, lp.kept, lp.sparsity, lp.clamped, lp.dense_by_floor]
                for i, lp in enumerate(self.layers, start=1)]


def check_min_threshold(min_threshold) -> float:
    if isinstance(min_threshold, bool) or not isinstance(min_threshold, numbers.Real):
        raise PrunelimitError(f"min_threshold must be a number >= 0 (percent of all prunable weights, 0.05 = 0.05 %), "
                         f"got {min_threshold!r}")
    value = float(min_threshold)
    if not math.isfinite(value) or value < 0 or value > 100:
        raise PrunelimitError(f"min_threshold={min_threshold!r} must be a percentage in [0, 100] "
                         f"(percent of all prunable weights, 0.05 = 0.05 %)")
    return value


def _down(x: float, digits: int = 4) -> str:
    """``x`` rounded DOWN to ``digits`` significant digits, so the printed bound is itself feasible."""
    if x == 0 or not math.isfinite(x):
        return repr(x)
    e = math.floor(math.log10(abs(x))) - digits + 1
    return f"{math.floor(x / 10 ** e) * 10 ** e:.{max(0, -e)}f}"


def floor_of(n_total: int, min_threshold: float) -> int:
    """Minimum weights kept per layer: int(N * MT / 100), the original's expression."""
    return int(n_total * min_threshold / 100)


def floor_keep(sizes: Sequence[int], floor: int) -> int:
    """Weights the floors keep at the very least: sum_l min(n_l, floor)."""
    return sum(min(n, floor) for n in sizes)


def max_feasible_min_threshold(sizes: Sequence[int], sparsity: float) -> float:
    """The largest MT (percent) whose floors still leave room to prune at ``sparsity``; inf if any MT does."""
    n_total = sum(sizes)
    room = n_total - prune_count(check_sparsity(sparsity), n_total)
    if floor_keep(sizes, max(sizes)) <= room:
        return math.inf
    lo, hi = 0, max(sizes)  # largest floor f with floor_keep(f) <= room: f in [lo, hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if floor_keep(sizes, mid) <= room else (lo, mid)
    return _last_float(lambda mt: floor_of(n_total, mt) <= lo, (lo + 1) * 100 / n_total)


def max_feasible_sparsity(sizes: Sequence[int], min_threshold: float) -> float:
    """The largest sparsity < 1 reachable while every layer keeps min(n_l, floor) weights."""
    n_total = sum(sizes)
    room = n_total - floor_keep(sizes, floor_of(n_total, check_min_threshold(min_threshold)))
    if room >= n_total:
        return math.nextafter(1.0, 0.0)
    return _last_float(lambda p: prune_count(p, n_total) <= room, (room + 0.5) / n_total)


def _last_float(ok, guess: float) -> float:
    """The largest float x with ok(x), for a monotone ok (true up to a point) and a guess near it."""
    x = guess
    while not ok(x):
        x = math.nextafter(x, -math.inf)
    while ok(math.nextafter(x, math.inf)):
        x = math.nextafter(x, math.inf)
    return x


def check_feasible(sizes: Sequence[int], sparsity: float, min_threshold: float) -> None:
    n_total = sum(sizes)
    k = prune_count(sparsity, n_total)
    floor = floor_of(n_total, min_threshold)
    needed = floor_keep(sizes, floor)
    if needed > n_total - k:
        mt_max = max_feasible_min_threshold(sizes, sparsity)
        p_max = max_feasible_sparsity(sizes, min_threshold)
        raise PrunelimitError(
            f"min_threshold={min_threshold!r} is infeasible at sparsity={sparsity!r}: the floor of {floor} "
            f"weights per layer keeps at least {needed} weights but only {n_total - k} of N={n_total} may stay. "
            f"Largest feasible min_threshold at this sparsity: {_down(mt_max)} (exactly {mt_max!r}); largest "
            f"feasible sparsity with this min_threshold: {_down(p_max)} (exactly {p_max!r}). "
            f"Lower min_threshold or sparsity.")


def proportional_counts(sizes: Sequence[int], gp_counts: Sequence[int], floor: int,
                        k: int) -> tuple[list[int], list[bool]]:
    """Per-layer prune counts of the proportional mode and which layers the floor clamped.

    Assumes ``check_feasible`` passed. Every iteration clamps at least one more layer, so the loop
    runs at most len(sizes) + 1 times.
    """
    n_layers = len(sizes)
    caps = [n - min(n, floor) for n in sizes]
    free = [n > floor for n in sizes]  # layers still scaled; n <= floor stays dense
    clamped = [False] * n_layers
    weight = [g if f else 0 for g, f in zip(gp_counts, free)]
    rest = k  # budget left for the free layers once clamped layers give their cap
    for _ in range(n_layers + 1):
        total = sum(w for w, f in zip(weight, free) if f)
        if total == 0 and rest > 0:
            # GP pruned nothing in the free layers, so there is nothing to scale: share uniformly.
            weight = [n if f else w for n, w, f in zip(sizes, weight, free)]
            total = sum(n for n, f in zip(sizes, free) if f)
        over = [i for i in range(n_layers) if free[i] and weight[i] * rest > caps[i] * total]
        if not over:
            break
        for i in over:
            free[i], clamped[i] = False, True
            rest -= caps[i]
    else:
        raise RuntimeError("proportional_counts did not converge; the feasibility check was skipped")
    counts = [caps[i] if clamped[i] else 0 for i in range(n_layers)]
    if rest:
        remainders = []
        for i in range(n_layers):
            if free[i]:
                counts[i], r = divmod(weight[i] * rest, total)  # exact share weight*rest/total
                remainders.append((-r, i))
        left = rest - sum(counts[i] for i in range(n_layers) if free[i])
        # largest remainder (ties by layer order); counts[i] + 1 <= cap_i since a free share is <= cap_i
        for _, i in sorted(remainders)[:left]:
            counts[i] += 1
    return counts, clamped


def _global_cuts(weights, caps, k, ws, want_masks):
    """Water-filling: GP over each layer's own ``cap`` smallest weights. Layers with cap 0 stay dense."""
    live = [i for i, c in enumerate(caps) if c > 0]
    pools = []
    for i in live:
        w, cap = weights[i], caps[i]
        if cap < w.numel():
            own = layer_cut(w, cap, ws)
            pools.append(Pool(w, cap, own.t, own.ties))
        else:
            pools.append(Pool(w, cap))
    got, got_masks, reached = smallest_cuts(pools, k, ws, want_masks=want_masks)
    cuts: list[Cut] = [NO_CUT] * len(weights)
    masks: list[Tensor | None] = [torch.ones_like(w, dtype=torch.bool) if want_masks else None for w in weights]
    clamped = [False] * len(weights)
    for j, i in enumerate(live):
        cuts[i], masks[i] = got[j], got_masks[j]
        clamped[i] = got[j].pruned == caps[i] and reached[j] > caps[i]
    return cuts, masks, clamped


def _plan(model, sparsity, min_threshold, mode, include, exclude, want_masks):
    p = check_sparsity(sparsity)
    mt = check_min_threshold(min_threshold)
    if mode not in MT_MODES:
        raise PrunelimitError(f"mt_mode={mode!r} is not known; use one of {', '.join(MT_MODES)}")
    names, weights = prunable_layers(model, include, exclude)
    sizes = [w.numel() for w in weights]
    n_total = sum(sizes)
    k = prune_count(p, n_total)
    check_keeps_some(sparsity, k, n_total)
    floor = floor_of(n_total, mt)
    check_feasible(sizes, p, mt)
    ws = Workspace(key_space(weights, names), weights)
    gp_cuts, _ = global_magnitude_cuts(names, weights, k, ws=ws)
    gp = [c.pruned for c in gp_cuts]
    masks: list[Tensor | None] = [None] * len(weights)
    if mode == "proportional":
        counts, clamped = proportional_counts(sizes, gp, floor, k)
        if want_masks:
            for i, (w, c) in enumerate(zip(weights, counts)):
                # a layer that keeps its GP count keeps its GP cut: the layer's c smallest either way
                cut = gp_cuts[i] if c == gp[i] else layer_cut(w, c, ws)
                masks[i] = mask_from_cut(w, cut, ws)
    else:
        caps = [n - min(n, floor) for n in sizes]
        cuts, masks, clamped = _global_cuts(weights, caps, k, ws, want_masks)
        counts = [c.pruned for c in cuts]
    layers = tuple(LayerPlan(name, n, g, c, n - c, c / n if n else 0.0, cl, n <= floor)
                   for name, n, g, c, cl in zip(names, sizes, gp, counts, clamped))
    plan = MTPlan(mode, p, mt, floor, n_total, k, layers)
    if sum(counts) != k:
        raise RuntimeError(f"GP+MT pruned {sum(counts)} weights instead of {k}")
    return plan, masks


def min_threshold_plan(model: nn.Module, sparsity: float, min_threshold: float, *, mode: str = "proportional",
                       include=None, exclude=None) -> MTPlan:
    """Per-layer GP+MT decision (counts, clamping) without building masks."""
    with torch.no_grad():
        plan, _ = _plan(model, sparsity, min_threshold, mode, include, exclude, want_masks=False)
    return plan


def min_threshold_masks(model: nn.Module, sparsity: float, min_threshold: float, *, mode: str = "proportional",
                        include=None, exclude=None) -> dict[str, Tensor]:
    """GP+MT masks ``{parameter name: bool tensor}``, True = kept; exactly k pruned in total.

    Within a layer the pruned weights are that layer's smallest |w| (ties by flat index). MT = 0 gives
    exactly the GP masks. Logs (logger ``prunelimit``) which layers the floor clamped or left dense.
    """
    return min_threshold_plan_and_masks(model, sparsity, min_threshold, mode=mode, include=include,
                                        exclude=exclude)[1]


def min_threshold_plan_and_masks(model: nn.Module, sparsity: float, min_threshold: float, *,
                                 mode: str = "proportional", include=None,
                                 exclude=None) -> tuple[MTPlan, dict[str, Tensor]]:
    """``(min_threshold_plan(...), min_threshold_masks(...))`` from one selection pass."""
    with torch.no_grad():
        plan, masks = _plan(model, sparsity, min_threshold, mode, include, exclude, want_masks=True)
    log_plan(plan)
    return plan, {lp.name: m for lp, m in zip(plan.layers, masks)}


def log_plan(plan: MTPlan) -> None:
    logger.info("GP+MT (%s): floor %d weights per layer (min_threshold %g %% of N=%d), %d pruned",
                plan.mode, plan.floor, plan.min_threshold, plan.N, plan.k)
    if plan.clamped_layers:
        logger.info("layers clamped by the floor: %s", ", ".join(plan.clamped_layers))
    if plan.dense_layers:
        logger.info("layers left dense (n_l <= floor): %s", ", ".join(plan.dense_layers))
