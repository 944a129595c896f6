"""Masks: applying them, checking them against a model, statistics, and the mask file.

A mask set is ``dict[str, torch.BoolTensor]`` keyed by parameter name (as in
``model.named_parameters()``), each of its parameter's shape, True = kept. On disk it is one
safetensors file of bool tensors — no pickle, so loading it can never run code.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save
from torch import Tensor, nn

from ..dist import is_main
from ..messages import few as _few
from ..runs.io import atomic_write_bytes
from .names import canonical_masks, parameter_aliases, strip_wrapper_prefixes, unwrap_model
from .prunable import prunable_parameters
from prunelimit.errors import PrunelimitError


@dataclass(frozen=True)
class LayerMaskStats:
    name: str  # parameter name
    n: int  # weights in the layer
    pruned: int  # weights the mask removes
    sparsity: float  # pruned / n


@dataclass(frozen=True)
class MaskStats:
    total: int  # N: weights covered by the masks
    pruned: int  # weights removed
    sparsity: float  # pruned / total
    keep_fraction: float  # 1 - sparsity
    layers: tuple[LayerMaskStats, ...]


_unwrap = unwrap_model  # wrappers (DDP, DataParallel, torch.compile) prefix names; masks never carry them


def check_masks_fit(model: nn.Module, masks: Mapping[str, Tensor], source: str = "<masks>", *,
                    include=None, exclude=None) -> None:
    """ValueError unless every mask names a parameter of ``model`` with the same shape, and every
    prunable parameter (``include``/``exclude`` as when the masks were made) has a mask."""
    params = dict(_unwrap(model).named_parameters())
    aliases = parameter_aliases(model)
    masks = {aliases.get(strip_wrapper_prefixes(k), k): m for k, m in masks.items()}
    unexpected = [k for k in masks if k not in params]
    wanted = [n for n, _ in prunable_parameters(_unwrap(model), include, exclude)]
    missing = [n for n in wanted if n not in masks]
    shapes = [f"{k}: mask {tuple(m.shape)} vs parameter {tuple(params[k].shape)}"
              for k, m in masks.items() if k in params and tuple(m.shape) != tuple(params[k].shape)]
    dtypes = [f"{k}: {m.dtype}" for k, m in masks.items() if m.dtype != torch.bool]
    if unexpected or missing or shapes or dtypes:
        parts = []
        if unexpected:
            parts.append(f"{len(unexpected)} key(s) that are not parameters of the model, e.g. {_few(unexpected)}")
        if missing:
            parts.append(f"{len(missing)} prunable parameter(s) without a mask, e.g. {_few(missing)}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es): {_few(shapes)}")
        if dtypes:
            parts.append(f"{len(dtypes)} mask(s) that are not bool: {_few(dtypes)}")
        raise PrunelimitError(f"mask file {source} was made for another model than {type(_unwrap(model)).__name__}: "
                         + "; ".join(parts) + ". Use the masks saved with this model (same --model and "
                         "include/exclude).")


def apply_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> nn.Module:
    """Zero the pruned weights of ``model`` in place (True = kept) and return ``model``.

    ``model`` may be wrapped (torch.compile, DataParallel, DDP) or not, and mask keys may use any name of a
    tied parameter or a wrapper's prefix: masks from either apply to both."""
    if not masks:
        raise PrunelimitError("apply_masks got no masks (an empty mapping), so nothing would be pruned; pass "
                              "{parameter name: bool tensor}, e.g. from global_magnitude_masks or load_masks")
    params = dict(_unwrap(model).named_parameters())
    masks = canonical_masks(model, masks)
    for name, mask in masks.items():
        p = params[name]
        if tuple(mask.shape) != tuple(p.shape) or mask.dtype != torch.bool:
            raise PrunelimitError(f"mask {name!r} is {mask.dtype} {tuple(mask.shape)} but must be torch.bool of the "
                             f"parameter's shape {tuple(p.shape)}")
    with torch.no_grad():
        for name, mask in masks.items():
            p = params[name]
            p.masked_fill_(torch.logical_not(mask.to(p.device)), 0)
    return model


def mask_sparsity(masks: Mapping[str, Tensor]) -> MaskStats:
    """Counts of pruned (False) entries overall and per layer."""
    layers = []
    for name, mask in masks.items():
        n = mask.numel()
        pruned = n - int(mask.sum())
        layers.append(LayerMaskStats(name, n, pruned, pruned / n if n else 0.0))
    total = sum(s.n for s in layers)
    pruned = sum(s.pruned for s in layers)
    sparsity = pruned / total if total else 0.0
    return MaskStats(total, pruned, sparsity, 1.0 - sparsity, tuple(layers))


def count_nonzero_pruned(model: nn.Module, masks: Mapping[str, Tensor]) -> int:
    """How many weights the masks prune are not exactly zero in ``model`` (0 for a correctly pruned model)."""
    params = dict(_unwrap(model).named_parameters())
    masks = canonical_masks(model, masks)
    with torch.no_grad():
        return sum(int((params[name][~mask.to(params[name].device)] != 0).sum()) for name, mask in masks.items())


def masks_sparsity_of_model(model: nn.Module, include=None, exclude=None) -> float:
    """Measured fraction of exactly-zero prunable weights (what the model really has, mask or not)."""
    params = prunable_parameters(_unwrap(model), include, exclude)
    total = sum(p.numel() for _, p in params)
    zeros = sum(p.numel() - int(torch.count_nonzero(p.detach())) for _, p in params)
    return zeros / total if total else 0.0


def save_masks(path: str | os.PathLike, masks: Mapping[str, Tensor], *,
               metadata: Mapping[str, str] | None = None) -> Path | None:
    """Write ``masks`` as a safetensors file of bool tensors, atomically; only rank 0 writes.

    Returns the path on rank 0, None elsewhere."""
    if metadata is not None:
        bad = [f"{k!r}: {type(v).__name__}" for k, v in metadata.items()
               if not isinstance(k, str) or not isinstance(v, str)]
        if bad:
            raise PrunelimitError(f"mask file metadata must map str to str; convert these entries: {_few(bad)}")
    tensors = {}
    for name, mask in masks.items():
        if mask.dtype != torch.bool:
            raise PrunelimitError(f"mask {name!r} has dtype {mask.dtype}; masks are torch.bool (True = kept)")
        tensors[name] = mask.detach().to("cpu").contiguous()
    if not is_main():
        return None
    return atomic_write_bytes(path, save(tensors, metadata=dict(metadata) if metadata else None))


def load_masks(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """Read a mask file written by :func:`save_masks` (no pickle involved)."""
    path = Path(path)
    if not path.is_file():
        raise PrunelimitError(f"mask file {str(path)!r} does not exist or is not a file; check the path")
    try:
        masks = load_file(path, device=str(device))
    except (SafetensorError, OSError) as e:
        raise PrunelimitError(f"mask file {str(path)!r} is not a readable safetensors mask file ({e}); it is "
                         f"corrupt or was written by something else. An original weight_mask.npy is read "
                         f"with load_legacy_mask_npy (--allow-pickle).") from None
    bad = [f"{k}: {v.dtype}" for k, v in masks.items() if v.dtype != torch.bool]
    if bad:
        raise PrunelimitError(f"mask file {str(path)!r} holds non-bool tensors ({_few(bad)}); it is not a mask file")
    return masks


def mask_file_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``metadata`` a mask file was saved with (empty dict when none)."""
    path = Path(path)
    if not path.is_file():
        raise PrunelimitError(f"mask file {str(path)!r} does not exist or is not a file; check the path")
    try:
        with safe_open(str(path), "pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError) as e:
        raise PrunelimitError(f"mask file {str(path)!r} is not a readable safetensors file ({e})") from None

