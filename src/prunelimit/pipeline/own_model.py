"""``fundamental_limit``: the whole limit workflow on the user's trained model and data in one call.

    import prunelimit as pl
    result = pl.fundamental_limit(model, (x_train, y_train), (x_test, y_test), out="runs/mine", l1_lambda=5e-4)
    result["predicted"]["prune_fraction"], result["actual"]["above_baseline"]["prune_fraction"]

It runs the limit pipeline's own stages (sweep -> spectrum -> important eigenvalues -> prediction vs
actual), so the result dict is ``result.json``'s and ``out`` receives the same files as
``prunelimit run`` with ``pipeline: limit`` (``limit/sweep.csv``, ``spectrum.json``, ``result.json``,
``result.txt``, the plots, ``summary.json``, ``report.md``, ``config.yaml``). The model is used as it is
(trained, dense); nothing is trained. Every call computes afresh: the limit files in ``out`` are replaced.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from prunelimit import dist
from prunelimit.progress import progress_wanted
from prunelimit.config.build import to_dict
from prunelimit.config.schema import RunConfig, StagesConfig
from prunelimit.errors import PrunelimitError
from prunelimit.limit.config import LimitConfig
from prunelimit.pipeline.common import Context, Data, seed_everything
from prunelimit.pipeline.limit import run_limit
from prunelimit.pruning.config import PruneConfig
from prunelimit.runs.rundir import RunDir
from prunelimit.spectrum.config import SpectrumConfig
from prunelimit.train.config import TrainConfig

LIMIT_STAGES = ("sweep", "spectrum", "rows", "limit")


class _InputsTargets(Dataset):
    """Sample i of ``(inputs, targets)`` whose inputs are a tuple of tensors (the model's positional arguments)
    or a dict of tensors (its keyword arguments, e.g. ``input_ids``, ``attention_mask``)."""

    def __init__(self, inputs, targets: torch.Tensor):
        self.inputs, self.targets = inputs, targets

    def __len__(self) -> int:
        return self.targets.shape[0]

    def __getitem__(self, i: int):
        x = ({k: v[i] for k, v in self.inputs.items()} if isinstance(self.inputs, Mapping)
             else tuple(v[i] for v in self.inputs))
        return x, self.targets[i]


def _input_tensors(x) -> list[torch.Tensor] | None:
    """The tensors of an inputs value (a tensor, a tuple/list or a dict of tensors); None for anything else."""
    parts = [x] if isinstance(x, torch.Tensor) else list(x.values()) if isinstance(x, Mapping) else \
        list(x) if isinstance(x, (tuple, list)) else []
    return parts if parts and all(isinstance(t, torch.Tensor) and t.ndim > 0 for t in parts) else None


def _dataset(data: Any, which: str) -> tuple[Dataset, int | None]:
    """(dataset, the loader's batch size if a loader was given) from tensors, a Dataset or a DataLoader."""
    if isinstance(data, DataLoader):
        return data.dataset, data.batch_size
    if isinstance(data, Dataset):
        return data, None
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[1], torch.Tensor) \
            and _input_tensors(data[0]) is not None:
        x, y = data
        sizes = {t.shape[0] for t in _input_tensors(x)} | {y.shape[0] if y.ndim else -1}
        if len(sizes) != 1 or 0 in sizes:
            shapes = [tuple(t.shape) for t in _input_tensors(x)]
            raise PrunelimitError(f"fundamental_limit: {which} = (inputs, targets) need the same, non-zero first "
                                  f"dimension; got {', '.join(map(str, shapes))} and {tuple(y.shape)}")
        return (TensorDataset(x, y) if isinstance(x, torch.Tensor) else _InputsTargets(x, y)), None
    raise PrunelimitError(f"fundamental_limit: {which} must be (inputs, targets) with inputs a tensor, a tuple or a "
                          f"dict of tensors, a Dataset or a DataLoader; got {type(data).__name__}")


def _section(cls, value, name: str):
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        return cls(**value)
    raise PrunelimitError(f"fundamental_limit: {name} must be a {cls.__name__} or a dict of its keys; "
                          f"got {type(value).__name__}")


@torch.no_grad()
def _num_classes(model: nn.Module, dataset: Dataset, device: torch.device) -> int:
    x, _ = dataset[0]
    was = model.training
    model.eval()
    try:
        out = model(x.unsqueeze(0).to(device))
    finally:
        model.train(was)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[1] < 2:
        raise PrunelimitError(f"fundamental_limit: the model's output for one example has shape "
                              f"{tuple(getattr(out, 'shape', ()))}; expected (1, classes) logits, or pass num_classes=")
    return int(out.shape[1])


def fundamental_limit(model: nn.Module, train: Any, test: Any, *, out: str | Path = "runs/fundamental_limit",
                      criterion: str = "cross_entropy", label_smoothing: float = 0.0, loss_fn=None,
                      l1_lambda: float = 0.0,
                      l1_params: str = "weight_bias", batch_size: int | None = None,
                      eval_batch_size: int | None = None, limit: LimitConfig | Mapping | None = None,
                      spectrum: SpectrumConfig | Mapping | None = None, include=None, exclude=None,
                      num_classes: int | None = None, device: str | torch.device = "auto", seed: int = 0,
                      show_progress: bool | None = None) -> dict:
    """How far can ``model`` be pruned? Predicted (Gaussian width) and actual (sweep) limits, in one call.

    ``train`` / ``test``: ``(inputs, targets)`` (inputs a tensor, a tuple of tensors passed positionally or
    a dict of tensors passed as keywords, first dimension = samples), a ``Dataset`` or a ``DataLoader`` (its
    dataset and batch size are used). ``criterion`` ("cross_entropy" | "mse") and ``label_smoothing``, or
    ``loss_fn`` as in ``train`` / ``evaluate`` / ``HessianOperator`` (``loss_fn(output, target)`` on the raw
    model output, e.g. ``pl.causal_lm_loss``, or ``pl.model_loss(fn)`` with ``fn(model, batch)``; the
    sweep, epsilon and the Hessian then use it, and without accuracy only the loss rule gives an actual
    limit), ``l1_lambda`` and ``l1_params``: the loss the model was trained with (``l1_lambda`` only matters with
    ``limit={"loss": "regularized"}``, and for the sweep table's ``l1_penalty`` column). ``limit`` /
    ``spectrum``: the config sections (``LimitConfig`` / ``SpectrumConfig`` or dicts of their keys, e.g.
    ``limit={"rule": "acc_drop", "reading": "largest_passing", "tail_points": 50}``). ``include`` /
    ``exclude``: module-name patterns of the prunable weights. ``show_progress``: True/False, or None (default) for progress
    bars only when stderr is a terminal (a log file gets the per-stage lines, not bar redraws). Returns the
    ``result.json`` dict.
    """
    if not isinstance(model, nn.Module):
        raise PrunelimitError(f"fundamental_limit: model must be an nn.Module; got {type(model).__name__}")
    if loss_fn is not None and not callable(loss_fn):
        raise PrunelimitError(f"fundamental_limit: loss_fn must be loss_fn(output, target) or pl.model_loss(fn); "
                              f"got {type(loss_fn).__name__}")
    if loss_fn is not None and (criterion != "cross_entropy" or label_smoothing != 0.0):
        raise PrunelimitError("fundamental_limit: give loss_fn or criterion/label_smoothing, not both (loss_fn "
                              "replaces the criterion); remove one")
    train_set, train_bs = _dataset(train, "train")
    test_set, _ = _dataset(test, "test")
    limit_cfg = _section(LimitConfig, limit, "limit")
    spectrum_cfg = _section(SpectrumConfig, spectrum, "spectrum")
    bs = batch_size or train_bs or 128
    if limit_cfg.epsilon == "loss_std" and len(train_set) <= bs:   # found now, not after the sweep and spectrum
        raise PrunelimitError(f"fundamental_limit: epsilon is the std of the per-minibatch training loss, but the "
                              f"{len(train_set)} training samples make one batch of batch_size {bs}; pass a smaller "
                              f"batch_size= or limit={{'epsilon': <number>}}")
    cfg = RunConfig(pipeline="limit", out=str(out), device=str(device), seed=seed,
                    show_progress=progress_wanted(show_progress),
                    eval_batch_size=eval_batch_size,
                    train=TrainConfig(batch_size=bs, criterion=criterion, label_smoothing=label_smoothing,
                                      l1_lambda=l1_lambda, l1_params=l1_params),
                    stages=StagesConfig(), spectrum=spectrum_cfg, limit=limit_cfg,
                    prune=replace(PruneConfig(), include=include, exclude=exclude))
    # stages.train stays at its default: the model is given (no dense stage runs), and RunConfig refuses
    # stages.train false without a model.checkpoint
    start = time.time()
    run = RunDir(Path(out))
    device = dist.init_from_env(cfg.device)
    seed_everything(seed)
    model.to(device)
    if dist.is_main():
        run.path.mkdir(parents=True, exist_ok=True)
        for stage in LIMIT_STAGES:   # every call computes afresh: no stage or sweep table is reused
            run.forget_stage(stage)
        shutil.rmtree(run.path / "limit", ignore_errors=True)
    dist.barrier()
    record = to_dict(cfg)
    if loss_fn is not None:   # config.yaml says which loss was used, not the unused default criterion
        record["train"]["criterion"] = f"(your loss_fn {getattr(loss_fn, '__name__', type(loss_fn).__name__)})"
    record["model"] = {"name": f"(your {type(model).__name__})"}
    record["data"] = {"dataset": "(your data)", "train_size": len(train_set), "test_size": len(test_set)}
    run.write_config(record)
    run.write_environment(None)
    ctx = Context(cfg=cfg, run=run, device=device, loss_fn=loss_fn)
    classes = num_classes or (None if loss_fn is not None else _num_classes(model, train_set, device))
    data = Data(train=train_set, train_eval=train_set, test=test_set, num_classes=classes)
    result = run_limit(ctx, model, data)
    from prunelimit.pipeline.results import DenseResult, RunSummary
    from prunelimit.runs.report import write_summary

    write_summary(run.path, RunSummary(pipeline="limit", run_dir=str(run.path), model=type(model).__name__,
                                       dataset="(your data)", limit=result,
                                       dense=DenseResult(source="given", test_top1=result.baseline_test_acc),
                                       seconds=round(time.time() - start, 1), stage_seconds=dict(ctx.timings)))
    return result.to_json()


__all__ = ["fundamental_limit"]
