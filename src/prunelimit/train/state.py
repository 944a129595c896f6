"""Run state on disk: RNG states as plain tensors, the resume checkpoint, the best model.

Everything saved here loads with ``torch.load(weights_only=True)``: RNG states are converted from
numpy's / Python's tuples to tensors and ints, state_dicts carry no ``module.`` prefix.
"""
from __future__ import annotations

import random
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as tdist

from prunelimit.runs import paths
from prunelimit import dist
from prunelimit.runs.checkpoint import CheckpointError, load_checkpoint_file
from prunelimit.runs.io import atomic_torch_save
from prunelimit.train.config import TrainConfig
from prunelimit.errors import PrunelimitError

LAST_CHECKPOINT = paths.CHECKPOINT_LAST
BEST_CHECKPOINT = paths.MODEL_BEST
# Config keys that may change between a run and its resumption: they do not change the weights.
RESUMABLE_CHANGES = {"workers", "eval_every", "save_every_epoch"}


def capture_rng_state() -> dict[str, Any]:
    """This process's torch / CUDA / numpy / Python RNG states, as tensors and plain types."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        # numpy's MT19937 key is 624 uint32; int64 holds them exactly
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["state"].tolist()), p["gauss_next"]))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def gather_rng_states() -> list[dict[str, Any]]:
    """Every rank's RNG state, indexed by rank (a collective: call it on all ranks)."""
    mine = capture_rng_state()
    if not dist.is_distributed():
        return [mine]
    out: list[Any] = [None] * dist.world_size()
    tdist.all_gather_object(out, mine)
    return out


def save_last(run_dir: Path, state: dict[str, Any]) -> None:
    atomic_torch_save(state, run_dir / LAST_CHECKPOINT)


def save_best(run_dir: Path, state_dict: dict[str, torch.Tensor], epoch: int, top1: float) -> None:
    atomic_torch_save({"state_dict": state_dict, "epoch": epoch, "top1": top1}, run_dir / BEST_CHECKPOINT)


def cpu_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Detached CPU copies, so later training steps cannot change what is being saved."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def find_resume_checkpoint(run_dir: Path | None, resume: bool, device: torch.device) -> Path | None:
    """The last checkpoint when resuming and it exists on every rank; ``ValueError`` when only some see it."""
    if run_dir is None or not resume:
        return None
    path = run_dir / LAST_CHECKPOINT
    seen = torch.tensor([int(path.is_file())], dtype=torch.int64, device=device)
    dist.all_reduce_sum(seen)
    if int(seen) == 0:
        return None
    if int(seen) != dist.world_size():
        raise PrunelimitError(f"{str(path)!r} exists on {int(seen)} of {dist.world_size()} processes; run_dir must be on "
                         f"a filesystem shared by all ranks to resume, or pass resume=False")
    return path


def load_last(path: Path, cfg: TrainConfig) -> dict[str, Any]:
    """Read the resume checkpoint and check it belongs to a run with the same configuration."""
    state = load_checkpoint_file(path)
    needed = ("model", "optimizer", "scheduler", "scaler", "epoch", "best_top1", "history", "rng", "config")
    missing = [k for k in needed if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{str(path)!r} is not a prunelimit training checkpoint (missing {missing}); "
                              f"move it away or pass resume=False")
    saved, now = state["config"], asdict(cfg)
    changed = [k for k in now if k not in RESUMABLE_CHANGES and saved.get(k) != now[k]]
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in changed)
        raise PrunelimitError(f"cannot resume from {str(path)!r}: the train config changed ({diffs}); "
                         f"use the original settings, a new run_dir, or resume=False to start over")
    return state
