"""One function per subcommand: argparse namespace -> typed config -> pipeline call."""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from prunelimit.config import RunConfig, config_from_overrides, dump_config, load_config, shipped_configs
from prunelimit.config.build import ConfigError
from prunelimit.errors import PrunelimitError

# original GP flag -> finetune field
_FINETUNE_FLAGS = {"epochs": "epochs", "batch_size": "batch_size", "lr": "lr", "momentum": "momentum",
                   "weight_decay": "weight_decay", "smoothing": "label_smoothing",
                   "warmup_epochs": "warmup_epochs", "schedule": "schedule", "nesterov": "nesterov"}
_PRUNE_FLAGS = {"sparsity": "sparsity", "min_threshold": "min_threshold", "mt_mode": "mt_mode",
                "include": "include", "exclude": "exclude", "rule": "rule"}


def dispatch(args: argparse.Namespace, argv: list[str]) -> int:
    return COMMANDS[args.command](args, argv)


# ---- building configs from flags ------------------------------------------------------------------
def _flag_overrides(args: argparse.Namespace) -> list[str]:
    """The common flags and the original GP flags as ``section.key=value`` overrides."""
    out = []
    for flag, key in (("out", "out"), ("device", "device"), ("seed", "seed")):
        if getattr(args, flag, None) is not None:
            out.append(f"{key}={_yaml(getattr(args, flag))}")
    if getattr(args, "no_progress", False):
        out.append("show_progress=false")
    for flag, key in _FINETUNE_FLAGS.items():
        if getattr(args, flag, None) is not None:
            out.append(f"finetune.{key}={_yaml(getattr(args, flag))}")
    for flag, key in _PRUNE_FLAGS.items():
        if getattr(args, flag, None) is not None:
            out.append(f"prune.{key}={_yaml(getattr(args, flag))}")
    if getattr(args, "workers", None) is not None:
        out.append(f"data.workers={args.workers}")
    return out


def _yaml(v) -> str:
    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


def _config(args: argparse.Namespace, *, extra: list[str] = (), empty_base: bool = False) -> RunConfig:
    """CONFIG (default: the embedded default) + positional overrides + ``extra`` + flags.

    ``empty_base``: without CONFIG start from the built-in defaults instead of the embedded default run."""
    config = getattr(args, "config", None)
    positional = list(getattr(args, "overrides", []) or [])
    if config is not None and "=" in config and not Path(config).exists():
        config, positional = None, [config] + positional  # `prunelimit run key=value ...` without CONFIG
    overrides = positional + list(extra) + _flag_overrides(args)
    if empty_base and config is None:
        return config_from_overrides(overrides)
    return load_config(config, overrides)


# ---- commands ---------------------------------------------------------------------------------------
def cmd_run(args, argv) -> int:
    from prunelimit.pipeline.run import run_pipeline

    run_pipeline(_config(args), ["prunelimit", *argv], allow_pickle=args.allow_pickle)
    return 0


def _limit_stages(args, argv, stages: dict[str, bool]) -> int:
    from prunelimit.pipeline.run import run_pipeline

    extra = ["pipeline=limit"] + [f"stages.{k}={str(v).lower()}" for k, v in stages.items()]
    run_pipeline(_config(args, extra=extra), ["prunelimit", *argv], allow_pickle=args.allow_pickle)
    return 0


def cmd_train(args, argv) -> int:
    return _limit_stages(args, argv, {"sweep": False, "spectrum": False, "limit": False})


def cmd_sweep(args, argv) -> int:
    return _limit_stages(args, argv, {"sweep": True, "spectrum": False, "limit": False})


def cmd_spectrum(args, argv) -> int:
    return _limit_stages(args, argv, {"sweep": False, "spectrum": True, "limit": False})


def cmd_limit(args, argv) -> int:
    return _limit_stages(args, argv, {"sweep": True, "spectrum": True, "limit": True})


def _model_overrides(args) -> list[str]:
    out = []
    if args.model is not None:
        out.append(f"model.name={_yaml(args.model)}")
    if args.num_classes is not None:
        out.append(f"model.num_classes={args.num_classes}")
    if getattr(args, "model_arg", None):
        out.append(f"model.kwargs={_yaml(model_kwargs(args.model_arg))}")
    if args.input_shape is not None:
        try:
            shape = [int(x) for x in args.input_shape.replace("x", ",").split(",")]
        except ValueError:
            raise ConfigError(f"--input-shape {args.input_shape!r} must look like 3,32,32") from None
        out.append(f"model.input_shape={shape}")
    if args.checkpoint is not None:
        out.append(f"model.checkpoint={_yaml(args.checkpoint)}")
    if args.data_path is not None:
        out.append(f"data.data_path={_yaml(args.data_path)}")
    if args.download:
        out.append("data.download=true")
    return out


def model_kwargs(pairs: list[str]) -> dict:
    """``["depth=4", "drop_rate=0.1"]`` -> ``{"depth": 4, "drop_rate": 0.1}`` (values read as YAML scalars)."""
    import yaml

    out = {}
    for pair in pairs or []:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip().isidentifier():
            raise ConfigError(f"--model-arg {pair!r} must be KEY=VALUE with KEY a Python identifier, e.g. depth=4")
        out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    return out


def cmd_coverage(args, argv) -> int:
    from prunelimit.models import create_model
    from prunelimit.pruning.coverage import coverage

    model = create_model(args.model, num_classes=args.num_classes, **model_kwargs(args.model_arg))
    report = coverage(model, args.include, args.exclude)
    print(report.format())
    return 0


def cmd_prune(args, argv) -> int:
    from prunelimit.pipeline.prune import prune_command

    config_given = args.config is not None and not ("=" in args.config and not Path(args.config).exists())
    if not config_given and args.model is None:
        raise ConfigError("prune needs --model NAME (and usually --checkpoint PATH), or a CONFIG file")
    extra = ["pipeline=gp", "gp.finetune=false"]
    if args.dataset is not None:
        extra.append(f"data.dataset={_yaml(args.dataset)}")
    cfg = _config(args, extra=extra + _model_overrides(args), empty_base=True)
    if not config_given:
        if args.dataset is None:
            cfg.data = None
        cfg.name = f"prune-{cfg.model.name}-{cfg.prune.sparsity:g}" + (
            f"-mt{cfg.prune.min_threshold:g}" if cfg.prune.min_threshold else "")
    cfg.gp.methods = ["gp_mt"] if cfg.prune.min_threshold else ["gp"]
    prune_command(cfg, ["prunelimit", *argv], allow_pickle=args.allow_pickle)
    return 0


def cmd_finetune(args, argv) -> int:
    from prunelimit.pipeline.prune import finetune_command

    finetune_command(args, _flag_overrides(args), _model_overrides(args), ["prunelimit", *argv])
    return 0


def cmd_report(args, argv) -> int:
    from prunelimit.runs.report import print_summary, report_from_dir

    print_summary(report_from_dir(args.run_dir))
    return 0


def cmd_validate(args, argv) -> int:
    failed = 0
    for spec in args.configs:
        try:
            cfg = load_config(spec)
        except PrunelimitError as e:
            print(f"error: {e}")
            failed += 1
            continue
        if args.quiet:
            print(f"OK {spec}")
        else:
            print(f"# {spec}: OK (pipeline {cfg.pipeline})\n{dump_config(cfg)}")
    if failed:
        raise PrunelimitError(f"{failed} of {len(args.configs)} config(s) failed validation")
    return 0


def cmd_ls(args, argv) -> int:
    from prunelimit.data import dataset_info, list_datasets
    from prunelimit.models import list_models, model_info

    what = args.what
    if what in (None, "models"):
        print("models:")
        for name in list_models():
            info = model_info(name)
            alias = f" (aliases: {', '.join(info.aliases)})" if info.aliases else ""
            print(f"  {name:<22} {info.description}{alias}")
    if what in (None, "datasets"):
        print("datasets:")
        for name in list_datasets():
            info = dataset_info(name)
            if info.num_classes:
                print(f"  {name:<14} {info.num_classes:>4} classes, input {tuple(info.input_shape)}  {info.description}")
            else:   # read from the user's files: classes and shape come from them
                print(f"  {name:<14} {'classes and input from your files':<36} {info.description}")
    if what in (None, "configs"):
        print("shipped configs (use the name or a path):")
        for name, path in shipped_configs().items():
            print(f"  {name:<26} {Path(path).name}")
    return 0


COMMANDS = {"run": cmd_run, "train": cmd_train, "sweep": cmd_sweep, "spectrum": cmd_spectrum, "limit": cmd_limit,
            "prune": cmd_prune, "finetune": cmd_finetune, "report": cmd_report, "coverage": cmd_coverage, "validate": cmd_validate,
            "ls": cmd_ls}
