"""``TrainConfig``: every knob of the one training loop, checked on construction.

The same dataclass drives dense (optionally L1-regularised) training for the limit pipeline and masked
fine-tuning for GP / GP+MT; ``GP_FINETUNE_DEFAULTS`` holds the GP paper's fine-tuning recipe.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from prunelimit.errors import PrunelimitError

OPTIMIZERS = ("sgd", "adam", "adamw")
CRITERIA = ("cross_entropy", "mse")
SCHEDULES = ("none", "cosine", "linear", "step", "multistep")
SCHEDULER_STEPS = ("epoch", "iteration")
L1_PARAM_SETS = ("weight_bias", "prunable", "all")
# Schedules the limit repository had; the "iteration" compatibility mode reproduces only these.
ITERATION_COMPAT_SCHEDULES = ("none", "multistep", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 200                 # number of passes over the training set
    batch_size: int = 128             # total over all processes (each rank loads batch_size // world_size)
    optimizer: str = "sgd"            # "sgd" (the originals), "adam" or "adamw"
    lr: float = 0.01                  # base learning rate lr0 (before warm-up and schedule)
    momentum: float = 0.9             # SGD momentum (beta1 for adam/adamw)
    weight_decay: float = 0.0         # L2 weight decay of the optimizer (decoupled for adamw)
    nesterov: bool = False            # Nesterov momentum (SGD only; GP forces it for WideResNets)
    criterion: str = "cross_entropy"  # "cross_entropy" or "mse" (MSE against one-hot targets)
    label_smoothing: float = 0.0      # in [0, 1); GP fine-tuning uses 0.1
    schedule: str = "none"            # "none" | "cosine" | "linear" | "step" | "multistep" (see schedule.py)
    milestones: list[int] = field(default_factory=list)  # multistep: epochs where lr *= gamma; step: [period]
    gamma: float = 0.1                # decay factor of step / multistep
    warmup_epochs: int = 0            # linear warm-up length in epochs (ramped per iteration)
    scheduler_step: str = "epoch"     # "epoch"; "iteration" = the limit repo's per-iteration stepping bug
    l1_lambda: float = 0.0            # strength of the L1 term lambda * sum |theta|; 0 = no L1 term
    l1_params: str = "weight_bias"    # L1 set: "weight_bias" (original), "prunable" (conv/linear weights), "all"
    amp: bool = True                  # mixed precision (float16 autocast + GradScaler) on CUDA; ignored on CPU
    seed: int | None = None           # seeds torch/numpy/random (plus the rank) at the start of a fresh run;
                                      # None: the run's top-level seed (0 when TrainConfig is used alone)
    eval_every: int = 1               # evaluate on the test loader every this many epochs (and the last one)
    save_every_epoch: bool = True     # rewrite checkpoint_last every epoch (False: only at the end)

    def __post_init__(self):
        for name in ("epochs", "batch_size", "eval_every"):
            _check_int(name, getattr(self, name), 1)
        for name in ("warmup_epochs",) + (("seed",) if self.seed is not None else ()):
            _check_int(name, getattr(self, name), 0)
        for name in ("nesterov", "amp", "save_every_epoch"):
            if not isinstance(getattr(self, name), bool):
                raise PrunelimitError(f"train config key {name!r} must be true or false, got {getattr(self, name)!r}")
        for name in ("lr", "momentum", "weight_decay", "label_smoothing", "gamma", "l1_lambda"):
            object.__setattr__(self, name, _check_float(name, getattr(self, name)))  # frozen
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("criterion", self.criterion, CRITERIA)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("scheduler_step", self.scheduler_step, SCHEDULER_STEPS)
        _check_choice("l1_params", self.l1_params, L1_PARAM_SETS)
        if self.lr <= 0:
            raise PrunelimitError(f"train config key 'lr' must be > 0, got {self.lr}")
        if not 0.0 <= self.momentum < 1.0:
            raise PrunelimitError(f"train config key 'momentum' must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise PrunelimitError(f"train config key 'weight_decay' must be >= 0, got {self.weight_decay}")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise PrunelimitError("train config key 'nesterov' needs optimizer 'sgd' with momentum > 0; "
                             f"got optimizer {self.optimizer!r}, momentum {self.momentum}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise PrunelimitError(f"train config key 'label_smoothing' must be in [0, 1), got {self.label_smoothing}")
        if not 0.0 < self.gamma <= 1.0:
            raise PrunelimitError(f"train config key 'gamma' must be in (0, 1], got {self.gamma}")
        if self.l1_lambda < 0:
            raise PrunelimitError(f"train config key 'l1_lambda' must be >= 0 (0 = no L1 term), got {self.l1_lambda}")
        self._check_milestones()
        if self.warmup_epochs > self.epochs or (self.warmup_epochs == self.epochs
                                                 and self.schedule in ("cosine", "linear")):
            raise PrunelimitError(f"train config key 'warmup_epochs' ({self.warmup_epochs}) must leave at least one of "
                             f"the {self.epochs} epochs for the {self.schedule!r} schedule; lower warmup_epochs")
        if self.scheduler_step == "iteration" and self.schedule not in ITERATION_COMPAT_SCHEDULES:
            raise PrunelimitError(f"train config key 'scheduler_step': 'iteration' reproduces the limit repository "
                             f"only for schedules {list(ITERATION_COMPAT_SCHEDULES)}, not {self.schedule!r}; "
                             f"use scheduler_step: epoch")

    def _check_milestones(self):
        ms = self.milestones
        if isinstance(ms, tuple):
            ms = list(ms)
        if not isinstance(ms, list) or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in ms):
            raise PrunelimitError(f"train config key 'milestones' must be a list of positive epoch numbers such as "
                             f"[60, 120, 160], got {self.milestones!r}")
        if any(b <= a for a, b in zip(ms, ms[1:])):
            raise PrunelimitError(f"train config key 'milestones' must be strictly increasing, got {ms}")
        if self.schedule == "multistep" and not ms:
            raise PrunelimitError("train config key 'milestones' is empty but schedule is 'multistep'; "
                             "give the epochs where lr is multiplied by gamma, e.g. [60, 120, 160]")
        if self.schedule == "step" and len(ms) != 1:
            raise PrunelimitError(f"train config key 'milestones' must hold exactly one value (the period in epochs) "
                             f"for schedule 'step', got {ms}; use schedule 'multistep' for a list")
        object.__setattr__(self, "milestones", ms)


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PrunelimitError(f"train config key {name!r} must be an integer >= {minimum}, got {value!r}")


def _check_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PrunelimitError(f"train config key {name!r} must be a finite number, got {value!r}")
    return float(value)


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise PrunelimitError(f"train config key {name!r} must be one of {list(choices)}, got {value!r}")


# The GP paper's fine-tuning recipe (ResNet-50 / ImageNet): lr 0.1024 for a total batch of 256, scaled
# linearly with the batch size (see gp_finetune_config); Nesterov only for WideResNets.
GP_FINETUNE_DEFAULTS = {
    "optimizer": "sgd",
    "batch_size": 256,
    "lr": 0.1024,
    "momentum": 0.875,
    "weight_decay": 7e-6,
    "label_smoothing": 0.1,
    "schedule": "cosine",
    "nesterov": False,
}
GP_REFERENCE_BATCH = 256


def gp_finetune_config(batch_size: int = GP_REFERENCE_BATCH, *, wide_resnet: bool = False,
                       **overrides) -> TrainConfig:
    """GP fine-tuning recipe for a total ``batch_size``: lr = 0.1024 * batch_size / 256, Nesterov for
    WideResNets; any ``TrainConfig`` field can be overridden (an explicit ``lr`` wins over the scaling)."""
    _check_int("batch_size", batch_size, 1)
    unknown = sorted(set(overrides) - {f.name for f in fields(TrainConfig)})
    if unknown:
        raise PrunelimitError(f"gp_finetune_config: unknown train config key(s) {unknown}; "
                         f"valid keys are {[f.name for f in fields(TrainConfig)]}")
    values = dict(GP_FINETUNE_DEFAULTS, batch_size=batch_size,
                  lr=GP_FINETUNE_DEFAULTS["lr"] * batch_size / GP_REFERENCE_BATCH, nesterov=wide_resnet)
    values.update(overrides)
    return TrainConfig(**values)
