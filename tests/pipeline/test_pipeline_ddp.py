"""`torchrun` end to end: the limit stages on 2 CPU processes (gloo) give the single-process numbers."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from prunelimit.runs.io import read_csv
from helpers import free_port

pytestmark = pytest.mark.distributed

SMALL = ["limit.sweep_points=40", "spectrum.lanczos_iter=16", "spectrum.trace_samples=2", "spectrum.top_k=2",
         "--no-progress"]


def cli(*args, nproc: int = 1):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    if nproc == 1:
        cmd = [sys.executable, "-m", "prunelimit", *map(str, args)]
    else:
        # a fresh free port each time: --standalone's fixed rendezvous port can still be held by the
        # previous launch (TIME_WAIT), which made back-to-back launches fail now and then
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={nproc}",
               "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "prunelimit", *map(str, args)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def test_limit_stages_under_torchrun_match_one_process(tmp_path):
    cli("train", "default", "train.epochs=8", "--out", tmp_path / "dense")
    ckpt = tmp_path / "dense" / "dense" / "model_final.pth.tar"
    args = ["limit", "default", f"model.checkpoint={ckpt}", *SMALL]
    cli(*args, "--out", tmp_path / "one")
    cli(*args, "--out", tmp_path / "two", nproc=2)
    one, two = (read_csv(tmp_path / d / "limit" / "sweep.csv") for d in ("one", "two"))
    assert len(one) == len(two) == 40
    for a, b in zip(one, two):
        assert a["kept_weights"] == b["kept_weights"]
        assert float(a["test_acc"]) == float(b["test_acc"]) and float(a["train_acc"]) == float(b["train_acc"])
        assert float(a["test_loss"]) == pytest.approx(float(b["test_loss"]), rel=1e-5, abs=1e-7)
        assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), rel=1e-5, abs=1e-7)
    s1, s2 = (json.loads((tmp_path / d / "limit" / "spectrum.json").read_text()) for d in ("one", "two"))
    assert s1["top_eigenvalues"] == pytest.approx(s2["top_eigenvalues"], rel=1e-4)
    assert s1["nodes"] == pytest.approx(s2["nodes"], rel=1e-3, abs=1e-4)
    r1, r2 = (json.loads((tmp_path / d / "limit" / "result.json").read_text()) for d in ("one", "two"))
    assert r1["eps"] == pytest.approx(r2["eps"], rel=1e-5)
    assert r1["predicted"]["prune_fraction"] == pytest.approx(r2["predicted"]["prune_fraction"], abs=2e-3)
    assert r1["actual"] == r2["actual"]
    # only rank 0 wrote: no temp files and one environment record saying world_size 2
    env = json.loads((tmp_path / "two" / "environment.json").read_text())
    assert env["world_size"] == 2
    assert not [p for p in (tmp_path / "two").rglob(".*.tmp")]


def test_finetune_under_torchrun_keeps_masks_exact(tmp_path):
    cli("prune", "--model", "fc_small", "--input-shape", "1,8,8", "--sparsity", "0.8", "--min-threshold", "2",
        "--out", tmp_path / "run", "--no-progress")
    text = cli("finetune", tmp_path / "run", "--dataset", "digits", "--epochs", "2", "--batch-size", "64",
               "--lr", "0.01", "--no-progress", nproc=2)
    assert text.count("fine-tuned, best test top-1") == 1  # rank 0 only prints
    import torch

    from prunelimit import load_masks

    d = tmp_path / "run" / "gp_mt"
    masks = load_masks(d / "weight_mask.safetensors")
    for name in ("model_best.pth.tar", "checkpoint_last.pth.tar"):
        obj = torch.load(d / name, weights_only=True)
        sd = obj.get("state_dict", obj.get("model"))
        assert all(torch.all(sd[k][~m] == 0) for k, m in masks.items()), name
    assert [r["Epoch"] for r in read_csv(d / "finetune_log.csv")] == ["1", "2"]
