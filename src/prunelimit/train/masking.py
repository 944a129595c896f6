"""Keeping pruned weights exactly zero during training, and checking that all ranks agree on the mask.

Why it is exact for SGD (momentum, Nesterov, weight decay), Adam and AdamW: the masked gradient
entries are zeroed after backward (after DDP's all-reduce and GradScaler's unscale) and the masked
momentum/moment entries are zeroed once at the start, so the weight-decay term (wd * 0), the momentum
buffer (mu * 0 + 0) and the update are all exactly zero there. So after a step of those optimizers
the weights need no re-masking (``after_step`` skips it; ``check_pruned_zero`` verifies it once per
epoch); any other optimizer gets its weights re-masked after every step, so it cannot leak either.

Speed: each step multiplies the gradients (and, for other optimizers, the weights) by a float 0/1 mask
(``mul_``) instead of ``masked_fill_`` with a bool mask, which measured +13 % per training step on the
FC net at batch 128 (a bool fill costs ~15x a float multiply); benchmarks/bench_masking.py prints the
overhead against a dense step.
``w * 0`` is exactly zero (possibly -0.0, which equals 0) for every FINITE w, so the masked weights are
checked once when enforcement starts and a non-finite one is refused; during training a non-finite
weight makes the loss non-finite and the loop stops with ``TrainingDiverged`` before it is saved.
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
# Optimizers whose update is exactly zero where the gradient and the state are zero and the weight is
# zero (see the module docstring); exact types only: a subclass may change the update.
EXACT_OPTIMIZERS = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)


class MaskEnforcer:
    """Holds ``param -> pruned (bool, True = pruned)`` pairs for one model on one device."""

    def __init__(self, model: nn.Module, masks: Mapping[str, torch.Tensor], device: torch.device | None = None):
        """``model`` plain or wrapped (torch.compile, DataParallel, DDP); ``masks`` keyed by any name of each
        parameter; ``device`` defaults to each parameter's own."""
        self.masks = validate_masks(model, masks, device)
        named = dict(unwrap_model(model).named_parameters())
        # (name, parameter, keep as 0/1 in the parameter's dtype): multiplied in every step
        self.triples = [(name, named[name], keep.to(named[name].dtype)) for name, keep in self.masks.items()]
        self.check_finite()

    @property
    def pairs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(parameter, pruned-entry bool mask) pairs, for callers that need the pruned set."""
        return [(p, ~self.masks[name]) for name, p, _ in self.triples]

    @torch.no_grad()
    def check_finite(self) -> None:
        """Refuse masked parameters holding inf/nan: the multiplicative mask keeps zeros exact only for
        finite weights."""
        for name, p, _ in self.triples:
            bad = int((~torch.isfinite(p)).sum())
            if bad:
                raise PrunelimitError(f"parameter {name!r} has {bad} non-finite weight(s) (inf/nan); masked "
                                      "training needs finite weights — load a checkpoint from before the "
                                      "divergence or retrain")

    @torch.no_grad()
    def apply_to_weights(self) -> None:
        for _, p, keep in self.triples:
            p.mul_(keep)  # exact zeros for finite weights (check_finite); 6x cheaper than masked_fill_

    def after_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Re-mask the weights after an optimizer step unless the optimizer provably left them at zero."""
        if type(optimizer) not in EXACT_OPTIMIZERS:
            self.apply_to_weights()

    @torch.no_grad()
    def check_pruned_zero(self) -> None:
        """Raise if a pruned weight is not exactly zero (a bug: the enforcement above must prevent it)."""
        for name, p, keep in self.triples:
            leaked = int(((p != 0) & (keep == 0)).sum())
            if leaked:
                raise RuntimeError(f"{leaked} pruned weight(s) of {name!r} are non-zero after training steps; "
                                   "mask enforcement failed")

    @torch.no_grad()
    def apply_to_gradients(self) -> None:
        for _, p, keep in self.triples:
            if p.grad is not None:
                p.grad.mul_(keep)

    @torch.no_grad()
    def apply_to_optimizer_state(self, optimizer: torch.optim.Optimizer) -> None:
        """Zero the pruned entries of every per-parameter state tensor (momentum, Adam moments)."""
        for name, p, _ in self.triples:
            for key, value in optimizer.state.get(p, {}).items():
                if key != "step" and isinstance(value, torch.Tensor) and value.shape == p.shape:
                    value.masked_fill_(~self.masks[name], 0.0)  # once, at the start: exact for any value

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
