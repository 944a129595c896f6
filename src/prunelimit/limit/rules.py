"""Actual pruning limits read off a measured sweep.

Three rules, all returning a prune fraction p from the sweep grid:

- ``"above_baseline"`` (the original's rule): the largest p ANYWHERE on the grid whose test accuracy is
  strictly greater than the unpruned test accuracy (the p = 0 row). The original scans from the top of the
  grid down and stops at the first such p; when no p > 0 beats the baseline (common on small test sets,
  where accuracy ties it) the original leaves the value undefined and we return 0.0.
- ``"acc_drop"``: baseline_acc - acc <= delta (accuracy points). The limit is the largest p BEFORE THE
  FIRST FAILURE, i.e. every p' <= p satisfies the rule. A late recovery of accuracy does not count.
- ``"loss_increase"``: train_loss <= L(w*) + epsilon, L(w*) = the train loss at p = 0; also the largest p
  before the first failure.

When the rule never fails on the grid the answer is the last grid p (the real limit is at least that).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence
from prunelimit.errors import PrunelimitError

RULES = ("above_baseline", "acc_drop", "loss_increase")


def _num(row: Mapping[str, Any], key: str) -> float | None:
    v = row.get(key)
    if v is None or v == "":
        return None
    v = float(v)
    return None if math.isnan(v) else v


def _sorted_rows(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    if not rows:
        raise PrunelimitError("sweep rows are empty; run the sweep (run_sweep) before reading limits off it")
    if any("prune_fraction" not in r for r in rows):
        raise PrunelimitError("every sweep row needs a 'prune_fraction' column; pass the rows run_sweep returns")
    return sorted(rows, key=lambda r: float(r["prune_fraction"]))


def _baseline_row(rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    first = rows[0]
    return first if float(first["prune_fraction"]) == 0.0 else None


def rule_predicate(rule: str, *, baseline: float | None, baseline_loss: float | None, delta: float | None,
                   epsilon: float | None):
    """``row -> bool`` for ``rule`` given the unpruned test accuracy / train loss (validated here)."""
    if rule not in RULES:
        raise PrunelimitError(f"unknown limit rule {rule!r}; choose one of {', '.join(RULES)}")
    if rule in ("above_baseline", "acc_drop") and baseline is None:
        raise PrunelimitError(f"rule {rule!r} needs the unpruned test accuracy: include the p = 0 row or pass baseline=")
    if rule == "above_baseline":
        return lambda row: _num(row, "test_acc") is not None and _num(row, "test_acc") > baseline
    if rule == "acc_drop":
        if delta is None or not delta >= 0:
            raise PrunelimitError(f"rule 'acc_drop' needs delta >= 0 (allowed accuracy drop in points); got {delta}")
        return lambda row: _num(row, "test_acc") is not None and baseline - _num(row, "test_acc") <= delta
    if epsilon is None or not epsilon > 0:
        raise PrunelimitError(f"rule 'loss_increase' needs epsilon > 0 (allowed train-loss increase); got {epsilon}")
    if baseline_loss is None:
        raise PrunelimitError("rule 'loss_increase' needs the unpruned train loss: sweep with evaluate_train and "
                         "include the p = 0 row, or pass baseline_loss=")
    return lambda row: _num(row, "train_loss") is not None and _num(row, "train_loss") <= baseline_loss + epsilon


def actual_limit(rows: Sequence[Mapping[str, Any]], rule: str, *, baseline: float | None = None,
                 baseline_loss: float | None = None, delta: float | None = None,
                 epsilon: float | None = None) -> float | None:
    """The actual limit (a prune fraction) of ``rule`` on sweep ``rows`` (see the module docstring).

    ``baseline`` / ``baseline_loss`` default to the p = 0 row's test accuracy / train loss. Returns
    ``None`` only for the first-failure rules when even the first row fails (e.g. a user baseline above
    the unpruned accuracy)."""
    rows = _sorted_rows(rows)
    base = _baseline_row(rows)
    if baseline is None and base is not None:
        baseline = _num(base, "test_acc")
    if baseline_loss is None and base is not None:
        baseline_loss = _num(base, "train_loss")
    if rule == "loss_increase" and all(_num(r, "train_loss") is None for r in rows):
        raise PrunelimitError("rule 'loss_increase' needs train losses; run the sweep with evaluate_train")
    ok = rule_predicate(rule, baseline=baseline, baseline_loss=baseline_loss, delta=delta, epsilon=epsilon)
    if rule == "above_baseline":
        hits = [float(r["prune_fraction"]) for r in rows if ok(r)]
        return max(hits) if hits else 0.0
    limit = None
    for r in rows:
        if not ok(r):
            break
        limit = float(r["prune_fraction"])
    return limit


def actual_limits(rows: Sequence[Mapping[str, Any]], *, baseline: float | None = None,
                  baseline_loss: float | None = None, delta: float = 1.0,
                  epsilon: float | None = None) -> dict[str, float | None]:
    """All rules at once: ``{rule: prune fraction or None}``; a rule whose inputs are missing (no train
    losses, no epsilon) is ``None`` instead of an error."""
    out: dict[str, float | None] = {}
    have_train = any(_num(r, "train_loss") is not None for r in rows)
    for rule in RULES:
        if rule == "loss_increase" and (epsilon is None or not have_train):
            out[rule] = None
            continue
        out[rule] = actual_limit(rows, rule, baseline=baseline, baseline_loss=baseline_loss, delta=delta,
                                 epsilon=epsilon)
    return out
