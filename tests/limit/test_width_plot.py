"""gaussian_width.png: the crossing zoomed, and the markers where result.json says the limits are."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from prunelimit.cli.main import main
from prunelimit.limit import MagnitudeOrdering, predict_limit
from prunelimit.limit import plots
from prunelimit.limit.plots import rule_words, width_figure
from prunelimit.spectrum import plots as spectrum_plots

PNG = b"\x89PNG\r\n\x1a\n"


def _markers(ax) -> dict[str, tuple[float, float]]:
    return {line.get_gid(): (float(line.get_xdata()[0]), float(line.get_ydata()[0]))
            for line in ax.get_lines() if line.get_gid()}


def test_gaussian_width_png_zooms_and_marks_the_limits_of_result_json(tmp_path, monkeypatch, capsys):
    figures, save = {}, plots._save

    def keep(fig, path):   # the pipeline's own figure, read back after the run
        figures[Path(path).name] = fig
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    monkeypatch.setattr(spectrum_plots, "_save", keep)
    out = tmp_path / "run"
    args = ["run", "pipeline=limit", "train.epochs=15", "limit.sweep_points=100", "spectrum.lanczos_iter=16",
            "spectrum.trace_samples=0", "spectrum.top_k=1", "spectrum.important_eigs=true", "spectrum.row_quantiles=5",
            "--out", out, "--no-progress"]
    assert main([str(a) for a in args]) == 0, capsys.readouterr().err
    # every figure of the limit stage says which model on which data it shows
    assert set(figures) == {"sweep.png", "gaussian_width.png", "spectral_density.png", "hessian_row_norms.png"}
    for name, f in figures.items():
        titles = [f._suptitle.get_text() if f._suptitle else ""] + [ax.get_title() for ax in f.axes]
        assert any("fc_small on digits" in t for t in titles), name
        internal = ("above_baseline", "acc_drop", "loss_increase", "largest_passing", "first_failure")
        assert not any(key in t for t in titles for key in internal), (name, titles)   # the summary's words
    assert (out / "limit" / "gaussian_width.png").read_bytes()[:8] == PNG
    result = json.loads((out / "limit" / "result.json").read_text())
    expected = {"predicted": (result["predicted"]["R"], result["predicted"]["prune_fraction"])}
    expected.update({f"actual:{rule}": (v["R"], v["prune_fraction"]) for rule, v in result["actual"].items()
                     if v["prune_fraction"] is not None})
    assert len(expected) >= 3   # the prediction and at least two rules' limits on this run
    fig = figures["gaussian_width.png"]
    full, = [ax for ax in fig.axes if ax.get_label() != "zoom"]
    zoom, = [ax for ax in fig.axes if ax.get_label() == "zoom"]
    for ax in (full, zoom):
        drawn = _markers(ax)
        assert set(drawn) == set(expected)
        for gid, (r, p) in expected.items():
            assert drawn[gid] == pytest.approx((r, p), rel=1e-12, abs=1e-15), gid
    # the zoom holds every marker and is fitted to them: at most twice their spread (or 0.04) in p
    (x0, x1), (y0, y1) = zoom.get_xlim(), zoom.get_ylim()
    assert all(x0 <= r <= x1 and y0 <= p <= y1 for r, p in expected.values())
    spread = max(p for _, p in expected.values()) - min(p for _, p in expected.values())
    assert y1 - y0 <= 2 * max(spread, 0.02) + 0.005
    # legends in the summary's words, with each rule's measured value
    labels = [t.get_text() for t in full.get_legend().get_texts()]
    for rule, v in result["actual"].items():
        if v["prune_fraction"] is not None:
            assert f"actual ({rule_words(rule, result['delta'])}) p={v['prune_fraction']:.3f}" in labels
    sweep_labels = [t.get_text() for t in figures["sweep.png"].axes[0].get_legend().get_texts()]
    assert any("test acc drop <= 1 point)" in t for t in sweep_labels + labels)   # delta's value, not 'delta'
    assert not any("delta" in t for t in sweep_labels + labels)


def _prediction(eps: float, flat: float = 0.0):
    torch.manual_seed(0)
    ordering = MagnitudeOrdering.from_model(nn.Linear(10, 10))
    return predict_limit([1.0, 50.0], [0.5, 0.5], eps, ordering, flat_fraction=flat), ordering


def test_width_figure_without_a_fixed_point_zooms_on_the_actual_limit_alone():
    pred, ordering = _prediction(0.05, flat=1.0)   # every direction flat: g = 1, no fixed point
    assert pred.limit is None
    fig = width_figure(pred, ordering, 0.3)    # a bare number is the original rule's limit
    zoom, = [ax for ax in fig.axes if ax.get_label() == "zoom"]
    assert _markers(zoom) == {"actual:above_baseline": pytest.approx((ordering.radius(0.3), 0.3))}
    assert "no fixed point" in fig._suptitle.get_text()
    bare = width_figure(pred, ordering)        # nothing to mark: one panel, no zoom
    assert len(bare.axes) == 1 and not _markers(bare.axes[0])


def test_width_figure_from_sweep_rows_places_actual_limits_on_their_R():
    pred, ordering = _prediction(0.05)
    ps = np.arange(20) / 20
    rows = [{"prune_fraction": p, "R": ordering.radius(p)} for p in ps]
    drawn = _markers(width_figure(pred, rows, {"acc_drop": 0.45, "loss_increase": None}).axes[1])
    assert drawn["actual:acc_drop"] == pytest.approx((ordering.radius(0.45), 0.45), rel=1e-12)
    assert "actual:loss_increase" not in drawn
    assert drawn["predicted"] == pytest.approx((pred.R_at_limit, pred.limit))
