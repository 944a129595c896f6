"""prunelimit: global magnitude pruning (GP, GP+MT) and the fundamental limit of pruning.

    import prunelimit as pl
    masks = pl.global_magnitude_masks(model, sparsity=0.9)
    pl.apply_masks(model, masks)
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> module that defines it; imported on first use so `import prunelimit` stays fast.
_EXPORTS = {
    "PrunelimitError": "prunelimit.errors",
    "create_model": "prunelimit.models",
    "list_models": "prunelimit.models",
    "register_model": "prunelimit.models",
    "create_dataset": "prunelimit.data",
    "list_datasets": "prunelimit.data",
    "make_loader": "prunelimit.data",
    "prunable_parameters": "prunelimit.pruning",
    "global_magnitude_masks": "prunelimit.pruning",
    "min_threshold_masks": "prunelimit.pruning",
    "apply_masks": "prunelimit.pruning",
    "save_masks": "prunelimit.pruning",
    "load_masks": "prunelimit.pruning",
    "mask_sparsity": "prunelimit.pruning",
    "min_threshold_plan": "prunelimit.pruning",
    "check_masks_fit": "prunelimit.pruning",
    "load_legacy_mask_npy": "prunelimit.pruning",
    "PruneConfig": "prunelimit.pruning",
    "coverage": "prunelimit.pruning",
    "to_torch_prune": "prunelimit.pruning",
    "from_torch_prune": "prunelimit.pruning",
    "sparsity_report": "prunelimit.pruning",
    "save_compressed": "prunelimit.pruning",
    "load_compressed": "prunelimit.pruning",
    "register_prunable_layer": "prunelimit.pruning",
    "unwrap_model": "prunelimit.pruning",
    "MaskEnforcer": "prunelimit.train",
    "causal_lm_loss": "prunelimit.train",
    "model_loss": "prunelimit.train",
    "model_info": "prunelimit.models",
    "init_weights": "prunelimit.models",
    "dataset_info": "prunelimit.data",
    "lanczos_tridiagonal": "prunelimit.spectrum",
    "hessian_row_norms": "prunelimit.spectrum",
    "MagnitudeOrdering": "prunelimit.limit",
    "run_sweep": "prunelimit.limit",
    "actual_limits": "prunelimit.limit",
    "loss_epsilon": "prunelimit.limit",
    "LimitConfig": "prunelimit.limit",
    "SpectrumConfig": "prunelimit.spectrum",
    "load_config": "prunelimit.config",
    "TrainConfig": "prunelimit.train",
    "train": "prunelimit.train",
    "finetune": "prunelimit.train",
    "evaluate": "prunelimit.train",
    "HessianOperator": "prunelimit.spectrum",
    "GaussNewtonOperator": "prunelimit.spectrum",
    "RestrictedOperator": "prunelimit.spectrum",
    "slq_spectrum": "prunelimit.spectrum",
    "top_eigenvalues": "prunelimit.spectrum",
    "hessian_trace": "prunelimit.spectrum",
    "normalized_gaussian_width": "prunelimit.limit",
    "predict_limit": "prunelimit.limit",
    "rule_limits": "prunelimit.limit",
    "fundamental_limit": "prunelimit.pipeline.own_model",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'prunelimit' has no attribute {name!r}")


def __dir__():
    return __all__
