"""One function per subcommand: argparse namespace -> typed config -> pipeline call."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from prunelimit.runs import paths
from prunelimit.config import RunConfig, config_from_overrides, dump_config, load_config, shipped_configs
from prunelimit.config.build import ConfigError
from prunelimit.errors import PrunelimitError

def dispatch(args: argparse.Namespace, argv: list[str]) -> int:
    return COMMANDS[args.command](args, argv)


# ---- building configs from flags ------------------------------------------------------------------
# Every flag that sets a config key, in one table: argparse dest -> config key. Values go into the config
# as they are (typed by argparse), never re-serialised to YAML text.
FLAG_KEYS = {
    "out": "out", "device": "device", "seed": "seed",
    # the original GP flags: the fine-tuning recipe ...
    "epochs": "finetune.epochs", "batch_size": "finetune.batch_size", "lr": "finetune.lr",
    "momentum": "finetune.momentum", "weight_decay": "finetune.weight_decay", "smoothing": "finetune.label_smoothing",
    "warmup_epochs": "finetune.warmup_epochs", "schedule": "finetune.schedule", "nesterov": "finetune.nesterov",
    "workers": "data.workers",
    # ... and the pruning
    "sparsity": "prune.sparsity", "min_threshold": "prune.min_threshold", "mt_mode": "prune.mt_mode",
    "include": "prune.include", "exclude": "prune.exclude", "rule": "prune.rule",
    # model and data (prune / finetune)
    "model": "model.name", "num_classes": "model.num_classes", "checkpoint": "model.checkpoint",
    "data_path": "data.data_path", "dataset": "data.dataset",
}
# flags whose presence sets a fixed value, and flags whose text is parsed first
SWITCH_KEYS = {"no_progress": ("show_progress", False), "download": ("data.download", True)}


def _input_shape(text: str) -> list[int]:
    try:
        return [int(x) for x in text.replace("x", ",").split(",")]
    except ValueError:
        raise ConfigError(f"--input-shape {text!r} must look like 3,32,32") from None


PARSED_KEYS = {"input_shape": ("model.input_shape", _input_shape), "model_arg": ("model.kwargs", lambda v: model_kwargs(v))}


def flag_values(args: argparse.Namespace) -> dict[str, tuple[str, object]]:
    """``{config key: (the flag as typed, value)}`` for every flag given on this command line."""
    out: dict[str, tuple[str, object]] = {}
    for dest, key in FLAG_KEYS.items():
        if getattr(args, dest, None) is not None:
            out[key] = (_flag(dest), getattr(args, dest))
    for dest, (key, value) in SWITCH_KEYS.items():
        if getattr(args, dest, False):
            out[key] = (_flag(dest), value)
    for dest, (key, parse) in PARSED_KEYS.items():
        if getattr(args, dest, None):
            out[key] = (_flag(dest), parse(getattr(args, dest)))
    return out


def _interactive() -> bool:
    """Progress bars only when stderr is a terminal; piped output gets the per-stage lines alone."""
    from prunelimit.progress import stderr_is_terminal

    return stderr_is_terminal()


def _refuse_key_without_value(word: str) -> None:
    """``prunelimit run train.lr``: a config key without ``=VALUE`` (read as a config file name otherwise)."""
    from prunelimit.config.schema import default_dict

    section = word.split(".", 1)[0]
    if "=" not in word and "." in word and section in default_dict() and not Path(word).exists():
        raise ConfigError(f"{word!r} names the config key {word} but gives no value; write {word}=VALUE "
                          f"(e.g. train.lr=0.05), or give an existing config file")


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _config(args: argparse.Namespace, *, extra: dict[str, object] | None = None, empty_base: bool = False,
            drop: tuple[str, ...] = (), unread_ok: tuple[str, ...] = ()) -> RunConfig:
    """CONFIG (default: the embedded default) + positional overrides + ``extra`` + flags.

    ``empty_base``: without CONFIG start from the built-in defaults instead of the embedded default run.
    ``drop``: config keys whose flags this command handles itself. A flag or a ``section.key`` override
    that sets a key the run never reads is refused (a flag that does nothing is a silent surprise), except
    keys under the prefixes ``unread_ok`` (recorded for a later command)."""
    config = getattr(args, "config", None)
    positional = list(getattr(args, "overrides", []) or [])
    if config is not None and "=" in config and not Path(config).exists():
        config, positional = None, [config] + positional  # `prunelimit run key=value ...` without CONFIG
    for word in ([config] if config is not None else []) + positional:
        _refuse_key_without_value(word)
    flags = {k: v for k, v in flag_values(args).items() if k not in drop}
    values = {**(extra or {}), **{k: v for k, (_, v) in flags.items()}}
    if not _interactive():  # piped or logged: a line per stage, not thousands of bar redraws
        values.setdefault("show_progress", False)
    if empty_base and config is None:
        cfg = config_from_overrides(positional, values=values)
    else:
        cfg = load_config(config, positional, values=values)
    given = {k: flag for k, (flag, _) in flags.items()}
    given.update({o.split("=", 1)[0].strip(): f"override {o!r}" for o in positional if "." in o.split("=", 1)[0]})
    for key, source in given.items():
        reason = None if key.startswith(unread_ok) else cfg.unread_reason(key)
        if reason:
            raise ConfigError(f"{source} sets {key}, which this run never reads: {reason}")
    return cfg


# ---- commands ---------------------------------------------------------------------------------------
def cmd_run(args, argv) -> int:
    from prunelimit.pipeline.run import run_pipeline

    run_pipeline(_config(args), ["prunelimit", *argv], allow_pickle=args.allow_pickle)
    return 0


def _refuse_two_mask_files(args) -> None:
    """``--masks A spectrum.masks=B``: two mask files for one spectrum; the same file twice is fine."""
    words = list(getattr(args, "overrides", []) or []) + [getattr(args, "config", None) or ""]
    for word in words:
        key, _, value = word.partition("=")
        if key.strip() == "spectrum.masks" and value.strip() != str(args.masks):
            raise ConfigError(f"--masks {args.masks} and the override {word!r} name two mask files for the "
                              f"pruned-subnetwork spectrum; give one of them")


def _limit_stages(args, argv, stages: dict[str, bool]) -> int:
    from prunelimit.pipeline.run import run_pipeline

    extra = {"pipeline": "limit", **{f"stages.{k}": v for k, v in stages.items()}}
    if getattr(args, "masks", None):   # prunelimit spectrum --masks FILE
        _refuse_two_mask_files(args)
        extra["spectrum.masks"] = args.masks
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
    # prune prunes at prune.sparsity, never fine-tunes; the fine-tuning flags are recorded for `finetune RUN`
    extra = {"pipeline": "gp", "gp.finetune": False, "gp.sparsity_from": "config"}
    cfg = _config(args, extra=extra, empty_base=True, unread_ok=("finetune.",))
    if not config_given:
        # the GP repository's command: one method, GP+MT exactly when --min-threshold is given (a CONFIG says
        # which methods it wants in gp.methods, and that is kept); no --dataset: no evaluation
        extra.update({"gp.methods": ["gp_mt"] if cfg.prune.min_threshold else ["gp"],
                      "name": f"prune-{cfg.model.name}-{cfg.prune.sparsity:g}" + (
                          f"-mt{cfg.prune.min_threshold:g}" if cfg.prune.min_threshold else "")})
        if args.dataset is None:
            extra["data"] = None
        cfg = _config(args, extra=extra, empty_base=True, unread_ok=("finetune.",))
    prune_command(cfg, ["prunelimit", *argv], allow_pickle=args.allow_pickle)
    return 0


def cmd_finetune(args, argv) -> int:
    from prunelimit.pipeline.prune import MASK_FILE, PRUNED_FILE, finetune_command, locate_pruned_run

    flags = {k: v for k, (_, v) in flag_values(args).items() if k != "model.checkpoint"}  # weights: below
    flags["gp.finetune"] = True
    if not _interactive():
        flags.setdefault("show_progress", False)
    if args.run_dir:
        if args.out is not None:
            raise ConfigError(f"--out has no effect with RUN_DIR: fine-tuning writes into {args.run_dir!r} "
                              f"itself; drop --out (or copy the run directory first)")
        run_dir, method_dir, method = locate_pruned_run(Path(args.run_dir), args.method)
        cfg = load_config(run_dir / paths.CONFIG, values={**flags, "out": str(run_dir)})
        recorded = load_config(run_dir / paths.CONFIG, values={"out": str(run_dir)}).data
        if recorded is not None and cfg.data is not None and cfg.data.dataset != recorded.dataset:
            # the model was pruned (and its classes chosen) on the recorded dataset; another one would also
            # be written into config.yaml for every later command on this directory
            raise ConfigError(f"--dataset {args.dataset}: {str(run_dir)!r} was pruned on dataset "
                              f"{recorded.dataset!r} and fine-tunes on it; drop --dataset (--data-path says "
                              f"where its files are now), or prune again with --out NEW")
        weights = Path(args.checkpoint) if args.checkpoint else method_dir / PRUNED_FILE
        mask_path = Path(args.masks) if args.masks else method_dir / MASK_FILE
    else:
        if not (args.model and args.checkpoint and args.masks):
            raise ConfigError("finetune needs a RUN_DIR made by `prunelimit prune`, or --model, --checkpoint "
                              "(the pruned weights) and --masks")
        cfg = config_from_overrides(values={**flags, "pipeline": "gp", "gp.sparsity_from": "config",
                                            "name": f"finetune-{args.model}"})
        weights, mask_path, method = Path(args.checkpoint), Path(args.masks), "finetune"
        method_dir = (Path(cfg.out) if cfg.out else Path("runs") / cfg.name) / method
    finetune_command(cfg, ["prunelimit", *argv], method=method, method_dir=method_dir, weights=weights,
                     mask_path=mask_path, evaluate_only=args.evaluate, allow_pickle=args.allow_pickle)
    return 0


def cmd_report(args, argv) -> int:
    from prunelimit.runs.report import print_summary, report_from_dir

    print_summary(report_from_dir(args.run_dir), after_progress=False)
    return 0


def cmd_validate(args, argv) -> int:
    # key=value arguments (not files) are overrides applied to every config, as `run CONFIG key=value`
    # would; with overrides only, the embedded default config is validated
    overrides = [a for a in args.configs if "=" in a and not os.path.exists(a)]
    configs = [a for a in args.configs if a not in overrides] or [None]
    label = {spec: (spec or "the default config") + (" with " + " ".join(overrides) if overrides else "")
             for spec in configs}
    if len(configs) == 1:   # one config: its error is the one `error:` line, nothing to count
        spec = configs[0]
        cfg = load_config(spec, overrides)
        print(f"OK {label[spec]}" if args.quiet else
              f"# {label[spec]}: OK (pipeline {cfg.pipeline})\n{dump_config(cfg)}")
        return 0
    failed = 0
    for spec in configs:
        try:
            cfg = load_config(spec, overrides)
        except PrunelimitError as e:   # a line per config on stdout; the count is the one `error:` line
            print(f"FAILED {label[spec]}: {e}")
            failed += 1
            continue
        if args.quiet:
            print(f"OK {label[spec]}")
        else:
            print(f"# {label[spec]}: OK (pipeline {cfg.pipeline})\n{dump_config(cfg)}")
    if failed:
        raise PrunelimitError(f"{failed} of {len(configs)} config(s) failed validation")
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
        print("  and any importable model: torchvision:NAME, timm:NAME, mypkg.module:factory "
              "(--model-arg KEY=VALUE for its arguments)")
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
