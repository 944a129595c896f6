"""One ascending magnitude ordering of all prunable weights, for pruning sweeps.

Global magnitude pruning at fraction p removes the k(p) = floor(p*N + 0.5) smallest |w|, so every
ratio's mask is a prefix of ONE ordering. We sort once and keep, per position of that ordering, the
global flat index of the weight (int64; the layer follows from ``offsets`` by ``searchsorted``) and the
running sum of squared magnitudes (float64), so R(p) = ||w* - w_p||_2 = sqrt(sum of removed w^2) is O(1).

Ties in |w| are broken by (layer order, flat index): the concatenation below is in layer order and the
sort is stable, which is the same rule ``prunelimit.pruning.global_magnitude_masks`` uses.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from prunelimit.pruning.names import unwrap_model
from prunelimit.pruning.prunable import prunable_parameters
from prunelimit.runs.io import atomic_write_bytes
from prunelimit.errors import PrunelimitError

_FORMAT = "prunelimit.magnitude_ordering/1"


_unwrap = unwrap_model  # wrappers prefix parameter names; the ordering uses the plain model's names


class MagnitudeOrdering:
    """Ascending |w| ordering of the prunable weights of one model.

    Attributes: ``names`` (parameter names in layer order), ``shapes``, ``offsets`` (int64 [L+1], start of
    each layer in the concatenated flat layout), ``order`` (int64 [N], global flat index of the weight at
    each sorted position), ``cumsq`` (float64 [N+1], ``cumsq[k]`` = sum of the k smallest w^2).
    """

    def __init__(self, names: Sequence[str], shapes: Sequence[Sequence[int]], order: torch.Tensor,
                 cumsq: torch.Tensor):
        self.names = list(names)
        self.shapes = [torch.Size(s) for s in shapes]
        sizes = torch.tensor([math.prod(s) for s in self.shapes], dtype=torch.int64)
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(sizes, 0)])
        self.num_weights = int(self.offsets[-1])
        if order.shape != (self.num_weights,) or cumsq.shape != (self.num_weights + 1,):
            raise PrunelimitError(f"magnitude ordering is inconsistent: {len(order)} positions and {len(cumsq)} "
                             f"cumulative sums for N={self.num_weights} weights; rebuild it with from_model")
        self.order = order.to(device="cpu", dtype=torch.int64)
        self.cumsq = cumsq.to(device="cpu", dtype=torch.float64)

    @classmethod
    def from_model(cls, model: nn.Module, *, include=None, exclude=None) -> "MagnitudeOrdering":
        """Sort the prunable weights of ``model`` once (on the model's device), keep the result on CPU."""
        params = prunable_parameters(_unwrap(model), include, exclude)
        if not params:
            raise PrunelimitError(f"model {type(model).__name__} has no prunable weights (no nn.Conv2d/nn.Linear); "
                             f"pass include= patterns naming the modules to prune")
        # float32 |w| represents half/bfloat16/float32 weights exactly; float64 models keep float64 keys.
        key_dtype = torch.float64 if any(p.dtype == torch.float64 for _, p in params) else torch.float32
        with torch.no_grad():
            # flat: [N] |w| in layer order; reshape(-1) is the logical row-major flat index.
            flat = torch.cat([p.detach().reshape(-1).to(key_dtype).abs() for _, p in params])
            if not torch.isfinite(flat).all():
                bad = [n for n, p in params if not torch.isfinite(p.detach()).all()]
                raise PrunelimitError(f"prunable weights {bad} contain NaN or Inf; a magnitude ordering needs "
                                 f"finite weights (check the checkpoint or the training run)")
            order = torch.sort(flat, stable=True).indices
            del flat
            # squares in float64 so that R(p) stays accurate for small removed norms at large N.
            sq = torch.cat([p.detach().reshape(-1).double().square() for _, p in params])
            sq_sorted = sq[order]                                  # [N] w^2 in ascending |w| order
            del sq
            cumsq = sq_sorted.new_zeros(len(sq_sorted) + 1)        # [N+1], cumsq[0] = 0
            torch.cumsum(sq_sorted, 0, out=cumsq[1:])
        return cls([n for n, _ in params], [tuple(p.shape) for _, p in params], order, cumsq)

    # ---- counts and radii -------------------------------------------------------------------------------
    def count(self, p: float) -> int:
        """Number of weights removed at prune fraction ``p``: floor(p*N + 0.5)."""
        p = float(p)
        if not 0.0 <= p <= 1.0:
            raise PrunelimitError(f"prune_fraction must be in [0, 1] (the fraction of weights removed); got {p}")
        return min(self.num_weights, int(math.floor(p * self.num_weights + 0.5)))

    def radius_of_count(self, k: int) -> float:
        """l2 norm of the k smallest-magnitude weights (what pruning k weights removes)."""
        k = int(k)
        if not 0 <= k <= self.num_weights:
            raise PrunelimitError(f"removed count k must be in [0, N={self.num_weights}]; got {k}")
        return math.sqrt(float(self.cumsq[k]))

    def radius(self, p: float) -> float:
        """R(p) = ||w* - w_p||_2 for global magnitude pruning at prune fraction ``p``."""
        return self.radius_of_count(self.count(p))

    def radii(self, fractions) -> torch.Tensor:
        """R(p) for many prune fractions at once (float64 [len(fractions)])."""
        ks = torch.tensor([self.count(p) for p in fractions], dtype=torch.int64)
        return self.cumsq[ks].sqrt()

    # ---- masks and in-place pruning ----------------------------------------------------------------------
    def masks(self, p: float, *, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """The global magnitude mask at prune fraction ``p`` (True = kept), recreated from the ordering."""
        k = self.count(p)
        keep = torch.ones(self.num_weights, dtype=torch.bool)
        keep[self.order[:k]] = False
        out = {}
        for i, (name, shape) in enumerate(zip(self.names, self.shapes)):
            m = keep[int(self.offsets[i]):int(self.offsets[i + 1])].reshape(shape)
            out[name] = m.to(device) if device is not None else m.clone()
        return out

    def params_of(self, model: nn.Module) -> list[torch.Tensor]:
        """The model's parameters this ordering covers, in its layer order (names and shapes checked)."""
        named = dict(_unwrap(model).named_parameters())
        out = []
        for name, shape in zip(self.names, self.shapes):
            if name not in named:
                raise PrunelimitError(f"model has no parameter {name!r} that this magnitude ordering was built for; "
                                 f"build the ordering from this model with MagnitudeOrdering.from_model")
            if named[name].shape != shape:
                raise PrunelimitError(f"parameter {name!r} has shape {tuple(named[name].shape)} but the ordering was "
                                 f"built for {tuple(shape)}; rebuild it from this model")
            out.append(named[name])
        return out

    def check_model(self, model: nn.Module, *, rtol: float = 1e-5) -> None:
        """Raise ``ValueError`` unless ``model`` has the dense weights this ordering was built from.

        Compares names, shapes and the total sum of squares (cheap, catches a stale or pruned model)."""
        params = self.params_of(model)
        with torch.no_grad():
            total = sum(float(p.detach().double().square().sum()) for p in params)
        expect = float(self.cumsq[-1])
        if not math.isclose(total, expect, rel_tol=rtol, abs_tol=1e-12):
            raise PrunelimitError(f"the model's prunable weights (sum of squares {total:.6g}) are not the ones this "
                             f"ordering was built from ({expect:.6g}); pass the dense model, or rebuild the "
                             f"ordering with MagnitudeOrdering.from_model")

    def prune_to(self, model: nn.Module, k_prev: int, k: int) -> None:
        """Zero the weights at sorted positions [k_prev, k) in place (incremental pruning k_prev -> k)."""
        k_prev, k = int(k_prev), int(k)
        if not 0 <= k_prev <= k <= self.num_weights:
            raise PrunelimitError(f"prune_to needs 0 <= k_prev <= k <= N={self.num_weights}; got k_prev={k_prev}, "
                             f"k={k} (pruning only moves forward; restore the dense weights to go back)")
        if k == k_prev:
            return
        params = self.params_of(model)
        idx = self.order[k_prev:k]
        layer = torch.searchsorted(self.offsets, idx, right=True) - 1   # [k-k_prev] layer id per position
        with torch.no_grad():
            for li in torch.unique(layer).tolist():
                local = (idx[layer == li] - self.offsets[li]).to(params[li].device)
                w = params[li].data
                if w.is_contiguous():
                    w.view(-1).index_fill_(0, local, 0)
                else:  # e.g. channels_last conv weights: address by the logical multi-index
                    w[torch.unravel_index(local, w.shape)] = 0

    # ---- persistence -------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the ordering as a safetensors file (atomically) so masks at any p can be recreated later."""
        from safetensors.torch import save as st_save

        meta = {"format": _FORMAT, "names": json.dumps(self.names),
                "shapes": json.dumps([list(s) for s in self.shapes])}
        data = st_save({"order": self.order.contiguous(), "cumsq": self.cumsq.contiguous()}, metadata=meta)
        return atomic_write_bytes(path, data)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "MagnitudeOrdering":
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise PrunelimitError(f"magnitude ordering file {str(path)!r} does not exist; write it with "
                             f"MagnitudeOrdering.save or check the path")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {key: f.get_tensor(key) for key in f.keys()}
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise PrunelimitError(f"magnitude ordering file {str(path)!r} is not a readable safetensors file "
                             f"({type(e).__name__}: {e}); rewrite it with MagnitudeOrdering.save") from None
        if meta.get("format") != _FORMAT or not {"order", "cumsq"} <= tensors.keys():
            raise PrunelimitError(f"{str(path)!r} is not a magnitude ordering file (format {meta.get('format')!r}, "
                             f"tensors {sorted(tensors)}); write it with MagnitudeOrdering.save")
        return cls(json.loads(meta["names"]), json.loads(meta["shapes"]), tensors["order"], tensors["cumsq"])

    def __repr__(self) -> str:
        return f"MagnitudeOrdering(N={self.num_weights}, layers={len(self.names)})"
