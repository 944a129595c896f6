"""The Hessian restricted to the weights a pruning mask keeps: the spectrum of the pruned subnetwork.

H_kept = P^T H P, with P the (dim x kept) selection of the kept coordinates, is the Hessian of the loss
as a function of the kept weights alone (the pruned ones held at their current value, zero after
pruning). Its spectrum, next to that of the dense network, shows how flat the loss is before and after
pruning. ``RestrictedOperator`` applies it without forming anything: scatter the kept coordinates
into a full-length vector, one HVP of the full operator, gather the kept coordinates back.
"""
from __future__ import annotations

from typing import Mapping

import torch

from prunelimit.errors import PrunelimitError
from prunelimit.spectrum.operator import apply_operator
from prunelimit.spectrum.parameters import resolve_mask_keys


class RestrictedOperator:
    """``RestrictedOperator(op, masks)``: ``op`` a HessianOperator, ``masks`` {parameter name: bool
    tensor, True = kept} for some of its parameters (the others, such as norm layers under
    ``params="all"``, are kept whole); a tied tensor's mask may be keyed by any of its names. Has
    ``dim`` = number of kept coordinates, ``matmat``/``matvec`` and the operator's dtype/device, so ``slq_spectrum`` and
    ``top_eigenvalues`` run on it unchanged."""

    def __init__(self, op, masks: Mapping[str, torch.Tensor]):
        names = list(op.param_names)
        masks = resolve_mask_keys(op, masks)   # either name of a tied tensor; a left-out one says why
        parts = []
        for name, shape in zip(names, op.shapes):
            keep = masks.get(name)
            if keep is None:
                parts.append(torch.ones(shape.numel(), dtype=torch.bool))
                continue
            if tuple(keep.shape) != tuple(shape):
                raise PrunelimitError(f"mask {name!r} has shape {tuple(keep.shape)} but the parameter has {tuple(shape)}")
            parts.append(keep.reshape(-1).to(torch.bool).cpu())
        flat = torch.cat(parts)
        self.index = torch.nonzero(flat).reshape(-1).to(op.device)   # kept coordinates in op's flat order
        if self.index.numel() == 0:
            raise PrunelimitError("the masks keep no weight: the restricted Hessian is empty")
        self.op, self.dim, self.full_dim = op, int(self.index.numel()), op.dim
        self.dtype, self.device = op.dtype, op.device
        for name in ("num_samples", "loss", "curvature"):   # what identifies the matrix (checkpoints)
            if hasattr(op, name):
                setattr(self, name, getattr(op, name))
        self.num_matvecs = 0

    def matmat(self, V: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        if V.ndim != 2 or V.shape[1] != self.dim:
            raise PrunelimitError(f"vectors must have shape (k, {self.dim}); got {tuple(V.shape)}")
        full = torch.zeros(V.shape[0], self.full_dim, dtype=self.dtype, device=self.device)
        full[:, self.index] = V.to(full)
        result = apply_operator(self.op, full).index_select(1, self.index).to(V)
        self.num_matvecs += V.shape[0]
        return result if out is None else out.copy_(result)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.matmat(v.reshape(1, -1)).reshape(-1)
