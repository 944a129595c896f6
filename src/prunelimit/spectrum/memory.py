"""How much memory the Hessian's cached gradient graphs may take, and how big one graph is.

A cached graph keeps every activation its double backward needs: ≈ 1 MiB per CIFAR image for
ResNet-18, so 50 000 training images cannot all be cached. The operator caches as many batches as fit
a **budget** and recomputes the rest in every HVP; the budget is

- given in bytes (an int, or text such as ``"6GiB"``, ``"512MB"``), or
- a fraction in (0, 1] of the memory available now (default ``DEFAULT_FRACTION``): on CPU the
  kernel's ``MemAvailable`` (RAM that can be had without swapping), on CUDA the free memory
  reported by ``torch.cuda.mem_get_info``. The Lanczos basis and the HVP temporaries need the rest.

A graph's size is measured, not guessed: ``GraphMeter`` counts the distinct storages autograd saves
for backward (saved-tensor hooks; parameters excluded, they exist anyway) plus the gradients built with
``create_graph``, and on CUDA takes the larger of that and the allocator's growth.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

import torch

from prunelimit.errors import PrunelimitError

DEFAULT_FRACTION = 0.5
_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def format_bytes(num: float) -> str:
    """1536 -> '1.5 KiB'."""
    value = float(num)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def parse_size(text: str) -> int:
    """'6GiB' -> 6442450944; '512 MB' -> 512000000; '1e9' -> 1000000000."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise PrunelimitError(f"memory budget {text!r} is not a size; write bytes or a number with a unit "
                              f"such as '6GiB', '512MiB', '8GB', or a fraction of the available memory like 0.5")
    return int(float(match.group(1)) * _UNITS[unit])


def available_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, what they are) of the memory a cache may use now on ``device``."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free), f"free memory on {device} (torch.cuda.mem_get_info)"
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "available RAM (MemAvailable)"
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "free RAM (sysconf)"
    except (ValueError, OSError, AttributeError):
        raise PrunelimitError("cannot read the available memory on this system; give the budget in bytes, "
                              "e.g. memory_budget='8GiB' (spectrum.memory_budget)") from None


@dataclass(frozen=True)
class MemoryBudget:
    bytes: int
    description: str   # where the number came from, for the line printed before caching

    def __str__(self) -> str:
        return f"{format_bytes(self.bytes)} ({self.description})"


def resolve_budget(budget: int | float | str | None, device: torch.device) -> MemoryBudget:
    """``None`` -> DEFAULT_FRACTION of the available memory; a float in (0, 1] -> that fraction; an int
    >= 1 or a size string -> that many bytes."""
    if isinstance(budget, MemoryBudget):
        return budget
    if budget is None or (isinstance(budget, float) and 0 < budget <= 1):
        fraction = DEFAULT_FRACTION if budget is None else float(budget)
        avail, what = available_memory(device)
        return MemoryBudget(int(avail * fraction), f"{fraction:g} x {format_bytes(avail)} {what}")
    if isinstance(budget, bool):
        raise PrunelimitError(f"memory_budget={budget!r} must be a size ('6GiB'), bytes, or a fraction in (0, 1]")
    if isinstance(budget, str):
        try:
            return resolve_budget(float(budget), device) if 0 < float(budget) <= 1 else \
                MemoryBudget(parse_size(budget), "set by memory_budget")
        except ValueError:
            return MemoryBudget(parse_size(budget), "set by memory_budget")
    if isinstance(budget, (int, float)) and budget >= 1 and math.isfinite(budget):
        return MemoryBudget(int(budget), "set by memory_budget")
    raise PrunelimitError(f"memory_budget={budget!r} must be a size ('6GiB'), bytes >= 1, or a fraction in (0, 1]")


# A bare number in a config is a fraction when in (0, 1], else bytes; as bytes, anything below this is a
# slip (`2` meaning 2 GiB, `1.5` meaning 150 %), not a budget: one digits sample's graph is ~2 KiB, a
# CIFAR one ~1 MiB, and a budget below one sample re-batches the Hessian into single samples.
MIN_BARE_BYTES = 2**20


def check_budget_setting(budget) -> None:
    """Refuse a config's bare number that is neither a fraction in (0, 1] nor a plausible byte count
    (>= 1 MiB); a size with a unit ('64KiB') says what it means and is taken as written."""
    if budget is None or isinstance(budget, (bool, MemoryBudget)):
        return
    try:
        value = float(budget)   # a plain number, or text of one ('2', '1.5', '1e3'); text with a unit raises
    except (TypeError, ValueError):
        return
    if not (0 < value <= 1) and value < MIN_BARE_BYTES:
        raise PrunelimitError(f"memory_budget={budget!r} is neither a fraction in (0, 1] of the available memory "
                              f"nor a byte count of at least 1 MiB; write a size with a unit such as '6GiB' or "
                              f"'512MiB', or a fraction such as 0.5")


def hessian_batch_size(per_sample_bytes: float, budget_bytes: int, samples: int) -> int:
    """Samples per Hessian batch: all of them in one batch when their graphs fit the budget (one
    cached graph is the fastest HVP: on the paper's FC net 4000 MNIST images took 1.5-1.9 s per HVP as
    one batch against 10-14 s in 32 batches of 128); otherwise a quarter of the budget per batch, so
    three batches are cached and the rest are recomputed in batches as large as possible."""
    if per_sample_bytes * samples <= budget_bytes:
        return max(1, samples)
    return max(1, min(samples, int(budget_bytes // (4 * max(per_sample_bytes, 1e-9)))))


class GraphMeter:
    """``with GraphMeter(params) as meter: <forward + grad(create_graph=True)>``; then ``meter.bytes``.

    Counts each storage autograd saves once (views share it), skipping the parameters' own storages."""

    def __init__(self, params, device: torch.device):
        self._skip = {p.untyped_storage().data_ptr() for p in params}
        self._seen: dict[int, int] = {}
        self._cuda = torch.device(device).type == "cuda"
        self.bytes = 0
        self.gradient_bytes = 0   # the first-order gradients: one set however many batches are cached

    def add(self, tensors) -> None:
        """Count tensors kept outside the saved-tensor mechanism (the first-order gradients)."""
        for t in tensors:
            if isinstance(t, torch.Tensor):
                self.gradient_bytes += t.numel() * t.element_size()
                self._pack(t)

    def _pack(self, t: torch.Tensor):
        try:
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            if ptr and ptr not in self._skip:
                self._seen[ptr] = max(self._seen.get(ptr, 0), storage.nbytes())
        except (RuntimeError, NotImplementedError):  # tensor subclasses without a plain storage
            self._seen[id(t)] = t.numel() * t.element_size()
        return t

    def __enter__(self):
        if self._cuda:
            self._start = torch.cuda.memory_allocated()
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)
        self.bytes = sum(self._seen.values())
        if self._cuda:
            self.bytes = max(self.bytes, torch.cuda.memory_allocated() - self._start)
        return False
