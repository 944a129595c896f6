"""Learning-rate schedules as ``torch.optim.lr_scheduler`` objects, stepped after every iteration.

``scheduler_step="epoch"`` (default): one ``LambdaLR`` whose factor for global iteration t is
``lr_factor(cfg, epoch=t // iters, iteration=t % iters, iters_per_epoch=iters)``:

- warm-up (epoch < w = warmup_epochs): linear ramp per iteration, (t + 1) / (w * iters), so the
  first step uses lr0 / (w * iters) and the last warm-up step exactly lr0;
- after warm-up the factor is constant within an epoch e (0-based), with e' = e - w, E' = epochs - w:
    none       1
    cosine     0.5 * (1 + cos(pi * e' / E'))        (the GP formula, run over the epochs after warm-up)
    linear     1 - e' / E'
    multistep  gamma ** #{m in milestones : m <= e}   (milestones are absolute epoch numbers, as written)
    step       gamma ** (e // milestones[0])          (absolute epochs, period milestones[0])
  Without warm-up, e' = e and E' = epochs: exactly the closed forms of the GP README.

``scheduler_step="iteration"`` reproduces the limit repository: its ``MultiStepLR`` /
``CosineAnnealingLR(T_max=epochs)`` are stepped every iteration with epoch-valued milestones, and its
warm-up scheduler (lr = lr0 * t / (w * iters), created second, stepped first while epoch < w)
overwrites the lr during warm-up. Since those torch schedulers update the lr recursively, every
milestone passed during warm-up is lost (multistep then never decays) and cosine oscillates with a
period of 2 * epochs iterations. We chain the same torch schedulers in the same order, so the
bug is reproduced exactly rather than re-derived (up to the 1e-8 the original adds to the warm-up
denominator).
"""
from __future__ import annotations

import math
from bisect import bisect_right

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, LRScheduler, MultiStepLR

from prunelimit.train.config import TrainConfig
from prunelimit.errors import PrunelimitError


def lr_factor(cfg: TrainConfig, epoch: int, iteration: int = 0, iters_per_epoch: int = 1) -> float:
    """Multiplier of lr0 at ``iteration`` (0-based) of ``epoch`` (0-based) in the default epoch mode."""
    w = cfg.warmup_epochs
    if epoch < w:
        return (epoch * iters_per_epoch + iteration + 1) / (w * iters_per_epoch)
    if cfg.schedule == "none":
        return 1.0
    if cfg.schedule == "multistep":
        return cfg.gamma ** bisect_right(cfg.milestones, epoch)
    if cfg.schedule == "step":
        return cfg.gamma ** (epoch // cfg.milestones[0])
    progress = min((epoch - w) / (cfg.epochs - w), 1.0)
    if cfg.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress  # linear


class LRSchedule:
    """The torch scheduler(s) of one run; call ``after_iteration(epoch)`` after every optimizer step."""

    def __init__(self, optimizer: Optimizer, cfg: TrainConfig, iters_per_epoch: int):
        if iters_per_epoch < 1:
            raise PrunelimitError(f"the training loader yields {iters_per_epoch} batches per epoch; it needs at least "
                             f"one (is the dataset smaller than the per-rank batch size with drop_last?)")
        self.cfg = cfg
        self.iters_per_epoch = iters_per_epoch
        # (scheduler, stepped only during warm-up?) in the order they are stepped
        self._stages: list[tuple[LRScheduler, bool]] = []
        if cfg.scheduler_step == "epoch":
            def factor(t: int) -> float:
                return lr_factor(cfg, t // iters_per_epoch, t % iters_per_epoch, iters_per_epoch)

            self._stages.append((LambdaLR(optimizer, factor), False))
            return
        # Compatibility: build in the original's order (main schedule first, then warm-up, whose
        # constructor already sets lr = 0 for the first iteration), step warm-up first.
        main = None
        if cfg.schedule == "multistep":
            main = MultiStepLR(optimizer, milestones=list(cfg.milestones), gamma=cfg.gamma)
        elif cfg.schedule == "cosine":
            main = CosineAnnealingLR(optimizer, T_max=cfg.epochs)
        if cfg.warmup_epochs > 0:
            warm_iters = cfg.warmup_epochs * iters_per_epoch
            self._stages.append((LambdaLR(optimizer, lambda t: t / warm_iters), True))
        if main is not None:
            self._stages.append((main, False))

    def after_iteration(self, epoch: int) -> None:
        for scheduler, warmup_only in self._stages:
            if warmup_only and epoch >= self.cfg.warmup_epochs:
                continue
            scheduler.step()

    def state_dict(self) -> dict:
        return {"iters_per_epoch": self.iters_per_epoch, "stages": [s.state_dict() for s, _ in self._stages]}

    def load_state_dict(self, state: dict) -> None:
        if state.get("iters_per_epoch") != self.iters_per_epoch or len(state.get("stages", ())) != len(self._stages):
            raise PrunelimitError(f"the checkpoint's schedule was built for {state.get('iters_per_epoch')} iterations per "
                             f"epoch, this loader has {self.iters_per_epoch}; resume with the same data and "
                             f"batch size, or start a new run (resume=False or another run_dir)")
        for (scheduler, _), sd in zip(self._stages, state["stages"]):
            scheduler.load_state_dict(sd)
