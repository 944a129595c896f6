"""Operators shared by the Lanczos tests."""
from __future__ import annotations

import torch


class diagonal_operator:
    """H = diag(d) with the operator interface (matmat with ``out``)."""

    def __init__(self, d: torch.Tensor):
        self.d, self.dim, self.dtype, self.device = d, d.numel(), d.dtype, d.device

    def matmat(self, V, out=None):
        return torch.mul(V, self.d, out=out) if out is not None else V * self.d
