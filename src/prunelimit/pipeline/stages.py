"""One generic runner for every stage: skip what is finished, resume what is not, refuse a mismatch.

A stage is a small unit (``StageUnit``): its declaration (``Stage``: the name, the config keys its numbers
depend on, the files it reads (their checksums join the fingerprint, so other masks or other weights are
never mistaken for the ones a finished stage used), the values settled at run time (the sparsity actually
used), and whether its numbers depend on the number of processes), ``run`` (compute its typed result) and
``load`` (rebuild that result from the files and marker of a finished run). ``StageRunner.drive(unit)``
does the rest in one place:

- a finished stage (``stages/<name>.json``) with the same fingerprint is loaded, not recomputed;
- a finished or started stage with a different fingerprint is refused, naming the keys that differ;
- otherwise the stage is marked started (so a resume under other settings is refused too), computed,
  and marked done.

``preflight`` runs the same checks for every stage a command will run before anything is written, so a
refused command leaves the run directory as it was.
"""
from __future__ import annotations

import dataclasses

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from prunelimit.runs import paths
from prunelimit import dist
from prunelimit.config.build import to_dict
from prunelimit.config.schema import RunConfig
from prunelimit.errors import PrunelimitError

T = TypeVar("T")


@dataclass(frozen=True)
class Stage:
    name: str                                   # marker name: stages/<name>.json
    keys: tuple[str, ...]                       # config keys ("train", "limit.rule") the results depend on
    inputs: Mapping[str, Path] = field(default_factory=dict)   # files it reads: {role: path}, checksummed
    derived: Mapping[str, Any] = field(default_factory=dict)   # values settled at run time
    per_world_size: bool = False                # numbers depend on the process count (training, fine-tuning)
    redo_hint: str = ""                         # how to redo it, when "use another --out" does not apply
    ignore: tuple[str, ...] = ()                # keys inside ``keys``' sections that change speed, not numbers


class StageUnit:
    """One stage of a pipeline. A subclass holds what the stage works on (model, data, earlier results)
    and says:

    - ``stage()``: its declaration (name and fingerprint);
    - ``run()``: compute, write its files, return its typed result (a ``JsonResult``);
    - ``load(record)``: that result rebuilt from its finished marker ``record`` and its files; None when
      they no longer hold it (weights not kept, a table of an older layout), so it is computed again;
    - ``unmarked()`` (optional): a result that is not this stage's product and is returned without any
      marker (the ``prune`` command's random initial weights), else None;
    - ``marker(result)`` (optional): the marker's record, by default ``result.to_json()``;
    - ``before_start()`` (optional): checks that need the stage's inputs (a size known only once the
      model is built) and refuse it before its started marker is written, so fixing the setting and
      rerunning is not refused as a resume under other settings.

    ``StageRunner.drive`` decides which of them runs."""

    def stage(self) -> Stage:
        raise NotImplementedError

    def run(self):
        raise NotImplementedError

    def load(self, record: dict):
        raise NotImplementedError

    def unmarked(self):
        return None

    def marker(self, result) -> dict:
        return result.to_json()

    def before_start(self) -> None:
        return None


_DIGESTS: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, per process


def file_digest(path: str | os.PathLike) -> str | None:
    """sha256 of a file's bytes (None when it does not exist), cached per process by size and mtime."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        return None
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


# Keys that change no number any stage computes, left out of every fingerprint: how often training
# evaluates and saves (the trained weights are the same; train/state.py resumes across them too).
# stages.save_model is in no fingerprint either: it decides whether the weights are kept on disk, and a
# dense stage whose weights were not kept is trained again (DenseStage.load).
NUMBER_FREE_KEYS = ("train.eval_every", "train.save_every_epoch")


def config_slice(cfg: RunConfig, keys: tuple[str, ...], ignore: tuple[str, ...] = ()) -> dict:
    """``{key: value}`` for each of ``keys``; a whole section without the ``ignore``d keys inside it (and
    without ``NUMBER_FREE_KEYS``)."""
    ignore = tuple(ignore) + NUMBER_FREE_KEYS
    full = to_dict(cfg)
    out: dict = {}
    for key in keys:
        section, _, name = key.partition(".")
        value = full.get(section)
        if name:
            value = None if value is None else value.get(name)
        elif isinstance(value, dict):
            value = {k: v for k, v in value.items() if f"{section}.{k}" not in ignore}
        out[key] = value
    return out


def default_slice(cfg: RunConfig, keys: tuple[str, ...]) -> dict:
    """``config_slice``'s shape with every value at its schema default: a marker written before a key
    existed (``spectrum.matrix``) ran as that default, so it still resumes when the key is left at it."""
    defaults = {}
    for key in keys:
        section, _, name = key.partition(".")
        current = getattr(cfg, section, None)
        if not dataclasses.is_dataclass(current):
            continue
        values = to_dict(type(current)())
        defaults[key] = values.get(name) if name else values
    return defaults


def _file_names(stage: Stage) -> dict[str, str] | None:
    """{role: path} of the stage's input files, kept beside their checksums so a refusal names them."""
    return {role: str(path) for role, path in stage.inputs.items()} or None


class StageRunner:
    def __init__(self, cfg: RunConfig, run):
        self.cfg, self.run_dir = cfg, run
        # per stage this command drove: (seconds the stage took when it was computed, in this command or
        # the earlier one its marker records (None: an older marker kept no time), reused, seconds spent
        # here loading it); the summary reports the work's time, not the reload's
        self.timings: dict[str, tuple[float | None, bool, float]] = {}
        self.started_any = False

    def fingerprint(self, stage: Stage) -> dict:
        fp = config_slice(self.cfg, stage.keys, stage.ignore)
        if stage.inputs:
            fp["inputs"] = {role: file_digest(path) for role, path in stage.inputs.items()}
        fp.update(stage.derived)
        if stage.per_world_size:
            fp["world_size"] = dist.world_size()
        return fp

    def check(self, stage: Stage) -> dict | None:
        """The finished record, or None; refuses a finished or started stage made with another fingerprint."""
        fp = self.fingerprint(stage)
        defaults = default_slice(self.cfg, stage.keys)
        files = _file_names(stage)
        done = self.run_dir.stage_result(stage.name, fp, redo_hint=stage.redo_hint, defaults=defaults, files=files)
        if done is None:
            self.run_dir.check_started(stage.name, fp, redo_hint=stage.redo_hint, defaults=defaults, files=files)
        return done

    def start(self, stage: Stage) -> None:
        """Record that the stage is under way and with what, so a later resume is checked against it."""
        self.started_any = True   # this command now works under its settings (open_run keeps its config.yaml)
        self.run_dir.mark_started(stage.name, self.fingerprint(stage), files=_file_names(stage))

    def done(self, stage: Stage, record: dict) -> None:
        self.run_dir.mark_done(stage.name, record, self.fingerprint(stage), files=_file_names(stage))

    def run(self, stage: Stage, compute: Callable[[], dict], load: Callable[[dict], T] | None = None) -> T | dict:
        """``load(record)`` of the finished stage, or ``compute()``'s record once marked done."""
        done = self.check(stage)
        if done is not None:
            return load(done) if load is not None else done
        self.start(stage)
        record = compute()
        self.done(stage, record)
        return load(record) if load is not None else record

    def drive(self, unit: StageUnit):
        """The unit's typed result: loaded when it finished earlier with this fingerprint (refused when with
        another), else computed between a started and a done marker."""
        began = time.perf_counter()
        stage = unit.stage()
        done = self.check(stage)
        loaded = unit.load(done) if done is not None else None
        if loaded is not None:
            self.timings[stage.name] = (done.get("_seconds"), True, time.perf_counter() - began)
            return loaded
        untracked = unit.unmarked()
        if untracked is not None:
            return untracked
        unit.before_start()
        self.start(stage)
        result = unit.run()
        seconds = round(time.perf_counter() - began, 3)
        self.done(stage, {**unit.marker(result), "_seconds": seconds})   # kept for the summary of a rerun
        self.timings[stage.name] = (seconds, False, seconds)
        return result

    def work_seconds(self, wall: float, before: Mapping[str, float] | None = None
                     ) -> tuple[float, dict[str, float], tuple[str, ...]]:
        """(the run's time, seconds per stage, the stages reused): ``wall`` (this command's) with each
        reused stage's reload replaced by the seconds it took when it was computed; ``before``: times of
        steps that are no stage (loading the data) to list first."""
        per_stage = dict(before or {})
        total, reused = wall, []
        for name, (seconds, was_reused, spent) in self.timings.items():
            if was_reused:
                reused.append(name)
                if seconds is None:   # an older marker: its time is unknown, only the reload counts
                    continue
                total += seconds - spent
            per_stage[name] = round(seconds, 1)
        return round(total, 1), per_stage, tuple(reused)

    def preflight(self, stages: list[Stage]) -> None:
        for stage in stages:
            self.check(stage)


# ---- the stages of this project, declared in one place ----------------------------------------------
DENSE_KEYS = ("model", "data", "train", "seed")
SUBSET_KEYS = ("prune.include", "prune.exclude")


def dense_stage(cfg: RunConfig) -> Stage:
    """Train the dense model, or load model.checkpoint (whose bytes join the fingerprint)."""
    ckpt = cfg.model.checkpoint
    return Stage("dense", DENSE_KEYS, inputs={"checkpoint": Path(ckpt)} if ckpt else {}, per_world_size=not ckpt)


def sweep_stage(cfg: RunConfig) -> Stage:
    """The grid sweep depends on its grid only; the adaptive search also on the rule it bisects (and on
    coarse_points, delta, reading, loss, epsilon), so changing those redoes only the limit stage when
    ``limit.adaptive`` is false."""
    lc = cfg.limit
    keys = DENSE_KEYS + SUBSET_KEYS + ("limit.sweep_points", "limit.tail_points", "limit.adaptive",
                                       "limit.sweep_train")
    if lc.adaptive:   # the search evaluates where the rule says
        keys += ("limit.coarse_points", "limit.rule", "limit.delta", "limit.reading", "limit.loss")
        if lc.rule == "loss_increase":  # its search stops where epsilon says
            keys += ("limit.epsilon", "limit.epsilon_ddof")
    return Stage("sweep", keys)


# Spectrum keys that change the speed or memory of the Hessian products, not the numbers (up to the
# order of a floating-point sum: hessian_batch_size and memory_budget regroup the same samples,
# batched_probes sums each probe's double backward in a vmap'd instead of a looped pass), so changing one
# resumes a run instead of refusing it.
SPEED_ONLY_KEYS = ("spectrum.cache_graph", "spectrum.memory_budget", "spectrum.hessian_batch_size",
                   "spectrum.lean_graphs", "spectrum.checkpoint_every", "spectrum.basis_device",
                   "spectrum.batched_probes")
ROWS_ONLY_KEYS = ("spectrum.important_eigs", "spectrum.row_quantiles", "spectrum.row_threshold")
PLOT_ONLY_KEYS = ("spectrum.density_points", "spectrum.density_sigma")   # density.csv and its figure
SLQ_ONLY_KEYS = ("spectrum.lanczos_iter", "spectrum.lanczos_num", "spectrum.top_k", "spectrum.trace_samples",
                 "spectrum.seed", "spectrum.reorthogonalize", "spectrum.density_kernel") + PLOT_ONLY_KEYS


def spectrum_stage(cfg: RunConfig) -> Stage:
    """The Hessian of the declared loss; the width's kernel (density_kernel) is the limit stage's."""
    return Stage("spectrum", DENSE_KEYS + ("spectrum", "limit.loss"),
                 ignore=SPEED_ONLY_KEYS + ROWS_ONLY_KEYS + PRUNED_ONLY_KEYS + ("spectrum.density_kernel",))


PRUNED_ONLY_KEYS = ("spectrum.masks",)   # the pruned-subnetwork spectrum's mask file (its bytes are its input)


def pruned_spectrum_stage(cfg: RunConfig) -> Stage:
    """The same spectrum of the Hessian restricted to the weights ``spectrum.masks`` keeps (at the model's
    weights with the pruned ones zeroed); the mask file's bytes join the fingerprint."""
    masks = Path(cfg.spectrum.masks)
    return Stage("spectrum_pruned", DENSE_KEYS + ("spectrum", "limit.loss"), inputs={"masks": masks},
                 ignore=SPEED_ONLY_KEYS + ROWS_ONLY_KEYS + PRUNED_ONLY_KEYS + ("spectrum.density_kernel",),
                 redo_hint="To take the spectrum under other masks, use another --out, or delete the marker "
                           "stages/spectrum_pruned.json of this run")


def rows_stage(cfg: RunConfig) -> Stage:
    """Rows of the same Hessian: none of the SLQ settings change them."""
    return Stage("rows", DENSE_KEYS + SUBSET_KEYS + ("spectrum", "limit.loss"),
                 ignore=SPEED_ONLY_KEYS + SLQ_ONLY_KEYS + PRUNED_ONLY_KEYS)


def limit_stage(cfg: RunConfig) -> Stage:
    return Stage("limit", DENSE_KEYS + SUBSET_KEYS + ("spectrum", "limit"),
                 ignore=SPEED_ONLY_KEYS + PLOT_ONLY_KEYS + PRUNED_ONLY_KEYS)


def prune_stage(cfg: RunConfig, method: str, sparsity: float) -> Stage:
    ckpt = cfg.model.checkpoint
    return Stage(f"{method}_prune", DENSE_KEYS + ("prune", "gp.sparsity_from"),
                 inputs={"checkpoint": Path(ckpt)} if ckpt else {}, derived={"sparsity": sparsity})


def finetune_stage(cfg: RunConfig, method: str, masks: Path, weights: Path, method_dir: Path, run_path: Path,
                   command: str = "finetune") -> Stage:
    """Masked fine-tuning of ``weights`` under ``masks``: both files' bytes join the fingerprint, so other
    masks or weights are never taken for the ones a finished fine-tuning started from. ``command``: the
    command that runs it ("run" or "finetune"), for the hint on how to start over."""
    marker = run_path / paths.STAGES / f"{method}_finetune.json"
    new_dir = ("start a new run directory (prunelimit finetune --model ... --checkpoint ... --masks ... "
               "--out NEW)" if command == "finetune" else f"run `prunelimit {command}` with another --out NEW")
    hint = (f"To fine-tune other masks, weights or settings, {new_dir}, or delete {str(marker)!r} and "
            f"{str(method_dir / paths.CHECKPOINT_LAST)!r} to redo this fine-tuning")
    # the prune settings reach it through the masks' and weights' bytes (an MT lowered to fit included)
    return Stage(f"{method}_finetune", DENSE_KEYS + ("finetune",),
                 inputs={"masks": masks, "weights": weights}, per_world_size=True, redo_hint=hint)


_PLANNERS: list[Callable[..., list[Stage]]] = []


def plan_stages(planner: Callable[..., list[Stage]]) -> Callable[..., list[Stage]]:
    """Register ``planner(cfg, run_path, *, gp, command) -> [Stage, ...]``: declarations of stages a command
    will run. ``planned_stages`` asks every planner, in registration order."""
    _PLANNERS.append(planner)
    return planner


def planned_stages(cfg: RunConfig, run_path: Path, *, gp: bool = True, command: str = "run") -> list[Stage]:
    """The stages a command will run whose fingerprints are known before it starts (the prune stages at a
    predicted sparsity are checked when that sparsity is known): ``open_run`` checks them all before it
    writes anything. ``gp=False``: without the GP stages (``prune`` adds its own)."""
    return [stage for planner in _PLANNERS for stage in planner(cfg, run_path, gp=gp, command=command)]


@plan_stages
def _dense_planned(cfg: RunConfig, run_path: Path, *, gp: bool, command: str) -> list[Stage]:
    return [dense_stage(cfg)]


@plan_stages
def _limit_planned(cfg: RunConfig, run_path: Path, *, gp: bool, command: str) -> list[Stage]:
    st, out = cfg.stages, []
    if cfg.pipeline in ("limit", "default"):
        out += [sweep_stage(cfg)] if st.sweep else []
        if st.spectrum or st.limit:
            out += [spectrum_stage(cfg)] + ([rows_stage(cfg)] if cfg.spectrum.important_eigs else [])
        out += [limit_stage(cfg)] if st.limit else []
    return out


@plan_stages
def _pruned_spectrum_planned(cfg: RunConfig, run_path: Path, *, gp: bool, command: str) -> list[Stage]:
    """With ``spectrum.masks``, the spectrum of the pruned subnetwork follows the dense one."""
    runs = cfg.pipeline in ("limit", "default") and cfg.stages.spectrum and cfg.spectrum.masks
    if runs and not Path(cfg.spectrum.masks).is_file():   # said before any stage runs, not after training
        raise PrunelimitError(f"spectrum.masks {cfg.spectrum.masks!r} does not exist or is not a file; give the path "
                              f"of a mask file such as RUN/gp/weight_mask.safetensors")
    return [pruned_spectrum_stage(cfg)] if runs else []


@plan_stages
def _gp_planned(cfg: RunConfig, run_path: Path, *, gp: bool, command: str) -> list[Stage]:
    out: list[Stage] = []
    if not gp or cfg.pipeline not in ("gp", "default"):
        return out
    for method in cfg.gp.methods:
        if method == "gp_mt" and not cfg.prune.min_threshold:
            continue
        if cfg.gp.sparsity_from == "config":  # a predicted sparsity is checked once it is known
            out.append(prune_stage(cfg, method, cfg.prune.sparsity))
        if cfg.gp.finetune:
            d = run_path / method
            out.append(finetune_stage(cfg, method, masks=d / paths.MASK, weights=d / paths.PRUNED_MODEL,
                                      method_dir=d, run_path=run_path, command=command))
    return out
