"""The limit repository's flat YAML keys, mapped onto our sections.

The sample config of the original README (``model: AlexNet``, ``lmbda: 0.00003``, ``schedu: True`` ...)
loads as it is. Each flat key has one home; the mapping is data so ``validate`` can print it.
"""
from __future__ import annotations

from typing import Any

from prunelimit.config.build import ConfigError

# Names of the original repository's models -> ours.
ORIGINAL_MODELS = {
    "FC": "fc", "FC12": "fc12", "AlexNet": "alexnet", "VGG16": "vgg16_bn",
    "ResNet18": "resnet18_cifar", "ResNet50": "resnet50_cifar",
}
# The original computes "important eigenvalues" only for these (its README); FC nets use q = 0.
IMPORTANT_EIGS_MODELS = {"alexnet", "vgg16_bn", "resnet18_cifar", "resnet50_cifar"}

# flat key -> (section, field); keys that need logic are handled in map_flat().
DIRECT = {
    "init": ("model", "init"),
    "data_path": ("data", "data_path"),
    "dataset": ("data", "dataset"),
    "use_full_data": ("data", "use_full_data"),
    "batch_size": ("train", "batch_size"),
    "optim": ("train", "optimizer"),
    "lr": ("train", "lr"),
    "momentum": ("train", "momentum"),
    "weight_decay": ("train", "weight_decay"),
    "gamma": ("train", "gamma"),
    "warm": ("train", "warmup_epochs"),
    "milestones": ("train", "milestones"),
    "epoch": ("train", "epochs"),
    "sparse_epoch": ("limit", "sweep_points"),
    "save_model": ("stages", "save_model"),
    "sparse": ("stages", "sweep"),
    "lanczos_iter": ("spectrum", "lanczos_iter"),
    "lanczos_num": ("spectrum", "lanczos_num"),
}
LOGIC = ("model", "gpu", "criterion", "schedu", "schedumode", "l1", "lmbda", "regularizer", "mode", "file_path")
ORIGINAL_KEYS = tuple(DIRECT) + LOGIC

_SCHEDULES = {"multistep": "multistep", "cos": "cosine", "cosine": "cosine", "step": "step", "linear": "linear"}
_CRITERIA = {"cross_entropy": "cross_entropy", "ce": "cross_entropy", "crossentropy": "cross_entropy",
             "mse": "mse"}


def is_flat_value(key: str, value: Any) -> bool:
    """A top-level key is an original flat key unless it is a section given as a mapping."""
    return key in ORIGINAL_KEYS and not isinstance(value, dict)


def map_flat(flat: dict[str, Any], where: str) -> dict[str, dict[str, Any]]:
    """Original flat keys -> ``{section: {field: value}}`` plus top-level entries under ``""``."""
    out: dict[str, dict[str, Any]] = {"": {"pipeline": "limit"}}

    def put(section, key, value):
        out.setdefault(section, {})[key] = value

    for key, value in flat.items():
        if key in DIRECT:
            put(*DIRECT[key], value)
    if "model" in flat:
        name = flat["model"]
        if not isinstance(name, str):
            raise ConfigError(f"{where}: key 'model' must be a model name, got {name!r}")
        ours = ORIGINAL_MODELS.get(name, name)
        put("model", "name", ours)
        put("spectrum", "important_eigs", ours in IMPORTANT_EIGS_MODELS)
    if "gpu" in flat:
        gpu = flat["gpu"]
        if not isinstance(gpu, int) or isinstance(gpu, bool) or gpu < 0:
            raise ConfigError(f"{where}: key 'gpu' must be a GPU index such as 0, got {gpu!r}")
        out[""]["gpu"] = gpu
    if "criterion" in flat:
        crit = str(flat["criterion"]).lower()
        if crit not in _CRITERIA:
            raise ConfigError(f"{where}: key 'criterion' must be one of {sorted(set(_CRITERIA))}, got {flat['criterion']!r}")
        put("train", "criterion", _CRITERIA[crit])
    if "schedu" in flat or "schedumode" in flat:
        enabled = flat.get("schedu", True)
        if not isinstance(enabled, bool):
            raise ConfigError(f"{where}: key 'schedu' must be true or false, got {enabled!r}")
        mode = str(flat.get("schedumode", "multistep")).lower()
        if mode not in _SCHEDULES:
            raise ConfigError(f"{where}: key 'schedumode' must be one of {sorted(_SCHEDULES)}, got {flat['schedumode']!r}")
        put("train", "schedule", _SCHEDULES[mode] if enabled else "none")
    if "regularizer" in flat and str(flat["regularizer"]).upper() != "L1":
        raise ConfigError(f"{where}: key 'regularizer' supports only 'L1', got {flat['regularizer']!r}")
    if "l1" in flat or "lmbda" in flat:
        use_l1 = flat.get("l1", False)
        if not isinstance(use_l1, bool):
            raise ConfigError(f"{where}: key 'l1' must be true or false, got {use_l1!r}")
        lmbda = flat.get("lmbda", 0.0)
        try:
            lmbda = float(lmbda)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: key 'lmbda' must be a number, got {lmbda!r}") from None
        put("train", "l1_lambda", lmbda if use_l1 else 0.0)
    if "mode" in flat:
        mode = flat["mode"]
        if mode not in ("train", "eval"):
            raise ConfigError(f"{where}: key 'mode' must be 'train' or 'eval' (eval: skip training and "
                              f"use file_path), got {mode!r}")
        put("stages", "train", mode == "train")
    if "file_path" in flat:
        fp = flat["file_path"]
        if fp is not None and not isinstance(fp, str):
            raise ConfigError(f"{where}: key 'file_path' must be a path string, got {fp!r}")
        if fp and fp.strip():
            put("model", "checkpoint", fp.strip())
    return out
