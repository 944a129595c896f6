"""Gaussian width, loss epsilon, predicted and actual limits, config, result files and plots."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from prunelimit.limit import (READINGS, LimitConfig, MagnitudeOrdering, RuleLimit, actual_limit, actual_limits,
                              build_result, loss_epsilon, normalized_gaussian_width, predict_limit, rule_limit,
                              result_txt, rule_limits, write_result_files)


# ---- width --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lam, eps, R", [(1.0, 0.5, 2.0), (37.0, 0.01, 0.3), (1e-3, 2.0, 50.0)])
def test_width_single_eigenvalue_closed_form(lam, eps, R):
    assert normalized_gaussian_width([lam], [1.0], eps, R) == pytest.approx(2 * eps / (2 * eps + R * R * lam))


def test_width_hand_computed_mixture_and_flat_mass():
    nodes, weights = [0.0, -1.0, 4.0], [0.2, 0.3, 0.5]   # |lambda| is used: -1 counts as 1
    # eps = 0.5, R = 1: terms 1, 1/(1+1) = 0.5, 1/(1+4) = 0.2 -> 0.2*1 + 0.3*0.5 + 0.5*0.2 = 0.45
    assert normalized_gaussian_width(nodes, weights, 0.5, 1.0) == pytest.approx(0.45)
    assert normalized_gaussian_width(nodes, weights, 0.5, 1.0, flat_fraction=0.1) == pytest.approx(0.9 * 0.45 + 0.1)
    # unnormalised weights are normalised, as the original divides by the density sum
    assert normalized_gaussian_width(nodes, [2.0, 3.0, 5.0], 0.5, 1.0) == pytest.approx(0.45)
    assert normalized_gaussian_width(nodes, weights, 0.5, 1.0, flat_fraction=1.0) == 1.0


def test_width_limits_monotonicity_and_vector_forms():
    nodes, weights, q = np.array([0.0, 0.5, 3.0, 40.0]), np.array([0.1, 0.2, 0.3, 0.4]), 0.25
    assert normalized_gaussian_width(nodes, weights, 0.1, 0.0, q) == 1.0
    radii = np.linspace(0, 30, 301)
    g = normalized_gaussian_width(nodes, weights, 0.1, radii, q)
    assert isinstance(g, np.ndarray) and g.shape == radii.shape
    assert (np.diff(g) < 0).all()
    # far away only the flat mass and the exact zero eigenvalues remain: q + (1 - q) * 0.1
    assert normalized_gaussian_width(nodes, weights, 0.1, 1e9, q) == pytest.approx(q + (1 - q) * 0.1, rel=1e-6)
    gt = normalized_gaussian_width(torch.tensor(nodes), torch.tensor(weights), 0.1, torch.tensor(radii), q)
    assert isinstance(gt, torch.Tensor) and gt.dtype == torch.float64
    np.testing.assert_allclose(gt.numpy(), g)
    np.testing.assert_allclose(g[[0, 10]], [normalized_gaussian_width(nodes, weights, 0.1, r, q) for r in (0.0, 1.0)])


@pytest.mark.parametrize("kwargs, match", [
    (dict(eps=0.0), "eps"), (dict(eps=float("nan")), "eps"), (dict(nodes=[1.0, 2.0]), "same length"),
    (dict(weights=[-1.0]), ">= 0"), (dict(flat_fraction=1.5), "flat_fraction"), (dict(R=-1.0), "R must"),
    (dict(nodes=[]), "nodes"), (dict(weights=[float("inf")]), "weights")])
def test_width_errors(kwargs, match):
    args = dict(nodes=[1.0], weights=[1.0], eps=0.1, R=1.0, flat_fraction=0.0) | kwargs
    with pytest.raises(ValueError, match=match):
        normalized_gaussian_width(**args)


# ---- prediction ---------------------------------------------------------------------------------------------
def cubic_root(c, lam, eps, q):
    """Root in (0, 1) of (1-q) 2e/(2e + c^2 lam p^2) + q = p, i.e. c^2 lam p^3 - q c^2 lam p^2 + 2e p - 2e = 0."""
    a = c * c * lam
    roots = np.roots([a, -q * a, 2 * eps, -2 * eps])
    real = [r.real for r in roots if abs(r.imag) < 1e-12 and 0 < r.real < 1]
    assert len(real) == 1
    return real[0]


@pytest.mark.parametrize("c, lam, eps, q", [(10.0, 1.0, 0.05, 0.0), (3.0, 20.0, 0.2, 0.0), (5.0, 2.0, 0.01, 0.3)])
def test_fixed_point_matches_cubic_root(c, lam, eps, q):
    pred = predict_limit([lam], [1.0], eps, lambda p: c * p, flat_fraction=q, tol=1e-9)
    root = cubic_root(c, lam, eps, q)
    assert pred.limit == pytest.approx(root, abs=1e-8)
    assert pred.keep_fraction == pytest.approx(1 - root, abs=1e-8)
    assert pred.R_at_limit == pytest.approx(c * root, abs=1e-7)
    assert pred.g_at_limit == pytest.approx(root, abs=1e-6)
    assert pred.reason is None and len(pred.curve["p"]) == len(pred.curve["g"]) == len(pred.curve["R"])


def test_prediction_with_ordering_is_exact_on_counts():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    ordering = MagnitudeOrdering.from_model(model)
    nodes, weights, eps, q = [0.3, 2.0, 15.0], [0.5, 0.3, 0.2], 0.02, 0.05
    # independent: every count k, R_k from numpy's sorted squares, largest k with g(R_k) >= k/N
    sq = np.sort(np.concatenate([np.abs(m.weight.detach().numpy().ravel()) for m in (model[0], model[2])]))
    radii = np.sqrt(np.concatenate([[0.0], np.cumsum(sq.astype(np.float64) ** 2)]))
    n = len(sq)
    g = q + (1 - q) * sum(w * 2 * eps / (2 * eps + radii ** 2 * lam) for lam, w in zip(nodes, weights))
    k_star = int(np.nonzero(g >= np.arange(n + 1) / n)[0].max())
    for source in (ordering, ordering.radius):
        pred = predict_limit(nodes, weights, eps, source, flat_fraction=q)
        assert pred.limit == k_star / n
        assert pred.R_at_limit == pytest.approx(radii[k_star], rel=1e-9)


def test_no_fixed_point_gives_none_with_reason():
    pred = predict_limit([1.0], [1.0], 0.1, lambda p: 5 * p, flat_fraction=1.0)
    assert pred.limit is None and pred.keep_fraction is None and "no fixed point" in pred.reason
    tiny = predict_limit([1.0], [1.0], 1.0, lambda p: 1e-7 * p)
    assert tiny.limit is None and "no fixed point" in tiny.reason
    model = nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        model.weight.fill_(1e-9)
    pred = predict_limit([1.0], [1.0], 1.0, MagnitudeOrdering.from_model(model))
    assert pred.limit is None and "all prunable weights" in pred.reason


def test_integer_R_reproduces_original_and_differs_below_one():
    lam, eps, c = 100.0, 0.01, 0.9   # R(p) = 0.9 p < 1 everywhere
    cont = predict_limit([lam], [1.0], eps, lambda p: c * p, tol=1e-9)
    compat = predict_limit([lam], [1.0], eps, lambda p: c * p, integer_R=True)
    # the original: argmin over i/1000 of |g(round(R)) - p|, python's round (half to even)
    grid = [i / 1000 for i in range(1000)]
    diffs = [abs(2 * eps / (2 * eps + round(c * p) ** 2 * lam) - p) for p in grid]
    assert compat.limit == grid[diffs.index(min(diffs))] == 0.555
    assert cont.limit == pytest.approx(cubic_root(c, lam, eps, 0.0), abs=1e-8)
    assert abs(cont.limit - compat.limit) > 0.4
    # with R far above 1 the rounding hardly matters
    wide = predict_limit([lam], [1.0], eps, lambda p: 300 * p)
    wide_compat = predict_limit([lam], [1.0], eps, lambda p: 300 * p, integer_R=True)
    assert abs(wide.limit - wide_compat.limit) <= 2e-3


def test_predict_limit_errors():
    with pytest.raises(ValueError, match="radius_fn"):
        predict_limit([1.0], [1.0], 0.1, 3.0)
    with pytest.raises(ValueError, match=r"radius_fn\(.*\) returned"):
        predict_limit([1.0], [1.0], 0.1, lambda p: -1.0)
    with pytest.raises(ValueError, match="eps"):
        predict_limit([1.0], [1.0], -0.1, lambda p: p)
    with pytest.raises(ValueError, match="grid_points"):
        predict_limit([1.0], [1.0], 0.1, lambda p: p, integer_R=True, grid_points=1)


# ---- epsilon ------------------------------------------------------------------------------------------------
def test_loss_epsilon_is_std_of_batch_losses():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    model.train()
    batches = [(torch.randn(5, 3), torch.randn(5, 2)) for _ in range(6)]
    w, b = model.weight.detach().numpy(), model.bias.detach().numpy()
    by_hand = [float(np.mean((x.numpy() @ w.T + b - y.numpy()) ** 2)) for x, y in batches]
    eps, losses = loss_epsilon(model, batches, nn.functional.mse_loss)
    np.testing.assert_allclose(losses, by_hand, rtol=1e-5)
    mean = sum(by_hand) / 6
    assert eps == pytest.approx(math.sqrt(sum((v - mean) ** 2 for v in by_hand) / 5), rel=1e-5)
    eps0, _ = loss_epsilon(model, batches, nn.functional.mse_loss, ddof=0)
    assert eps0 == pytest.approx(math.sqrt(sum((v - mean) ** 2 for v in by_hand) / 6), rel=1e-5)
    assert model.training
    with pytest.raises(ValueError, match="at least 2 minibatches"):
        loss_epsilon(model, batches[:1], nn.functional.mse_loss)
    with pytest.raises(ValueError, match="ddof"):
        loss_epsilon(model, batches, nn.functional.mse_loss, ddof=2)
    with pytest.raises(ValueError, match="std = 0"):
        loss_epsilon(model, [batches[0], batches[0]], nn.functional.mse_loss)


# ---- actual rules ---------------------------------------------------------------------------------------------
def rows_from(acc, train_loss=None, penalty=None):
    """Hand-made sweep rows; ``train_loss`` is the DATA loss, ``penalty`` the L1 term (train_loss = their sum)."""
    ps = [i / 10 for i in range(len(acc))]
    tl = train_loss or [None] * len(acc)
    pen = penalty or [0.0] * len(acc)
    return [{"prune_fraction": p, "test_acc": a, "train_data_loss": t, "l1_penalty": q,
             "train_loss": None if t is None else t + q} for p, a, t, q in zip(ps, acc, tl, pen)]


def test_actual_rules_on_hand_made_rows():
    rows = rows_from([90.0, 90.5, 89.5, 90.2, 88.7, 80.0, 70.0], [0.10, 0.11, 0.13, 0.12, 0.2, 1.0, 2.0])
    assert actual_limit(rows, "above_baseline") == 0.3          # largest anywhere strictly above 90
    assert actual_limit(rows, "acc_drop", delta=1.0) == 0.3     # 0.4 drops 1.3 points
    assert actual_limit(rows, "acc_drop", delta=0.4) == 0.1     # 0.2 drops 0.5: first failure
    assert actual_limit(rows, "loss_increase", epsilon=0.025) == 0.1  # 0.13 > 0.125 stops it; 0.3 does not count
    assert actual_limit(list(reversed(rows)), "above_baseline") == 0.3
    assert actual_limit(rows, "acc_drop", delta=1.0, baseline=95.0) is None
    assert actual_limit(rows[1:], "above_baseline", baseline=90.0) == 0.3
    assert actual_limits(rows, delta=1.0, epsilon=0.025) == {"above_baseline": 0.3, "acc_drop": 0.3,
                                                            "loss_increase": 0.1}
    assert actual_limits(rows, delta=1.0)["loss_increase"] is None


def test_both_readings_of_every_rule():
    # accuracy dips at 0.2 and recovers at 0.3; the train data loss likewise
    rows = rows_from([90.0, 90.5, 89.5, 90.2, 88.7, 80.0, 70.0], [0.10, 0.11, 0.13, 0.12, 0.2, 1.0, 2.0])
    expect = {("above_baseline", "first_failure"): 0.1, ("above_baseline", "largest_passing"): 0.3,
              ("acc_drop", "first_failure"): 0.1, ("acc_drop", "largest_passing"): 0.3,
              ("loss_increase", "first_failure"): 0.1, ("loss_increase", "largest_passing"): 0.3}
    limits = rule_limits(rows, delta=0.4, epsilon=0.025)
    for (rule, reading), p in expect.items():
        assert limits[rule][reading] == RuleLimit(rule, reading, p)
        assert actual_limit(rows, rule, reading=reading, delta=0.4, epsilon=0.025) == p
    # "default": the original's reading for the original rule, first failure for the others
    assert actual_limits(rows, delta=0.4, epsilon=0.025) == {"above_baseline": 0.3, "acc_drop": 0.1,
                                                            "loss_increase": 0.1}
    assert actual_limits(rows, delta=0.4, epsilon=0.025, reading="largest_passing") == {
        "above_baseline": 0.3, "acc_drop": 0.3, "loss_increase": 0.3}
    with pytest.raises(ValueError, match="reading 'last'"):
        actual_limit(rows, "acc_drop", reading="last", delta=1.0)


def test_rule_that_never_holds_or_never_fails_is_null_with_a_reason():
    # accuracy never strictly above the unpruned 90 %: the original printed 0.0 here
    rows = rows_from([90.0, 90.0, 89.0, 90.0, 85.0])
    for reading in READINGS:
        lim = rule_limit(rows, "above_baseline", reading=reading)
        assert lim.prune_fraction is None and "never holds" in lim.reason and lim.lower_bound is None
    assert actual_limit(rows, "acc_drop", delta=1.0) == 0.3
    # accuracy within 1 point everywhere: the limit lies beyond the grid, and the answer says so
    flat = rows_from([90.0, 89.8, 89.5, 89.3, 89.9])
    for reading in READINGS:
        lim = rule_limit(flat, "acc_drop", reading=reading, delta=1.0)
        assert lim.prune_fraction is None and lim.lower_bound == 0.4 and "not reached on the grid" in lim.reason
    lim = rule_limit(flat, "above_baseline", reading="first_failure")
    assert lim.prune_fraction is None and "already at p = 0.1" in lim.reason


def test_loss_rule_uses_the_declared_loss():
    # the L1 term shrinks as weights go: the regularised loss FALLS with pruning while the data loss rises
    data = [0.10, 0.11, 0.20, 0.50, 1.50, 3.0]
    penalty = [0.60, 0.50, 0.38, 0.25, 0.12, 0.0]
    rows = rows_from([90.0, 89.0, 85.0, 70.0, 40.0, 10.0], data, penalty)
    assert actual_limit(rows, "loss_increase", epsilon=0.05) == 0.1                   # data loss: 0.2 > 0.15
    reg = rule_limit(rows, "loss_increase", epsilon=0.05, loss="regularized")          # 0.70, 0.61, 0.58, ...
    assert reg.prune_fraction == 0.3 and reg.reason is None                            # 0.5 + 0.25 > 0.75
    assert rule_limits(rows, epsilon=0.05, loss="regularized")["loss_increase"]["first_failure"] == reg
    with pytest.raises(ValueError, match="loss convention 'l1'"):
        actual_limit(rows, "loss_increase", epsilon=0.05, loss="l1")
    old = [{k: v for k, v in r.items() if k != "train_data_loss"} for r in rows]   # a table from before
    with pytest.raises(ValueError, match="before the data-loss columns existed"):
        actual_limit(old, "loss_increase", epsilon=0.05)
    assert actual_limit(old, "loss_increase", epsilon=0.05, loss="regularized") == 0.3


def test_actual_rule_errors():
    rows = rows_from([90.0, 89.0])
    with pytest.raises(ValueError, match="unknown limit rule 'best'"):
        actual_limit(rows, "best")
    with pytest.raises(ValueError, match="delta"):
        actual_limit(rows, "acc_drop")
    with pytest.raises(ValueError, match="evaluate_train"):
        actual_limit(rows, "loss_increase", epsilon=0.1)
    with pytest.raises(ValueError, match="p = 0 row"):
        actual_limit(rows[1:], "above_baseline")
    with pytest.raises(ValueError, match="empty"):
        actual_limit([], "above_baseline")


# ---- config -------------------------------------------------------------------------------------------------
def test_limit_config_defaults_and_errors():
    cfg = LimitConfig()
    assert cfg.epsilon == "loss_std" and cfg.rule == "above_baseline" and cfg.sweep_points == 1000
    assert cfg.loss == "data" and cfg.reading == "default" and cfg.epsilon_ddof == 0   # ddof 0 = the original's np.std
    assert LimitConfig(epsilon=0.05, rule="acc_drop", delta=0.5).epsilon == 0.05
    for kwargs, key in [(dict(epsilon="std"), "epsilon"), (dict(epsilon=-1.0), "epsilon"), (dict(epsilon=True), "epsilon"),
                        (dict(rule="max"), "rule"), (dict(delta=-1), "delta"), (dict(integer_R="yes"), "integer_R"),
                        (dict(sweep_points=1), "sweep_points"), (dict(sweep_points=10.0), "sweep_points"),
                        (dict(adaptive=1), "adaptive"), (dict(loss="l1"), "loss"), (dict(reading="first"), "reading"),
                        (dict(epsilon_ddof=2), "epsilon_ddof"), (dict(tail_points=-1), "tail_points"),
                        (dict(tail_points=5, adaptive=True), "tail_points"), (dict(epsilon_ddof=True), "epsilon_ddof"), (dict(adaptive=True, coarse_points=5000), "coarse_points"), (dict(coarse_points=1), "coarse_points")]:
        with pytest.raises(ValueError, match=f"limit.{key}"):
            LimitConfig(**kwargs)


# ---- result files and plots ---------------------------------------------------------------------------------
def test_result_files_three_lines_and_both_conventions(tmp_path):
    torch.manual_seed(0)
    ordering = MagnitudeOrdering.from_model(nn.Linear(10, 10))
    pred = predict_limit([1.0, 50.0], [0.5, 0.5], 0.05, ordering, flat_fraction=0.03)
    actual = {"above_baseline": 0.42, "acc_drop": 0.5, "loss_increase": None}
    result = build_result(pred, actual, ordering=ordering, delta=1.0)
    write_result_files(tmp_path, result)
    lines = (tmp_path / "result.txt").read_text().splitlines()
    assert lines == ["important ev rate: 0.03", f"predicted maximum pruning ratio: {pred.limit!r}",
                     "actual maximum pruning ratio: 0.42",
                     "conventions: loss data, actual = rule above_baseline read as largest_passing"]
    data = json.loads((tmp_path / "result.json").read_text())
    assert data["loss"] == "data" and data["reading"] == "default"
    assert data["predicted"]["prune_fraction"] == pred.limit
    assert data["predicted"]["keep_fraction"] == pytest.approx(1 - pred.limit)
    assert {k: data["actual"]["acc_drop"][k] for k in ("prune_fraction", "keep_fraction", "R", "reading")} == {
        "prune_fraction": 0.5, "keep_fraction": 0.5, "R": ordering.radius(0.5), "reading": "first_failure"}
    assert data["actual"]["loss_increase"]["prune_fraction"] is None
    assert data["eps"] == 0.05 and data["important_ev_rate"] == 0.03
    with pytest.raises(ValueError, match="missing keys"):
        write_result_files(tmp_path, {"eps": 1.0})
    with pytest.raises(ValueError, match="unknown rules"):
        build_result(pred, {"best": 0.3})


def test_result_reports_null_with_reason_and_every_reading(tmp_path):
    rows = rows_from([90.0, 90.0, 89.0, 89.5, 85.0, 80.0], [0.1, 0.12, 0.2, 0.11, 0.5, 1.0], [0.5, 0.4, 0.3, 0.2, 0.1, 0])
    limits = rule_limits(rows, delta=1.0, epsilon=0.05, loss="regularized")
    none = build_result(predict_limit([1.0], [1.0], 0.1, lambda p: p, flat_fraction=1.0), limits,
                        loss="regularized", reading="largest_passing")
    write_result_files(tmp_path, none)
    text = (tmp_path / "result.txt").read_text().splitlines()
    # never 0.0 and never a bare None: a word, the reason, and where the other rules' limits are
    assert text[1] == f"predicted maximum pruning ratio: none ({none['predicted']['reason']})"
    assert text[2] == ("actual maximum pruning ratio: none (never holds: the rule fails at every p > 0 on the grid; "
                       "result.json has acc_drop p = 0.3, loss_increase p = 0.4)")
    assert text[3] == "conventions: loss regularized, actual = rule above_baseline read as largest_passing"
    data = json.loads((tmp_path / "result.json").read_text())
    assert data["loss"] == "regularized"
    ab = data["actual"]["above_baseline"]
    assert ab["prune_fraction"] is None and ab["reason"].startswith("never holds")
    assert set(ab["readings"]) == set(READINGS)
    assert data["actual"]["acc_drop"]["prune_fraction"] == 0.3                          # largest passing
    assert data["actual"]["acc_drop"]["readings"]["first_failure"]["prune_fraction"] == 0.3
    # regularised losses 0.6, 0.52, 0.5, 0.31, 0.6, 1.0 against 0.6 + 0.05: the L1 term hides the rise to p = 0.4
    assert data["actual"]["loss_increase"]["prune_fraction"] == 0.4
    assert rule_limit(rows, "loss_increase", epsilon=0.05).prune_fraction == 0.1           # data loss: 0.2 > 0.15


def test_result_txt_of_a_model_without_accuracy_says_not_measured():
    # a language model's sweep has losses but no accuracy: only the loss rule gives a limit
    rows = [{**r, "test_acc": None} for r in rows_from([0.0] * 6, [0.5, 0.51, 0.52, 0.6, 0.9, 2.0])]
    pred = predict_limit([1.0, 50.0], [0.5, 0.5], 0.05, lambda p: 3 * p)
    result = build_result(pred, rule_limits(rows, epsilon=0.05), rule="loss_increase")
    lines = result_txt(result).splitlines()
    assert lines[1] == f"predicted maximum pruning ratio: {pred.limit!r}"      # a number: as the original writes it
    assert lines[2] == ("actual maximum pruning ratio: not measured (the sweep has no test accuracy (the model's "
                        "evaluation reports none, e.g. a language model); this rule needs accuracy — rule "
                        "'loss_increase' works from the loss alone; result.json has loss_increase p = 0.2)")
    assert result["actual"]["loss_increase"]["prune_fraction"] == 0.2        # 0.6 > 0.5 + 0.05 at p = 0.3
    # a rule still holding at the grid's last point gives its lower bound
    holding = build_result(pred, rule_limits(rows_from([90, 91, 92], [0.1, 0.1, 0.1]), epsilon=0.05))
    assert result_txt(holding).splitlines()[2].startswith("actual maximum pruning ratio: above 0.2 (not reached")


def test_plots_write_png(tmp_path):
    from prunelimit.limit import plot_sweep, plot_width

    torch.manual_seed(0)
    ordering = MagnitudeOrdering.from_model(nn.Linear(10, 10))
    pred = predict_limit([1.0, 50.0], [0.5, 0.5], 0.05, ordering)
    ps = [i / 20 for i in range(20)]
    rows = [{"prune_fraction": p, "R": ordering.radius(p), "test_acc": 90 - 80 * p ** 4, "train_acc": 95 - 80 * p ** 4,
             "test_loss": 0.2 + 10 * p ** 6, "train_loss": 0.1 + 10 * p ** 6} for p in ps]
    for path in (plot_sweep(tmp_path / "sweep.png", rows, pred, {"above_baseline": 0.3, "acc_drop": None}),
                 plot_width(tmp_path / "width.png", pred, ordering), plot_width(tmp_path / "w2.png", pred, rows)):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    with pytest.raises(ValueError, match="sweep rows"):
        plot_sweep(tmp_path / "x.png", [], pred)
