""""Important eigenvalues" (SPEC B4): flat directions SLQ cannot resolve, found from Hessian rows.

Among the prunable weights, take the ones at the magnitude quantiles 0 %, 1 %, …; a weight whose
Hessian row (one HVP with the unit vector at its coordinate) has L1 norm below ``threshold`` is a
flat direction. q = flat count / quantiles becomes a point mass at λ ≈ 0 in the width.
The statistic is on the full-data Hessian of the mean loss (the original divided it by the sample
count, so its 1e-7 cut depended on the batch size) and only prunable weights are sampled.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from prunelimit.pruning.prunable import prunable_parameters
from prunelimit.spectrum.operator import apply_operator
from prunelimit.spectrum.parameters import parameter_kind, why_left_out
from prunelimit.errors import PrunelimitError


@dataclass
class RowNormResult:
    quantile: torch.Tensor       # (Q,) float64, i / quantiles for i = 0..Q-1
    param_name: list[str]        # (Q,) name of the parameter holding the sampled weight
    index: torch.Tensor          # (Q,) long, flat index of the weight inside that parameter
    coordinate: torch.Tensor     # (Q,) long, its coordinate in the operator's flat vector
    magnitude: torch.Tensor      # (Q,) float64, |w|
    row_l1: torch.Tensor         # (Q,) float64, Σ_j |H_cj| of the full-data Hessian
    flat: torch.Tensor           # (Q,) bool, row_l1 < threshold
    threshold: float

    @property
    def flat_count(self) -> int:
        return int(self.flat.sum())

    @property
    def flat_fraction(self) -> float:
        """q: the fraction of sampled weights whose Hessian row is (numerically) zero."""
        return self.flat_count / len(self.param_name)

    def rows(self) -> list[dict]:
        """One dict per sampled weight (for CSV/JSON)."""
        return [{"quantile": float(self.quantile[i]), "param_name": self.param_name[i],
                 "index": int(self.index[i]), "magnitude": float(self.magnitude[i]),
                 "row_l1": float(self.row_l1[i]), "flat": bool(self.flat[i])}
                for i in range(len(self.param_name))]


def hessian_row_norms(op, model: nn.Module, *, quantiles: int = 100, include=None, exclude=None,
                      threshold: float = 1e-7, batch: int = 16) -> RowNormResult:
    """Hessian-row L1 norms of the prunable weights at magnitude quantiles 0, 1/Q, …, (Q-1)/Q.

    ``op`` is a HessianOperator whose params include every prunable weight of ``model`` (the default
    conv/linear weights and biases do). Prunable weights are sorted once by |w| (ties by position);
    quantile i picks the weight at sorted position floor(i·N/Q). ``batch`` rows share one backward."""
    if not isinstance(quantiles, int) or quantiles < 1:
        raise PrunelimitError(f"row_quantiles={quantiles!r} must be a positive integer")
    if not threshold > 0:
        raise PrunelimitError(f"row_threshold={threshold!r} must be positive")
    prunable = prunable_parameters(model, include, exclude)
    if not prunable:
        raise PrunelimitError(f"model {type(model).__name__} has no prunable (Conv2d/Linear) weights to sample "
                         "Hessian rows from; pass include=[...] patterns that select some")
    offsets = op.offsets()
    for name, p in prunable:
        if id(p) not in offsets:
            raise PrunelimitError(f"prunable weight {name!r} is not among the Hessian operator's parameters (it is "
                                  f"{why_left_out(parameter_kind(model, name))}, which the default set leaves out); "
                                  f"build the operator with params='all' (config: spectrum.parameters=all) or "
                                  f"params that include it")
    # |w| of all prunable weights in module order (N,), sorted once.
    mags = torch.cat([p.detach().abs().reshape(-1).double().cpu() for _, p in prunable])
    N = mags.numel()
    order = torch.sort(mags, stable=True).indices
    starts = torch.tensor([0] + [p.numel() for _, p in prunable]).cumsum(0)  # (L+1,) layer boundaries
    picks = order[torch.tensor([i * N // quantiles for i in range(quantiles)])]  # (Q,) flat prunable idx
    layer = torch.searchsorted(starts, picks, right=True) - 1
    local = picks - starts[layer]
    names = [prunable[int(l)][0] for l in layer]
    coords = torch.tensor([offsets[id(prunable[int(l)][1])][1] for l in layer]) + local

    dtype, device = getattr(op, "dtype", torch.float32), getattr(op, "device", "cpu")
    row_l1 = torch.empty(quantiles, dtype=torch.float64)
    for s in range(0, quantiles, batch):
        c = coords[s:s + batch]
        E = torch.zeros(c.numel(), op.dim, dtype=dtype, device=device)   # unit vectors as rows
        E[torch.arange(c.numel()), c.to(E.device)] = 1
        rows = apply_operator(op, E)                                     # (b, dim) = H e_c (H symmetric)
        if not torch.isfinite(rows).all():
            raise PrunelimitError("Hessian-vector product is not finite while sampling Hessian rows; the "
                             "model/loss has inf/nan at these weights")
        row_l1[s:s + batch] = rows.double().abs().sum(dim=1).cpu()
    return RowNormResult(quantile=torch.arange(quantiles, dtype=torch.float64) / quantiles,
                         param_name=names, index=local, coordinate=coords, magnitude=mags[picks],
                         row_l1=row_l1, flat=row_l1 < threshold, threshold=float(threshold))
