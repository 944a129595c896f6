"""Global magnitude pruning (GP): remove the k smallest |w| of the whole network.

k = floor(sparsity * N + 0.5) (round half up). Exactly k weights are pruned, every pruned |w| is <=
every kept |w|, and ties at the threshold are broken by (layer order, flat index): the earliest
tied weights go first. The selection never concatenates the layers (see ``select.py``).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from .coverage import warn_collapsed
from .names import unwrap_model
from .prunable import prunable_layer_types, prunable_parameters
from .select import Cut, Pool, Workspace, check_sparsity, key_space, kth_key, prune_count, resolve_cuts, smallest_cuts
from prunelimit.errors import PrunelimitError

RULES = ("exact", "original")


def prunable_layers(model: nn.Module, include=None, exclude=None) -> tuple[list[str], list[Tensor]]:
    """Names and weights of the prunable parameters, in module order; ValueError when there are none."""
    params = prunable_parameters(model, include, exclude)
    if not params:
        raise PrunelimitError(f"model {type(unwrap_model(model)).__name__} has no prunable parameters (no layer of the "
                         f"types {', '.join(prunable_layer_types())}); select some with include=[...] patterns")
    check_not_meta(model, params)
    check_finite(params)
    return [n for n, _ in params], [p for _, p in params]


def check_finite(params) -> None:
    """Refuse NaN/Inf weights, naming them: a NaN sorts above every magnitude, so it would be kept."""
    with torch.no_grad():
        bad = [n for n, p in params if not bool(torch.isfinite(p).all())]
    if bad:
        raise PrunelimitError(f"prunable weight(s) {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''} contain NaN "
                              f"or Inf, which have no magnitude to rank; the checkpoint is broken (a diverged "
                              f"training?): use an earlier checkpoint")


def check_keeps_some(sparsity: float, k: int, n: int) -> None:
    """Refuse a sparsity that rounds to pruning every weight, as sparsity 1.0 itself is refused."""
    if n and k >= n:
        raise PrunelimitError(f"sparsity {sparsity!r} rounds to pruning all {n:,} prunable weights "
                              f"(k = floor(sparsity*N + 0.5) = {k:,}); use a sparsity below 1 - 0.5/N = "
                              f"{1 - 0.5 / n:.10g}")


def check_not_meta(model: nn.Module, params) -> None:
    """One-line error for a model built on the ``meta`` device (shapes only, no values to rank)."""
    meta = [n for n, p in params if p.is_meta]
    if meta:
        raise PrunelimitError(f"model {type(unwrap_model(model)).__name__} is on the meta device (parameter {meta[0]!r} "
                         f"has a shape but no values), so there are no magnitudes to prune; materialise it first, "
                         f"e.g. model.to_empty(device='cpu') then load_state_dict(...). pl.coverage(model) works "
                         f"on a meta model")


def global_magnitude_cuts(names: Sequence[str], weights: Sequence[Tensor], k: int, *, rule: str = "exact",
                          want_masks: bool = False, want_counts: bool = True,
                          ws: Workspace | None = None) -> tuple[list[Cut], list[Tensor | None]]:
    """Per-layer GP decisions for a prune count k (and the masks, built in the same pass)."""
    ws = ws or Workspace(key_space(weights, names), weights)
    pools = [Pool(w, w.numel()) for w in weights]
    if rule == "original" and k > 0:
        # The original keeps |w| >= the k-th smallest magnitude: hand out none of the tied copies.
        t, _ = kth_key(pools, k, ws)
        cuts, masks, _ = resolve_cuts(pools, t, 0, ws, want_masks=want_masks, want_counts=want_counts)
        return cuts, masks
    cuts, masks, _ = smallest_cuts(pools, k, ws, want_masks=want_masks, want_counts=want_counts)
    return cuts, masks


def global_magnitude_masks(model: nn.Module, sparsity: float, *, include=None, exclude=None,
                           rule: str = "exact") -> dict[str, torch.Tensor]:
    """Masks for global magnitude pruning at ``sparsity`` (fraction removed).

    Returns ``{parameter name: bool tensor}`` of each prunable parameter's shape and device, True =
    kept. ``rule="exact"`` (default) prunes exactly k = floor(sparsity*N + 0.5) weights.
    ``rule="original"`` reproduces the published code: threshold = the k-th smallest |w| and keep
    |w| >= threshold, which prunes k-1 weights when there are no ties (fewer with ties). The original
    also pooled one uninitialised element with the weights; that is not reproduced.
    """
    p = check_sparsity(sparsity)
    if rule not in RULES:
        raise PrunelimitError(f"rule={rule!r} is not known; use one of {', '.join(RULES)}")
    names, weights = prunable_layers(model, include, exclude)
    n = sum(w.numel() for w in weights)
    k = prune_count(p, n)
    check_keeps_some(sparsity, k, n)
    with torch.no_grad():
        _, masks = global_magnitude_cuts(names, weights, k, rule=rule, want_masks=True, want_counts=False)
    masks = dict(zip(names, masks))
    warn_collapsed(masks, f"GP at sparsity {p}")
    return masks
