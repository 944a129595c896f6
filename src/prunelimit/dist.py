"""Distributed helpers: torchrun detection, rank-0-only I/O, all-reduce.

Launch with ``torchrun --nproc_per_node=N -m prunelimit ...``. torchrun sets RANK, WORLD_SIZE,
LOCAL_RANK; we initialise NCCL on GPU and gloo on CPU. Every helper is a no-op in a single process,
so library code calls them unconditionally.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as tdist
from prunelimit.errors import PrunelimitError


def is_distributed() -> bool:
    return tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1


def rank() -> int:
    return tdist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return tdist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        tdist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (no-op in one process) and return it."""
    if is_distributed():
        tdist.all_reduce(tensor, op=tdist.ReduceOp.SUM)
    return tensor


def broadcast(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    if is_distributed():
        tdist.broadcast(tensor, src=src)
    return tensor


def resolve_device(name: str | None = None) -> torch.device:
    """``None``/``"auto"`` -> this rank's GPU when CUDA is available, else CPU."""
    if name in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise PrunelimitError(f"device {name!r} is not a device name; use auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise PrunelimitError(f"device {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PrunelimitError(f"device {name!r} was asked for but CUDA is not available; use --device cpu")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return dev


def init_from_env(device: str | None = None) -> torch.device:
    """Initialise torch.distributed when launched by torchrun (WORLD_SIZE > 1); return the device.

    NCCL when the device is a GPU, gloo on CPU. Safe to call twice.
    """
    dev = resolve_device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not tdist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        tdist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return dev


def shutdown() -> None:
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()
