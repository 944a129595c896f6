"""The model registry: ``@register_model`` factories, looked up by name or alias.

A factory is a function ``factory(num_classes, input_shape=None, **options) -> nn.Module``. The
registry reads its signature once, so ``create_model`` can reject a misspelled option with a message
that names it, and passes ``input_shape`` only to factories that take it.
"""
from __future__ import annotations

import difflib
import inspect
import numbers
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch
from torch import nn
from prunelimit.errors import PrunelimitError

from prunelimit.models.external import create_external_model, is_external, resolve_external

# Parameters every factory may take; everything else in its signature is a model option.
_RESERVED = ("num_classes", "input_shape")


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about one model, for listings and error messages."""
    name: str  # canonical name
    aliases: tuple[str, ...]  # other accepted spellings (e.g. the original configs' "ResNet18")
    default_num_classes: int  # used when create_model gets num_classes=None
    needs_input_shape: bool  # True for nets whose first layer size depends on (C, H, W)
    description: str  # one line
    options: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments and defaults


@dataclass(frozen=True)
class _Entry:
    info: ModelInfo
    factory: Callable[..., nn.Module]
    takes_input_shape: bool


@dataclass(frozen=True)
class _NamePattern:
    """A family of names such as ``wrn-40-4`` that maps onto one factory with fixed options."""
    regex: re.Pattern
    target: str
    to_options: Callable[[re.Match], dict[str, Any]]
    example: str


_MODELS: dict[str, _Entry] = {}  # canonical name -> entry
_ALIASES: dict[str, str] = {}  # alias -> canonical name
_PATTERNS: list[_NamePattern] = []


def register_model(name: str, *, aliases: tuple[str, ...] | list[str] = (), needs_input_shape: bool = False,
                   default_num_classes: int = 10, description: str | None = None):
    """Decorator that registers ``factory(num_classes, input_shape=None, **options)`` under ``name``.

    ``description`` defaults to the first line of the factory's docstring."""
    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        params = inspect.signature(factory).parameters
        if "num_classes" not in params:
            raise PrunelimitError(f"model factory {factory.__qualname__!r} for {name!r} must take a "
                             f"'num_classes' argument")
        takes_shape = "input_shape" in params
        if needs_input_shape and not takes_shape:
            raise PrunelimitError(f"model {name!r} is registered with needs_input_shape=True, so its factory "
                             f"{factory.__qualname__!r} must take an 'input_shape' argument")
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            raise PrunelimitError(f"model factory {factory.__qualname__!r} for {name!r} must list its options "
                             f"explicitly (no **kwargs) so misspelled options can be reported")
        for spelling in (name, *aliases):
            if spelling in _MODELS or spelling in _ALIASES:
                raise PrunelimitError(f"model name {spelling!r} is already registered "
                                 f"(as {_ALIASES.get(spelling, spelling)!r}); choose another name or alias")
        options = {k: p.default for k, p in params.items()
                   if k not in _RESERVED and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        doc = (inspect.getdoc(factory) or "").strip().splitlines()
        info = ModelInfo(name=name, aliases=tuple(aliases), default_num_classes=default_num_classes,
                         needs_input_shape=needs_input_shape,
                         description=description or (doc[0] if doc else name), options=options)
        _MODELS[name] = _Entry(info, factory, takes_shape)
        for alias in aliases:
            _ALIASES[alias] = name
        return factory
    return decorator


def register_name_pattern(pattern: str, target: str, to_options: Callable[[re.Match], dict[str, Any]],
                          example: str) -> None:
    """Accept every name matching ``pattern`` (full match) as ``target`` with ``to_options(match)``."""
    _PATTERNS.append(_NamePattern(re.compile(pattern), target, to_options, example))


def list_models() -> list[str]:
    """Canonical names of all registered models, sorted."""
    return sorted(_MODELS)


def model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of a model given by canonical name, alias or name pattern (or an importable
    ``torchvision:NAME`` / ``timm:NAME`` / ``module.path:factory``, whose options are not known ahead)."""
    if is_external(name):
        resolve_external(name)  # ValueError for an unknown module or name
        return ModelInfo(name=name, aliases=(), default_num_classes=0, needs_input_shape=False,
                         description=f"imported model {name}")
    entry, fixed, label = _resolve(name)
    if not fixed:
        return entry.info
    options = {k: v for k, v in entry.info.options.items() if k not in fixed}
    fixed_text = ", ".join(f"{k}={v}" for k, v in fixed.items())
    return replace(entry.info, name=label, aliases=(), options=options,
                   description=f"{entry.info.name} with {fixed_text}: {entry.info.description}")


def create_model(name: str, num_classes: int | None = None, input_shape: tuple[int, int, int] | None = None,
                 **kwargs: Any) -> nn.Module:
    """Build a registered model.

    ``num_classes`` defaults to the model's ``default_num_classes``. ``input_shape`` is (C, H, W) of
    one example; fully-connected nets need it, the others use C for their first layer when it is
    given and are checked to accept (H, W). ``kwargs`` are the model's options (see ``model_info``).
    ``name`` may also be ``torchvision:resnet18``, ``timm:convnext_atto`` or ``mypkg.module:factory``
    (random weights, nothing downloaded; ``num_classes`` and ``kwargs`` passed on, ``input_shape`` unused).
    """
    if is_external(name):
        return create_external_model(name, num_classes, **kwargs)
    entry, fixed, label = _resolve(name)
    info = entry.info
    num_classes = info.default_num_classes if num_classes is None else num_classes
    if not _is_positive_int(num_classes):
        raise PrunelimitError(f"num_classes must be a positive integer, got {num_classes!r} for model {label!r}")
    num_classes = int(num_classes)
    shape = _check_input_shape(input_shape, label)
    if shape is None and info.needs_input_shape:
        raise PrunelimitError(f"model {label!r} needs input_shape=(C, H, W), the shape of one example, to size its "
                         f"first layer: e.g. (1, 28, 28) for MNIST, (3, 32, 32) for CIFAR, (1, 8, 8) for digits")
    for key in kwargs:
        if key in fixed:
            raise PrunelimitError(f"option {key!r} of model {label!r} is fixed by the name to {fixed[key]!r}; "
                             f"use {info.name!r} to choose it freely")
        if key not in info.options:
            accepted = ", ".join(sorted(info.options)) or "none"
            hint = _close(key, list(info.options))
            raise PrunelimitError(f"unknown option {key!r} for model {label!r}{hint}; accepted options: {accepted}")
    call = dict(fixed, **kwargs)
    if entry.takes_input_shape:
        call["input_shape"] = shape
    model = entry.factory(num_classes=num_classes, **call)
    if shape is not None:
        _probe_input_shape(model, num_classes, shape, label)
    return model


def _resolve(name: str) -> tuple[_Entry, dict[str, Any], str]:
    """(entry, options fixed by the name, the name as the user spelled it); exact spelling only."""
    if not isinstance(name, str):
        raise PrunelimitError(f"model name must be a string, got {name!r}; valid names: {', '.join(list_models())}")
    canonical = _ALIASES.get(name, name)
    if canonical in _MODELS:
        return _MODELS[canonical], {}, name
    for pat in _PATTERNS:
        m = pat.regex.fullmatch(name)
        if m:
            return _MODELS[pat.target], pat.to_options(m), name
    raise PrunelimitError(f"unknown model {name!r}{_suggest(name)} Valid names: {', '.join(list_models())}"
                     f"{_pattern_note()}")


def _suggest(name: str) -> str:
    spellings = list(_MODELS) + list(_ALIASES)
    # Same letters in another case first (e.g. 'alexnet' -> 'AlexNet'), then difflib's close matches.
    same_case = [s for s in spellings if s.lower() == name.lower()]
    close = difflib.get_close_matches(name.lower(), [s.lower() for s in spellings], n=4, cutoff=0.6)
    close_spellings = [s for c in close for s in spellings if s.lower() == c]
    picks = list(dict.fromkeys(same_case + close_spellings))
    if not picks:
        return "."
    labelled = [p if p in _MODELS else f"{p} (= {_ALIASES[p]})" for p in picks]
    return f"; did you mean {' or '.join(labelled)}?"


def _close(key: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _pattern_note() -> str:
    if not _PATTERNS:
        return ""
    return " (also: " + ", ".join(f"names like {p.example!r}" for p in _PATTERNS) + ")"


def _check_input_shape(input_shape: Any, label: str) -> tuple[int, int, int] | None:
    if input_shape is None:
        return None
    ok = isinstance(input_shape, (tuple, list)) and len(input_shape) == 3 and all(map(_is_positive_int, input_shape))
    if not ok:
        raise PrunelimitError(f"input_shape must be three positive integers (C, H, W), e.g. (3, 32, 32); "
                         f"got {input_shape!r} for model {label!r}")
    return tuple(int(v) for v in input_shape)


def _is_positive_int(value: Any) -> bool:
    # numbers.Integral admits numpy integers (dataset metadata); bool is excluded on purpose.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0


def _probe_input_shape(model: nn.Module, num_classes: int, shape: tuple[int, int, int], label: str) -> None:
    """Run one zero example of ``shape`` through ``model`` (eval mode, no grad: running statistics
    and RNG untouched), so an input the architecture cannot take fails here with a clear message
    instead of mid-training. Costs one forward of batch 1."""
    first = next(model.parameters(), None)
    x = torch.zeros(1, *shape) if first is None else torch.zeros(1, *shape, device=first.device, dtype=first.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except RuntimeError as err:
        raise PrunelimitError(f"model {label!r} cannot take inputs of shape input_shape={shape}: "
                         f"{str(err).strip().splitlines()[0]}") from None
    finally:
        model.train(was_training)
    if tuple(out.shape) != (1, num_classes):
        raise PrunelimitError(f"model {label!r} maps input_shape={shape} to outputs of shape {tuple(out.shape[1:])} "
                         f"per example instead of ({num_classes},); use the input size it was designed for")
