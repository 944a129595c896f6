"""The stage runner: skip / resume / refuse in one place; fingerprints with input checksums and the world
size; a refused command writes nothing; one command per run directory (bugs 3, 6, 7, 16 of issue 7)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from prunelimit import load_masks, save_masks
from prunelimit.config import load_config
from prunelimit.errors import PrunelimitError
from prunelimit.pipeline.stages import Stage, StageRunner, file_digest
from prunelimit.runs.rundir import RunDir
from helpers import cli, one_error

SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture
def finetuned(tmp_path, capsys):
    """`prune` then `finetune RUN --epochs 1` on digits: a run directory with a finished fine-tuning."""
    out = tmp_path / "run"
    assert cli("prune", "--model", "fc_small", "--dataset", "digits", "--sparsity", "0.5", "--out", out,
               "--no-progress") == 0
    assert cli("finetune", out, "--epochs", "1", "--no-progress") == 0
    capsys.readouterr()
    return out


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
            and p.name != ".lock"}


# ---- the runner itself ---------------------------------------------------------------------------
def test_runner_skips_refuses_and_checks_inputs(tmp_path):
    cfg = load_config("default")
    run = RunDir(tmp_path / "r")
    runner = StageRunner(cfg, run)
    data = tmp_path / "input.bin"
    data.write_bytes(b"one")
    stage = Stage("demo", ("train.lr",), inputs={"data": data})
    calls = []
    assert runner.run(stage, lambda: calls.append(1) or {"value": 1}) ["value"] == 1
    assert runner.run(stage, lambda: calls.append(2) or {"value": 2})["value"] == 1  # skipped, loaded
    assert calls == [1]
    data.write_bytes(b"two")  # other bytes at the same path
    # the file by name with the start of each checksum: here the same path with other bytes
    with pytest.raises(PrunelimitError, match=rf"inputs.data: {re.escape(str(data))} \(sha256 [0-9a-f]{{12}}\.\.\.\) "
                                              rf"-> {re.escape(str(data))} \(sha256 [0-9a-f]{{12}}\.\.\.\)"):
        runner.run(stage, lambda: {"value": 3})
    other = StageRunner(load_config("default", ["train.lr=0.1"]), run)
    data.write_bytes(b"one")
    with pytest.raises(PrunelimitError, match=r"train.lr: 0.05 -> 0.1"):
        other.run(stage, lambda: {"value": 4})


def test_a_stage_started_under_other_settings_is_not_resumed(tmp_path, monkeypatch):
    """Bug 16: a torchrun run resumed in one process must not continue silently with other numbers."""
    from prunelimit import dist

    cfg = load_config("default")
    run = RunDir(tmp_path / "r")
    stage = Stage("train_like", ("train",), per_world_size=True)
    monkeypatch.setattr(dist, "world_size", lambda: 2)
    runner = StageRunner(cfg, run)
    with pytest.raises(KeyboardInterrupt):
        runner.run(stage, lambda: (_ for _ in ()).throw(KeyboardInterrupt()))  # killed mid-stage
    monkeypatch.setattr(dist, "world_size", lambda: 1)
    with pytest.raises(PrunelimitError, match=r"partly run stage 'train_like'.*world_size: 2 -> 1"):
        StageRunner(cfg, run).run(stage, lambda: {"ok": True})
    monkeypatch.setattr(dist, "world_size", lambda: 2)
    assert StageRunner(cfg, run).run(stage, lambda: {"ok": True}) == {"ok": True}  # same settings: resumes


def test_file_digest_is_the_sha256_of_the_bytes(tmp_path):
    import hashlib

    p = tmp_path / "f"
    p.write_bytes(b"x" * 3_000_000)
    assert file_digest(p) == hashlib.sha256(b"x" * 3_000_000).hexdigest()
    assert file_digest(tmp_path / "missing") is None


# ---- bug 3: a finished fine-tuning is not reused for other masks ---------------------------------------
def test_3_finetune_with_other_masks_is_refused_not_reused(tmp_path, finetuned, capsys):
    masks = load_masks(finetuned / "gp" / "weight_mask.safetensors")
    name = next(iter(masks))
    masks[name] = masks[name].clone()
    masks[name].view(-1)[:10] = ~masks[name].view(-1)[:10]
    other = tmp_path / "other.safetensors"
    save_masks(other, masks)
    assert cli("finetune", finetuned, "--masks", other, "--epochs", "1", "--no-progress") == 2
    line = one_error(capsys)
    assert "inputs.masks" in line and "--out NEW" in line and "finished earlier" not in line
    assert cli("finetune", finetuned, "--epochs", "1", "--no-progress") == 0
    assert "finished earlier" in capsys.readouterr().out


# ---- bug 7: a refused command writes nothing ---------------------------------------------------------
def test_7_a_refused_finetune_leaves_the_run_directory_as_it_was(finetuned, capsys):
    before = snapshot(finetuned)
    assert cli("finetune", finetuned, "--epochs", "6", "--no-progress") == 2
    line = one_error(capsys)
    assert "finetune.epochs: 1 -> 6" in line and "another --out" not in line
    assert snapshot(finetuned) == before
    assert cli("finetune", finetuned, "--no-progress") == 0  # the plain command still works
    assert "finished earlier" in capsys.readouterr().out


def test_7_finetune_with_out_and_run_dir_is_refused(finetuned, tmp_path, capsys):
    assert cli("finetune", finetuned, "--out", tmp_path / "elsewhere") == 2
    assert "--out has no effect with RUN_DIR" in one_error(capsys)


# ---- bug 6: the MT actually used is what config.yaml records ----------------------------------------
def test_6_lowered_min_threshold_is_recorded_in_config_yaml(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli("run", "train.epochs=2", "spectrum.lanczos_iter=8", "spectrum.trace_samples=0", "spectrum.top_k=1",
               "limit.sweep_points=40", "prune.min_threshold=30", "finetune.epochs=1", "--out", out,
               "--no-progress") == 0
    said = capsys.readouterr().out
    assert "is infeasible at the predicted sparsity" in said
    recorded = yaml.safe_load((out / "config.yaml").read_text())["prune"]["min_threshold"]
    from safetensors import safe_open

    with safe_open(str(out / "gp_mt" / "weight_mask.safetensors"), framework="pt") as f:
        used = float(f.metadata()["min_threshold"])
    assert recorded == pytest.approx(used) and recorded < 30


# ---- bug 16: one command per run directory ---------------------------------------------------------
def test_16_a_second_command_on_a_busy_run_directory_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from prunelimit.runs.rundir import RunDir\n"
        f"with RunDir({str(out)!r}).lock():\n    print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": SRC}, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert cli("prune", "--model", "tiny_cnn", "--sparsity", "0.5", "--out", out) == 2
        line = one_error(capsys)
        assert "is in use by another prunelimit command" in line and f"pid {holder.pid}" in line
    finally:
        holder.kill()
        holder.wait()
    assert cli("prune", "--model", "tiny_cnn", "--sparsity", "0.5", "--out", out, "--no-progress") == 0
