"""Parameter names across wrappers and tied weights.

A mask set, a checkpoint and a mask file use the names of the *plain* model's ``named_parameters()``:
``torch.compile`` (``_orig_mod.``), ``nn.DataParallel`` and DDP (``module.``) add prefixes that never
appear in them. A tensor shared by several modules (GPT-2's ``lm_head.weight`` is ``transformer.wte.weight``)
is one parameter, named as ``named_parameters()`` lists it (the first name); every entry point also
accepts its other names and the wrapped spellings.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from prunelimit.errors import PrunelimitError

from ..messages import few as _few

WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside any nesting of DDP, DataParallel and ``torch.compile``."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif _is_compiled(model):
            model = model._orig_mod
        else:
            return model


def _is_compiled(model: nn.Module) -> bool:
    # torch._dynamo's OptimizedModule, recognised without importing dynamo (slow to import)
    return type(model).__name__ == "OptimizedModule" and isinstance(getattr(model, "_orig_mod", None), nn.Module)


def strip_wrapper_prefixes(name: str) -> str:
    """``name`` without leading ``module.`` / ``_orig_mod.`` (in any order and number)."""
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
    return name


def parameter_aliases(model: nn.Module) -> dict[str, str]:
    """Every name of every parameter of the plain model -> its canonical (``named_parameters()``) name."""
    plain = unwrap_model(model)
    canonical = {id(p): n for n, p in plain.named_parameters()}
    return {n: canonical[id(p)] for n, p in plain.named_parameters(remove_duplicate=False)}


def put_mask(out: dict[str, torch.Tensor], name: str, key: str, mask: torch.Tensor,
             source: str = "the masks") -> None:
    """``out[name] = mask``, where ``key`` is the name the mask came under: a tied tensor reached by two
    of its names must get the same mask both times (else a one-line error naming both)."""
    if name in out and not (out[name].shape == mask.shape and torch.equal(out[name].cpu(), mask.cpu())):
        raise PrunelimitError(f"{source} hold two different masks for the tied parameter {name!r} "
                              f"(one of them under {key!r}); keep one mask per shared tensor")
    out[name] = mask


def canonical_masks(model: nn.Module, masks: Mapping[str, torch.Tensor],
                    source: str = "the masks") -> dict[str, torch.Tensor]:
    """``masks`` re-keyed by canonical parameter names of the plain model (order kept).

    Wrapper prefixes are stripped and tied aliases mapped to their canonical name; an unknown key is a
    ValueError naming it, as are two different masks for one tied parameter."""
    aliases = parameter_aliases(model)
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, mask in masks.items():
        name = aliases.get(strip_wrapper_prefixes(key))
        if name is None:
            unknown.append(key)
            continue
        put_mask(out, name, key, mask, source)
    if unknown:
        what = (f"mask key {unknown[0]!r} is not a parameter" if len(unknown) == 1 else
                f"{len(unknown)} mask keys ({_few(unknown)}) are not parameters")
        raise PrunelimitError(f"{what} of {type(unwrap_model(model)).__name__} ({source}); mask keys are parameter names "
                         f"as in model.named_parameters(), e.g. {_few(list(dict.fromkeys(aliases.values())))}")
    return out
