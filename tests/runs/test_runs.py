"""Run-directory plumbing: atomic writes survive a crash mid-write; stage fingerprints refuse stale results."""
from __future__ import annotations

import os

import pytest
import torch

from prunelimit.runs import io
from prunelimit.runs.checkpoint import CheckpointError, extract_state_dict, load_checkpoint_file
from prunelimit.runs.rundir import RunDir


def test_crash_mid_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "log.csv"
    io.write_csv(target, ["a"], [[1]])
    before = target.read_bytes()

    def crash(*_a, **_k):
        raise OSError("disk died")

    monkeypatch.setattr(os, "fsync", crash)  # the temp file is written, then the crash comes before replace
    with pytest.raises(OSError, match="disk died"):
        io.write_csv(target, ["a"], [[2], [3]])
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.csv"]


def test_crash_while_saving_a_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / "model.pth.tar"

    def crash(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        io.atomic_torch_save({"state_dict": {"w": torch.ones(3)}}, target)
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_reading_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint_file(tmp_path / "nope.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint_file(tmp_path / "empty.pth")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"state_dict": {"w": torch.ones(1)}, "evil": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="--allow-pickle"):
        load_checkpoint_file(tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="no state_dict"):
        extract_state_dict({"epoch": 3}, "x.pth")
    sd = extract_state_dict({"state_dict": {"module.fc.weight": torch.ones(1)}})
    assert list(sd) == ["fc.weight"]


def test_stage_fingerprint_refuses_other_config(tmp_path):
    run = RunDir(tmp_path)
    run.mark_done("sweep", {"rows": 3}, {"limit.sweep_points": 1000, "data": {"workers": 0}})
    assert run.stage_result("sweep", {"limit.sweep_points": 1000, "data": {"workers": 8}})["rows"] == 3
    with pytest.raises(ValueError, match=r"limit.sweep_points: 1000 -> 200"):
        run.stage_result("sweep", {"limit.sweep_points": 200, "data": {"workers": 0}})
    assert run.stage_result("spectrum", {}) is None


def test_another_model_name_is_refused_not_taken_for_the_run_name(tmp_path):
    # "name" is volatile only at the top (the run's name); model.name is the model and must be compared
    run = RunDir(tmp_path)
    model = {"name": "fc_small", "init": "default"}
    run.mark_done("dense", {"top1": 90.0}, {"model": model, "seed": 0})
    with pytest.raises(ValueError, match=r"model.name: 'fc_small' -> 'tiny_mlp'"):
        run.stage_result("dense", {"model": {**model, "name": "tiny_mlp"}, "seed": 0})
    run.write_config({"name": "first", "model": model})
    run.write_config({"name": "renamed", "model": model})            # another run name is fine
    with pytest.raises(ValueError, match=r"different config \(model: name 'fc_small' -> 'tiny_mlp'\)"):
        run.write_config({"name": "renamed", "model": {**model, "name": "tiny_mlp"}})
    assert "tiny_mlp" not in (tmp_path / "config.yaml").read_text()   # the refused command wrote nothing
