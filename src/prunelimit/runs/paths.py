"""Every file and folder name of a run directory, defined once.

    <run>/config.yaml  environment.json  summary.json  report.md  stages/<stage>.json  .lock
    <run>/dense/       train_log.csv  checkpoint_last.pth.tar  model_best.pth.tar  model_final.pth.tar
    <run>/gp/, gp_mt/  prune_log.csv  layer_sparsities.csv  prune_refined_log.csv  prunedmodel.pth.tar
                       weight_mask.safetensors  finetune_log.csv  model_best.pth.tar  checkpoint_last.pth.tar
    <run>/limit/       sweep.csv  spectrum.json  density.csv  hessian_rows.csv  result.json  result.txt
                       sweep.png  gaussian_width.png  spectral_density.png  hessian_row_norms.png
                       with spectrum.masks: spectrum_pruned.json  density_pruned.csv  spectral_density_pruned.png

The names under gp/ and limit/ are the original repositories' (SPEC), so tools written for those keep
working.
"""
from __future__ import annotations

# the run directory itself
CONFIG = "config.yaml"                 # the resolved config of the last command that ran here
ENVIRONMENT = "environment.json"       # versions, git sha, argv, world size
SUMMARY = "summary.json"               # what `prunelimit report` prints
REPORT = "report.md"
STAGES = "stages"                      # finished-stage markers <stage>.json, started markers <stage>.started.json
LOCK = ".lock"                         # held while a command works in the directory

# training (dense/ and each method's folder)
DENSE = "dense"
LIMIT = "limit"
TRAIN_LOG = "train_log.csv"
FINETUNE_LOG = "finetune_log.csv"
CHECKPOINT_LAST = "checkpoint_last.pth.tar"
MODEL_BEST = "model_best.pth.tar"
MODEL_FINAL = "model_final.pth.tar"

# pruning (gp/, gp_mt/)
PRUNED_MODEL = "prunedmodel.pth.tar"
MASK = "weight_mask.safetensors"
PRUNE_LOG = "prune_log.csv"
PRUNE_REFINED_LOG = "prune_refined_log.csv"
LAYER_SPARSITIES = "layer_sparsities.csv"

# the limit (limit/)
SWEEP_CSV = "sweep.csv"
SPECTRUM_JSON = "spectrum.json"
DENSITY_CSV = "density.csv"
ROWS_CSV = "hessian_rows.csv"
RESULT_JSON = "result.json"
RESULT_TXT = "result.txt"
SWEEP_PNG = "sweep.png"
WIDTH_PNG = "gaussian_width.png"
DENSITY_PNG = "spectral_density.png"
ROWS_PNG = "hessian_row_norms.png"
# the spectrum of the pruned subnetwork (spectrum.masks): the Hessian restricted to the kept weights
SPECTRUM_PRUNED_JSON = "spectrum_pruned.json"
DENSITY_PRUNED_CSV = "density_pruned.csv"
DENSITY_PRUNED_PNG = "spectral_density_pruned.png"
