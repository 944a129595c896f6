"""The fundamental limit of pruning: sweep, Gaussian width, predicted versus actual limit.

    ordering = MagnitudeOrdering.from_model(model)
    rows = run_sweep(model, ordering, default_grid(1000), evaluate_test, evaluate_train)
    eps, _ = loss_epsilon(model, train_batches, loss_fn)
    pred = predict_limit(nodes, weights, eps, ordering, flat_fraction=q)
    limits = rule_limits(rows, delta=1.0, epsilon=eps, loss="data")   # {rule: {reading: RuleLimit}}
"""
from __future__ import annotations

from prunelimit.limit.config import LimitConfig
from prunelimit.limit.ordering import MagnitudeOrdering
from prunelimit.limit.results import build_result, conventions_line, result_txt, write_result_files
from prunelimit.limit.rules import (DEFAULT_READING, LOSSES, READINGS, RULES, RuleLimit, actual_limit, actual_limits,
                                    rule_limit, rule_limits)
from prunelimit.limit.sweep import (SWEEP_COLUMNS, adaptive_limit_search, check_grid, default_grid, read_sweep_csv,
                                    run_sweep)
from prunelimit.limit.width import Prediction, loss_epsilon, normalized_gaussian_width, predict_limit

__all__ = ["DEFAULT_READING", "LOSSES", "LimitConfig", "MagnitudeOrdering", "Prediction", "READINGS", "RULES",
           "RuleLimit", "SWEEP_COLUMNS", "actual_limit", "actual_limits", "adaptive_limit_search", "build_result",
           "check_grid", "conventions_line", "default_grid", "loss_epsilon", "normalized_gaussian_width", "plot_sweep",
           "plot_width", "predict_limit", "read_sweep_csv", "result_txt", "rule_limit", "rule_limits", "run_sweep",
           "write_result_files"]


def __getattr__(name: str):
    # plots import matplotlib (slow); load them on first use.
    if name in ("plot_sweep", "plot_width"):
        from prunelimit.limit import plots

        return getattr(plots, name)
    raise AttributeError(f"module 'prunelimit.limit' has no attribute {name!r}")
