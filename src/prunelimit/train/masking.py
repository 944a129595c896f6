"""Keeping pruned weights exactly zero during training, and checking that all ranks agree on the mask.

Why it is exact for SGD (momentum, Nesterov, weight decay), Adam and AdamW: the masked gradient
entries are zeroed after backward (after DDP's all-reduce and GradScaler's unscale) and the masked
momentum/moment entries are zeroed once at the start, so the weight-decay term (wd * 0), the momentum
buffer (mu * 0 + 0) and the update are all exactly zero there. The weights are re-masked after every
step anyway, so an optimizer without that property cannot leak either.
"""
from __future__ import annotations

import zlib
from typing import Mapping

import torch
import torch.distributed as tdist
from torch import nn

from prunelimit import dist
from prunelimit.pruning.names import canonical_masks, unwrap_model
from prunelimit.pruning.prunable import prunable_parameters
from prunelimit.errors import PrunelimitError

# Multiplier of the flat-index hash in the mask checksum (Knuth's multiplicative hash), reduced
# modulo a Mersenne prime so the per-mask sum of up to 2**31 terms stays exact in int64.
_HASH_MUL = 2654435761
_HASH_MOD = 2**31 - 1


class MaskEnforcer:
    """Holds ``param -> pruned (bool, True = pruned)`` pairs for one model on one device."""

    def __init__(self, model: nn.Module, masks: Mapping[str, torch.Tensor], device: torch.device | None = None):
        """``model`` plain or wrapped (torch.compile, DataParallel, DDP); ``masks`` keyed by any name of each
        parameter; ``device`` defaults to each parameter's own."""
        self.masks = validate_masks(model, masks, device)
        named = dict(unwrap_model(model).named_parameters())
        # (parameter, pruned-entry mask of the same shape); ~keep is precomputed once
        self.pairs = [(named[name], ~keep) for name, keep in self.masks.items()]

    @torch.no_grad()
    def apply_to_weights(self) -> None:
        for p, pruned in self.pairs:
            p.masked_fill_(pruned, 0.0)  # masked_fill, not mul: exact even if a weight were inf/nan

    @torch.no_grad()
    def apply_to_gradients(self) -> None:
        for p, pruned in self.pairs:
            if p.grad is not None:
                p.grad.masked_fill_(pruned, 0.0)

    @torch.no_grad()
    def apply_to_optimizer_state(self, optimizer: torch.optim.Optimizer) -> None:
        """Zero the pruned entries of every per-parameter state tensor (momentum, Adam moments)."""
        for p, pruned in self.pairs:
            for key, value in optimizer.state.get(p, {}).items():
                if key != "step" and isinstance(value, torch.Tensor) and value.shape == p.shape:
                    value.masked_fill_(pruned, 0.0)

    def checksum(self) -> list[int]:
        return masks_checksum(self.masks)


def validate_masks(model: nn.Module, masks: Mapping[str, torch.Tensor],
                   device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """Check names/shapes/values against ``model``; return bool masks on ``device`` in a fixed order."""
    if not isinstance(masks, Mapping) or not masks:
        raise PrunelimitError("masks must be a non-empty dict {parameter name: bool tensor (True = kept)}, "
                         f"got {type(masks).__name__}")
    named = dict(unwrap_model(model).named_parameters())
    masks = canonical_masks(model, masks)
    out = {}
    for name in sorted(masks):
        mask = masks[name]
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(named[name].shape):
            shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise PrunelimitError(f"mask {name!r} has shape {shape} but the parameter has {tuple(named[name].shape)}; "
                             f"the masks were made for a different model")
        if mask.dtype != torch.bool:
            if not bool(((mask == 0) | (mask == 1)).all()):
                raise PrunelimitError(f"mask {name!r} must be boolean (True = kept) or hold only 0/1, "
                                 f"got dtype {mask.dtype} with other values")
            mask = mask != 0
        out[name] = mask.to(device if device is not None else named[name].device)
    return out


def masks_checksum(masks: Mapping[str, torch.Tensor]) -> list[int]:
    """Per mask (sorted by name): [crc32(name), kept count, hash-sum of kept flat indices]."""
    out: list[int] = []
    for name in sorted(masks):
        flat = masks[name].reshape(-1)
        idx = torch.nonzero(flat).reshape(-1).to(torch.int64)
        hashed = (idx % _HASH_MOD) * (_HASH_MUL % _HASH_MOD) % _HASH_MOD
        out += [zlib.crc32(name.encode()), int(idx.numel()), int(hashed.sum())]
    return out


def verify_same_on_all_ranks(values: list[int], what: str, device: torch.device) -> None:
    """Raise ``ValueError`` on every rank (so none waits in a later collective) unless all ranks hold
    the same ``values``. Compared with an all-reduce of max and min, first of the length."""
    if not dist.is_distributed():
        return
    length = torch.tensor([len(values), -len(values)], dtype=torch.int64, device=device)
    tdist.all_reduce(length, op=tdist.ReduceOp.MAX)
    same = int(length[0]) == -int(length[1])
    if same:
        v = torch.tensor(values, dtype=torch.int64, device=device)
        both = torch.cat([v, -v])
        tdist.all_reduce(both, op=tdist.ReduceOp.MAX)
        same = bool(torch.equal(both[: len(values)], -both[len(values):]))
    if not same:
        raise PrunelimitError(f"the {what} differs between ranks (rank {dist.rank()} of {dist.world_size()} checked); "
                         f"every process must use the same {what}: compute it on rank 0 and load the same file "
                         f"everywhere, or derive it from identical weights")


def zero_fraction_percent(model: nn.Module) -> float:
    """Measured percentage of prunable weights (conv/linear) that are exactly zero."""
    params = [p for _, p in prunable_parameters(model)]
    total = sum(p.numel() for p in params)
    if total == 0:
        return 0.0
    zeros = sum(int((p.detach() == 0).sum()) for p in params)
    return 100.0 * zeros / total
