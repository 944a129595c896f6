"""The training objective: data loss (cross-entropy or MSE on one-hot targets) plus an optional L1 term."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from prunelimit.pruning.prunable import prunable_parameters
from prunelimit.train.config import CRITERIA, L1_PARAM_SETS, TrainConfig
from prunelimit.errors import PrunelimitError

Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def criterion_from_name(name: str, num_classes: int | None = None, label_smoothing: float = 0.0) -> Criterion:
    """``callable(logits (B, C), targets (B,) int64) -> mean loss`` for ``name`` in ``CRITERIA``.

    "mse" compares the logits with one-hot targets (smoothed like cross-entropy's targets when
    ``label_smoothing`` > 0: (1 - s) * onehot + s / C); C is ``num_classes`` or the logits' width."""
    if name not in CRITERIA:
        raise PrunelimitError(f"criterion must be one of {list(CRITERIA)}, got {name!r}")
    if not 0.0 <= label_smoothing < 1.0:
        raise PrunelimitError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or num_classes < 1):
        raise PrunelimitError(f"num_classes must be a positive integer or None, got {num_classes!r}")
    if name == "cross_entropy":
        return nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def mse_one_hot(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        classes = num_classes if num_classes is not None else logits.shape[1]
        if logits.shape[1] != classes:
            raise PrunelimitError(f"the model outputs {logits.shape[1]} classes but num_classes is {classes}; "
                             f"pass the dataset's number of classes")
        onehot = F.one_hot(targets, classes).to(logits.dtype)  # (B, C)
        if label_smoothing > 0:
            onehot = onehot * (1.0 - label_smoothing) + label_smoothing / classes
        return F.mse_loss(logits, onehot)

    return mse_one_hot


def make_criterion(cfg: TrainConfig, num_classes: int | None = None) -> Criterion:
    """The data loss of ``cfg`` (criterion + label smoothing) as ``callable(logits, targets) -> mean loss``."""
    return criterion_from_name(cfg.criterion, num_classes, cfg.label_smoothing)


def l1_parameters(model: nn.Module, which: str = "weight_bias") -> list[torch.Tensor]:
    """Parameters of the L1 term. "weight_bias": every parameter whose name contains "weight" or "bias"
    (norm layers included, as in the limit repository); "prunable": conv/linear weights; "all"."""
    if which not in L1_PARAM_SETS:
        raise PrunelimitError(f"l1_params must be one of {list(L1_PARAM_SETS)}, got {which!r}")
    model = getattr(model, "module", model)  # DDP wrapper -> the model
    if which == "prunable":
        return [p for _, p in prunable_parameters(model)]
    if which == "all":
        return list(model.parameters())
    return [p for name, p in model.named_parameters() if "weight" in name or "bias" in name]


def l1_penalty(model: nn.Module, which: str = "weight_bias") -> torch.Tensor:
    """Sum of |theta| over the chosen set, a differentiable scalar (0 when the set is empty)."""
    params = l1_parameters(model, which)
    if not params:
        ref = next(getattr(model, "module", model).parameters(), None)
        return torch.zeros((), device=ref.device if ref is not None else None)
    # a Python sum (not torch.stack) so that parameters of different dtypes promote instead of failing
    return sum((p.abs().sum() for p in params[1:]), params[0].abs().sum())
