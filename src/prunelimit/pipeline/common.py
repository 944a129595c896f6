"""What every pipeline needs: device and run directory, the model, the data, evaluation helpers.

The pipeline folder orchestrates the concept folders (models, data, pruning, train, spectrum, limit)
into the stages of a run. It takes typed configs, never argv; the CLI builds those.
"""
from __future__ import annotations

import contextlib
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from prunelimit import dist
from prunelimit.config.build import to_dict
from prunelimit.config.schema import RunConfig
from prunelimit.runs import paths
from prunelimit.runs.rundir import RunDir
from prunelimit.errors import PrunelimitError

if TYPE_CHECKING:
    from prunelimit.pipeline.stages import StageRunner


def say(msg: str = "") -> None:
    """Print on rank 0 only."""
    if dist.is_main():
        print(msg, flush=True)


@dataclass
class Context:
    cfg: RunConfig
    run: RunDir
    device: torch.device
    allow_pickle: bool = False  # this command line's --allow-pickle; never read from or written to a file
    runner: "StageRunner | None" = None  # skip / resume / refuse for every stage (pipeline/stages.py)
    command: str = "run"        # the CLI command ("run", "prune", "finetune"), for hints on how to redo a stage
    timings: dict = field(default_factory=dict)  # stage name -> wall seconds in this command (summary.json)
    # the Python API's loss (pl.fundamental_limit(loss_fn=...)): loss_fn(output, target) or pl.model_loss(fn),
    # used by the sweep, epsilon and the Hessian instead of cfg.train.criterion; never from a config file
    loss_fn: Any = None

    def __post_init__(self):
        if self.runner is None:
            from prunelimit.pipeline.stages import StageRunner

            self.runner = StageRunner(self.cfg, self.run)


@contextmanager
def timed(ctx: Context, stage: str):
    """Add the wall time of the block to ``ctx.timings[stage]`` (a skipped, finished stage shows its reload)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        ctx.timings[stage] = round(ctx.timings.get(stage, 0.0) + time.perf_counter() - start, 3)


def default_out(cfg: RunConfig) -> Path:
    return Path(cfg.out) if cfg.out else Path("runs") / (cfg.name or "run")


@contextlib.contextmanager
def open_run(cfg: RunConfig, argv: list[str] | None = None, *, stages=(), strict_keys: set[str] | None = None,
             allow_pickle: bool = False, command: str = "run"):
    """The run directory for one command, as a context: initialise torchrun (if launched by it), pick the
    device, seed, lock the directory, check every stage in ``stages`` against what the directory already
    holds, and only then write ``config.yaml`` and ``environment.json``: a refused command writes nothing
    there. ``allow_pickle`` is this command line's opt-in, kept on the context only."""
    from prunelimit.pipeline.stages import StageRunner

    device_name = cfg.device
    if device_name == "auto" and cfg.gpu is not None and torch.cuda.is_available():
        device_name = f"cuda:{cfg.gpu}"
    device = dist.init_from_env(device_name)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    check_data_files(cfg)   # a config-only problem: refused before the run directory is created or locked
    run = RunDir(default_out(cfg))
    with run.lock():
        dist.barrier()
        runner = StageRunner(cfg, run)
        runner.preflight(list(stages))
        earlier = _recorded_files(run)
        run.write_config(to_dict(cfg), strict_keys=strict_keys)
        run.write_environment(argv)
        try:
            yield Context(cfg=cfg, run=run, device=device, allow_pickle=allow_pickle, runner=runner,
                          command=command)
        except BaseException:
            # a command that stops before any stage started (a wrong --data-path, Ctrl-C while loading)
            # did no work under its settings: the record of the last command that did is put back, so
            # the next `finetune RUN` does not inherit the failed command's values
            if not runner.started_any:
                _restore_recorded_files(run, earlier)
            raise


def _recorded_files(run: RunDir) -> dict[str, bytes]:
    """The run directory's config.yaml and environment.json as they are before this command writes them."""
    out = {}
    for name in (paths.CONFIG, paths.ENVIRONMENT):
        try:
            out[name] = (run.path / name).read_bytes()
        except FileNotFoundError:
            pass
    return out


def _restore_recorded_files(run: RunDir, earlier: dict[str, bytes]) -> None:
    from prunelimit.runs.io import atomic_write_bytes

    if not dist.is_main() or paths.CONFIG not in earlier:   # a new directory keeps what it was given
        return
    for name, data in earlier.items():
        atomic_write_bytes(run.path / name, data)


def check_data_files(cfg: RunConfig) -> None:
    """Refuse a configured arrays file that does not exist (``data.dataset=mine.npz``) before anything is
    written; reading it (and every other dataset) stays the data stage's."""
    from prunelimit.data.arrays import HOW_TO

    data = cfg.data
    if data is not None and data.dataset == "arrays" and not Path(data.data_path).expanduser().is_file():
        raise PrunelimitError(f"arrays: data_path {data.data_path!r} is not a file. {HOW_TO}")


def setup(cfg: RunConfig, argv: list[str] | None = None, *, strict_keys: set[str] | None = None,
          allow_pickle: bool = False) -> Context:
    """``open_run`` for code that drives single stages itself (tests, notebooks): the same context, the
    directory written the same way, but no lock is held afterwards and no stage is checked up front."""
    with open_run(cfg, argv, strict_keys=strict_keys, allow_pickle=allow_pickle) as ctx:
        return ctx


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---- model ---------------------------------------------------------------------------------------
def build_model(cfg: RunConfig, *, with_data: bool = True) -> nn.Module:
    """The configured architecture, num_classes/input shape from the dataset when one is configured."""
    from prunelimit.data import config_dataset_info
    from prunelimit.models import create_model, init_weights

    num_classes, input_shape = cfg.model.num_classes, None
    if with_data and cfg.data is not None:
        info = config_dataset_info(cfg.data)
        num_classes = num_classes or info.num_classes
        input_shape = tuple(info.input_shape)
    if cfg.model.input_shape is not None:
        input_shape = tuple(cfg.model.input_shape)
    torch.manual_seed(cfg.seed)
    try:
        model = create_model(cfg.model.name, num_classes=num_classes, input_shape=input_shape, **cfg.model.kwargs)
    except ValueError as e:
        if input_shape is None and "input_shape" in str(e):
            raise PrunelimitError(f"{e}. Give a dataset (--dataset / data.dataset) or the shape itself "
                             f"(--input-shape C,H,W / model.input_shape)") from None
        raise
    if cfg.model.init != "default":
        init_weights(model, cfg.model.init)
    return model


def load_weights(model: nn.Module, path: str | Path, allow_pickle: bool = False) -> dict:
    from prunelimit.runs.checkpoint import load_model_weights

    return load_model_weights(model, path, allow_pickle=allow_pickle)


# ---- data ----------------------------------------------------------------------------------------
@dataclass
class Data:
    train: Dataset          # with augmentation, for training
    train_eval: Dataset     # the train split with the test transform, for sweeps / Hessians / epsilon
    test: Dataset
    num_classes: int


def load_data(cfg: RunConfig) -> Data | None:
    """The configured dataset, or None when ``data`` is null."""
    from prunelimit.data import config_dataset_info, dataset_from_config

    d = cfg.data
    if d is None:
        return None
    info = config_dataset_info(d)
    train = dataset_from_config(d, train=True)
    train_eval = train if not d.augment else dataset_from_config(d, train=True, augment=False)
    test = dataset_from_config(d, train=False)
    return Data(train=train, train_eval=train_eval, test=test,
                num_classes=cfg.model.num_classes or info.num_classes)


def train_loader(cfg: RunConfig, data: Data, batch_size: int, device: torch.device) -> DataLoader:
    from prunelimit.data import make_loader

    return make_loader(data.train, batch_size, shuffle=True, workers=cfg.data.workers, seed=cfg.seed,
                       drop_last=False, device=device)


def eval_loader(cfg: RunConfig, dataset: Dataset, batch_size: int, device: torch.device,
                *, limit_batches: int | None = None, evaluation: bool = True) -> DataLoader:
    """A fixed-order loader over ``dataset``.

    ``evaluation=True``: for ``prunelimit.train.evaluate``, which shards it itself under torchrun; its
    batches only feed means, so ``cfg.eval_batch_size`` may replace the training batch size (faster sweeps).
    ``evaluation=False`` (Hessian, epsilon): this rank's exact shard, indices rank::world with per-rank
    batch = batch/world, so batch i of every rank together is the one-process minibatch i (epsilon is a
    statistic of training minibatches). ``limit_batches`` keeps only the first batches' worth of samples
    (``use_full_data: false``)."""
    n = len(dataset)
    if limit_batches is not None:
        n = min(n, limit_batches * batch_size)
    from prunelimit.data import eval_batches

    pin = device.type == "cuda"
    if evaluation:
        return eval_batches(dataset, cfg.eval_batch_size or batch_size, indices=None if n == len(dataset) else range(n),
                            workers=cfg.data.workers, pin_memory=pin)
    return eval_batches(dataset, max(1, batch_size // dist.world_size()), workers=cfg.data.workers,
                        indices=range(dist.rank(), n, dist.world_size()), pin_memory=pin)


def evaluator(cfg: RunConfig, loader: DataLoader, device: torch.device, num_classes: int | None, *,
              with_l1: bool = True, loss_fn=None):
    """``model -> metrics`` with the dense training's criterion, or ``loss_fn`` when given (and the L1
    term, as the limit paper's sweep reports)."""
    from prunelimit.train import evaluate

    t = cfg.train

    def run(model: nn.Module) -> dict:
        return evaluate(model, loader, device=device, criterion=t.criterion, num_classes=num_classes,
                        l1_lambda=t.l1_lambda if with_l1 else 0.0, l1_params=t.l1_params, show_progress=False, loss_fn=loss_fn)

    return run


def group_name(param_name: str) -> str:
    """Layer group for summaries: the first module-path component (``layer1``, ``features``, ``fc``)."""
    head = param_name.split(".")[0]
    return head if head != param_name else "(root)"
