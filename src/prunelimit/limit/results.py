"""The limit stage's result files: ``result.json`` (everything) and the original's three-line ``result.txt``."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from prunelimit.runs import paths
from prunelimit import dist
from prunelimit.limit.ordering import MagnitudeOrdering
from prunelimit.limit.rules import DEFAULT_READING, READINGS, RULES, RuleLimit, check_loss, check_reading
from prunelimit.limit.width import Prediction
from prunelimit.runs.io import atomic_write_text, write_json
from prunelimit.errors import PrunelimitError

ORIGINAL_RULE = "above_baseline"   # the rule behind line 3 of the original's result.txt
_REQUIRED = ("important_ev_rate", "eps", "predicted", "actual", "rule")
Limits = Mapping[str, "Mapping[str, RuleLimit] | RuleLimit | float | None"]


def _both(p: float | None, ordering: MagnitudeOrdering | None) -> dict[str, float | None]:
    """A limit in both conventions, with R(p) when the ordering is known."""
    return {"prune_fraction": p, "keep_fraction": None if p is None else 1.0 - p,
            "R": None if p is None or ordering is None else ordering.radius(p)}


def _entry(limit: RuleLimit, ordering: MagnitudeOrdering | None) -> dict[str, Any]:
    return {**_both(limit.prune_fraction, ordering), "reading": limit.reading, "reason": limit.reason,
            "lower_bound": limit.lower_bound}


def _by_reading(rule: str, value) -> dict[str, RuleLimit]:
    """``rule_limits``' ``{reading: RuleLimit}``, or a bare number / None (taken as the default reading)."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, RuleLimit):
        return {value.reading: value}
    reading = DEFAULT_READING[rule]
    return {reading: RuleLimit(rule, reading, None if value is None else float(value),
                               None if value is not None else "not computed")}


def build_result(prediction: Prediction, actual: Limits, *, rule: str = ORIGINAL_RULE, reading: str = "default",
                 loss: str = "data", ordering: MagnitudeOrdering | None = None, delta: float | None = None,
                 extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON-ready result: predicted and every actual limit as prune_fraction AND keep_fraction.

    ``actual`` is ``rule_limits(...)`` (rule -> {reading -> RuleLimit}; or rule -> prune fraction / None
    as ``actual_limits`` gives). ``rule`` names the headline rule, ``reading`` the reading reported for
    every rule ("default": each rule's own), ``loss`` the loss convention of epsilon, the Hessian and the
    loss rule. ``actual[rule]`` holds the chosen reading's limit, its ``reason`` when it is None, and
    ``readings`` with every reading computed."""
    if rule not in RULES:
        raise PrunelimitError(f"rule {rule!r} is not a limit rule; choose one of {', '.join(RULES)}")
    check_loss(loss)
    unknown = sorted(set(actual) - set(RULES))
    if unknown:
        raise PrunelimitError(f"actual limits name unknown rules {unknown}; expected keys among {', '.join(RULES)}")
    predicted = _both(prediction.limit, None)
    predicted.update(R=prediction.R_at_limit, g=prediction.g_at_limit, reason=prediction.reason)
    table: dict[str, Any] = {}
    for r in RULES:
        if r not in actual:
            continue
        by = _by_reading(r, actual[r])
        chosen = check_reading(r, reading)
        if chosen not in by:
            raise PrunelimitError(f"actual limits for rule {r!r} lack the {chosen!r} reading; pass rule_limits(...)")
        table[r] = {**_entry(by[chosen], ordering),
                    "readings": {rd: _entry(by[rd], ordering) for rd in READINGS if rd in by}}
    result = {
        "important_ev_rate": prediction.flat_fraction,   # q, the original's line 1
        "eps": prediction.eps,
        "integer_R": prediction.integer_R,
        "loss": loss,
        "predicted": predicted,
        "actual": table,
        "rule": rule,
        "reading": reading,
        "delta": delta,
        "result_txt_rule": ORIGINAL_RULE,
        "num_weights": None if ordering is None else ordering.num_weights,
    }
    if extra:
        result.update(extra)
    return result


LOSS_WORDS = {"data": "data loss (the criterion, without the L1 term)",
              "regularized": "regularised loss (criterion + lambda * ||theta||_1, as the original)"}


# the summary's words for each rule and reading (figures and their titles use these, not the config's keys)
RULE_WORDS = {"above_baseline": "test acc > unpruned", "acc_drop": "test acc drop <= delta",
              "loss_increase": "train loss <= L(w*) + eps"}
READING_WORDS = {"largest_passing": "largest p where it holds", "first_failure": "holds at every p' <= p"}


def rule_words(rule: str, delta: float | None = None) -> str:
    """The summary's words for ``rule``, with the accuracy drop's value when ``delta`` is known."""
    if rule == "acc_drop" and delta is not None:
        return f"test acc drop <= {float(delta):g} point" + ("" if float(delta) == 1 else "s")
    return RULE_WORDS.get(rule, rule)


def conventions_line(result: Mapping[str, Any]) -> str:
    """One line naming the conventions behind ``result`` in words: the loss, how each rule is read, and
    epsilon's ddof (the figures' titles)."""
    delta = result.get("delta")
    readings = "; ".join(f"{rule_words(r, delta)}: {READING_WORDS.get(v.get('reading'), v.get('reading'))}"
                         for r, v in result.get("actual", {}).items())
    ddof = result.get("epsilon_ddof")
    return (f"{result.get('loss', 'data')} loss; {readings or 'no actual limits'}"
            + ("" if ddof is None else f"; eps = std with ddof {ddof}") + _matrix_words(result, "; predicted from the "))


MATRIX_WORDS = {"gauss_newton": "Gauss-Newton matrix (not the Hessian)"}


def _matrix_words(result: Mapping[str, Any], sep: str) -> str:
    """The curvature matrix behind the prediction, when it is not the paper's Hessian ("" when it is)."""
    words = MATRIX_WORDS.get(result.get("matrix") or "hessian")
    return f"{sep}{words}" if words else ""


def _txt(v: float | None) -> str:
    return "None" if v is None else repr(float(v))


NOT_COMPUTED = "not computed: "   # the prefix rules.py gives a rule whose inputs are missing


def _limit_txt(value: float | None, reason: str | None, lower_bound: float | None = None) -> str:
    """A limit as the original writes it (``repr`` of the float) when there is one; otherwise a word that
    says why not, never a bare "None": "not measured" (the rule's inputs are missing, e.g. no accuracy),
    "above P" (still holding at the grid's last point P) or "none" (the rule or the prediction fails)."""
    if value is not None:
        return repr(float(value))
    reason = reason or "no value"
    if reason.startswith(NOT_COMPUTED):
        return f"not measured ({reason[len(NOT_COMPUTED):]})"
    if lower_bound is not None:
        return f"above {float(lower_bound)!r} ({reason})"
    return f"none ({reason})"


def result_txt(result: Mapping[str, Any]) -> str:
    """The original's three labelled lines (all values are prune fractions = the original's "pruning ratio"),
    then one line naming the conventions behind them (the original's reader reads the first three).

    A number is written as the original writes it; where there is none (no fixed point, a rule that never
    holds, a model without accuracy) the line says so in words instead of the original's crash."""
    actual = result["actual"].get(ORIGINAL_RULE) or {"reason": NOT_COMPUTED + f"rule {ORIGINAL_RULE} was not run"}
    reading = actual.get("reading") or DEFAULT_READING[ORIGINAL_RULE]
    actual_txt = _limit_txt(actual.get("prune_fraction"), actual.get("reason"), actual.get("lower_bound"))
    others = [f"{r} p = {v['prune_fraction']!r}" for r, v in result["actual"].items()
              if r != ORIGINAL_RULE and v.get("prune_fraction") is not None]
    if actual.get("prune_fraction") is None and others:
        actual_txt = actual_txt[:-1] + f"; result.json has {', '.join(others)})"
    predicted = result["predicted"]
    return (f"important ev rate: {_txt(result['important_ev_rate'])}\n"
            f"predicted maximum pruning ratio: {_limit_txt(predicted['prune_fraction'], predicted.get('reason'))}\n"
            f"actual maximum pruning ratio: {actual_txt}\n"
            f"conventions: loss {result.get('loss', 'data')}, actual = rule {ORIGINAL_RULE} read as {reading}"
            f"{_matrix_words(result, ', predicted from the ')}\n")


def write_result_files(out_dir: str | os.PathLike, result: Mapping[str, Any]) -> tuple[Path, Path] | None:
    """Write ``result.json`` and ``result.txt`` into ``out_dir`` atomically (rank 0 only; others get None)."""
    missing = [k for k in _REQUIRED if k not in result]
    if missing:
        raise PrunelimitError(f"result is missing keys {missing}; build it with prunelimit.limit.build_result")
    text = result_txt(result)
    if not dist.is_main():
        return None
    out = Path(out_dir)
    return write_json(out / paths.RESULT_JSON, dict(result)), atomic_write_text(out / paths.RESULT_TXT, text)
