"""The Lanczos basis in host memory, for accelerators without room for it.

The basis is probes × steps × dim numbers: 128 × 23.5 M × 4 B = 12 GB for ResNet-50, more than many GPUs
have free next to the cached graphs. With ``basis_device="cpu"`` (or ``"auto"`` when it does not fit)
the basis lives in host memory (pinned, so copies to the GPU run asynchronously) and only three rows
live on the accelerator: q_{j-1}, q_j and the HVP's output w, which the step needs for the three-term
recurrence. The re-orthogonalisation streams the basis to the device ONE ROW AT A TIME (two row
buffers: the next row is copied on a side stream while the current one is used), projecting it out
of w as it arrives (modified Gram-Schmidt: one transfer per row per pass, where classical
Gram-Schmidt would need two). Each finished row is copied back to host memory once.

``resolve_basis_device`` is the decision, kept apart from any device query so it can be tested with
given free/needed bytes.
"""
from __future__ import annotations

import logging
import warnings

import torch

from prunelimit.errors import PrunelimitError
from prunelimit.spectrum.memory import format_bytes
from prunelimit.spectrum.reductions import dot64

log = logging.getLogger(__name__)

BASIS_DEVICES = ("auto", "same", "cpu")
DEVICE_SHARE = 0.8   # auto keeps the basis on the accelerator only within this share of its free memory:
                     # the rest is left to the HVP's temporaries (one batch's activations) and working rows


def resolve_basis_device(setting: str, op_device: torch.device | str, basis_bytes: int,
                         free_bytes: int | None = None) -> tuple[torch.device, str]:
    """``(device for the Lanczos basis, why)``.

    ``same``: the operator's device. ``cpu``: host memory. ``auto``: host memory when the operator is on
    an accelerator whose free memory (``free_bytes``; default ``torch.cuda.mem_get_info``) cannot hold
    ``basis_bytes`` within ``DEVICE_SHARE`` of it, else the operator's device."""
    if setting not in BASIS_DEVICES:
        raise PrunelimitError(f"basis_device={setting!r} is not one of {BASIS_DEVICES}")
    op_device = torch.device(op_device)
    if op_device.type == "cpu":
        return op_device, "in host memory (the operator is on the CPU)"
    if setting == "same":
        return op_device, f"on {op_device} (basis_device=same)"
    if setting == "cpu":
        return torch.device("cpu"), f"in host memory (basis_device=cpu); rows are streamed to {op_device}"
    if free_bytes is None:
        if op_device.type != "cuda":
            return op_device, f"on {op_device} (auto: no free-memory query for {op_device.type})"
        free_bytes, _ = torch.cuda.mem_get_info(op_device)
    room = int(DEVICE_SHARE * free_bytes)
    if basis_bytes <= room:
        return op_device, (f"on {op_device} (auto: {format_bytes(basis_bytes)} fits {DEVICE_SHARE:g} x "
                           f"{format_bytes(free_bytes)} free)")
    return torch.device("cpu"), (f"in host memory (auto: {format_bytes(basis_bytes)} exceeds {DEVICE_SHARE:g} x "
                                 f"{format_bytes(free_bytes)} free on {op_device}); rows are streamed to it")


def allocate_host(shape: tuple[int, ...], dtype: torch.dtype, pin: bool) -> torch.Tensor:
    """An empty host tensor, page-locked when ``pin`` (asynchronous copies to the GPU); pinning many GB can
    fail on a system that limits locked memory, and then the basis is ordinary host memory (said once)."""
    if pin:
        try:
            return torch.empty(shape, dtype=dtype, pin_memory=True)
        except RuntimeError as err:
            warnings.warn(f"Lanczos basis: cannot pin {format_bytes(torch.Size(shape).numel() * dtype.itemsize)} "
                          f"of host memory ({err}); using pageable memory (slower copies)", stacklevel=3)
    return torch.empty(shape, dtype=dtype)


class RowStreamer:
    """Projects host-memory basis rows out of a device vector, one row on the device at a time."""

    def __init__(self, dim: int, dtype: torch.dtype, device: torch.device):
        self.device = torch.device(device)
        self.buffers = torch.empty(2, dim, dtype=dtype, device=self.device)   # double buffer
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            self.copy_stream = torch.cuda.Stream(self.device)
            self.ready = [torch.cuda.Event(), torch.cuda.Event()]   # row copied into the slot
            self.free = [torch.cuda.Event(), torch.cuda.Event()]    # compute done with the slot

    def _fetch(self, rows: torch.Tensor, i: int) -> None:
        slot = i % 2
        if not self.cuda:
            self.buffers[slot].copy_(rows[i])
            return
        with torch.cuda.stream(self.copy_stream):
            self.copy_stream.wait_event(self.free[slot])   # no-op before the slot's first use
            self.buffers[slot].copy_(rows[i], non_blocking=True)
            self.ready[slot].record(self.copy_stream)

    def project_out(self, rows: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """w -= Σ_i c_i q_i in place with c_i = q_i·w taken after the earlier rows were removed (modified
        Gram-Schmidt), for the host rows q_i of ``rows`` (m, dim); returns c (m,) float64 on w's device.
        The device never holds more than two rows."""
        m = rows.shape[0]
        coef = torch.empty(m, dtype=torch.float64, device=self.device)
        if m == 0:
            return coef
        compute = torch.cuda.current_stream(self.device) if self.cuda else None
        self._fetch(rows, 0)
        for i in range(m):
            slot = i % 2
            if i + 1 < m:
                self._fetch(rows, i + 1)
            if self.cuda:
                compute.wait_event(self.ready[slot])
            q = self.buffers[slot]
            c = dot64(q[None], w[None])                   # (1,) float64, stays on the device (no sync)
            coef[i:i + 1] = c
            w.addcmul_(q, c.to(w.dtype), value=-1)        # w -= c q without a full-length temporary
            if self.cuda:
                self.free[slot].record(compute)
        return coef


def orthogonalize_streamed(streamer: RowStreamer, rows: torch.Tensor, w: torch.Tensor,
                           ) -> tuple[float, float, int]:
    """Re-orthogonalise the device vector w (dim,) against host rows (m, dim), a second pass only when the
    first removed a large part of w (the DGKS "twice is enough" test, as the in-memory run does).
    Returns (‖w‖² afterwards, total coefficient along the last row, passes beyond the first)."""
    last, extra = 0.0, 0
    for attempt in range(2):
        c = streamer.project_out(rows, w)
        last += float(c[-1])
        norm2 = float(dot64(w[None], w[None])[0])
        if attempt or norm2 >= 0.5 * (norm2 + float(c.square().sum())):
            break
        extra += 1
    return norm2, last, extra


def wants_host_basis(setting: str, op_device: torch.device | str, basis_bytes: int) -> bool:
    """Whether a Lanczos run on ``op_device`` keeps its basis in host memory (the choice is logged)."""
    device, why = resolve_basis_device(setting, op_device, basis_bytes)
    if setting != "same":
        log.info(f"Lanczos basis: {why}")
    return device.type == "cpu" and torch.device(op_device).type != "cpu"
