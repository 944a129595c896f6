"""Plots of the limit stage (PNG, written atomically on rank 0).

Figures are built with ``matplotlib.figure.Figure`` and the Agg canvas directly, so plotting never touches
pyplot's global state or needs a display.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from prunelimit import dist
from prunelimit.limit.ordering import MagnitudeOrdering
from prunelimit.limit.width import Prediction
from prunelimit.limit.results import ORIGINAL_RULE, rule_words
from prunelimit.runs.io import atomic_write_bytes
from prunelimit.errors import PrunelimitError

_RULE_STYLE = {"above_baseline": ("tab:red", "-"), "acc_drop": ("tab:orange", "--"), "loss_increase": ("tab:purple", ":")}


def _save(fig: Figure, path: str | os.PathLike) -> Path | None:
    if not dist.is_main():
        return None
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=150, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())


def _column(rows: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    return np.array([np.nan if r.get(key) in (None, "") else float(r[key]) for r in rows])


def _keep_axis(ax) -> None:
    # keep_fraction = 1 - prune_fraction is its own inverse, so one function serves both directions.
    top = ax.secondary_xaxis("top", functions=(lambda p: 1 - p, lambda k: 1 - k))
    top.set_xlabel("keep_fraction (1 - prune_fraction)")


def _mark_limits(ax, prediction: Prediction | None, actual, label: bool, delta: float | None = None) -> None:
    if prediction is not None and prediction.limit is not None:
        ax.axvline(prediction.limit, color="tab:green", ls="-.", lw=1.5,
                   label=f"predicted limit p*={prediction.limit:.3f}" if label else None)
    for rule, p in _actual_items(actual):
        color, ls = _RULE_STYLE.get(rule, ("black", "--"))
        ax.axvline(float(p), color=color, ls=ls, lw=1.2, label=f"actual ({rule_words(rule, delta)}) p={float(p):.3f}" if label else None)


def _zoom_start(p: np.ndarray, rows, prediction: Prediction | None, actual) -> float | None:
    """Left edge of the zoomed panels: a little before the earliest marked limit (or the first drop)."""
    marks = [] if prediction is None or prediction.limit is None else [float(prediction.limit)]
    marks += [p for _, p in _actual_items(actual)]
    acc = _column(rows, "test_acc")
    if np.isfinite(acc).any():
        drop = np.nonzero(acc < np.nanmax(acc[:1]) - 1.0)[0]
        if drop.size:
            marks.append(float(p[drop[0]]))
    if not marks:
        return None
    lo = max(0.0, min(marks) - 0.05)
    return lo if lo > p.min() + 0.05 else None


def _draw_sweep(ax_acc, ax_loss, p, rows, prediction, actual, label: bool, delta: float | None = None) -> None:
    for key, color, name in (("test_acc", "tab:blue", "test"), ("train_acc", "black", "train")):
        y = _column(rows, key)
        if np.isfinite(y).any():
            ax_acc.plot(p, y, color=color, lw=1.2, label=f"{name} accuracy")
    # the data loss (criterion alone); tables from before that column existed only have the evaluator's loss
    have_data = np.isfinite(_column(rows, "test_data_loss")).any()
    suffix, plotted = ("data loss", "_data_loss") if have_data else ("loss", "_loss")
    for split, color in (("test", "tab:blue"), ("train", "black")):
        y = _column(rows, split + plotted)
        if np.isfinite(y).any():
            ax_loss.plot(p, y, color=color, lw=1.2, label=f"{split} {suffix}")
    penalty = _column(rows, "l1_penalty")
    reg = _column(rows, "train_loss")
    if have_data and np.isfinite(penalty).any() and np.nanmax(penalty) > 0 and np.isfinite(reg).any():
        ax_loss.plot(p, reg, color="grey", lw=0.8, ls=":", label="train data loss + L1 term (regularised)")
    losses = np.concatenate([_column(rows, "test" + plotted), _column(rows, "train" + plotted)])
    losses = losses[np.isfinite(losses)]
    if losses.size and losses.min() > 0 and losses.max() / losses.min() > 5:
        ax_loss.set_yscale("log")   # pruning near 1 blows the loss up by orders of magnitude
    _mark_limits(ax_acc, prediction, actual, label=label, delta=delta)
    _mark_limits(ax_loss, prediction, actual, label=False)
    ax_loss.set_xlabel("prune_fraction p (fraction of prunable weights removed)")
    _keep_axis(ax_acc)
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
    if label:
        ax_acc.legend(fontsize=8, loc="best")
        ax_loss.legend(fontsize=8, loc="best")


def plot_sweep(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], prediction: Prediction | None = None,
               actual: Mapping[str, float | None] | float | None = None, *, conventions: str | None = None,
               delta: float | None = None) -> Path | None:
    """Accuracy (top) and data loss (bottom) versus prune fraction for test and train, limits marked; when
    the limits sit near p = 1 (the usual case), a second column zooms in on them. ``conventions`` (e.g.
    ``results.conventions_line(result)``) becomes the figure's title; ``delta`` (the acc_drop rule's allowed
    drop, in points) is named in that rule's legend entry."""
    if not rows:
        raise PrunelimitError("plot_sweep needs sweep rows; run run_sweep first")
    rows = sorted(rows, key=lambda r: float(r["prune_fraction"]))
    p = _column(rows, "prune_fraction")
    lo = _zoom_start(p, rows, prediction, actual)
    cols = 1 if lo is None else 2
    fig = Figure(figsize=(7 * cols, 7))
    axes = fig.subplots(2, cols, sharex="col", squeeze=False)
    _draw_sweep(axes[0, 0], axes[1, 0], p, rows, prediction, actual, label=True, delta=delta)
    axes[0, 0].set_ylabel("accuracy (%)")
    axes[1, 0].set_ylabel("loss")
    if lo is not None:
        sel = p >= lo
        zoom_rows = [r for r, keep in zip(rows, sel) if keep]
        _draw_sweep(axes[0, 1], axes[1, 1], p[sel], zoom_rows, prediction, actual, label=False)
        axes[0, 1].set_title(f"zoom: p >= {lo:.3f}", fontsize=9)
        axes[0, 1].set_xlim(lo, float(p.max()) + 0.002)
    if conventions:
        fig.suptitle(conventions, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _actual_items(actual) -> list[tuple[str, float]]:
    """``actual`` (rule -> prune fraction or None, or one bare number for the original rule) as
    ``[(rule, p)]`` in a fixed order, the rules without a limit left out."""
    if actual is None:
        return []
    items = actual.items() if isinstance(actual, Mapping) else [(ORIGINAL_RULE, actual)]
    return [(rule, float(p)) for rule, p in items if p is not None]


_ACTUAL_MARKERS = {"above_baseline": "s", "acc_drop": "D", "loss_increase": "^"}


def _network_curve(prediction: Prediction, source) -> tuple[np.ndarray, np.ndarray, Callable[[float], float]]:
    """``(p, R, radius)``: the network's p(R) to draw and the p -> R used for the actual limits' markers
    (the ordering's own ``radius`` when given, so a marker sits exactly where ``result.json`` puts it)."""
    if isinstance(source, MagnitudeOrdering):
        # uniform in p plus a geometric tail towards p = 1, where the limits of L1-trained nets sit
        tail = 1.0 - np.geomspace(0.1, 1.0 / max(source.num_weights, 10), 400)
        p_real = np.unique(np.concatenate([np.linspace(0, 1, 1001), tail]))
        return p_real, source.radii(p_real).numpy(), source.radius
    if source is not None:
        p_real, r_real = _column(source, "prune_fraction"), _column(source, "R")
    else:
        p_real, r_real = np.asarray(prediction.curve["p"]), np.asarray(prediction.curve["R"])
    order = np.argsort(p_real, kind="stable")
    p_real, r_real = p_real[order], r_real[order]
    return p_real, r_real, lambda p: float(np.interp(p, p_real, r_real))


def _zoom_window(marks: list[tuple[float, float]]) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """``((R_lo, R_hi), (p_lo, p_hi))`` around the marked limits: their span plus half of it on each side
    (at least a quarter of the largest R and 0.02 in p), so the crossing fills the panel."""
    if not marks:
        return None
    rs, ps = [r for r, _ in marks], [p for _, p in marks]
    r_pad = max(0.5 * (max(rs) - min(rs)), 0.25 * max(rs), 1e-12)
    p_pad = max(0.5 * (max(ps) - min(ps)), 0.02)
    return ((max(0.0, min(rs) - r_pad), max(rs) + r_pad),
            (max(0.0, min(ps) - p_pad), min(1.0, max(ps) + p_pad) + 0.002))


def width_figure(prediction: Prediction, source: MagnitudeOrdering | Sequence[Mapping[str, Any]] | None = None,
                 actual: Mapping[str, float | None] | float | None = None, *, conventions: str | None = None,
                 delta: float | None = None) -> Figure:
    """The figure ``plot_width`` writes. Markers carry gids (``"predicted"``, ``"actual:<rule>"``) and the
    zoomed axes the label ``"zoom"``, so tests can read the drawn positions back."""
    if not prediction.curve:
        raise PrunelimitError("prediction has no curve to plot; make it with predict_limit")
    r_curve, g_curve = np.asarray(prediction.curve["R"]), np.asarray(prediction.curve["g"])
    p_real, r_real, radius = _network_curve(prediction, source)
    marks = []   # (gid, label, R, p, color, marker)
    if prediction.limit is not None:
        marks.append(("predicted", f"predicted fixed point p*={prediction.limit:.3f}, R={prediction.R_at_limit:.3g}",
                      float(prediction.R_at_limit), float(prediction.limit), "black", "o"))
    for rule, p in _actual_items(actual):
        marks.append((f"actual:{rule}", f"actual ({rule_words(rule, delta)}) p={p:.3f}", radius(p), p,
                      _RULE_STYLE.get(rule, ("grey", "--"))[0], _ACTUAL_MARKERS.get(rule, "v")))
    window = _zoom_window([(m[2], m[3]) for m in marks])
    fig = Figure(figsize=(12.5, 5) if window else (6.5, 4.5))
    axes = fig.subplots(1, 2 if window else 1, squeeze=False)[0]
    order = np.argsort(r_curve, kind="stable")
    for i, ax in enumerate(axes):
        first = i == 0
        ax.plot(r_curve[order], g_curve[order], color="tab:green", lw=1.5,
                label=("theory: g(R)" + (" (R rounded)" if prediction.integer_R else "")) if first else None)
        ax.plot(r_real, p_real, color="tab:blue", lw=1.2, label="network: prune_fraction p at R(p)" if first else None)
        for gid, label, r, p, color, marker in marks:
            dot, = ax.plot([r], [p], marker, color=color, ms=7, mec="black" if color != "black" else "white",
                           label=label if first else None)
            dot.set_gid(gid)
            if not first:   # guides to read each limit off the p axis
                ax.axhline(p, color=color, lw=0.7, ls=":")
        ax.set_xlabel("R = ||w* - w_p||_2 (norm of the removed weights)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("prune_fraction p  /  normalised width g(R)")
    axes[0].set_ylim(-0.02, 1.02)
    axes[0].legend(fontsize=8, loc="best")
    if window:
        (r_lo, r_hi), (p_lo, p_hi) = window
        zoom = axes[1]
        zoom.set_label("zoom")
        zoom.set_xlim(r_lo, r_hi)
        zoom.set_ylim(p_lo, p_hi)
        zoom.set_title(f"zoom: R in [{r_lo:.3g}, {r_hi:.3g}], p in [{p_lo:.3f}, {p_hi:.3f}]", fontsize=9)
        axes[0].indicate_inset((r_lo, p_lo, r_hi - r_lo, p_hi - p_lo), edgecolor="grey")
    fig.suptitle(f"Gaussian width fixed point: eps={prediction.eps:.3g}, q={prediction.flat_fraction:.3g}"
                 + ("" if prediction.limit is not None else f" (no fixed point: {prediction.reason})")
                 + (f"\n{conventions}" if conventions else ""), fontsize=9)
    fig.tight_layout()
    return fig


def plot_width(path: str | os.PathLike, prediction: Prediction,
               source: MagnitudeOrdering | Sequence[Mapping[str, Any]] | None = None,
               actual: Mapping[str, float | None] | float | None = None, *,
               conventions: str | None = None, delta: float | None = None) -> Path | None:
    """g(R(p)) and p against R: the predicted limit is where the two curves cross; the actual limits
    (``actual``: rule -> prune fraction, as for ``plot_sweep``) are marked on the network's curve, and a
    second panel zooms in on all of them (the crossing of an L1-trained net sits in a corner of the first).

    ``source`` gives the real p(R): a ``MagnitudeOrdering`` (R on a fine grid) or sweep rows (their R
    column); without it the curve stored in ``prediction`` is used. ``conventions`` and ``delta`` as for
    ``plot_sweep``."""
    return _save(width_figure(prediction, source, actual, conventions=conventions, delta=delta), path)
