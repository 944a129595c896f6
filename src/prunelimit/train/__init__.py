"""The one training loop: L1 training, masked fine-tuning, DDP, AMP, resume.

    from prunelimit.train import TrainConfig, train, evaluate
    result = train(model, train_loader, test_loader, TrainConfig(epochs=10, lr=0.05), run_dir="runs/x")
    print(result.best_top1, evaluate(model, test_loader)["top1"])
"""
import sys
import types

from prunelimit.train.batches import ModelLoss, causal_lm_loss, model_loss
from prunelimit.train.config import GP_FINETUNE_DEFAULTS, TrainConfig, gp_finetune_config
from prunelimit.train.evaluate import evaluate
from prunelimit.train.loop import LOG_COLUMNS, TrainingDiverged, TrainResult, finetune, train
from prunelimit.train.masking import MaskEnforcer, masks_checksum, validate_masks, zero_fraction_percent
from prunelimit.train.objective import l1_parameters, l1_penalty, make_criterion
from prunelimit.train.schedule import LRSchedule, lr_factor
from prunelimit.train.state import BEST_CHECKPOINT, LAST_CHECKPOINT

__all__ = [
    "BEST_CHECKPOINT",
    "GP_FINETUNE_DEFAULTS",
    "LAST_CHECKPOINT",
    "LOG_COLUMNS",
    "LRSchedule",
    "MaskEnforcer",
    "ModelLoss",
    "causal_lm_loss",
    "model_loss",
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "evaluate",
    "finetune",
    "gp_finetune_config",
    "l1_parameters",
    "l1_penalty",
    "lr_factor",
    "make_criterion",
    "masks_checksum",
    "train",
    "validate_masks",
    "zero_fraction_percent",
]


class _CallableModule(types.ModuleType):
    """``prunelimit.train`` is both this package and the public ``train`` function: once the package is
    imported, Python binds the attribute ``prunelimit.train`` to the package, so the package forwards
    calls to ``train`` and ``prunelimit.train(model, ...)`` works either way."""

    def __call__(self, *args, **kwargs):
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
