"""Masks to and from ``torch.nn.utils.prune``.

    pl.to_torch_prune(model, masks)     # custom_from_mask on every masked parameter: weight_orig + weight_mask
    masks = pl.from_torch_prune(model)  # read the weight_mask buffers back, restore plain parameters

A model reparametrised by ``torch.nn.utils.prune`` holds ``<name>_orig`` parameters and ``<name>_mask``
buffers instead of ``<name>``; prunelimit's other entry points refuse it with a message pointing here,
since its parameter names and the weights they hold (unmasked originals) are not the model's.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn
from torch.nn.utils import prune

from prunelimit.errors import PrunelimitError

from .names import canonical_masks, unwrap_model


def reparametrised(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(module name, module, parameter name) for every ``torch.nn.utils.prune`` reparametrisation."""
    out = []
    for mname, module in unwrap_model(model).named_modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, prune.BasePruningMethod):
                names = [h._tensor_name for h in hook._pruning_methods] if isinstance(hook, prune.PruningContainer) \
                    else [hook._tensor_name]
                out += [(mname, module, n) for n in dict.fromkeys(names)]
    return out


def check_not_reparametrised(model: nn.Module) -> None:
    found = reparametrised(model)
    if found:
        names = [f"{m}.{n}_orig" if m else f"{n}_orig" for m, _, n in found]
        raise PrunelimitError(f"model {type(unwrap_model(model)).__name__} is reparametrised by torch.nn.utils.prune "
                              f"({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}); take its masks with "
                              f"masks = pl.from_torch_prune(model), which also restores plain parameters")


def to_torch_prune(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """Reparametrise ``model`` with ``torch.nn.utils.prune.custom_from_mask`` for every mask (True = kept).

    A tied tensor is reparametrised in every module that holds it, so all of them see the masked weight."""
    check_not_reparametrised(model)
    plain = unwrap_model(model)
    masks = canonical_masks(model, masks)
    holders: dict[int, list[tuple[nn.Module, str]]] = {}
    for name, p in plain.named_parameters(remove_duplicate=False):
        mname, _, attr = name.rpartition(".")
        holders.setdefault(id(p), []).append((plain.get_submodule(mname), attr))
    params = dict(plain.named_parameters())
    for name, mask in masks.items():
        p = params[name]
        if tuple(mask.shape) != tuple(p.shape):
            raise PrunelimitError(f"mask {name!r} has shape {tuple(mask.shape)} but the parameter has {tuple(p.shape)}")
        for module, attr in holders[id(p)]:
            prune.custom_from_mask(module, attr, mask.to(device=p.device, dtype=torch.bool))
    return model


def from_torch_prune(model: nn.Module, *, remove: bool = True) -> dict[str, torch.Tensor]:
    """The masks of a model reparametrised by ``torch.nn.utils.prune`` (bool, True = kept), keyed by the
    plain parameter names. With ``remove`` (default) ``prune.remove`` makes the pruning permanent: the
    parameters are plain again and hold the masked weights (pruned entries exactly zero)."""
    found = reparametrised(model)
    if not found:
        raise PrunelimitError(f"model {type(unwrap_model(model)).__name__} carries no torch.nn.utils.prune masks "
                              f"(no <name>_orig parameter with a <name>_mask buffer)")
    by_tensor: dict[int, torch.Tensor] = {}
    keyed: dict[str, torch.Tensor] = {}
    for mname, module, attr in found:
        orig = getattr(module, f"{attr}_orig")
        mask = getattr(module, f"{attr}_mask") != 0
        if id(orig) in by_tensor:  # a tied tensor pruned in several modules: one mask, the entries all remove
            mask = by_tensor[id(orig)] & mask
        by_tensor[id(orig)] = mask
        keyed[f"{mname}.{attr}" if mname else attr] = orig
    # the plain model's (first) name of each tensor: named_parameters() order, "_orig" dropped
    names = {id(p): n[:-len("_orig")] for n, p in unwrap_model(model).named_parameters() if n.endswith("_orig")}
    if remove:
        for _, module, attr in found:
            prune.remove(module, attr)
    out = {}
    for key, orig in keyed.items():
        out.setdefault(names.get(id(orig), key), by_tensor[id(orig)])
    return out
