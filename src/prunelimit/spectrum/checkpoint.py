"""Resumable Lanczos: the state of a run saved every few steps, so a killed spectrum continues where
it stopped and ends with the same Ritz values, bit for bit, as an uninterrupted run.

A directory holds
  basis.bin   the Lanczos vectors, raw bytes in step order, rows (probes, dim) APPENDED as they are
              made: a row never changes once written, so a save writes only the rows since the last
              one (a 12 GB ResNet-50 basis is never rewritten; each save adds ``every`` rows)
  state.json  everything else, small, written atomically after the rows it counts: steps done,
              alpha/beta (float64, exact through JSON's shortest round-trip repr), residuals, the
              restart generator's state, the probes' lengths/restarts, and what the run was of
              (dimension, probes, steps, dtype, seed, re-orthogonalisation, the operator's sample count
              and loss, the start vectors' first row) so a state from different weights or data is
              refused, not resumed.
Bytes in basis.bin past the rows state.json counts (a crash between the two writes) are cut off
before the next append. Nothing is unpickled. Only the main process writes; all read.
"""
from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import logging

import torch

from prunelimit import dist
from prunelimit.errors import PrunelimitError
from prunelimit.runs.io import write_json

log = logging.getLogger(__name__)
STATE, BASIS = "state.json", "basis.bin"
VERSION = 1


def operator_signature(op) -> dict:
    """What identifies the operator's matrix cheaply: its size, sample count and loss at the weights, and
    which matrix of them it is (the Gauss-Newton matrix shares all three with the Hessian)."""
    sig = {"dim": int(op.dim),
           "num_samples": getattr(op, "num_samples", None), "loss": getattr(op, "loss", None)}
    curvature = getattr(op, "curvature", "hessian")
    if curvature != "hessian":   # absent for the Hessian, so states saved before this key existed still match
        sig["curvature"] = curvature
    return sig


class LanczosCheckpoint:
    """``LanczosCheckpoint(directory, every=8)``: pass it to a Lanczos run (``checkpoint=``)."""

    def __init__(self, directory: str | os.PathLike, every: int = 8, *, restart_on_mismatch: bool = False):
        """``restart_on_mismatch``: a state saved by a different run is deleted and the run starts afresh
        (for a directory the caller owns, such as a pipeline stage's); otherwise it is an error."""
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise PrunelimitError(f"checkpoint every={every!r} must be a positive integer (steps between saves)")
        self.dir, self.every, self.restart_on_mismatch = Path(directory), every, restart_on_mismatch
        self.rows_on_disk = 0
        self.resumed_from = 0     # steps found on disk when the run started (0: a fresh run)

    @classmethod
    def of(cls, checkpoint: LanczosCheckpoint | str | os.PathLike | None) -> LanczosCheckpoint | None:
        """A checkpoint from a directory path (saving every 8 steps), or the one given, or None."""
        if checkpoint is None or isinstance(checkpoint, LanczosCheckpoint):
            return checkpoint
        return cls(checkpoint)

    def child(self, name: str) -> LanczosCheckpoint:
        """The same settings in a subdirectory (one per group of SLQ probes)."""
        return LanczosCheckpoint(self.dir / name, self.every, restart_on_mismatch=self.restart_on_mismatch)

    # ------------------------------------------------------------------ reading
    def read_state(self) -> dict | None:
        path = self.dir / STATE
        if not path.exists():
            return None
        with open(path) as fh:
            return json.load(fh)

    def _meta(self, run) -> dict:
        return {"version": VERSION, "dim": run.dim, "probes": run.P, "capacity": run.capacity,
                "dtype": str(run.basis.dtype), "seed": run.seed, "reorthogonalize": run.reorth,
                "operator": operator_signature(run.op),
                "start": _encode_floats(run.basis[0, :, :8].double().flatten().tolist())}

    def restore(self, run) -> bool:
        """Load a matching saved state into ``run`` (basis rows, coefficients, RNG); False if none."""
        state = self.read_state()
        if state is None:
            return False
        if state.get("meta") != self._meta(run) and self.restart_on_mismatch:
            log.info(f"Lanczos state in {self.dir} is from a different run (weights, data or settings); "
                     "starting afresh")
            self.clear()
            return False
        if state.get("meta") != self._meta(run):
            raise PrunelimitError(f"the Lanczos state in {str(self.dir)!r} belongs to a different run (other "
                             "weights, data, seed or settings); delete that directory to start afresh")
        rows = int(state["rows"])
        row_bytes = run.P * run.dim * run.basis.element_size()
        with open(self.dir / BASIS, "rb") as fh:
            data = fh.read(rows * row_bytes)
        if len(data) != rows * row_bytes:
            raise PrunelimitError(f"{str(self.dir / BASIS)!r} holds {len(data)} bytes, fewer than the {rows} rows "
                             f"its state.json counts; the checkpoint is damaged — delete {str(self.dir)!r}")
        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        run.basis[:rows].copy_(raw.view(run.basis.dtype).view(rows, run.P, run.dim))
        run.j = int(state["j"])
        run.alpha.copy_(torch.tensor(_decode_floats(state["alpha"]), dtype=torch.float64).view_as(run.alpha))
        run.beta.copy_(torch.tensor(_decode_floats(state["beta"]), dtype=torch.float64).view_as(run.beta))
        run.residual = torch.tensor(_decode_floats(state["residual"]), dtype=torch.float64)
        run.scale = torch.tensor(_decode_floats(state["scale"]), dtype=torch.float64)
        run.lengths, run.active = list(state["lengths"]), list(state["active"])
        run.restarts = [list(r) for r in state["restarts"]]
        run.second_passes = int(state["second_passes"])
        run.gen.set_state(torch.frombuffer(bytearray(base64.b64decode(state["generator"])), dtype=torch.uint8))
        self.rows_on_disk, self.resumed_from = rows, run.j
        return True

    # ------------------------------------------------------------------ writing
    def due(self, run) -> bool:
        return run.j % self.every == 0 or run.j >= run.capacity or not any(run.active)

    def save(self, run) -> None:
        """Append the basis rows made since the last save, then replace state.json (main process only)."""
        if not dist.is_main():
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        rows = min(run.j + 1, run.capacity)      # rows 0..j: row j is the next step's start vector
        path = self.dir / BASIS
        row_bytes = run.P * run.dim * run.basis.element_size()
        with open(path, "ab") as fh:
            fh.truncate(self.rows_on_disk * row_bytes)   # drop rows a crash left uncounted
            fh.seek(self.rows_on_disk * row_bytes)
            for r in range(self.rows_on_disk, rows):
                fh.write(run.basis[r].contiguous().cpu().view(torch.uint8).numpy().tobytes())
            fh.flush()
            os.fsync(fh.fileno())
        write_json(self.dir / STATE, {
            "meta": self._meta(run), "rows": rows, "j": run.j,
            "alpha": _encode_floats(run.alpha.flatten().tolist()), "beta": _encode_floats(run.beta.flatten().tolist()),
            "residual": _encode_floats(run.residual.tolist()), "scale": _encode_floats(run.scale.tolist()),
            "lengths": run.lengths, "active": run.active, "restarts": run.restarts,
            "second_passes": run.second_passes,
            "generator": base64.b64encode(run.gen.get_state().numpy().tobytes()).decode("ascii")})
        self.rows_on_disk = rows

    def clear(self) -> None:
        """Remove the saved state (after the result it leads to is safely written)."""
        if dist.is_main():
            for name in (BASIS, STATE):
                (self.dir / name).unlink(missing_ok=True)
            try:
                self.dir.rmdir()
            except OSError:
                pass


def _encode_floats(values: list[float]) -> list:
    # float.hex keeps every bit (JSON's repr would too, but nan/inf are not JSON)
    return [float(v).hex() for v in values]


def _decode_floats(values: list) -> list[float]:
    return [float.fromhex(v) for v in values]
