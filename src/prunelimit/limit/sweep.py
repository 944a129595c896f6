"""The one-shot pruning sweep: one ordering, incremental masks, one table.

The original deep-copies the model, re-sorts every weight and saves a full checkpoint for each of 1000
ratios. Here the sort happens once (``MagnitudeOrdering``), each step only zeroes the weights between the
previous and the next count, the only copy is one backup of the dense prunable weights (restored when the
sweep returns, also after an exception), and the output is one CSV written progressively so an interrupted
sweep resumes where it stopped.
"""
from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from prunelimit import dist
from prunelimit.progress import progress_wanted
from prunelimit.limit.ordering import MagnitudeOrdering
from prunelimit.limit.rules import LOSS_COLUMN, check_reading, rule_limit, rule_predicate
from prunelimit.runs.io import read_csv, write_csv
from prunelimit.errors import PrunelimitError

SWEEP_COLUMNS = ("prune_fraction", "keep_fraction", "kept_weights", "pruned_weights", "R",
                 "test_loss", "test_acc", "train_loss", "train_acc",
                 "train_data_loss", "test_data_loss", "l1_penalty")
# test_loss / train_loss are the evaluator's "loss" (with the L1 term when the model was trained with one,
# as the original reports); *_data_loss the criterion alone; l1_penalty = lambda * ||theta||_1 at that p.
# Tables written before the last three columns existed still load (those values are None).
LOSS_COLUMNS = ("train_data_loss", "test_data_loss", "l1_penalty")

Evaluate = Callable[[nn.Module], Mapping[str, Any]]


def default_grid(points: int = 1000) -> list[float]:
    """The original's grid: i / points for i = 0 .. points-1 (``sparse_epoch`` = points)."""
    if isinstance(points, bool) or not isinstance(points, int) or points < 1:
        raise PrunelimitError(f"sweep points (config key sweep_points / sparse_epoch) must be an integer >= 1; "
                         f"got {points!r}")
    return [i / points for i in range(points)]


def tail_grid(points: int, tail_points: int, num_weights: int) -> list[float]:
    """``default_grid(points)`` plus up to ``tail_points`` prune fractions beyond its last point 1 - 1/points,
    so that limits above it (0.999 on the original's grid) are resolved.

    The tail's keep fractions are spaced geometrically from 1/points down to one kept weight (1/N):
    keep_j = (1/points) * (points/N)^(j/T), j = 1..T, the same number of points per decade of keep fraction.
    Points that would prune the same number of weights as the one before are dropped."""
    grid = default_grid(points)
    if isinstance(tail_points, bool) or not isinstance(tail_points, int) or tail_points < 0:
        raise PrunelimitError(f"limit.tail_points must be an integer >= 0; got {tail_points!r}")
    if tail_points == 0 or num_weights <= points:
        return grid
    counts = {int(math.floor(p * num_weights + 0.5)) for p in grid}
    ratio = points / num_weights
    for j in range(1, tail_points + 1):
        p = 1.0 - (1.0 / points) * ratio ** (j / tail_points)
        k = int(math.floor(p * num_weights + 0.5))
        if k not in counts and k < num_weights and p > grid[-1]:
            counts.add(k)
            grid.append(p)
    return grid


def check_grid(fractions: Sequence[float]) -> list[float]:
    grid = [float(p) for p in fractions]
    if not grid or grid[0] != 0.0:
        raise PrunelimitError(f"a sweep grid must start at 0 (the unpruned model); got "
                         f"{grid[:3] if grid else 'an empty grid'} (check sweep_points / sparse_epoch or the "
                         f"fractions you passed)")
    bad = [(a, b) for a, b in zip(grid, grid[1:]) if not b > a]
    if bad:
        raise PrunelimitError(f"a sweep grid must be strictly ascending; got {bad[0][0]} followed by {bad[0][1]}")
    if grid[-1] > 1.0 or any(math.isnan(p) for p in grid):
        raise PrunelimitError(f"sweep prune fractions must lie in [0, 1]; got a largest value of {grid[-1]}")
    return grid


def _metrics(result: Mapping[str, Any], which: str) -> tuple[float, float | None, float, float | None]:
    """(loss, accuracy in percent or None, data loss, L1 penalty) from an evaluate() result.

    An evaluator that reports no ``data_loss`` has no separate penalty: its loss is the data loss."""
    if not isinstance(result, Mapping) or "loss" not in result:
        got = sorted(result) if isinstance(result, Mapping) else type(result).__name__
        raise PrunelimitError(f"evaluate_{which} must return a dict with 'loss' and, for a classifier, 'top1' "
                              f"(accuracy in percent); got {got}")
    acc = result.get("top1", result.get("acc"))
    acc = None if acc is None or acc != acc else float(acc)  # no accuracy (a language model): loss only
    if acc is not None and not 0.0 <= acc <= 100.0:
        raise PrunelimitError(f"evaluate_{which} returned accuracy {acc}; accuracies are percentages in [0, 100]")
    loss = float(result["loss"])
    if "data_loss" not in result:
        penalty = result.get("l1_penalty")
        return loss, acc, loss, None if penalty is None else float(penalty)
    data_loss = float(result["data_loss"])
    penalty = result.get("l1_penalty")
    return loss, acc, data_loss, float(loss - data_loss if penalty is None else penalty)


def _row(ordering: MagnitudeOrdering, p: float, k: int, test: Mapping, train: Mapping | None) -> dict:
    test_loss, test_acc, test_data, penalty = _metrics(test, "test")
    train_loss, train_acc, train_data = _metrics(train, "train")[:3] if train is not None else (None, None, None)
    n = ordering.num_weights
    return {"prune_fraction": p, "keep_fraction": 1.0 - p, "kept_weights": n - k, "pruned_weights": k,
            "R": ordering.radius_of_count(k), "test_loss": test_loss, "test_acc": test_acc,
            "train_loss": train_loss, "train_acc": train_acc, "train_data_loss": train_data,
            "test_data_loss": test_data, "l1_penalty": penalty}


def has_loss_columns(rows: Sequence[Mapping[str, Any]]) -> bool:
    """Whether ``rows`` carry the data-loss columns (tables from before they existed do not)."""
    return all(r.get("test_data_loss") is not None for r in rows)


def _write(csv_path, rows: list[dict]) -> None:
    if csv_path is not None and dist.is_main():
        write_csv(csv_path, SWEEP_COLUMNS, [[r[c] for c in SWEEP_COLUMNS] for r in rows])


def read_sweep_csv(csv_path) -> list[dict]:
    """The rows of a sweep table written by ``run_sweep``, typed (floats, int counts, None for blanks)."""
    raw = read_csv(csv_path)
    missing = sorted(set(SWEEP_COLUMNS) - set(LOSS_COLUMNS) - (raw[0].keys() if raw else set(SWEEP_COLUMNS)))
    if missing:
        raise PrunelimitError(f"sweep table {str(csv_path)!r} lacks columns {missing}; it was not written by run_sweep: "
                         f"delete it or resume=False")
    rows = []
    for r in raw:
        row = {c: (None if r.get(c, "") == "" else float(r[c])) for c in SWEEP_COLUMNS}
        row["kept_weights"], row["pruned_weights"] = int(row["kept_weights"]), int(row["pruned_weights"])
        rows.append(row)
    return rows


def _read_done(csv_path, ordering: MagnitudeOrdering) -> dict[int, dict]:
    """Rows of an earlier, interrupted sweep keyed by pruned count (empty when there is no file)."""
    if csv_path is None or not os.path.exists(csv_path):
        return {}
    done = {}
    for row in read_sweep_csv(csv_path):
        if row["test_data_loss"] is None:   # written before the data-loss columns: evaluate it again
            continue
        if row["kept_weights"] + row["pruned_weights"] != ordering.num_weights:
            raise PrunelimitError(f"sweep table {str(csv_path)!r} was written for a model with "
                             f"{row['kept_weights'] + row['pruned_weights']} prunable weights, this one has "
                             f"{ordering.num_weights}; delete the file or pass resume=False")
        done[row["pruned_weights"]] = row
    return done


class _DenseBackup:
    """One copy of the dense prunable weights; ``restore`` puts them back (and the train/eval mode)."""

    def __init__(self, model: nn.Module, ordering: MagnitudeOrdering):
        self.params = ordering.params_of(model)
        self.saved = [p.detach().clone() for p in self.params]
        self.model, self.training = model, model.training

    def restore(self) -> None:
        with torch.no_grad():
            for p, s in zip(self.params, self.saved):
                p.copy_(s)
        self.model.train(self.training)


def run_sweep(model: nn.Module, ordering: MagnitudeOrdering, fractions: Sequence[float], evaluate_test: Evaluate,
              evaluate_train: Evaluate | None = None, *, show_progress: bool | None = None,
              csv_path: str | os.PathLike | None = None, resume: bool = False,
              flush_seconds: float = 5.0) -> list[dict]:
    """Prune ``model`` incrementally along ``fractions`` (ascending, starting at 0) and evaluate each step.

    ``evaluate_test(model)`` (and ``evaluate_train``) return ``{"loss": ..., "top1": percent, ...}``.
    Returns one row per fraction with the columns ``SWEEP_COLUMNS`` (train columns None without
    ``evaluate_train``). ``csv_path``: the table, rewritten atomically on rank 0 at most every
    ``flush_seconds`` and at the end (also when interrupted); ``resume=True`` reuses its rows and evaluates
    only the missing fractions (under torchrun every rank reads the table, so it must be on a filesystem
    all ranks see). The model holds its dense weights again when this returns or raises.
    ``show_progress``: True/False, or None (default) for a progress bar only when stderr is a terminal.
    """
    grid = check_grid(fractions)
    if resume and csv_path is None:
        raise PrunelimitError("resume=True needs csv_path, the sweep table to resume from")
    ordering.check_model(model)
    done = _read_done(csv_path, ordering) if resume else {}
    rows: list[dict] = []
    backup = _DenseBackup(model, ordering)
    k_now, last_write = 0, time.monotonic()
    bar = tqdm(total=len(grid), desc="sweep", disable=not progress_wanted(show_progress) or not dist.is_main())
    try:
        for p in grid:
            k = ordering.count(p)
            prev = done.get(k)
            if prev is not None and abs(prev["prune_fraction"] - p) < 1e-12:
                rows.append(prev)
            else:
                ordering.prune_to(model, k_now, k)
                k_now = k
                test = evaluate_test(model)
                train = evaluate_train(model) if evaluate_train is not None else None
                rows.append(_row(ordering, p, k, test, train))
                if time.monotonic() - last_write >= flush_seconds:
                    _write(csv_path, rows)
                    last_write = time.monotonic()
            bar.update(1)
            acc = rows[-1]["test_acc"]
            bar.set_postfix(p=f"{p:.3f}", **({"acc": f"{acc:.2f}"} if acc is not None else
                                             {"loss": f"{rows[-1]['test_loss']:.4g}"}))
    finally:
        bar.close()
        backup.restore()
        _write(csv_path, rows)
    return rows


def adaptive_limit_search(model: nn.Module, ordering: MagnitudeOrdering, evaluate_test: Evaluate, rule: str, *,
                          evaluate_train: Evaluate | None = None, coarse_points: int = 20, tol: float = 1 / 1000,
                          delta: float = 1.0, epsilon: float | None = None, baseline: float | None = None,
                          reading: str | None = None, loss: str = "data",
                          show_progress: bool | None = None) -> tuple[float | None, list[dict]]:
    """Find the actual limit of ``rule`` (in ``reading``) with a few dozen evaluations instead of a full sweep.

    Works on the full grid's points i / M (M = round(1/tol), the grid ``default_grid(M)``): evaluates the
    coarse points round(j*M/coarse_points) plus the last grid point, brackets the limit between the last
    coarse point that satisfies the rule (``largest_passing``: anywhere; ``first_failure``: before the
    first failing coarse point) and the next one, and bisects that bracket on grid indices. Assumption:
    the rule's predicate is monotone inside the bracket (true, then false); then the answer equals
    ``rule_limit`` on the full grid exactly. When it is not (accuracy that wiggles around the threshold),
    the answer is still a grid point where the rule holds next to one where it fails, but it may differ
    from the full grid's: a failure between two coarse points below the bracket is never seen
    (first_failure can come out too high), and for largest_passing a satisfying point above the bracket's
    failing end is missed. Returns ``(limit, rows)``, rows sorted by prune fraction; the limit is read off
    those rows with ``rule_limit`` (None when it never holds or still holds at the last grid point;
    ``rule_limit(rows, ...)`` gives the reason).
    """
    reading = check_reading(rule, reading)
    if not 0 < tol <= 0.5:
        raise PrunelimitError(f"tol (the grid step) must be in (0, 0.5]; got {tol}")
    m = int(round(1 / tol))
    if isinstance(coarse_points, bool) or not isinstance(coarse_points, int) or not 2 <= coarse_points <= m:
        raise PrunelimitError(f"coarse_points must be an integer in [2, 1/tol = {m}]; got {coarse_points!r}")
    if rule == "loss_increase" and evaluate_train is None:
        raise PrunelimitError("rule 'loss_increase' compares training losses: pass evaluate_train")
    ordering.check_model(model)
    backup = _DenseBackup(model, ordering)
    cache: dict[int, dict] = {}
    k_now = 0
    bar = tqdm(desc=f"adaptive limit ({rule})", disable=not progress_wanted(show_progress) or not dist.is_main())

    def row_at(i: int) -> dict:
        nonlocal k_now
        if i not in cache:
            p = i / m
            k = ordering.count(p)
            if k < k_now:  # going back down: start again from the dense weights
                backup.restore()
                k_now = 0
            ordering.prune_to(model, k_now, k)
            k_now = k
            train = evaluate_train(model) if evaluate_train is not None else None
            cache[i] = _row(ordering, p, k, evaluate_test(model), train)
            bar.update(1)
        return cache[i]

    def read() -> float | None:
        return rule_limit([cache[i] for i in sorted(cache)], rule, reading=reading, baseline=baseline,
                          delta=delta, epsilon=epsilon, loss=loss).prune_fraction

    try:
        base = row_at(0)
        ok = rule_predicate(rule, baseline=base["test_acc"] if baseline is None else baseline,
                            baseline_loss=base[LOSS_COLUMN[loss]], delta=delta, epsilon=epsilon, loss=loss)
        if rule != "above_baseline" and not ok(base):   # fails at p = 0 already (a user baseline): no limit
            return read(), [base]
        coarse = sorted({int(round(j * m / coarse_points)) for j in range(coarse_points)} | {m - 1})
        # index 0 is the floor of every bracket (above_baseline's p = 0 row is never tested against itself).
        if reading == "largest_passing":   # largest anywhere: every coarse point is needed
            pos = max(j for j, i in enumerate(coarse) if i == 0 or ok(row_at(i)))
        else:                              # before the first failure: stop at the first failing coarse point
            pos = len(coarse) - 1
            for j, i in enumerate(coarse):
                if i > 0 and not ok(row_at(i)):
                    pos = j - 1
                    break
        lo = coarse[pos]
        hi = coarse[pos + 1] if pos + 1 < len(coarse) else lo + 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if ok(row_at(mid)):
                lo = mid
            else:
                hi = mid
        result = read()
    finally:
        bar.close()
        backup.restore()
    return result, [cache[i] for i in sorted(cache)]
