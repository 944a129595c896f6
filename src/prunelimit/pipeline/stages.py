"""One generic runner for every stage: skip what is finished, resume what is not, refuse a mismatch.

A stage is a small declaration (``Stage``): its name, the config keys its results depend on, the files
it reads (their checksums join the fingerprint, so other masks or other weights are never mistaken
for the ones a finished stage used), the values settled at run time (the sparsity actually used), and
whether its numbers depend on the number of processes. ``StageRunner.run(stage, compute, load)`` does
the rest in one place:

- a finished stage (``stages/<name>.json``) with the same fingerprint is loaded, not recomputed;
- a finished or started stage with a different fingerprint is refused, naming the keys that differ;
- otherwise the stage is marked started (so a resume under other settings is refused too), computed,
  and marked done.

``preflight`` runs the same checks for every stage a command will run before anything is written, so a
refused command leaves the run directory as it was.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from prunelimit.runs import paths
from prunelimit import dist
from prunelimit.config.build import to_dict
from prunelimit.config.schema import RunConfig

T = TypeVar("T")


@dataclass(frozen=True)
class Stage:
    name: str                                   # marker name: stages/<name>.json
    keys: tuple[str, ...]                       # config keys ("train", "limit.rule") the results depend on
    inputs: Mapping[str, Path] = field(default_factory=dict)   # files it reads: {role: path}, checksummed
    derived: Mapping[str, Any] = field(default_factory=dict)   # values settled at run time
    per_world_size: bool = False                # numbers depend on the process count (training, fine-tuning)
    redo_hint: str = ""                         # how to redo it, when "use another --out" does not apply


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


def config_slice(cfg: RunConfig, keys: tuple[str, ...]) -> dict:
    full = to_dict(cfg)
    out: dict = {}
    for key in keys:
        section, _, name = key.partition(".")
        value = full.get(section)
        if name:
            value = None if value is None else value.get(name)
        out[key] = value
    return out


class StageRunner:
    def __init__(self, cfg: RunConfig, run):
        self.cfg, self.run_dir = cfg, run

    def fingerprint(self, stage: Stage) -> dict:
        fp = config_slice(self.cfg, stage.keys)
        if stage.inputs:
            fp["inputs"] = {role: file_digest(path) for role, path in stage.inputs.items()}
        fp.update(stage.derived)
        if stage.per_world_size:
            fp["world_size"] = dist.world_size()
        return fp

    def check(self, stage: Stage) -> dict | None:
        """The finished record, or None; refuses a finished or started stage made with another fingerprint."""
        fp = self.fingerprint(stage)
        done = self.run_dir.stage_result(stage.name, fp, redo_hint=stage.redo_hint)
        if done is None:
            self.run_dir.check_started(stage.name, fp, redo_hint=stage.redo_hint)
        return done

    def start(self, stage: Stage) -> None:
        """Record that the stage is under way and with what, so a later resume is checked against it."""
        self.run_dir.mark_started(stage.name, self.fingerprint(stage))

    def done(self, stage: Stage, record: dict) -> None:
        self.run_dir.mark_done(stage.name, record, self.fingerprint(stage))

    def run(self, stage: Stage, compute: Callable[[], dict], load: Callable[[dict], T] | None = None) -> T | dict:
        """``load(record)`` of the finished stage, or ``compute()``'s record once marked done."""
        done = self.check(stage)
        if done is not None:
            return load(done) if load is not None else done
        self.start(stage)
        record = compute()
        self.done(stage, record)
        return load(record) if load is not None else record

    def preflight(self, stages: list[Stage]) -> None:
        for stage in stages:
            self.check(stage)


# ---- the stages of this project, declared in one place ----------------------------------------------
DENSE_KEYS = ("model", "data", "train", "seed", "stages.save_model")
SUBSET_KEYS = ("prune.include", "prune.exclude")


def dense_stage(cfg: RunConfig) -> Stage:
    """Train the dense model, or load model.checkpoint (whose bytes join the fingerprint)."""
    ckpt = cfg.model.checkpoint
    return Stage("dense", DENSE_KEYS, inputs={"checkpoint": Path(ckpt)} if ckpt else {}, per_world_size=not ckpt)


def sweep_stage(cfg: RunConfig) -> Stage:
    lc = cfg.limit
    keys = DENSE_KEYS + SUBSET_KEYS + ("limit.sweep_points", "limit.tail_points", "limit.adaptive",
                                       "limit.coarse_points", "limit.sweep_train", "limit.rule", "limit.delta",
                                       "limit.reading", "limit.loss")
    if lc.adaptive and lc.rule == "loss_increase":  # its search stops where epsilon says
        keys += ("limit.epsilon", "limit.epsilon_ddof")
    return Stage("sweep", keys)


def spectrum_stage(cfg: RunConfig) -> Stage:
    return Stage("spectrum", DENSE_KEYS + ("spectrum", "limit.loss"))  # the Hessian is of the declared loss


def rows_stage(cfg: RunConfig) -> Stage:
    return Stage("rows", DENSE_KEYS + SUBSET_KEYS + ("spectrum", "limit.loss"))


def limit_stage(cfg: RunConfig) -> Stage:
    return Stage("limit", DENSE_KEYS + SUBSET_KEYS + ("spectrum", "limit"))


def prune_stage(cfg: RunConfig, method: str, sparsity: float) -> Stage:
    ckpt = cfg.model.checkpoint
    return Stage(f"{method}_prune", DENSE_KEYS + ("prune", "gp.sparsity_from"),
                 inputs={"checkpoint": Path(ckpt)} if ckpt else {}, derived={"sparsity": sparsity})


def finetune_stage(cfg: RunConfig, method: str, masks: Path, weights: Path, method_dir: Path, run_path: Path) -> Stage:
    """Masked fine-tuning of ``weights`` under ``masks``: both files' bytes join the fingerprint, so other
    masks or weights are never taken for the ones a finished fine-tuning started from."""
    marker = run_path / "stages" / f"{method}_finetune.json"
    hint = (f"To fine-tune other masks, weights or settings, start a new run directory (prunelimit finetune "
            f"--model ... --checkpoint ... --masks ... --out NEW), or delete {str(marker)!r} and "
            f"{str(method_dir / 'checkpoint_last.pth.tar')!r} to redo this fine-tuning")
    # the prune settings reach it through the masks' and weights' bytes (an MT lowered to fit included)
    return Stage(f"{method}_finetune", DENSE_KEYS + ("finetune",),
                 inputs={"masks": masks, "weights": weights}, per_world_size=True, redo_hint=hint)


def planned_stages(cfg: RunConfig, run_path: Path, *, gp: bool = True) -> list[Stage]:
    """The stages a command will run whose fingerprints are known before it starts (the prune stages at a
    predicted sparsity are checked when that sparsity is known): ``open_run`` checks them all before it
    writes anything."""
    out = [dense_stage(cfg)]
    st = cfg.stages
    if cfg.pipeline in ("limit", "default"):
        out += [sweep_stage(cfg)] if st.sweep else []
        if st.spectrum or st.limit:
            out += [spectrum_stage(cfg)] + ([rows_stage(cfg)] if cfg.spectrum.important_eigs else [])
        out += [limit_stage(cfg)] if st.limit else []
    if gp and cfg.pipeline in ("gp", "default"):
        for method in cfg.gp.methods:
            if method == "gp_mt" and not cfg.prune.min_threshold:
                continue
            if cfg.gp.sparsity_from == "config":  # a predicted sparsity is checked once it is known
                out.append(prune_stage(cfg, method, cfg.prune.sparsity))
            if cfg.gp.finetune:
                d = run_path / method
                out.append(finetune_stage(cfg, method, masks=d / paths.MASK,
                                          weights=d / paths.PRUNED_MODEL, method_dir=d, run_path=run_path))
    return out
