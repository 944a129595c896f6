"""The one training loop: dense or L1 training, masked fine-tuning, DDP, AMP, resume.

    result = train(model, train_loader, test_loader, TrainConfig(epochs=90, lr=0.1), run_dir="runs/x")

Per epoch: ``set_loader_epoch`` -> forward (autocast on CUDA) -> loss + L1 -> backward (DDP all-reduce)
-> mask gradients -> optimizer step -> re-mask weights -> scheduler step; then evaluate, append a
row to the per-epoch CSV and save ``checkpoint_last.pth.tar`` / ``model_best.pth.tar`` (rank 0).
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import torch
import torch.distributed as tdist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from prunelimit.runs import paths
from prunelimit import dist
from prunelimit.progress import progress_wanted
from prunelimit.pruning.names import unwrap_model
from prunelimit.runs.checkpoint import check_state_dict
from prunelimit.runs.io import write_csv
from prunelimit.train import state as st
from prunelimit.train.config import GP_REFERENCE_BATCH, TrainConfig, gp_finetune_config
from prunelimit.train.batches import Objective
from prunelimit.train.evaluate import evaluate
from prunelimit.train.masking import MaskEnforcer, verify_same_on_all_ranks, zero_fraction_percent
from prunelimit.train.objective import make_criterion, l1_penalty
from prunelimit.train.schedule import LRSchedule
from prunelimit.errors import PrunelimitError

# The per-epoch CSV. Epoch is 1-based; LR is the lr of the epoch's first iteration; accuracies are percent;
# "% Pruning" is the measured percentage of zero conv/linear weights; losses are the mean criterion (with
# the config's label smoothing) plus the L1 term when l1_lambda > 0; un-evaluated epochs leave Test empty.
LOG_COLUMNS = ("Epoch", "Current Time", "LR", "Orig Acc", "% Pruning", "Train Acc", "Test Acc", "Best Test Acc",
               "Train Loss", "Test Loss", "Train Top5", "Test Top5")
# How often (in iterations) the ranks agree on whether a non-finite loss was seen; checking every
# iteration would force a GPU sync per step.
DIVERGENCE_CHECK_EVERY = 20


class TrainingDiverged(PrunelimitError):
    """The loss became non-finite; the last good checkpoint is left on disk."""


@dataclass
class TrainResult:
    best_top1: float                    # best test top-1 (percent) over evaluated epochs; nan without a test loader
    final: dict                         # last epoch: epoch, lr, sparsity_percent, train_top1/top5/loss, best_top1,
                                        # and when evaluated test_top1/top5/loss/data_loss
    history: list[dict] = field(default_factory=list)  # one row per epoch, keyed by LOG_COLUMNS
    epochs_run: int = 0                 # epochs trained by this call (0 when the run had already finished)
    resumed_from: int | None = None     # epochs found in checkpoint_last when resuming, else None


def train(model: nn.Module, train_loader, test_loader, cfg: TrainConfig, *, device=None, masks=None,
          run_dir=None, log_name: str = paths.TRAIN_LOG, orig_acc: float | None = None, resume: bool = True,
          show_progress: bool | None = None, num_classes: int | None = None,
          stop_after_epoch: int | None = None, loss_fn=None, metrics_fn=None) -> TrainResult:
    """Train ``model`` in place for ``cfg.epochs`` epochs and return a ``TrainResult``.

    ``masks`` ({parameter name: bool tensor, True = kept}) keeps the pruned weights exactly zero.
    ``run_dir`` receives the per-epoch CSV ``log_name`` and the checkpoints (rank 0 only); with
    ``resume`` an existing ``checkpoint_last.pth.tar`` is continued (bitwise-identical result on CPU)
    and a finished run returns its recorded result at once. ``orig_acc`` fills the "Orig Acc" column
    (measured on ``test_loader`` before epoch 1 when None). ``stop_after_epoch`` stops after that
    epoch as if the process had crashed (for tests). Under torchrun the model is wrapped in DDP.
    ``loss_fn(output, target)`` (the model's raw output: tensor, tuple, dict, ModelOutput) or
    ``pl.model_loss(fn)`` replaces the configured criterion (label smoothing then unused), for any model
    and batch layout (see ``train/batches.py``); ``metrics_fn(output, target) -> {name: batch mean}`` adds
    evaluation metrics. Without accuracy (not a classifier) the best model is the one of lowest test loss.
    ``show_progress``: True/False, or None (default) for progress bars only when stderr is a terminal.
    """
    if not isinstance(cfg, TrainConfig):
        raise PrunelimitError(f"cfg must be a prunelimit.train.TrainConfig, got {type(cfg).__name__}")
    if stop_after_epoch is not None and (isinstance(stop_after_epoch, bool) or not isinstance(stop_after_epoch, int)
                                         or stop_after_epoch < 1):
        raise PrunelimitError(f"stop_after_epoch must be a positive epoch number or None, got {stop_after_epoch!r}")
    model = unwrap_model(model)  # DDP / DataParallel / torch.compile: train the plain model (same parameters)
    # resolve_device: a clear error when CUDA is missing, and "cuda" -> this rank's GPU under torchrun
    device = dist.resolve_device(str(device)) if device is not None else next(model.parameters()).device
    model.to(device)
    run_dir = Path(run_dir) if run_dir is not None else None
    _check_batch_size(train_loader, cfg)

    enforcer = None
    if masks is not None:
        enforcer = MaskEnforcer(model, masks, device)
        verify_same_on_all_ranks(enforcer.checksum(), "pruning mask", device)
        enforcer.apply_to_weights()
    optimizer = _make_optimizer(model, cfg)
    schedule = LRSchedule(optimizer, cfg, len(train_loader))
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    if loss_fn is not None and cfg.label_smoothing > 0:
        warnings.warn(f"train.label_smoothing={cfg.label_smoothing} is not used: loss_fn replaces the criterion",
                      stacklevel=2)
    objective = Objective(make_criterion(cfg, num_classes), loss_fn, metrics_fn)
    eval_kw = dict(device=device, criterion=cfg.criterion, num_classes=num_classes,
                   label_smoothing=cfg.label_smoothing, l1_lambda=cfg.l1_lambda, l1_params=cfg.l1_params,
                   amp=use_amp, loss_fn=loss_fn, metrics_fn=metrics_fn)

    start_epoch, best_top1, history, final, resumed_from = 0, float("nan"), [], {}, None
    best_loss = float("inf")  # picks the best model when accuracy does not apply
    ckpt_path = st.find_resume_checkpoint(run_dir, resume, device)
    if ckpt_path is not None:
        saved = st.load_last(ckpt_path, cfg)
        check_state_dict(model, saved["model"], ckpt_path)
        if enforcer is not None and saved.get("mask_checksum") not in (None, enforcer.checksum()):
            raise PrunelimitError(f"the masks given differ from those of the run in {str(ckpt_path)!r}; pass the "
                             f"run's masks, a new run_dir, or resume=False")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["scheduler"])
        if use_amp and saved["scaler"]:
            scaler.load_state_dict(saved["scaler"])
        start_epoch = resumed_from = int(saved["epoch"])
        best_top1, history, final = float(saved["best_top1"]), list(saved["history"]), dict(saved.get("final", {}))
        best_loss = float(saved.get("best_loss", float("inf")))
        orig_acc = saved.get("orig_acc") if orig_acc is None else orig_acc
        if len(saved["rng"]) == dist.world_size():
            st.restore_rng_state(saved["rng"][dist.rank()])
        else:
            warnings.warn(f"{ckpt_path} was written by {len(saved['rng'])} processes, now {dist.world_size()}: "
                          f"random streams are reseeded, so the run continues but not bit-identically")
            st.seed_everything((cfg.seed or 0) + 1000 * start_epoch + dist.rank())
        if start_epoch >= cfg.epochs:
            return TrainResult(best_top1, final, history, 0, resumed_from)
    else:
        st.seed_everything((cfg.seed or 0) + dist.rank())
    if enforcer is not None:
        enforcer.check_finite()  # the resumed weights too
        enforcer.apply_to_weights()
        enforcer.apply_to_optimizer_state(optimizer)
    _broadcast_state(model, with_parameters=True)  # ranks may have initialised differently
    if orig_acc is None and test_loader is not None:
        orig_acc = evaluate(model, test_loader, **eval_kw)["top1"]
        orig_acc = None if orig_acc != orig_acc else orig_acc

    net = model
    if dist.is_distributed():
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    epochs_run = 0
    for epoch in range(start_epoch, cfg.epochs):
        _set_loader_epoch(train_loader, epoch)
        lr = optimizer.param_groups[0]["lr"]
        tr = _train_one_epoch(net, model, train_loader, optimizer, schedule, scaler, objective, cfg, enforcer,
                              device, epoch, use_amp, show_progress, run_dir)
        epochs_run += 1
        if enforcer is not None:
            enforcer.check_pruned_zero()
        _broadcast_state(model, with_parameters=False)
        last = epoch + 1 == cfg.epochs
        te = None
        if test_loader is not None and ((epoch + 1) % cfg.eval_every == 0 or last):
            te = evaluate(model, test_loader, **eval_kw)
        if te is not None and te["top1"] != te["top1"]:  # no accuracy (e.g. a language model): lowest test loss
            improved = not te["loss"] >= best_loss
            best_loss = min(best_loss, te["loss"])
        else:
            improved = te is not None and not te["top1"] <= best_top1  # also true while best is nan
        if improved and te["top1"] == te["top1"]:
            best_top1 = te["top1"]
        pruned = zero_fraction_percent(model)
        history.append(_log_row(epoch, lr, orig_acc, pruned, tr, te, best_top1))
        final = _final_metrics(epoch, lr, pruned, tr, te, best_top1)
        rng = st.gather_rng_states() if run_dir is not None else None
        if run_dir is not None and dist.is_main():
            write_csv(run_dir / log_name, LOG_COLUMNS, [[row[c] for c in LOG_COLUMNS] for row in history])
            weights = st.cpu_state_dict(model)
            if improved:
                st.save_best(run_dir, weights, epoch + 1, best_top1)
            if cfg.save_every_epoch or last:
                st.save_last(run_dir, {
                    "model": weights, "optimizer": optimizer.state_dict(), "scheduler": schedule.state_dict(),
                    "scaler": scaler.state_dict(), "epoch": epoch + 1, "best_top1": best_top1, "best_loss": best_loss,
                    "orig_acc": orig_acc, "history": history, "final": final, "rng": rng,
                    "config": asdict(cfg), "world_size": dist.world_size(),
                    "mask_checksum": enforcer.checksum() if enforcer is not None else None})
        dist.barrier()
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            break
    return TrainResult(best_top1, final, history, epochs_run, resumed_from)


def finetune(model: nn.Module, masks, train_loader, test_loader, cfg: TrainConfig | None = None, **kw) -> TrainResult:
    """Masked fine-tuning: ``train(..., masks=masks)``. Without ``cfg`` the GP recipe is used
    (``GP_FINETUNE_DEFAULTS``: SGD, lr 0.1024 per 256 samples scaled to the loader's total batch,
    momentum 0.875, weight decay 7e-6, label smoothing 0.1, cosine; ``gp_finetune_config`` adds
    Nesterov for WideResNets)."""
    if masks is None:
        raise PrunelimitError("finetune needs masks (parameter name -> bool tensor, True = kept); "
                         "for dense training call train()")
    if cfg is None:
        per_rank = getattr(train_loader, "batch_size", None)
        cfg = gp_finetune_config(per_rank * dist.world_size() if per_rank else GP_REFERENCE_BATCH)
    return train(model, train_loader, test_loader, cfg, masks=masks, **kw)


def _train_one_epoch(net, model, loader, optimizer, schedule, scaler, objective, cfg, enforcer, device, epoch,
                     use_amp, show_progress, run_dir) -> dict:
    net.train()
    # (objective sum, top-1 hits, top-5 hits, samples, samples with accuracy), summed on the device and
    # reduced once per epoch
    sums = torch.zeros(5, dtype=torch.float64, device=device)
    autocast = torch.autocast(device.type, dtype=torch.float16) if use_amp else None
    no_bad = torch.iinfo(torch.int64).max
    first_bad = torch.full((), no_bad, dtype=torch.int64, device=device)  # first iteration with a non-finite loss
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
               disable=not progress_wanted(show_progress) or not dist.is_main())
    for i, batch in enumerate(bar):
        loss, n, hits, _ = objective.forward(net, batch, device, autocast, "the training loader")
        if cfg.l1_lambda > 0:
            loss = loss + cfg.l1_lambda * l1_penalty(model, cfg.l1_params)
        bad = ~torch.isfinite(loss.detach())
        first_bad = torch.where(bad & (first_bad == no_bad), i, first_bad)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if enforcer is not None:
            scaler.unscale_(optimizer)  # mask true gradients; GradScaler then skips a step with inf/nan
            enforcer.apply_to_gradients()
        scaler.step(optimizer)
        scaler.update()
        if enforcer is not None:
            enforcer.after_step(optimizer)
        schedule.after_iteration(epoch)
        c1, c5 = hits if hits is not None else (torch.zeros((), device=device),) * 2
        sums += torch.stack([loss.detach().double() * n, c1.double(), c5.double(),
                             torch.tensor(float(n), dtype=torch.float64, device=device),
                             torch.tensor(float(n if hits is not None else 0), dtype=torch.float64, device=device)])
        if (i + 1) % DIVERGENCE_CHECK_EVERY == 0:
            _raise_if_diverged(first_bad, no_bad, epoch, optimizer, run_dir)
    _raise_if_diverged(first_bad, no_bad, epoch, optimizer, run_dir)
    dist.all_reduce_sum(sums)
    count, scored = max(float(sums[3]), 1.0), float(sums[4])
    nan = float("nan")
    return {"loss": float(sums[0]) / count, "top1": 100.0 * float(sums[1]) / scored if scored else nan,
            "top5": 100.0 * float(sums[2]) / scored if scored else nan}


def _raise_if_diverged(first_bad: torch.Tensor, no_bad: int, epoch: int, optimizer, run_dir) -> None:
    """Collective on every rank at the same iteration, so all ranks raise together."""
    worst = first_bad.clone()
    if dist.is_distributed():
        tdist.all_reduce(worst, op=tdist.ReduceOp.MIN)
    if int(worst) != no_bad:
        where = (f"; the last good checkpoint is {str(run_dir / st.LAST_CHECKPOINT)!r}"
                 if run_dir is not None and (run_dir / st.LAST_CHECKPOINT).exists() else "")
        raise TrainingDiverged(
            f"training diverged: the loss became non-finite at epoch {epoch + 1}, iteration {int(worst) + 1} "
            f"(lr {optimizer.param_groups[0]['lr']:.4g}); lower the learning rate (train.lr) or add warm-up "
            f"(train.warmup_epochs){where}")


def _make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.nesterov)
    opt = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return opt(params, lr=cfg.lr, betas=(cfg.momentum, 0.999), weight_decay=cfg.weight_decay)


def _set_loader_epoch(loader, epoch: int) -> None:
    """``prunelimit.data.set_loader_epoch`` when available, else the sampler's ``set_epoch``."""
    if not hasattr(loader, "sampler"):
        return  # any re-iterable of batches (a list, a generator-backed iterable): it orders itself
    try:
        from prunelimit.data import set_loader_epoch
    except ImportError:
        set_loader_epoch = None
    if set_loader_epoch is not None:
        set_loader_epoch(loader, epoch)
    elif hasattr(getattr(loader, "sampler", None), "set_epoch"):
        loader.sampler.set_epoch(epoch)


@torch.no_grad()
def _broadcast_state(model: nn.Module, with_parameters: bool) -> None:
    """Copy rank 0's buffers (and parameters) to every rank. At the start: ranks may have initialised
    differently, and "Orig Acc" is measured before DDP's own broadcast. After each epoch: BatchNorm
    statistics drift apart per rank; evaluate and save rank 0's."""
    if dist.is_distributed():
        tensors = list(model.buffers()) + (list(model.parameters()) if with_parameters else [])
        for t in tensors:
            dist.broadcast(t, 0)


def _check_batch_size(loader, cfg: TrainConfig) -> None:
    per_rank = getattr(loader, "batch_size", None)
    if per_rank and per_rank * dist.world_size() != cfg.batch_size:
        warnings.warn(f"the training loader loads {per_rank} samples per step on each of {dist.world_size()} "
                      f"processes ({per_rank * dist.world_size()} in total) but train.batch_size is "
                      f"{cfg.batch_size}; build the loader with make_loader(dataset, cfg.batch_size, ...)",
                      stacklevel=3)


def _log_row(epoch, lr, orig_acc, pruned, tr, te, best) -> dict:
    missing = ""  # epochs without evaluation leave the test columns empty
    return {"Epoch": epoch + 1, "Current Time": datetime.now().isoformat(timespec="seconds"), "LR": lr,
            "Orig Acc": orig_acc if orig_acc is not None else missing, "% Pruning": pruned,
            "Train Acc": tr["top1"], "Test Acc": te["top1"] if te else missing,
            "Best Test Acc": best if best == best else missing, "Train Loss": tr["loss"],
            "Test Loss": te["loss"] if te else missing, "Train Top5": tr["top5"],
            "Test Top5": te["top5"] if te else missing}


def _final_metrics(epoch, lr, pruned, tr, te, best) -> dict:
    out = {"epoch": epoch + 1, "lr": lr, "sparsity_percent": pruned, "train_top1": tr["top1"],
           "train_top5": tr["top5"], "train_loss": tr["loss"], "best_top1": best}
    if te is not None:
        out.update(test_top1=te["top1"], test_top5=te["top5"], test_loss=te["loss"], test_data_loss=te["data_loss"])
        out.update({f"test_{k}": v for k, v in te.items() if k not in ("top1", "top5", "loss", "data_loss", "count")})
    return out
