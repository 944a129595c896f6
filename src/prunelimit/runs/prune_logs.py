"""The GP repository's pruning logs, under its file names and columns (SPEC A4).

``prune_log.csv`` / ``prune_refined_log.csv``: one row per prunable layer (Layer Index is 1-based, Layer
Name is our addition), then a final ``Total`` row carrying the accuracy after pruning.
``layer_sparsities.csv``: the GP+MT per-layer decision, with kept count and whether the floor clamped it.
"""
from __future__ import annotations

from pathlib import Path

import torch

from prunelimit import dist
from prunelimit.runs.io import write_csv

PRUNE_LOG_COLUMNS = ["Layer Index", "Layer Name", "Layer Weights", "Pre Accuracy", "Weights Pruned",
                     "% Pruning", "Post Accuracy"]
LAYER_SPARSITY_COLUMNS = ["Layer Index", "Layer Name", "Layer Weights", "Sparsity", "Kept Weights",
                          "Weights Pruned", "GP Weights Pruned", "Clamped By Floor", "Dense By Floor"]


def layer_rows(masks: dict[str, torch.Tensor]) -> list[dict]:
    """``[{name, n, pruned, sparsity}]`` per layer, in the masks' (module) order."""
    rows = []
    for name, m in masks.items():
        n = m.numel()
        pruned = n - int(m.sum().item())
        rows.append({"name": name, "n": n, "pruned": pruned, "sparsity": pruned / n if n else 0.0})
    return rows


def write_prune_log(path: str | Path, masks: dict[str, torch.Tensor], pre_acc: float | None,
                    post_acc: float | None) -> list[dict]:
    rows = layer_rows(masks)
    if not dist.is_main():
        return rows
    pre = "" if pre_acc is None else round(pre_acc, 4)
    post = "" if post_acc is None else round(post_acc, 4)
    out = [[i + 1, r["name"], r["n"], pre, r["pruned"], round(100 * r["sparsity"], 4), ""]
           for i, r in enumerate(rows)]
    n = sum(r["n"] for r in rows)
    pruned = sum(r["pruned"] for r in rows)
    out.append(["Total", "all prunable layers", n, pre, pruned, round(100 * pruned / n, 4) if n else 0.0, post])
    write_csv(path, PRUNE_LOG_COLUMNS, out)
    return rows


def write_layer_sparsities(path: str | Path, plan) -> None:
    """``plan``: a ``prunelimit.pruning.MTPlan``."""
    if not dist.is_main():
        return
    out = []
    for i, layer in enumerate(plan.layers):
        out.append([i + 1, layer.name, layer.n, round(layer.sparsity, 8), layer.kept, layer.pruned,
                    layer.gp_pruned, layer.clamped, layer.dense_by_floor])
    write_csv(path, LAYER_SPARSITY_COLUMNS, out)
