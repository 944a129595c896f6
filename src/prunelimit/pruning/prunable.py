"""Which parameters are prunable.

By default: the weight of every layer that multiplies its input by a weight — ``nn.Linear``,
``nn.Conv1d/2d/3d``, ``nn.ConvTranspose1d/2d/3d``, ``nn.Bilinear``, ``nn.MultiheadAttention``
(``in_proj_weight`` or ``q/k/v_proj_weight``; its ``out_proj`` is an ``nn.Linear``) and transformers'
``Conv1D`` (recognised by name, transformers is never imported) — plus any type added with
:func:`register_prunable_layer`. Embedding tables and normalisation layers stay out, as in both papers'
code; so does a weight tied to an embedding (GPT-2's ``lm_head``), since it *is* the embedding table.

``include`` / ``exclude`` are fnmatch patterns matched against module names (``"layer1.*"``, ``"fc"``)
and parameter names (``"fc.weight"``, ``"*.in_proj_weight"``, ``"transformer.wte.weight"``), every
name of a tied tensor included. With ``include`` given, the prunable set is exactly what it selects: a
parameter whose name matches, or the weight(s) of a module whose name matches (a layer's prunable
weights, or any module's ``weight`` — so norm layers can be opted in). ``exclude`` wins.

Names are those of the plain model's ``named_parameters()`` (wrappers unwrapped, tied tensors once).
"""
from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Callable, Iterable, Sequence

from torch import nn
from prunelimit.errors import PrunelimitError

from .names import unwrap_model

# (matches(module) -> bool, prunable attribute names, bias attribute names, label); checked in order.
_LAYER_TYPES: list[tuple[Callable[[nn.Module], bool], tuple[str, ...], tuple[str, ...], str]] = []


def register_prunable_layer(layer_type: type | str, weights: Sequence[str] = ("weight",),
                            biases: Sequence[str] = ("bias",)) -> None:
    """Make the ``weights`` attributes of every ``layer_type`` module prunable by default (and put them,
    with its ``biases``, into the default Hessian parameters). ``layer_type`` is a class (subclasses
    match) or a class name — ``"Conv1D"`` or ``"transformers.pytorch_utils.Conv1D"`` — so a type can be
    registered without importing its package."""
    if isinstance(layer_type, str):
        wanted = layer_type

        def matches(m: nn.Module) -> bool:
            return any(c.__name__ == wanted or f"{c.__module__}.{c.__qualname__}" == wanted for c in type(m).__mro__)
        label = layer_type
    elif isinstance(layer_type, type) and issubclass(layer_type, nn.Module):
        def matches(m: nn.Module) -> bool:
            return isinstance(m, layer_type)
        label = layer_type.__name__
    else:
        raise PrunelimitError(f"layer_type must be an nn.Module subclass or a class name, got {layer_type!r}")
    if isinstance(weights, str) or not weights or not all(isinstance(w, str) for w in weights):
        raise PrunelimitError(f"weights must be a non-empty list of attribute names, got {weights!r}")
    _LAYER_TYPES.append((matches, tuple(weights), tuple(biases), label))


def _is_hf_conv1d(m: nn.Module) -> bool:
    return type(m).__name__ == "Conv1D" and type(m).__module__.startswith("transformers.")


for _t in (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
           nn.ConvTranspose3d, nn.Bilinear):
    register_prunable_layer(_t)
register_prunable_layer(nn.MultiheadAttention, ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"),
                        ("in_proj_bias",))
_LAYER_TYPES.append((_is_hf_conv1d, ("weight",), ("bias",), "transformers Conv1D"))


def layer_kind(module: nn.Module) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """(prunable attributes, bias attributes) when ``module`` is a registered layer type, else None."""
    for matches, weights, biases, _ in _LAYER_TYPES:
        if matches(module):
            return weights, biases
    return None


def prunable_layer_types() -> list[str]:
    return [label for *_, label in _LAYER_TYPES]


@dataclass
class ParamInfo:
    """One parameter (tensor) of the plain model with every place it is held."""
    name: str  # canonical name (model.named_parameters())
    param: nn.Parameter
    aliases: list[str]  # every name, the canonical one first
    owners: list[tuple[str, nn.Module, str]]  # (module name, module, attribute)

    def default_role(self) -> str:
        """"weight" (prunable by default), "bias" (a prunable layer's bias), "tied" (a layer weight shared
        with a non-layer module such as an embedding), or "other"."""
        roles = set()
        for _, module, attr in self.owners:
            kind = layer_kind(module)
            roles.add("weight" if kind and attr in kind[0] else "bias" if kind and attr in kind[1] else "other")
        if roles == {"weight"}:
            return "weight"
        if "weight" in roles:
            return "tied"
        return "bias" if roles == {"bias"} else "other"


def parameter_table(model: nn.Module) -> list[ParamInfo]:
    """Every parameter of the plain model once, in ``named_parameters()`` order."""
    from .interop import check_not_reparametrised  # weight_orig + weight_mask: not the model's own names

    check_not_reparametrised(model)
    plain = unwrap_model(model)
    modules = dict(plain.named_modules(remove_duplicate=False))
    table: dict[int, ParamInfo] = {}
    for name, p in plain.named_parameters(remove_duplicate=False):
        mname, _, attr = name.rpartition(".")
        info = table.get(id(p))
        if info is None:
            info = table[id(p)] = ParamInfo(name, p, [], [])
        info.aliases.append(name)
        info.owners.append((mname, modules[mname], attr))
    return list(table.values())


def _as_patterns(p: str | Sequence[str] | None) -> list[str] | None:
    if p is None:
        return None
    if isinstance(p, str):
        return [p]
    return list(p)


def _name_matches(info: ParamInfo, patterns: Iterable[str]) -> bool:
    return any(fnmatchcase(a, pat) for a in info.aliases for pat in patterns)


def _module_matches(info: ParamInfo, patterns: Iterable[str], weights_only: bool) -> bool:
    for mname, module, attr in info.owners:
        if weights_only:
            kind = layer_kind(module)
            if attr not in (kind[0] if kind else ("weight",)):
                continue
        if any(fnmatchcase(mname, pat) for pat in patterns):
            return True
    return False


def select_parameters(model: nn.Module, include=None, exclude=None) -> list[ParamInfo]:
    """The prunable parameters as :class:`ParamInfo` (see the module docstring)."""
    inc, exc = _as_patterns(include), _as_patterns(exclude)
    out = []
    for info in parameter_table(model):
        if inc is None:
            if info.default_role() != "weight":
                continue
        elif not (_name_matches(info, inc) or _module_matches(info, inc, weights_only=True)):
            continue
        if exc is not None and (_name_matches(info, exc) or _module_matches(info, exc, weights_only=False)):
            continue
        out.append(info)
    return out


def prunable_parameters(model: nn.Module, include: str | Sequence[str] | None = None,
                        exclude: str | Sequence[str] | None = None) -> list[tuple[str, nn.Parameter]]:
    """``[(parameter_name, parameter), ...]`` in ``named_parameters()`` order, names of the plain model.

    A weight shared by several modules is listed once (under its ``named_parameters()`` name)."""
    out = [(info.name, info.param) for info in select_parameters(model, include, exclude)]
    if (include is not None or exclude is not None) and not out:
        raise PrunelimitError(f"no prunable parameters left after include={_as_patterns(include)} "
                         f"exclude={_as_patterns(exclude)}; patterns match module names such as "
                         f"{_example_names(model)} or parameter names such as {_example_names(model, True)}")
    return out


def layer_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Weights and biases of every prunable layer (the default Hessian parameters): the default
    prunable weights and the biases of their layers; embeddings, tied tables and norm layers stay out."""
    out = []
    for info in parameter_table(model):
        role = info.default_role()
        if role == "weight" or role == "bias":
            out.append((info.name, info.param))
    return out


def _example_names(model: nn.Module, params: bool = False, n: int = 4) -> list[str]:
    infos = [i for i in parameter_table(model) if i.default_role() == "weight"] or parameter_table(model)
    return [i.name if params else i.owners[0][0] for i in infos][:n]


def count_prunable(model: nn.Module, include=None, exclude=None) -> int:
    return sum(p.numel() for _, p in prunable_parameters(model, include, exclude))
