"""Which parameters are prunable.

By default: the ``weight`` of every ``nn.Conv2d`` and ``nn.Linear`` (biases and norm layers excluded).
``include`` / ``exclude`` are fnmatch patterns matched against the module name (``"layer1.*"``,
``"fc"``) or the parameter name (``"fc.weight"``). With ``include`` given, any module with a
``weight`` whose name matches is prunable (so norm layers can be opted in); ``exclude`` wins.
"""
from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Iterable, Sequence

from torch import nn
from prunelimit.errors import PrunelimitError

DEFAULT_PRUNABLE = (nn.Conv2d, nn.Linear)


def _as_patterns(p: str | Sequence[str] | None) -> list[str] | None:
    if p is None:
        return None
    if isinstance(p, str):
        return [p]
    return list(p)


def _matches(module_name: str, patterns: Iterable[str]) -> bool:
    pname = f"{module_name}.weight" if module_name else "weight"
    return any(fnmatchcase(module_name, pat) or fnmatchcase(pname, pat) for pat in patterns)


def prunable_parameters(model: nn.Module, include: str | Sequence[str] | None = None,
                        exclude: str | Sequence[str] | None = None) -> list[tuple[str, nn.Parameter]]:
    """``[(parameter_name, parameter), ...]`` in module order; names as in ``model.named_parameters()``.

    A weight shared by several modules is listed once (under its first name)."""
    inc, exc = _as_patterns(include), _as_patterns(exclude)
    out: list[tuple[str, nn.Parameter]] = []
    seen: set[int] = set()
    for mname, module in model.named_modules():
        w = getattr(module, "weight", None)
        if not isinstance(w, nn.Parameter):
            continue
        if inc is None:
            if not isinstance(module, DEFAULT_PRUNABLE):
                continue
        elif not _matches(mname, inc):
            continue
        if exc is not None and _matches(mname, exc):
            continue
        if id(w) in seen:
            continue
        seen.add(id(w))
        out.append((f"{mname}.weight" if mname else "weight", w))
    if (inc is not None or exc is not None) and not out:
        raise PrunelimitError(f"no prunable parameters left after include={inc} exclude={exc}; "
                         f"patterns match module names such as {_example_names(model)}")
    return out


def _example_names(model: nn.Module, n: int = 4) -> list[str]:
    return [m for m, mod in model.named_modules() if m and isinstance(mod, DEFAULT_PRUNABLE)][:n]


def count_prunable(model: nn.Module, include=None, exclude=None) -> int:
    return sum(p.numel() for _, p in prunable_parameters(model, include, exclude))
