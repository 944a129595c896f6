"""What the masks cover: which weight matrices were left out, and which layers were pruned away.

    report = pl.coverage(model)            # include/exclude as for the masks
    print(report.format())                 # the CLI prints the same lines

A "weight matrix" is any floating-point parameter with at least 2 dimensions; coverage is the share of
their weights that is prunable. Works on a ``meta``-device model (only shapes are read).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn


from .names import unwrap_model
from .prunable import ParamInfo, _as_patterns, _module_matches, _name_matches, parameter_table, select_parameters

LARGE_FRACTION = 0.01  # a left-out matrix holding more than this share of all matrix weights gets a warning
_EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)


@dataclass(frozen=True)
class LeftOut:
    name: str  # canonical parameter name
    shape: tuple[int, ...]
    numel: int
    reason: str  # why it is not prunable, and how to opt it in


@dataclass(frozen=True)
class Coverage:
    model: str  # the plain model's class name
    prunable: tuple[tuple[str, int], ...]  # (name, numel) of the prunable parameters
    left_out: tuple[LeftOut, ...]  # weight matrices that are not prunable, largest first
    matrix_weights: int  # weights in all weight matrices (>= 2-D floating parameters)
    covered_matrix_weights: int  # of those, prunable

    @property
    def fraction(self) -> float:
        return self.covered_matrix_weights / self.matrix_weights if self.matrix_weights else 1.0

    @property
    def prunable_weights(self) -> int:
        return sum(n for _, n in self.prunable)

    def warnings(self, large: float = LARGE_FRACTION) -> list[str]:
        """One line per left-out matrix holding more than ``large`` of all matrix weights."""
        return [f"{x.name} {list(x.shape)} ({x.numel:,} weights, {100 * x.numel / self.matrix_weights:.1f} % "
                f"of all) is not pruned: {x.reason}"
                for x in self.left_out if self.matrix_weights and x.numel > large * self.matrix_weights]

    def format(self) -> str:
        lines = [f"coverage: {len(self.prunable)} prunable parameters, {self.prunable_weights:,} weights; "
                 f"{100 * self.fraction:.1f} % of the {self.matrix_weights:,} weights in weight matrices "
                 f"of {self.model}"]
        if self.left_out:
            lines.append(f"  left out ({len(self.left_out)}):")
            lines += [f"    {x.name} {list(x.shape)} {x.numel:,}: {x.reason}" for x in self.left_out[:12]]
            if len(self.left_out) > 12:
                lines.append(f"    ... and {len(self.left_out) - 12} more")
        lines += [f"  warning: {w}" for w in self.warnings()]
        return "\n".join(lines)


def _reason(info: ParamInfo, inc, exc) -> str:
    if exc is not None and (_name_matches(info, exc) or _module_matches(info, exc, weights_only=False)):
        return f"excluded by exclude={exc}"
    if inc is not None:
        return f"not selected by include={inc}"
    hint = f"include=[{info.name!r}, ...] prunes it"
    if info.default_role() == "tied":
        others = [f"{type(m).__name__} {n or '<root>'}" for n, m, _ in info.owners]
        return f"tied weight shared by {', '.join(others)} (an embedding table stays out by default); {hint}"
    mname, module, attr = info.owners[0]
    if isinstance(module, _EMBEDDINGS):
        return f"embedding table ({type(module).__name__}), out by default; {hint}"
    text = f"{type(module).__name__}.{attr} is not a registered layer weight; {hint}"
    if attr == "weight":  # a layer type of its own (a custom linear, say): registering covers all of them
        text += f", or register_prunable_layer({type(module).__name__}) makes every such layer prunable"
    return text


def coverage(model: nn.Module, include=None, exclude=None) -> Coverage:
    """Which weight matrices ``include``/``exclude`` (default: the standard layer types) leave out."""
    inc, exc = _as_patterns(include), _as_patterns(exclude)
    selected = {id(i.param) for i in select_parameters(model, inc, exc)}
    prunable, left, total, covered = [], [], 0, 0
    for info in parameter_table(model):
        p = info.param
        matrix = p.is_floating_point() and p.ndim >= 2
        total += p.numel() if matrix else 0
        if id(p) in selected:
            prunable.append((info.name, p.numel()))
            covered += p.numel() if matrix else 0
        elif matrix:
            left.append(LeftOut(info.name, tuple(p.shape), p.numel(), _reason(info, inc, exc)))
    left.sort(key=lambda x: -x.numel)
    return Coverage(type(unwrap_model(model)).__name__, tuple(prunable), tuple(left), total, covered)


def collapsed_layers(masks: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of masks that prune their whole parameter (layer collapse)."""
    return [name for name, m in masks.items() if m.numel() and not bool(m.any())]


def warn_collapsed(masks: Mapping[str, torch.Tensor], what: str) -> list[str]:
    """Warn (once per call) when ``masks`` prune a layer to 100 %; return the names."""
    names = collapsed_layers(masks)
    if names:
        warnings.warn(f"{what} prunes {len(names)} layer(s) entirely (layer collapse, the network's output no "
                      f"longer depends on its input through them): {', '.join(names[:6])}"
                      f"{', ...' if len(names) > 6 else ''}; use GP+MT (min_threshold) or a lower sparsity",
                      stacklevel=3)
    return names
