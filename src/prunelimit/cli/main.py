"""``prunelimit <command> [CONFIG] [key=value ...] [--flags]`` — the only place that reads argv.

Commands: run, train, sweep, spectrum, limit, prune, finetune, report, validate, ls.
Every error a user can cause (``PrunelimitError``) is printed as one ``error: ...`` line with exit code 2;
anything else is a bug and keeps its traceback. SIGTERM stops like Ctrl-C, with the resume message.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import traceback
import warnings

from prunelimit.cli import commands
from prunelimit.errors import PrunelimitError

DESCRIPTION = ("Prune PyTorch networks by global magnitude (GP, GP+MT) with masked fine-tuning, and predict how far "
               "they can be pruned (the fundamental limit: L1 training, sweep, Hessian spectrum, Gaussian width). "
               "`prunelimit COMMAND -h` lists a command's flags and their defaults.")

EPILOG = """examples:
  prunelimit run                                   # the embedded default on sklearn's digits (20-40 s, 2 CPU cores)
  prunelimit run FC_CIFAR10_l1 data.data_path=~/data  # a shipped config with an override
  prunelimit prune --model resnet50 --checkpoint dense.pth --sparsity 0.9 --min-threshold 0.05 --out runs/r50
  prunelimit finetune runs/r50 --dataset imagenet --data-path /data/imagenet --epochs 100
  torchrun --nproc_per_node=8 -m prunelimit finetune runs/r50 --dataset imagenet --data-path /data/imagenet
"""


class _Parser(argparse.ArgumentParser):
    """argparse's errors as one ``error: ...`` line, like every other user error (``-h`` shows the usage)."""

    def error(self, message: str):
        self.exit(2, f"error: {message}; see `{self.prog} -h`\n")


def _common(p: argparse.ArgumentParser, *, config: bool = True, config_required: bool = False) -> None:
    if config:
        p.add_argument("config", nargs=None if config_required else "?", default=None,
                       help="YAML config file or the name of a shipped config (see `prunelimit ls configs`)")
        p.add_argument("overrides", nargs="*", metavar="key=value",
                       help="config overrides such as train.lr=0.05 or the original flat keys (lmbda=5e-5)")
    p.add_argument("--out", help="run directory")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1")
    p.add_argument("--seed", type=int, help="seeds model init, data order, training and the Hessian probes")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars [config key show_progress; default: bars only when stderr is a terminal, "
                        "a line per stage when it is a file or pipe]")
    p.add_argument("--allow-pickle", action="store_true",
                   help="let this command unpickle checkpoint/mask files, which can run code (trusted files only); "
                        "never read from a config or run directory")


def _gp_flags(p: argparse.ArgumentParser, *, prune: bool = True) -> None:
    g = p.add_argument_group("the original GP flags (fine-tuning recipe and pruning)" if prune
                             else "the original GP flags (fine-tuning recipe)")
    g.add_argument("--epochs", type=int, help="fine-tuning epochs")
    g.add_argument("--batch-size", type=int, help="total batch size over all GPUs")
    g.add_argument("--lr", type=float, help="initial learning rate")
    g.add_argument("--momentum", type=float, help="SGD momentum")
    g.add_argument("--weight-decay", type=float, help="L2 weight decay")
    g.add_argument("--smoothing", type=float, help="label smoothing")
    g.add_argument("--warmup-epochs", type=int, help="linear learning-rate warm-up, in epochs")
    g.add_argument("--schedule", choices=["cosine", "linear", "step", "multistep", "none"],
                   help="learning-rate schedule")
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None, help="Nesterov momentum")
    g.add_argument("--workers", type=int, help="data loader workers per process")
    if prune:  # finetune keeps the masks it is given: these flags could only be refused there
        g.add_argument("--sparsity", type=float, help="fraction of prunable weights to remove, e.g. 0.9")
        g.add_argument("--min-threshold", type=float, help="MT: minimum kept weights per layer, in percent of N")
        g.add_argument("--mt-mode", choices=["proportional", "global"], help="GP+MT redistribution (default proportional)")
        g.add_argument("--include", action="append", help="module-name pattern of prunable layers (repeatable)")
        g.add_argument("--exclude", action="append", help="module-name pattern to leave dense (repeatable)")
        g.add_argument("--rule", choices=["exact", "original"], help="original: the GP code's k-1 rule")


def _model_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and data")
    g.add_argument("--model", help="model name (see `prunelimit ls models`), or torchvision:NAME, timm:NAME, "
                                   "mypkg.module:factory")
    g.add_argument("--model-arg", action="append", metavar="KEY=VALUE",
                   help="keyword argument for the model factory (repeatable), e.g. --model-arg depth=4")
    g.add_argument("--num-classes", type=int, help="output classes")
    g.add_argument("--input-shape", help="C,H,W of one example, for models that need it when no --dataset is given")
    g.add_argument("--checkpoint", help="weights: a state_dict, {'state_dict': ...}, DDP 'module.' keys accepted")
    g.add_argument("--dataset", help="dataset name (see `prunelimit ls datasets`)")
    g.add_argument("--data-path", help="folder with the dataset files")
    g.add_argument("--download", action="store_true", help="download mnist/cifar10/cifar100 when missing")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="prunelimit", description=DESCRIPTION,
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="command")

    p = sub.add_parser("run", help="the whole pipeline from one YAML (no CONFIG: the embedded digits default)")
    _common(p)
    _gp_flags(p)
    for name, text in (("train", "train the dense model (L1 when configured)"),
                       ("sweep", "one-shot pruning sweep of the trained model"),
                       ("spectrum", "Hessian spectrum (SLQ), top eigenvalues, trace, important eigenvalues"),
                       ("limit", "predicted vs actual pruning limit (trains/sweeps/spectrum as needed)")):
        p = sub.add_parser(name, help=text)
        _common(p, config_required=True)
        if name == "spectrum":
            p.add_argument("--masks", help="mask file (.safetensors, e.g. RUN/gp/weight_mask.safetensors; an original "
                                           "weight_mask.npy needs --allow-pickle): also the spectrum of the Hessian "
                                           "restricted to the weights it keeps (sets spectrum.masks)")

    p = sub.add_parser("prune", help="GP, or GP+MT with --min-threshold; writes the original's files")
    _common(p)
    _model_flags(p)
    _gp_flags(p)

    p = sub.add_parser("finetune", help="masked fine-tuning of a pruned run (resumes automatically)")
    p.add_argument("run_dir", nargs="?", help="a run directory made by `prune`/`run`, or one method's folder in it")
    p.add_argument("--method", choices=["gp", "gp_mt"], help="which pruned model of the run directory")
    p.add_argument("--masks", help="mask file (.safetensors; an original weight_mask.npy needs --allow-pickle)")
    p.add_argument("--evaluate", action="store_true", help="only evaluate the checkpoint, no training")
    _common(p, config=False)
    _model_flags(p)
    _gp_flags(p, prune=False)

    p = sub.add_parser("coverage", help="which weight matrices are prunable, and which are left out")
    p.add_argument("--model", required=True, help="model name, torchvision:NAME, timm:NAME or mypkg.module:factory")
    p.add_argument("--model-arg", action="append", metavar="KEY=VALUE", help="factory keyword argument (repeatable)")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--include", action="append", help="module or parameter name pattern (repeatable)")
    p.add_argument("--exclude", action="append", help="module or parameter name pattern (repeatable)")

    p = sub.add_parser("report", help="print the summary of a finished run directory")
    p.add_argument("run_dir")

    p = sub.add_parser("validate", help="load configs, check every key and value, print the resolved config")
    p.add_argument("configs", nargs="+", metavar="config | key=value",
                   help="YAML files or shipped config names, and config overrides such as spectrum.top_k=3 "
                        "(applied to every config; with overrides only, the embedded default config)")
    p.add_argument("--quiet", action="store_true", help="only say OK or the error")

    p = sub.add_parser("ls", help="list models, datasets or shipped configs")
    p.add_argument("what", nargs="?", choices=["models", "datasets", "configs"], default=None)
    _add_defaults(sub)
    return parser


# Commands that only print: a reader that stops early (`| head`) has what it wanted, so they exit 0 however
# much of their text fitted into the pipe. Every other command does work that a closed stdout cuts short.
PRINT_ONLY = {"report", "ls", "validate", "coverage"}


def _add_defaults(sub) -> None:
    """Append to each flag that sets a config key that key and its built-in default: a flag overrides the
    CONFIG's value, and the built-in default is what an unset key gets."""
    from prunelimit.config.schema import default_dict

    defaults = default_dict()

    def builtin(key: str):
        section, _, name = key.partition(".")
        value = defaults.get(section)
        return value.get(name) if name and isinstance(value, dict) else value

    for command, parser in sub.choices.items():
        # finetune has no CONFIG: with RUN_DIR its settings come from the run's config.yaml
        source = "RUN_DIR's config.yaml" if command == "finetune" else "the CONFIG's value"
        for action in parser._actions:
            if action.dest == "no_progress" or action.help is argparse.SUPPRESS:
                continue   # its help says its default itself: it depends on the terminal, not on a value
            key = commands.FLAG_KEYS.get(action.dest) or commands.SWITCH_KEYS.get(action.dest, (None,))[0] or \
                commands.PARSED_KEYS.get(action.dest, (None,))[0]
            if key is None:
                continue
            action.help = f"{action.help or ''} [config key {key}; default: {source}, else " \
                          f"{_shown_default(command, key, builtin(key))}]".strip()


def _shown_default(command: str, key: str, value) -> str:
    """What an unset key means for ``command``, in words where the built-in value would mislead."""
    if key == "out" and command == "finetune":
        return "runs/finetune-<model> (with RUN_DIR: RUN_DIR itself, and --out is refused)"
    if key == "out":
        return "runs/<config name>"
    if key == "model.num_classes":
        return "the dataset's"
    if key == "data.dataset" and command == "prune":
        return "none: nothing is evaluated"   # prune without CONFIG or --dataset only prunes
    if key == "data.dataset" and command == "finetune":
        return f"{value} (a RUN_DIR pruned without a dataset needs --dataset)"
    return "none" if value is None else str(value)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    # key=value overrides may also come after the flags
    late = [u for u in unknown if "=" in u and not u.startswith("-")]
    rest = [u for u in unknown if u not in late]
    if rest or (late and not hasattr(args, "overrides")):
        prog = f"prunelimit {args.command}" if args.command else "prunelimit"
        print(f"error: unrecognized arguments: {' '.join(rest or late)}; see `{prog} -h`", file=sys.stderr)
        return 2
    if late:
        args.overrides = list(args.overrides or []) + late
    if args.command is None:
        parser.print_help()
        return 0
    in_main_thread = threading.current_thread() is threading.main_thread()  # signal handlers live there only
    previous_term = signal.signal(signal.SIGTERM, _terminated) if in_main_thread else None
    previous_show = warnings.showwarning
    warnings.showwarning = _one_line_warnings(previous_show)
    try:
        rc = commands.dispatch(args, argv) or 0
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers below, not at interpreter exit
        return rc
    except (KeyboardInterrupt, Terminated) as stop:
        print("\ninterrupted; run the same command again to resume where it stopped", file=sys.stderr)
        return 143 if isinstance(stop, Terminated) else 130
    except PrunelimitError as e:  # bad input: one line that says what to fix
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `prunelimit report DIR | head`: the reader has gone; stop quietly
        _silence_stdout()
        if args.command in PRINT_ONLY:   # it had only text to give, and the reader has what it wanted
            return 0
        # a run (or prune/finetune) stopped before its end: the exit code says so, as SIGPIPE would
        print("stdout was closed, so the command stopped before it finished; run the same command again "
              "to resume", file=sys.stderr)
        return 141
    except Exception:  # anything else is a bug in prunelimit: keep the traceback
        traceback.print_exc()
        print("this is a bug in prunelimit, not a problem with your input; please report it with the command "
              "line and the traceback above", file=sys.stderr)
        return 1
    finally:
        warnings.showwarning = previous_show
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous_term)
        from prunelimit import dist

        dist.shutdown()


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _one_line_warnings(previous):
    """``warnings.showwarning`` for the command line: prunelimit's own warnings (layer collapse, skipped weights,
    ...) read as one ``warning: ...`` line; a third-party library's go to ``previous`` (Python's usual
    ``file:line: Category:`` form)."""
    def show(message, category, filename, lineno, file=None, line=None):
        if os.path.abspath(filename).startswith(_PACKAGE_DIR + os.sep):
            print(f"warning: {message}", file=sys.stderr if file is None else file)
        else:
            previous(message, category, filename, lineno, file, line)

    return show


class Terminated(BaseException):
    """SIGTERM (a scheduler's or torchrun's stop): unwinds like Ctrl-C so files are left resumable."""


def _terminated(signum, frame):
    raise Terminated()


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail on the closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _version() -> str:
    from prunelimit import __version__

    return f"prunelimit {__version__}"


if __name__ == "__main__":
    raise SystemExit(main())
