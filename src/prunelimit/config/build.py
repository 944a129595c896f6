"""Build typed dataclasses from plain dicts, with errors that name the key and suggest the right one.

Unknown keys are errors (never silently ignored), with a did-you-mean from difflib. Values are checked
against the field's annotation (int, float, bool, str, lists, Optional, unions of those) so that a YAML
typo such as ``lr: 0.1.0`` or ``epochs: ten`` is reported at load time with the key that caused it.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Mapping

from prunelimit.errors import PrunelimitError
from prunelimit.messages import suggest


class ConfigError(PrunelimitError):
    """A configuration value or key is wrong; the message says where and how to fix it."""


def field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def build_dataclass(cls, values: Mapping[str, Any] | None, where: str):
    """``cls(**values)`` after checking every key exists and every value has the annotated type.

    ``where`` names the place for messages, e.g. ``"configs/x.yaml: train"``."""
    values = dict(values or {})
    names = field_names(cls)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, val in values.items():
        if key not in names:
            raise ConfigError(f"{where}: unknown key {key!r}{suggest(key, names)}; valid keys: {', '.join(names)}")
        kwargs[key] = coerce(val, hints[key], f"{where}.{key}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        # a section's own checks name their keys ('spectrum.top_k=...', 'train config key ...'): then the
        # section is not named twice ('FILE: spectrum: spectrum.top_k=...')
        head, _, section = where.rpartition(": ")
        message = str(e)
        if message.startswith((f"{section}.", f"{section} ")):
            raise ConfigError(f"{head}: {message}" if head else message) from None
        raise ConfigError(f"{where}: {message}") from None


def coerce(val: Any, tp: Any, where: str) -> Any:
    """Check ``val`` against annotation ``tp``; convert int -> float where a float is expected."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return val
    if origin in (typing.Union, types.UnionType):
        if val is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(val, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: value {val!r} has the wrong type; expected {_tname(tp)}")
    if origin in (list, tuple, typing.Sequence) or tp in (list, tuple):
        if isinstance(val, (str, bytes)) or not isinstance(val, (list, tuple)):
            raise ConfigError(f"{where}: expected a list such as [1, 2], got {val!r}")
        inner = args[0] if args else Any
        out = [coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(val)]
        return tuple(out) if origin is tuple or tp is tuple else out
    if origin is typing.Literal:
        if val not in args:
            raise ConfigError(f"{where}: {val!r} is not one of {list(args)}")
        return val
    if tp is bool:
        if isinstance(val, bool):
            return val
        raise ConfigError(f"{where}: expected true or false, got {val!r}")
    if tp is int:
        if isinstance(val, int) and not isinstance(val, bool):
            return val
        if isinstance(val, float) and val.is_integer():
            return int(val)
        raise ConfigError(f"{where}: expected an integer, got {val!r}")
    if tp is float:
        if isinstance(val, (int, float)) and not isinstance(val, bool):
            return float(val)
        if isinstance(val, str):
            try:  # YAML 1.1 reads "1e-4" as a string
                return float(val)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {val!r}")
    if tp is str:
        if isinstance(val, str):
            return val
        raise ConfigError(f"{where}: expected a string, got {val!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(val, Mapping):
            raise ConfigError(f"{where}: expected a mapping of keys, got {val!r}")
        return build_dataclass(tp, val, where)
    if tp is dict or origin is dict:
        if not isinstance(val, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {val!r}")
        return dict(val)
    return val


def _tname(tp: Any) -> str:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (list, tuple) and args:
        return f"a list of {_tname(args[0])}"
    if args:
        return " or ".join(_tname(a) for a in args if a is not type(None)) + (
            " or null" if type(None) in args else "")
    return getattr(tp, "__name__", str(tp))


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj
