"""Any model's batches, outputs and loss, for training, evaluation and the Hessian.

A batch is ``(inputs, target)``: ``inputs`` is a tensor (``model(x)``), a tuple/list (positional
arguments, ``model(*x)``) or a dict (keyword arguments, ``model(**x)``, e.g. ``input_ids`` and
``attention_mask``); ``target`` is whatever the loss takes. The model's output may be a tensor, a
tuple, a dict or a transformers ``ModelOutput``:

- ``loss_fn(output, target)`` receives the RAW output and returns the batch's mean loss;
- or wrap a function of the model and the whole batch, ``pl.model_loss(fn)`` with
  ``fn(model, batch) -> scalar``, when the batch is not an (inputs, target) pair or the loss needs the model;
- without a ``loss_fn`` the configured criterion (cross-entropy, ...) is applied to the output's logits
  (the tensor itself, ``output["logits"]``, or a tuple's first element).

Top-1/top-5 accuracy is reported when it applies: logits of shape (B, C) and integer targets of shape (B,).
Otherwise evaluation reports the loss, and the perplexity exp(loss) for a language-model loss
(:func:`causal_lm_loss`, or any ``loss_fn`` with the attribute ``perplexity = True``).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from prunelimit.errors import PrunelimitError


class ModelLoss:
    """``fn(model, batch) -> scalar mean loss``: the loss computes the forward pass itself."""

    def __init__(self, fn: Callable[[nn.Module, Any], torch.Tensor], perplexity: bool = False):
        if not callable(fn):
            raise PrunelimitError(f"model_loss needs a function fn(model, batch) -> scalar, got {type(fn).__name__}")
        self.fn, self.perplexity = fn, perplexity
        self.__name__ = getattr(fn, "__name__", "model_loss")

    def __call__(self, model: nn.Module, batch) -> torch.Tensor:
        return self.fn(model, batch)


def model_loss(fn: Callable[[nn.Module, Any], torch.Tensor] | None = None, *, perplexity: bool = False):
    """Mark ``fn(model, batch) -> scalar`` as a loss that runs the model itself (usable as a decorator)."""
    if fn is None:
        return lambda f: ModelLoss(f, perplexity)
    return ModelLoss(fn, perplexity)


def causal_lm_loss(output, target: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy of a causal language model: logits (B, T, V) at position t predict
    ``target[:, t + 1]``; targets equal to -100 (padding) are ignored. ``target`` is usually the input ids."""
    logits = logits_of(output)
    if logits.ndim != 3 or target.ndim != 2 or tuple(logits.shape[:2]) != tuple(target.shape):
        raise PrunelimitError(f"causal_lm_loss needs logits (B, T, V) and target ids (B, T); got logits "
                              f"{tuple(logits.shape)} and target {tuple(target.shape)}")
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # autocast: the softmax over a large vocabulary in float32
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), target[:, 1:].reshape(-1),
                           ignore_index=-100)


causal_lm_loss.perplexity = True


def reports_perplexity(loss_fn) -> bool:
    return bool(getattr(loss_fn, "perplexity", False))


def split_batch(batch, where: str = "loader") -> tuple[Any, Any]:
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise PrunelimitError(f"{where} must yield (inputs, targets) pairs, got a {type(batch).__name__}"
                              + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
                              + "; for other batch layouts pass loss_fn=pl.model_loss(fn) with fn(model, batch)")
    return batch[0], batch[1]


def to_device(obj, device: torch.device, non_blocking: bool = False):
    """Tensors inside tensors/tuples/lists/dicts moved to ``device`` (other values unchanged)."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, Mapping):
        return {k: to_device(v, device, non_blocking) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(v, device, non_blocking) for v in obj) if type(obj) in (tuple, list) \
            else [to_device(v, device, non_blocking) for v in obj]
    return obj


def call_model(model: nn.Module, inputs):
    """``model(x)``, ``model(*inputs)`` or ``model(**inputs)``."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def _first_tensor(obj):
    if isinstance(obj, torch.Tensor):
        return obj
    values = obj.values() if isinstance(obj, Mapping) else obj if isinstance(obj, (tuple, list)) else ()
    for v in values:
        t = _first_tensor(v)
        if t is not None:
            return t
    return None


def batch_size(batch) -> int:
    """Samples in a batch: the leading dimension of its first tensor (the target's when it is one)."""
    ref = None
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[1], torch.Tensor) and batch[1].ndim:
        ref = batch[1]
    ref = ref if ref is not None else _first_tensor(batch)
    if ref is None or ref.ndim == 0:
        raise PrunelimitError("each batch needs a tensor with a leading batch dimension (inputs or targets); got "
                              f"{type(batch).__name__} without one")
    return int(ref.shape[0])


def logits_of(output) -> torch.Tensor:
    """The logits of a model output: the tensor, ``output["logits"]`` (dict, ModelOutput) or ``output[0]``."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) or hasattr(output, "keys"):
        if "logits" in output.keys():
            return output["logits"]
        raise PrunelimitError(f"the model returns a {type(output).__name__} without 'logits' (keys: "
                              f"{list(output.keys())[:6]}); pass loss_fn=... that reads the output")
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise PrunelimitError(f"cannot find logits in a model output of type {type(output).__name__}; "
                          f"pass loss_fn=... that reads the output")


def accuracy_applies(logits: torch.Tensor, target) -> bool:
    """Top-k accuracy is defined for (B, C) logits and (B,) integer class targets."""
    return (isinstance(target, torch.Tensor) and logits.ndim == 2 and target.ndim == 1
            and not target.is_floating_point() and target.shape[0] == logits.shape[0])


def topk_correct(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Numbers of samples whose target is the top-1 / among the top-5 logits (top-C when C < 5)."""
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices  # (B, k)
    hit = top == targets.unsqueeze(1)     # (B, k)
    return hit[:, 0].sum(), hit.any(dim=1).sum()


class Objective:
    """One batch's loss (and accuracy hits when they apply) for a criterion or a user ``loss_fn``.

    ``criterion(logits, target)`` is the default loss on the output's logits; ``loss_fn`` (raw output)
    or a :class:`ModelLoss` replaces it. ``metrics_fn(output, target) -> {name: batch mean}`` adds metrics."""

    def __init__(self, criterion: Callable | None = None, loss_fn: Callable | None = None,
                 metrics_fn: Callable | None = None):
        if loss_fn is not None and not callable(loss_fn):
            raise PrunelimitError(f"loss_fn must be callable (output, target) -> scalar, got {type(loss_fn).__name__}")
        if metrics_fn is not None and not callable(metrics_fn):
            raise PrunelimitError(f"metrics_fn must be callable (output, target) -> dict, got {type(metrics_fn).__name__}")
        self.criterion, self.loss_fn, self.metrics_fn = criterion, loss_fn, metrics_fn
        self.perplexity = reports_perplexity(loss_fn)

    def forward(self, model: nn.Module, batch, device: torch.device, autocast=None, where: str = "loader"):
        """``(loss, n, hits or None, metrics)``: mean loss (float32 scalar), samples, (top-1, top-5) counts."""
        if isinstance(self.loss_fn, ModelLoss):
            batch = to_device(batch, device, non_blocking=True)
            with autocast or _null():
                loss = self.loss_fn(model, batch)
            return _check_loss(loss), batch_size(batch), None, {}
        inputs, target = split_batch(batch, where)
        inputs, target = to_device(inputs, device, True), to_device(target, device, True)
        with autocast or _null():
            output = call_model(model, inputs)
        hits = None
        if self.loss_fn is not None:
            loss = self.loss_fn(output, target)
            logits = _maybe_logits(output)
        else:
            logits = logits_of(output).float()
            loss = self.criterion(logits, target)
        if logits is not None and accuracy_applies(logits, target):
            hits = topk_correct(logits.detach(), target)
        metrics = {}
        if self.metrics_fn is not None:
            with torch.no_grad():
                metrics = {k: float(v) for k, v in dict(self.metrics_fn(output, target)).items()}
        return _check_loss(loss), batch_size((inputs, target)), hits, metrics


def _maybe_logits(output):
    try:
        return logits_of(output)
    except PrunelimitError:
        return None


def _check_loss(loss) -> torch.Tensor:
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise PrunelimitError(f"the loss must be the batch's mean loss as a scalar tensor; got "
                              f"{type(loss).__name__} of shape {getattr(loss, 'shape', None)}")
    return loss.reshape(()).float()


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def perplexity(mean_loss: float) -> float:
    return math.exp(mean_loss) if mean_loss < 700 else float("inf")
