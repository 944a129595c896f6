"""Any importable model, besides the registered ones: ``SOURCE:NAME`` model names.

    torchvision:resnet18          torchvision.models.get_model("resnet18", weights=None, **kwargs)
    timm:convnext_atto            timm.create_model("convnext_atto", pretrained=False, **kwargs)
    mypkg.module:factory          mypkg.module.factory(**kwargs)

Nothing is downloaded: torchvision and timm models are built with random weights (load a checkpoint
for trained ones). ``num_classes`` is passed when given and the factory takes it.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

from torch import nn

from prunelimit.errors import PrunelimitError

from prunelimit.messages import suggest


def is_external(name: Any) -> bool:
    return isinstance(name, str) and ":" in name


def _split(spec: str) -> tuple[str, str]:
    source, _, name = spec.partition(":")
    if not source or not name or ":" in name:
        raise PrunelimitError(f"model {spec!r} must look like torchvision:resnet18, timm:convnext_atto or "
                         f"mypkg.module:factory (one ':' between a source and a name)")
    return source, name


def _import(module: str, spec: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise PrunelimitError(f"model {spec!r}: cannot import {module!r} ({e}); install it or fix the module path") from None


def resolve_external(spec: str) -> tuple[Callable[..., nn.Module], bool]:
    """(factory(**kwargs) -> nn.Module, whether it takes num_classes); ValueError for an unknown name."""
    source, name = _split(spec)
    if source == "torchvision":
        tv_models = _import("torchvision.models", spec)
        names = tv_models.list_models()
        if name not in names:
            raise PrunelimitError(f"torchvision has no model {name!r}{suggest(name, names)}; see "
                             f"torchvision.models.list_models()")
        return (lambda **kw: tv_models.get_model(name, weights=None, **kw)), True
    if source == "timm":
        timm = _import("timm", spec)
        if not timm.is_model(name):
            raise PrunelimitError(f"timm has no model {name!r}{suggest(name, timm.list_models())}; see timm.list_models()")
        return (lambda **kw: timm.create_model(name, pretrained=False, **kw)), True
    module = _import(source, spec)
    factory = getattr(module, name, None)
    if not callable(factory):
        public = [n for n in dir(module) if not n.startswith("_")]
        raise PrunelimitError(f"module {source!r} has no callable {name!r}{suggest(name, public)}")
    try:
        params = inspect.signature(factory).parameters
        takes = "num_classes" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    except (TypeError, ValueError):
        takes = False
    return factory, takes


def create_external_model(spec: str, num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """Build ``spec`` with ``kwargs``; a TypeError from a misspelled keyword becomes a one-line ValueError."""
    factory, takes_classes = resolve_external(spec)
    if num_classes is not None and takes_classes:
        kwargs = dict(kwargs, num_classes=num_classes)
    try:
        model = factory(**kwargs)
    except TypeError as e:
        if "keyword argument" not in str(e):
            raise  # a bug inside the factory keeps its traceback
        raise PrunelimitError(f"model {spec!r} does not accept the arguments {sorted(kwargs)}: {e}") from None
    if not isinstance(model, nn.Module):
        raise PrunelimitError(f"model {spec!r} returned a {type(model).__name__}, not an nn.Module")
    return model
