"""The limit stage's result files: ``result.json`` (everything) and the original's three-line ``result.txt``."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from prunelimit import dist
from prunelimit.limit.ordering import MagnitudeOrdering
from prunelimit.limit.rules import RULES
from prunelimit.limit.width import Prediction
from prunelimit.runs.io import atomic_write_text, write_json
from prunelimit.errors import PrunelimitError

ORIGINAL_RULE = "above_baseline"   # the rule behind line 3 of the original's result.txt
_REQUIRED = ("important_ev_rate", "eps", "predicted", "actual", "rule")


def _both(p: float | None, ordering: MagnitudeOrdering | None) -> dict[str, float | None]:
    """A limit in both conventions, with R(p) when the ordering is known."""
    return {"prune_fraction": p, "keep_fraction": None if p is None else 1.0 - p,
            "R": None if p is None or ordering is None else ordering.radius(p)}


def build_result(prediction: Prediction, actual: Mapping[str, float | None], *, rule: str = ORIGINAL_RULE,
                 ordering: MagnitudeOrdering | None = None, delta: float | None = None,
                 extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON-ready result: predicted and every actual limit as prune_fraction AND keep_fraction.

    ``actual`` is ``actual_limits(...)`` (rule -> prune fraction or None); ``rule`` names the headline rule."""
    if rule not in RULES:
        raise PrunelimitError(f"rule {rule!r} is not a limit rule; choose one of {', '.join(RULES)}")
    unknown = sorted(set(actual) - set(RULES))
    if unknown:
        raise PrunelimitError(f"actual limits name unknown rules {unknown}; expected keys among {', '.join(RULES)}")
    predicted = _both(prediction.limit, None)
    predicted.update(R=prediction.R_at_limit, g=prediction.g_at_limit, reason=prediction.reason)
    result = {
        "important_ev_rate": prediction.flat_fraction,   # q, the original's line 1
        "eps": prediction.eps,
        "integer_R": prediction.integer_R,
        "predicted": predicted,
        "actual": {r: _both(actual.get(r), ordering) for r in RULES if r in actual},
        "rule": rule,
        "delta": delta,
        "result_txt_rule": ORIGINAL_RULE,
        "num_weights": None if ordering is None else ordering.num_weights,
    }
    if extra:
        result.update(extra)
    return result


def _txt(v: float | None) -> str:
    return "None" if v is None else repr(float(v))


def result_txt(result: Mapping[str, Any]) -> str:
    """The original's three labelled lines (all values are prune fractions = the original's "pruning ratio")."""
    actual = result["actual"].get(ORIGINAL_RULE) or {}
    return (f"important ev rate: {_txt(result['important_ev_rate'])}\n"
            f"predicted maximum pruning ratio: {_txt(result['predicted']['prune_fraction'])}\n"
            f"actual maximum pruning ratio: {_txt(actual.get('prune_fraction'))}\n")


def write_result_files(out_dir: str | os.PathLike, result: Mapping[str, Any]) -> tuple[Path, Path] | None:
    """Write ``result.json`` and ``result.txt`` into ``out_dir`` atomically (rank 0 only; others get None)."""
    missing = [k for k in _REQUIRED if k not in result]
    if missing:
        raise PrunelimitError(f"result is missing keys {missing}; build it with prunelimit.limit.build_result")
    text = result_txt(result)
    if not dist.is_main():
        return None
    out = Path(out_dir)
    return write_json(out / "result.json", dict(result)), atomic_write_text(out / "result.txt", text)
