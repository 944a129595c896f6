"""Pruning: which weights are prunable, global magnitude masks (GP), the minimum threshold (GP+MT),
applying masks, mask files and mask statistics."""
from .config import PruneConfig, masks_for_config
from .legacy import load_legacy_mask_npy
from .magnitude import global_magnitude_masks, prunable_layers
from .masks import (LayerMaskStats, MaskStats, apply_masks, check_masks_fit, count_nonzero_pruned, load_masks, mask_file_metadata,
                    mask_sparsity, masks_sparsity_of_model, save_masks)
from .min_threshold import (LAYER_SPARSITY_COLUMNS, MT_MODES, LayerPlan, MTPlan, max_feasible_min_threshold,
                            max_feasible_sparsity, min_threshold_masks, min_threshold_plan,
                            min_threshold_plan_and_masks)
from .coverage import Coverage, collapsed_layers, coverage
from .interop import from_torch_prune, to_torch_prune
from .names import unwrap_model
from .report import SparsityReport, load_compressed, save_compressed, sparsity_report
from .prunable import count_prunable, prunable_parameters, register_prunable_layer
from .select import prune_count

__all__ = [
    "SparsityReport", "from_torch_prune", "load_compressed", "save_compressed", "sparsity_report", "to_torch_prune",
    "Coverage", "collapsed_layers", "coverage", "register_prunable_layer", "unwrap_model",
    "LAYER_SPARSITY_COLUMNS", "LayerMaskStats", "LayerPlan", "MT_MODES", "MTPlan", "MaskStats", "PruneConfig",
    "apply_masks", "check_masks_fit", "count_nonzero_pruned", "count_prunable", "global_magnitude_masks", "load_legacy_mask_npy",
    "load_masks", "mask_file_metadata", "mask_sparsity", "masks_for_config", "masks_sparsity_of_model",
    "max_feasible_min_threshold", "max_feasible_sparsity", "min_threshold_masks", "min_threshold_plan", "min_threshold_plan_and_masks",
    "prunable_layers", "prunable_parameters", "prune_count", "save_masks",
]
