"""Which parameters a Hessian operator differentiates, and what it leaves out.

The default set (``params=None`` or ``"prunable"``) is the paper's convention, kept from the original
code: the weights and biases of every prunable layer type (conv, linear, attention projections, ...;
see ``pruning.prunable``). Left out: normalisation layers (BatchNorm, LayerNorm, ...), embedding tables,
a layer weight tied to an embedding (GPT-2's ``lm_head`` *is* ``transformer.wte``) and any other
parameter that belongs to no prunable layer (a ViT's ``pos_embed``, a PReLU slope). ``"all"`` takes
every trainable parameter of the model, each tied tensor once.

An explicit list may hold ``(name, parameter)`` pairs (``model.named_parameters()``, or a dict of them) or
plain parameters of the model (``model.parameters()``), which are named by looking them up in the model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import torch
from torch import nn

from prunelimit.errors import PrunelimitError
from prunelimit.pruning.names import put_mask, strip_wrapper_prefixes, unwrap_model
from prunelimit.pruning.prunable import layer_parameters
from prunelimit.spectrum.config import PARAMETER_SETS

_EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
          *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()))
# the kinds of left-out parameter, in the order a summary lists them: (key, singular, plural)
KINDS = (("norm", "norm layer", "norm layers"), ("embedding", "embedding", "embeddings"),
         ("tied", "weight tied to an embedding", "weights tied to an embedding"),
         ("other", "other tensor", "other tensors"))


def hessian_parameters(model: nn.Module, which: str = "prunable") -> list[tuple[str, nn.Parameter]]:
    """``which="prunable"`` (the default, the paper's convention): weights and biases of every prunable
    layer type; norm layers, embedding tables and weights tied to an embedding are left out. ``"all"``:
    every trainable parameter (a tied tensor once, under its ``named_parameters()`` name)."""
    if which == "prunable":
        return [(n, p) for n, p in layer_parameters(model) if p.requires_grad]
    if which == "all":
        return [(n, p) for n, p in unwrap_model(model).named_parameters() if p.requires_grad]
    raise PrunelimitError(f"params={which!r} is not one of {PARAMETER_SETS} or a list of (name, parameter) pairs")


def resolve_params(model: nn.Module, params) -> tuple[list[tuple[str, nn.Parameter]], bool]:
    """``(named parameters, chosen by default)`` for ``HessianOperator(params=...)``: None (the default
    set, said in a warning when it leaves something out), "prunable", "all", or an explicit list."""
    if params is None:
        return hessian_parameters(model), True
    if isinstance(params, str):
        return hessian_parameters(model, params), False
    if isinstance(params, Mapping):   # dict(model.named_parameters())
        params = list(params.items())
    if isinstance(params, torch.Tensor) or not isinstance(params, Iterable):
        raise PrunelimitError(f"params={_short(params)} is not a list; pass params=list(model.named_parameters()) "
                              f"(name, parameter pairs), plain parameters of the model, or 'all' / 'prunable'")
    named_by_id = {id(p): n for n, p in unwrap_model(model).named_parameters()}
    out = []
    for i, entry in enumerate(params):
        if isinstance(entry, torch.Tensor):   # model.parameters(): name it from the model
            name = named_by_id.get(id(entry))
            if name is None:
                raise PrunelimitError(f"params entry {i} is a tensor of shape {tuple(entry.shape)} that is not a "
                                      f"parameter of {type(unwrap_model(model)).__name__}; pass "
                                      f"params=list(model.named_parameters()) or (name, parameter) pairs of the model")
            out.append((name, entry))
        elif isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[0], str):
            out.append((entry[0], entry[1]))
        else:
            raise PrunelimitError(f"params entry {i} is {type(entry).__name__} {_short(entry)}; pass "
                                  f"params=list(model.named_parameters()) (name, parameter pairs), plain parameters "
                                  f"of the model, or 'all' / 'prunable'")
    return out, False


def _short(entry) -> str:
    """One line: a tuple's element types (a tensor's repr spans lines), else a clipped repr."""
    if isinstance(entry, (tuple, list)):
        return "(" + ", ".join(type(e).__name__ for e in entry) + ")"
    text = " ".join(repr(entry).split())
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class LeftOutParameter:
    """A trainable parameter of the model that the operator does not differentiate."""
    name: str       # its named_parameters() name
    numel: int
    kind: str       # "norm", "embedding", "tied" (a layer weight tied to an embedding) or "other"
    module: str     # the module holding it (its first owner)


def parameter_kind(model: nn.Module, name: str) -> str:
    """The kind of the parameter ``name`` (any of its names), to say why the default set leaves it out."""
    plain = unwrap_model(model)
    named = dict(plain.named_parameters(remove_duplicate=False))
    modules = dict(plain.named_modules(remove_duplicate=False))
    target = named[name]
    return _kind([modules[n.rpartition(".")[0]] for n, p in named.items() if p is target])


def _kind(owners: Sequence[nn.Module]) -> str:
    if any(isinstance(m, _NORMS) or type(m).__name__.endswith("Norm") for m in owners):   # LlamaRMSNorm, T5LayerNorm
        return "norm"
    embedding = [isinstance(m, _EMBEDDINGS) for m in owners]
    if any(embedding):
        return "tied" if not all(embedding) else "embedding"
    return "other"


def left_out_parameters(model: nn.Module, covered: Iterable[torch.Tensor]) -> list[LeftOutParameter]:
    """The trainable parameters of ``model`` (each tied tensor once) not among ``covered``."""
    plain = unwrap_model(model)
    covered_ids = {id(p) for p in covered}
    holders: dict[int, list[tuple[str, nn.Module]]] = {}
    params = {}
    modules = dict(plain.named_modules(remove_duplicate=False))
    for name, p in plain.named_parameters(remove_duplicate=False):
        holders.setdefault(id(p), []).append((name, modules[name.rpartition(".")[0]]))
        params.setdefault(id(p), p)
    out = []
    for key, owners in holders.items():
        p = params[key]
        if key in covered_ids or not p.requires_grad:
            continue
        name = owners[0][0]
        out.append(LeftOutParameter(name, p.numel(), _kind([m for _, m in owners]), name.rpartition(".")[0]))
    return out


def trainable_numel(model: nn.Module) -> int:
    """Trainable parameters of the model, a tied tensor counted once."""
    return sum(p.numel() for p in unwrap_model(model).parameters() if p.requires_grad)


def describe_left_out(left_out: Sequence[LeftOutParameter]) -> str:
    """``"2,272 in 31 norm layers, 64,000 in 1 weight tied to an embedding"``: parameters per kind, and the
    number of modules (norm layers, embeddings) or tensors (the others) holding them."""
    parts = []
    for key, one, many in KINDS:
        group = [x for x in left_out if x.kind == key]
        if not group:
            continue
        holders = len({x.module for x in group}) if key in ("norm", "embedding") else len(group)
        parts.append(f"{sum(x.numel for x in group):,} in {holders} {one if holders == 1 else many}")
    return ", ".join(parts)


def why_left_out(kind: str) -> str:
    """Why the default set leaves a parameter of this kind out, for error messages."""
    return {"norm": "a norm-layer parameter", "embedding": "an embedding table",
            "tied": "a weight tied to an embedding table",
            "other": "not the weight or bias of a prunable layer type"}[kind]


def resolve_mask_keys(op, masks) -> dict[str, torch.Tensor]:
    """``masks`` keyed by ``op.param_names``: a tied tensor's other names and wrapper prefixes are accepted
    (every name of a tensor the operator covers reaches it); a key the operator does not cover is a
    one-line error that says why and how to include it."""
    covered = {id(p): n for n, p in zip(op.param_names, op.params)} if hasattr(op, "params") else {}
    model = getattr(op, "model", None)
    by_name = ({strip_wrapper_prefixes(n): p for n, p in unwrap_model(model).named_parameters(remove_duplicate=False)}
               if model is not None else {})
    out: dict[str, torch.Tensor] = {}
    outside, unknown = [], []
    for key, mask in masks.items():
        if key in op.param_names:
            name = key
        else:
            p = by_name.get(strip_wrapper_prefixes(key))
            if p is None:
                unknown.append(key)
                continue
            name = covered.get(id(p))
            if name is None:
                outside.append((key, parameter_kind(model, strip_wrapper_prefixes(key))))
                continue
        put_mask(out, name, key, mask)
    if outside:
        key, kind = outside[0]
        more = f" (and {len(outside) - 1} more: {[k for k, _ in outside[1:4]]})" if len(outside) > 1 else ""
        raise PrunelimitError(f"mask key {key!r}{more} names a parameter the Hessian operator does not cover: "
                              f"{why_left_out(kind)}, left out by the default parameter set (the paper's "
                              f"convention); build the operator with params='all' (config: "
                              f"spectrum.parameters=all) to include it, or drop that mask")
    if unknown:
        raise PrunelimitError(f"mask keys {unknown[:4]} are not parameters of the Hessian operator's model; its "
                              f"parameters are named like {op.param_names[:4]}")
    return out
