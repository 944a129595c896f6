"""The GP repository's pruning logs, under its file names and columns (SPEC A4).

``prune_log.csv`` / ``prune_refined_log.csv``: one row per prunable layer (Layer Index is 1-based, Layer
Name is our addition), then a final ``Total`` row carrying the accuracy after pruning.
``layer_sparsities.csv``: the GP+MT per-layer decision, with kept count and whether the floor clamped it.
"""
from __future__ import annotations

from pathlib import Path

from prunelimit import dist
from prunelimit.runs.io import write_csv

PRUNE_LOG_COLUMNS = ["Layer Index", "Layer Name", "Layer Weights", "Pre Accuracy", "Weights Pruned",
                     "% Pruning", "Post Accuracy"]


def write_prune_log(path: str | Path, stats, pre_acc: float | None, post_acc: float | None) -> None:
    """``stats``: ``prunelimit.pruning.mask_sparsity(masks)``."""
    if not dist.is_main():
        return
    pre = "" if pre_acc is None else round(pre_acc, 4)
    post = "" if post_acc is None else round(post_acc, 4)
    out = [[i + 1, r.name, r.n, pre, r.pruned, round(100 * r.sparsity, 4), ""] for i, r in enumerate(stats.layers)]
    out.append(["Total", "all prunable layers", stats.total, pre, stats.pruned, round(100 * stats.sparsity, 4), post])
    write_csv(path, PRUNE_LOG_COLUMNS, out)


def write_layer_sparsities(path: str | Path, plan) -> None:
    """``plan``: a ``prunelimit.pruning.MTPlan``; columns ``prunelimit.pruning.LAYER_SPARSITY_COLUMNS``."""
    from prunelimit.pruning import LAYER_SPARSITY_COLUMNS

    if dist.is_main():
        write_csv(path, LAYER_SPARSITY_COLUMNS, plan.rows())
