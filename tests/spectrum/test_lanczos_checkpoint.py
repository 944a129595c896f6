"""Resumable Lanczos: interrupted mid-run and resumed, the Ritz values equal an uninterrupted run's
bit for bit; the basis file is only appended; foreign or damaged states are refused."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from prunelimit.errors import PrunelimitError
from prunelimit.spectrum import HessianOperator, MatrixOperator, slq_spectrum, top_eigenvalues
from prunelimit.spectrum.checkpoint import BASIS, STATE, LanczosCheckpoint

torch.set_num_threads(1)


class Interrupted(Exception):
    pass


class StopAfter:
    """Wraps an operator and raises ``Interrupted`` on HVP number ``limit + 1`` (a kill mid-Lanczos)."""

    def __init__(self, op, limit: int):
        self.op, self.limit, self.count = op, limit, 0
        self.dim, self.dtype, self.device = op.dim, op.dtype, op.device
        for name in ("num_samples", "loss"):
            if hasattr(op, name):
                setattr(self, name, getattr(op, name))

    def matmat(self, V, out=None):
        self.count += V.shape[0]
        if self.count > self.limit:
            raise Interrupted
        return self.op.matmat(V, out=out)


def small_hessian_operator():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 4))
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(20, 6, generator=gen), torch.randint(0, 4, (20,), generator=gen)) for _ in range(2)]
    return HessianOperator(net, nn.functional.cross_entropy, batches)


def test_slq_interrupted_and_resumed_gives_identical_ritz_values(tmp_path):
    op = small_hessian_operator()
    reference = slq_spectrum(op, 20, 2, seed=3, probe_batch=1)
    ckpt = LanczosCheckpoint(tmp_path / "lanczos", every=3)
    with pytest.raises(Interrupted):                     # killed during step 11 of the first probe
        slq_spectrum(StopAfter(op, 10), 20, 2, seed=3, probe_batch=1, checkpoint=ckpt)
    state = LanczosCheckpoint(tmp_path / "lanczos" / "probes_0").read_state()
    assert state["j"] == 9 and state["rows"] == 10      # saved at steps 3, 6, 9
    counted = StopAfter(op, 10**9)
    resumed = slq_spectrum(counted, 20, 2, seed=3, probe_batch=1,
                           checkpoint=LanczosCheckpoint(tmp_path / "lanczos", every=3))
    assert counted.count == (20 - 9) + 20                # the 9 saved steps are not redone
    assert torch.equal(resumed[0], reference[0]) and torch.equal(resumed[1], reference[1])


def test_top_eigenvalues_resume_identically(tmp_path):
    op = small_hessian_operator()
    ref_vals, ref_vecs = top_eigenvalues(op, 3, max_iter=40, tol=1e-6, seed=2)
    with pytest.raises(Interrupted):
        top_eigenvalues(StopAfter(op, 13), 3, max_iter=40, tol=1e-6, seed=2,
                        checkpoint=LanczosCheckpoint(tmp_path, every=4))
    vals, vecs = top_eigenvalues(op, 3, max_iter=40, tol=1e-6, seed=2, checkpoint=LanczosCheckpoint(tmp_path, every=4))
    assert torch.equal(vals, ref_vals) and torch.equal(vecs, ref_vecs)


def test_basis_file_is_appended_not_rewritten_and_stray_bytes_are_cut(tmp_path):
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(30, 30, generator=gen, dtype=torch.float64)
    op = MatrixOperator(A + A.T)
    ckpt = LanczosCheckpoint(tmp_path, every=2)
    with pytest.raises(Interrupted):
        slq_spectrum(StopAfter(op, 4), 12, 1, seed=1, checkpoint=ckpt)
    first = (tmp_path / "probes_0" / BASIS).read_bytes()
    assert len(first) == 5 * 30 * 8                      # rows 0..4 after 4 steps
    with open(tmp_path / "probes_0" / BASIS, "ab") as fh:
        fh.write(b"half-written row")                    # a crash between the row and state.json
    with pytest.raises(Interrupted):
        slq_spectrum(StopAfter(op, 4), 12, 1, seed=1, checkpoint=LanczosCheckpoint(tmp_path, every=2))
    second = (tmp_path / "probes_0" / BASIS).read_bytes()
    assert second[:len(first)] == first and len(second) == 9 * 30 * 8
    resumed = slq_spectrum(op, 12, 1, seed=1, checkpoint=LanczosCheckpoint(tmp_path, every=2))
    reference = slq_spectrum(op, 12, 1, seed=1)
    assert torch.equal(resumed[0], reference[0])


def test_a_state_from_another_run_is_refused_or_restarted(tmp_path):
    op = small_hessian_operator()
    with pytest.raises(Interrupted):
        slq_spectrum(StopAfter(op, 5), 10, 1, seed=0, checkpoint=LanczosCheckpoint(tmp_path, every=2))
    with pytest.raises(PrunelimitError, match="belongs to a different run"):
        slq_spectrum(op, 10, 1, seed=1, checkpoint=LanczosCheckpoint(tmp_path, every=2))
    with torch.no_grad():                                # other weights: the operator's loss differs
        op.model[0].weight.mul_(1.1)
    other = HessianOperator(op.model, nn.functional.cross_entropy, op.batches)
    with pytest.raises(PrunelimitError, match="belongs to a different run"):
        slq_spectrum(other, 10, 1, seed=0, checkpoint=LanczosCheckpoint(tmp_path, every=2))
    fresh = slq_spectrum(other, 10, 1, seed=0, checkpoint=LanczosCheckpoint(tmp_path, every=2, restart_on_mismatch=True))
    assert torch.equal(fresh[0], slq_spectrum(other, 10, 1, seed=0)[0])
    ckpt = LanczosCheckpoint(tmp_path)
    ckpt.child("probes_0").clear()
    assert not (tmp_path / "probes_0" / STATE).exists()


# ----------------------------------------------------------------------------- the spectrum stage (bug 17)
SPECTRUM_ARGS = ["spectrum", "train.epochs=1", "spectrum.lanczos_iter=24", "spectrum.checkpoint_every=4",
                 "spectrum.trace_samples=0", "spectrum.top_k=2", "--no-progress"]


def spectrum_cli(out):
    from prunelimit.cli.main import main
    return main(SPECTRUM_ARGS + ["--out", str(out)])


def read_spectrum(out):
    import json
    with open(out / "limit" / "spectrum.json") as fh:
        return json.load(fh)


def test_spectrum_stage_interrupted_mid_lanczos_resumes_with_identical_ritz_values(tmp_path, monkeypatch, capsys):
    assert spectrum_cli(tmp_path / "clean") == 0
    clean = read_spectrum(tmp_path / "clean")

    calls = {"n": 0}
    original = HessianOperator.matmat

    def interrupted_at_step_10(self, V, out=None):
        calls["n"] += 1
        if calls["n"] > 10:
            raise KeyboardInterrupt   # Ctrl-C: the CLI stops with exit status 130
        return original(self, V, out=out)

    monkeypatch.setattr(HessianOperator, "matmat", interrupted_at_step_10)
    assert spectrum_cli(tmp_path / "killed") == 130
    state_dir = tmp_path / "killed" / "limit" / "lanczos_state" / "slq" / "probes_0"
    assert LanczosCheckpoint(state_dir).read_state()["j"] == 8
    monkeypatch.setattr(HessianOperator, "matmat", original)
    capsys.readouterr()
    assert spectrum_cli(tmp_path / "killed") == 0
    said = capsys.readouterr().out   # what happened to the saved state is said after the fact, not "if ..."
    assert "spectrum: SLQ resumed from the saved Lanczos state at step 8" in said, said
    assert "started afresh" not in said
    resumed = read_spectrum(tmp_path / "killed")
    assert resumed["nodes"] == clean["nodes"] and resumed["weights"] == clean["weights"]
    assert resumed["top_eigenvalues"] == clean["top_eigenvalues"]
    assert not (tmp_path / "killed" / "limit" / "lanczos_state").exists()   # removed once written


@pytest.mark.slow
def test_spectrum_process_killed_mid_lanczos_resumes_with_identical_ritz_values(tmp_path):
    """A real SIGKILL of the CLI process while Lanczos runs (the original bug: 21 kills, no progress)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    args = [sys.executable, "-m", "prunelimit"] + [a.replace("lanczos_iter=24", "lanczos_iter=128")
                                                   for a in SPECTRUM_ARGS]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    subprocess.run(args + ["--out", str(tmp_path / "clean")], check=True, env=env, capture_output=True)
    proc = subprocess.Popen(args + ["--out", str(tmp_path / "killed")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "killed" / "limit" / "lanczos_state" / "slq" / "probes_0" / STATE
    deadline = time.time() + 120
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before the first Lanczos save; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = LanczosCheckpoint(state.parent).read_state()["j"]
    assert 0 < saved < 128
    subprocess.run(args + ["--out", str(tmp_path / "killed")], check=True, env=env, capture_output=True)
    assert read_spectrum(tmp_path / "killed")["nodes"] == read_spectrum(tmp_path / "clean")["nodes"]


def test_a_saved_lanczos_state_of_other_settings_is_said_to_be_discarded(tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    original = HessianOperator.matmat

    def interrupted_at_step_10(self, V, out=None):
        calls["n"] += 1
        if calls["n"] > 10:
            raise KeyboardInterrupt
        return original(self, V, out=out)

    monkeypatch.setattr(HessianOperator, "matmat", interrupted_at_step_10)
    assert spectrum_cli(tmp_path / "killed") == 130
    monkeypatch.setattr(HessianOperator, "matmat", original)
    # the user redoes the stage under another matrix by deleting its started marker: the Hessian's saved
    # state must not be resumed into the Gauss-Newton spectrum, and the output says it was not
    (tmp_path / "killed" / "stages" / "spectrum.started.json").unlink()
    capsys.readouterr()
    from prunelimit.cli.main import main
    assert main(SPECTRUM_ARGS + ["spectrum.matrix=gauss_newton", "--out", str(tmp_path / "killed")]) == 0
    said = capsys.readouterr().out
    assert ("spectrum: SLQ started afresh: the saved Lanczos state was made under other weights, data or "
            "settings and was discarded") in said, said
    assert "resumed from the saved Lanczos state" not in said
    assert read_spectrum(tmp_path / "killed")["matrix"] == "gauss_newton"
