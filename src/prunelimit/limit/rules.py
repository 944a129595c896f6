"""Actual pruning limits read off a measured sweep: three rules, each in two readings.

Rules (a predicate on one sweep row):

- ``"above_baseline"`` (the original's rule): test accuracy strictly greater than the unpruned test
  accuracy (the p = 0 row).
- ``"acc_drop"``: baseline_acc - acc <= delta (accuracy points).
- ``"loss_increase"``: train loss <= L(w*) + epsilon, L(w*) = the train loss at p = 0. Which train loss is
  a declared convention (``loss``): ``"data"`` (the criterion alone, column ``train_data_loss``; our
  default) or ``"regularized"`` (criterion + lambda * ||theta||_1, column ``train_loss``, what the original
  computes). The L1 term shrinks as weights are pruned, so the regularised loss can FALL with pruning
  and declare a wrecked network "within epsilon".

Readings (how a curve of true/false becomes one p):

- ``"first_failure"``: the largest p such that every grid p' <= p satisfies the rule (for
  ``above_baseline``, every p' in (0, p]: the p = 0 row cannot beat itself). A late recovery does not count.
- ``"largest_passing"``: the largest p anywhere on the grid that satisfies the rule. The original code
  reads its rule this way (it scans from the top of the grid down and stops at the first hit).

Defaults (``DEFAULT_READING``): the original's reading for the original rule, ``first_failure`` for the
two others. A reading that has no answer on the grid gives ``prune_fraction = None`` and a ``reason``,
never a number that looks like a limit: the rule never holds (nothing to report), or it still holds at
the last grid point (the limit lies beyond the grid; ``lower_bound`` is that last point).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence
from prunelimit.errors import PrunelimitError

RULES = ("above_baseline", "acc_drop", "loss_increase")
READINGS = ("first_failure", "largest_passing")
DEFAULT_READING = {"above_baseline": "largest_passing", "acc_drop": "first_failure", "loss_increase": "first_failure"}
LOSSES = ("data", "regularized")
LOSS_COLUMN = {"data": "train_data_loss", "regularized": "train_loss"}


@dataclass(frozen=True)
class RuleLimit:
    """One rule read one way off one sweep."""
    rule: str
    reading: str
    prune_fraction: float | None   # the limit; None when the grid gives no answer (see reason)
    reason: str | None = None      # why prune_fraction is None
    lower_bound: float | None = None  # set when the rule still holds at the last grid point

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def check_loss(loss: str) -> str:
    if loss not in LOSSES:
        raise PrunelimitError(f"loss convention {loss!r} is not known; use 'data' (the criterion alone) or "
                         f"'regularized' (criterion + the L1 term)")
    return loss


def check_reading(rule: str, reading: str | None) -> str:
    if rule not in RULES:
        raise PrunelimitError(f"unknown limit rule {rule!r}; choose one of {', '.join(RULES)}")
    if reading is None or reading == "default":
        return DEFAULT_READING[rule]
    if reading not in READINGS:
        raise PrunelimitError(f"rule reading {reading!r} is not known; use 'first_failure', 'largest_passing' or "
                         f"'default' (the original's reading for above_baseline, first_failure otherwise)")
    return reading


def rule_predicate(rule: str, *, baseline: float | None, baseline_loss: float | None, delta: float | None,
                   epsilon: float | None, loss: str = "data"):
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
    column = LOSS_COLUMN[check_loss(loss)]
    if epsilon is None or not epsilon > 0:
        raise PrunelimitError(f"rule 'loss_increase' needs epsilon > 0 (allowed train-loss increase); got {epsilon}")
    if baseline_loss is None:
        raise PrunelimitError(f"rule 'loss_increase' needs the unpruned train loss ({column}): sweep with evaluate_train "
                         f"and include the p = 0 row, or pass baseline_loss=")
    return lambda row: _num(row, column) is not None and _num(row, column) <= baseline_loss + epsilon


def _read(rule: str, reading: str, rows: list[Mapping[str, Any]], ok) -> RuleLimit:
    ps = [float(r["prune_fraction"]) for r in rows]
    # above_baseline compares with the p = 0 row itself, which can never pass: it is not part of the scan.
    scan = [(p, ok(r)) for p, r in zip(ps, rows) if not (rule == "above_baseline" and p == 0.0)]
    if not scan:
        return RuleLimit(rule, reading, None, "the sweep has no prune fraction above 0 to test")
    if reading == "largest_passing":
        passing = [p for p, good in scan if good]
        limit = max(passing) if passing else None
    else:
        limit = None
        for p, good in scan:
            if not good:
                break
            limit = p
    if limit is None:
        where = "at every p > 0 on the grid" if reading == "largest_passing" else f"already at p = {scan[0][0]:g}"
        return RuleLimit(rule, reading, None, f"never holds: the rule fails {where}")
    if limit == ps[-1]:
        return RuleLimit(rule, reading, None, f"not reached on the grid: the rule still holds at its last point "
                         f"p = {limit:g}, so the limit is above it (sweep a finer grid near 1: limit.tail_points)",
                         lower_bound=limit)
    return RuleLimit(rule, reading, limit)


def rule_limit(rows: Sequence[Mapping[str, Any]], rule: str, *, reading: str | None = None,
               baseline: float | None = None, baseline_loss: float | None = None, delta: float | None = None,
               epsilon: float | None = None, loss: str = "data") -> RuleLimit:
    """``rule`` read off sweep ``rows`` in ``reading`` (None / "default": ``DEFAULT_READING[rule]``).

    ``baseline`` / ``baseline_loss`` default to the p = 0 row's test accuracy / train loss (the ``loss``
    convention's column)."""
    reading = check_reading(rule, reading)
    rows = _sorted_rows(rows)
    base = _baseline_row(rows)
    column = LOSS_COLUMN[check_loss(loss)]
    if baseline is None and base is not None:
        baseline = _num(base, "test_acc")
    if baseline_loss is None and base is not None:
        baseline_loss = _num(base, column)
    if rule != "loss_increase" and _no_accuracy(rows):
        raise PrunelimitError(f"rule {rule!r}: {NEEDS_ACCURACY}")
    if rule == "loss_increase" and all(_num(r, column) is None for r in rows):
        hint = (" (a table written before the data-loss columns existed: rerun the sweep, or use "
                "limit.loss: regularized)" if loss == "data" and any(_num(r, "train_loss") is not None for r in rows)
                else "")
        raise PrunelimitError(f"rule 'loss_increase' needs train losses (column {column}); run the sweep with "
                         f"evaluate_train{hint}")
    ok = rule_predicate(rule, baseline=baseline, baseline_loss=baseline_loss, delta=delta, epsilon=epsilon,
                        loss=loss)
    return _read(rule, reading, rows, ok)


def actual_limit(rows: Sequence[Mapping[str, Any]], rule: str, *, reading: str | None = None,
                 baseline: float | None = None, baseline_loss: float | None = None, delta: float | None = None,
                 epsilon: float | None = None, loss: str = "data") -> float | None:
    """The actual limit (a prune fraction) of ``rule`` on sweep ``rows``, or None when the grid gives no
    answer; ``rule_limit`` says why."""
    return rule_limit(rows, rule, reading=reading, baseline=baseline, baseline_loss=baseline_loss, delta=delta,
                      epsilon=epsilon, loss=loss).prune_fraction


def _no_accuracy(rows) -> bool:
    return bool(rows) and all(_num(r, "test_acc") is None for r in rows)


NEEDS_ACCURACY = ("the sweep has no test accuracy (the model's evaluation reports none, e.g. a language model); "
                  "this rule needs accuracy — rule 'loss_increase' works from the loss alone")


def _missing_inputs(rule: str, rows, epsilon, loss) -> str | None:
    if rule != "loss_increase":
        return f"not computed: {NEEDS_ACCURACY}" if _no_accuracy(rows) else None
    if epsilon is None:
        return "not computed: no epsilon"
    if all(_num(r, LOSS_COLUMN[loss]) is None for r in rows):
        return f"not computed: the sweep has no {LOSS_COLUMN[loss]} column (sweep without train evaluation?)"
    return None


def rule_limits(rows: Sequence[Mapping[str, Any]], *, baseline: float | None = None,
                baseline_loss: float | None = None, delta: float = 1.0, epsilon: float | None = None,
                loss: str = "data") -> dict[str, dict[str, RuleLimit]]:
    """Every rule in both readings: ``{rule: {reading: RuleLimit}}``. A rule whose inputs are missing (no
    train losses, no epsilon) gets ``None`` limits with the reason instead of an error."""
    check_loss(loss)
    out: dict[str, dict[str, RuleLimit]] = {}
    for rule in RULES:
        missing = _missing_inputs(rule, rows, epsilon, loss)
        out[rule] = {reading: (RuleLimit(rule, reading, None, missing) if missing else
                               rule_limit(rows, rule, reading=reading, baseline=baseline, baseline_loss=baseline_loss,
                                          delta=delta, epsilon=epsilon, loss=loss))
                     for reading in READINGS}
    return out


def actual_limits(rows: Sequence[Mapping[str, Any]], *, baseline: float | None = None,
                  baseline_loss: float | None = None, delta: float = 1.0, epsilon: float | None = None,
                  loss: str = "data", reading: str | None = None) -> dict[str, float | None]:
    """All rules at once in one reading (None / "default": each rule's default): ``{rule: p or None}``."""
    limits = rule_limits(rows, baseline=baseline, baseline_loss=baseline_loss, delta=delta, epsilon=epsilon, loss=loss)
    return {rule: by[check_reading(rule, reading)].prune_fraction for rule, by in limits.items()}
