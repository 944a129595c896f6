"""Plots of the limit stage (PNG, written atomically on rank 0).

Figures are built with ``matplotlib.figure.Figure`` and the Agg canvas directly, so plotting never touches
pyplot's global state or needs a display.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from prunelimit import dist
from prunelimit.limit.ordering import MagnitudeOrdering
from prunelimit.limit.width import Prediction
from prunelimit.runs.io import atomic_write_bytes
from prunelimit.errors import PrunelimitError

# legends use the summary's words for each rule, not the config's keys
RULE_WORDS = {"above_baseline": "test acc > unpruned", "acc_drop": "test acc drop <= delta",
              "loss_increase": "train loss <= L(w*) + eps"}
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


def _mark_limits(ax, prediction: Prediction | None, actual, label: bool) -> None:
    if prediction is not None and prediction.limit is not None:
        ax.axvline(prediction.limit, color="tab:green", ls="-.", lw=1.5,
                   label=f"predicted limit p*={prediction.limit:.3f}" if label else None)
    if actual is None:
        return
    items = actual.items() if isinstance(actual, Mapping) else [("above_baseline", actual)]
    for rule, p in items:
        if p is None:
            continue
        color, ls = _RULE_STYLE.get(rule, ("black", "--"))
        ax.axvline(float(p), color=color, ls=ls, lw=1.2, label=f"actual ({RULE_WORDS.get(rule, rule)}) p={float(p):.3f}" if label else None)


def _zoom_start(p: np.ndarray, rows, prediction: Prediction | None, actual) -> float | None:
    """Left edge of the zoomed panels: a little before the earliest marked limit (or the first drop)."""
    marks = [] if prediction is None or prediction.limit is None else [float(prediction.limit)]
    if isinstance(actual, Mapping):
        marks += [float(v) for v in actual.values() if v is not None]
    elif actual is not None:
        marks.append(float(actual))
    acc = _column(rows, "test_acc")
    if np.isfinite(acc).any():
        drop = np.nonzero(acc < np.nanmax(acc[:1]) - 1.0)[0]
        if drop.size:
            marks.append(float(p[drop[0]]))
    if not marks:
        return None
    lo = max(0.0, min(marks) - 0.05)
    return lo if lo > p.min() + 0.05 else None


def _draw_sweep(ax_acc, ax_loss, p, rows, prediction, actual, label: bool) -> None:
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
    _mark_limits(ax_acc, prediction, actual, label=label)
    _mark_limits(ax_loss, prediction, actual, label=False)
    ax_loss.set_xlabel("prune_fraction p (fraction of prunable weights removed)")
    _keep_axis(ax_acc)
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
    if label:
        ax_acc.legend(fontsize=8, loc="best")
        ax_loss.legend(fontsize=8, loc="best")


def plot_sweep(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], prediction: Prediction | None = None,
               actual: Mapping[str, float | None] | float | None = None, *, conventions: str | None = None
               ) -> Path | None:
    """Accuracy (top) and data loss (bottom) versus prune fraction for test and train, limits marked; when
    the limits sit near p = 1 (the usual case), a second column zooms in on them. ``conventions`` (e.g.
    ``results.conventions_line(result)``) becomes the figure's title."""
    if not rows:
        raise PrunelimitError("plot_sweep needs sweep rows; run run_sweep first")
    rows = sorted(rows, key=lambda r: float(r["prune_fraction"]))
    p = _column(rows, "prune_fraction")
    lo = _zoom_start(p, rows, prediction, actual)
    cols = 1 if lo is None else 2
    fig = Figure(figsize=(7 * cols, 7))
    axes = fig.subplots(2, cols, sharex="col", squeeze=False)
    _draw_sweep(axes[0, 0], axes[1, 0], p, rows, prediction, actual, label=True)
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


def plot_width(path: str | os.PathLike, prediction: Prediction,
               source: MagnitudeOrdering | Sequence[Mapping[str, Any]] | None = None, *,
               conventions: str | None = None) -> Path | None:
    """g(R(p)) and p against R: the predicted limit is where the two curves cross.

    ``source`` gives the real p(R): a ``MagnitudeOrdering`` (R on a fine grid) or sweep rows (their R
    column); without it the curve stored in ``prediction`` is used."""
    if not prediction.curve:
        raise PrunelimitError("prediction has no curve to plot; make it with predict_limit")
    r_curve, g_curve = np.asarray(prediction.curve["R"]), np.asarray(prediction.curve["g"])
    if isinstance(source, MagnitudeOrdering):
        p_real = np.linspace(0, 1, 1001)
        r_real = source.radii(p_real).numpy()
    elif source is not None:
        p_real, r_real = _column(source, "prune_fraction"), _column(source, "R")
    else:
        p_real, r_real = np.asarray(prediction.curve["p"]), r_curve
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.subplots()
    order = np.argsort(r_curve, kind="stable")
    ax.plot(r_curve[order], g_curve[order], color="tab:green", lw=1.5,
            label="theory: g(R)" + (" (R rounded)" if prediction.integer_R else ""))
    ax.plot(r_real, p_real, color="tab:blue", lw=1.2, label="network: prune_fraction p at R(p)")
    if prediction.limit is not None:
        ax.plot([prediction.R_at_limit], [prediction.limit], "o", color="tab:red",
                label=f"fixed point p*={prediction.limit:.3f}, R={prediction.R_at_limit:.3g}")
    ax.set_xlabel("R = ||w* - w_p||_2 (norm of the removed weights)")
    ax.set_ylabel("prune_fraction p  /  normalised width g(R)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"eps={prediction.eps:.3g}, q={prediction.flat_fraction:.3g}"
                 + (f"\n{conventions}" if conventions else ""), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
