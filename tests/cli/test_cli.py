"""The CLI as a user runs it: prune / finetune / run / validate / ls, files on disk, and bad input."""
from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from prunelimit import create_model, load_masks
from prunelimit.cli.main import main
from prunelimit.pruning.prunable import prunable_parameters


def run_cli(*args) -> int:
    return main([str(a) for a in args])


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def tiny_checkpoint(tmp_path, fmt="wrapped", seed=0):
    torch.manual_seed(seed)
    model = create_model("fc_small", num_classes=10, input_shape=(1, 8, 8))
    sd = model.state_dict()
    if fmt == "module":
        sd = {f"module.{k}": v for k, v in sd.items()}
    obj = {"state_dict": sd, "epoch": 3} if fmt == "wrapped" else sd
    path = tmp_path / f"dense_{fmt}.pth"
    torch.save(obj, path)
    return path, model


def test_prune_gp_mt_without_dataset_writes_the_original_files(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli("prune", "--model", "tiny_cnn", "--sparsity", "0.8", "--min-threshold", "5",
                   "--out", out, "--no-progress") == 0
    text = capsys.readouterr().out
    assert "NOT evaluated" in text
    d = out / "gp_mt"
    for name in ("prune_log.csv", "layer_sparsities.csv", "prune_refined_log.csv", "prunedmodel.pth.tar",
                 "weight_mask.safetensors"):
        assert (d / name).exists(), name
    state = torch.load(d / "prunedmodel.pth.tar", weights_only=True)["state_dict"]
    masks = load_masks(d / "weight_mask.safetensors")
    n = sum(m.numel() for m in masks.values())
    pruned = sum(int((~m).sum()) for m in masks.values())
    assert pruned == math.floor(0.8 * n + 0.5)
    for name, m in masks.items():
        assert torch.all(state[name][~m] == 0)
    floor = int(n * 5 / 100)
    for m in masks.values():
        assert int(m.sum()) >= min(m.numel(), floor)
    refined = rows(d / "prune_refined_log.csv")
    assert refined[-1]["Layer Index"] == "Total" and int(refined[-1]["Weights Pruned"]) == pruned
    assert [r["Layer Name"] for r in refined[:-1]] == list(masks)
    sparsities = rows(d / "layer_sparsities.csv")
    assert sum(int(r["Kept Weights"]) for r in sparsities) == n - pruned


def test_the_issue_command_resnet50_gp_mt_without_dataset(tmp_path, capsys):
    out = tmp_path / "r50"
    assert run_cli("prune", "--model", "resnet50", "--sparsity", "0.9", "--min-threshold", "0.05", "--out", out,
                   "--no-progress") == 0
    sizes = rows(out / "gp_mt" / "layer_sparsities.csv")
    n = sum(int(r["Layer Weights"]) for r in sizes)
    assert n == 25_502_912
    floor = int(n * 0.05 / 100)
    kept = [int(r["Kept Weights"]) for r in sizes]
    assert sum(kept) == n - math.floor(0.9 * n + 0.5)
    assert all(k >= min(int(r["Layer Weights"]), floor) for k, r in zip(kept, sizes))
    assert "clamped by the floor" in capsys.readouterr().out


@pytest.mark.parametrize("fmt", ["plain", "wrapped", "module"])
def test_prune_accepts_checkpoint_formats_and_evaluates(tmp_path, capsys, fmt):
    ckpt, model = tiny_checkpoint(tmp_path, fmt)
    out = tmp_path / f"run_{fmt}"
    assert run_cli("prune", "--model", "fc_small", "--checkpoint", ckpt, "--dataset", "digits", "--sparsity", "0.5",
                   "--out", out, "--no-progress") == 0
    log = rows(out / "gp" / "prune_log.csv")
    assert log[-1]["Post Accuracy"] != "" and log[0]["Pre Accuracy"] != ""
    masks = load_masks(out / "gp" / "weight_mask.safetensors")
    # GP keeps the largest |w| of the checkpoint's weights: compare with an independent sort
    ws = torch.cat([p.detach().abs().flatten() for _, p in prunable_parameters(model)])
    k = math.floor(0.5 * ws.numel() + 0.5)
    kept = torch.cat([m.flatten() for m in masks.values()])
    assert ws[kept].min() >= ws[~kept].max() and int((~kept).sum()) == k


def test_finetune_resume_and_evaluate(tmp_path, capsys):
    ckpt, _ = tiny_checkpoint(tmp_path)
    out = tmp_path / "run"
    assert run_cli("prune", "--model", "fc_small", "--checkpoint", ckpt, "--sparsity", "0.9", "--out", out,
                   "--input-shape", "1,8,8", "--no-progress") == 0
    # the prune run had no dataset: finetune says how to give one
    assert run_cli("finetune", out, "--epochs", "2") == 2
    assert "--dataset" in capsys.readouterr().err
    assert run_cli("finetune", out, "--dataset", "digits", "--epochs", "2", "--batch-size", "64", "--lr", "0.01",
                   "--no-progress") == 0
    log = rows(out / "gp" / "finetune_log.csv")
    assert [r["Epoch"] for r in log] == ["1", "2"]
    best = torch.load(out / "gp" / "model_best.pth.tar", weights_only=True)["state_dict"]
    masks = load_masks(out / "gp" / "weight_mask.safetensors")
    assert all(torch.all(best[k][~m] == 0) for k, m in masks.items())
    capsys.readouterr()
    assert run_cli("finetune", out, "--dataset", "digits", "--epochs", "2", "--batch-size", "64", "--lr", "0.01",
                   "--no-progress") == 0
    assert "finished earlier" in capsys.readouterr().out
    assert run_cli("finetune", out, "--dataset", "digits", "--evaluate") == 0
    assert "sparsity 0.9000" in capsys.readouterr().out


@pytest.mark.parametrize("args,needle", [
    (["prune", "--model", "fc_small", "--dataset", "digits", "--sparsity", "1.5"], "sparsity"),
    (["prune", "--model", "fc_small", "--dataset", "digits", "--sparsity", "-0.1"], "sparsity"),
    (["prune", "--model", "resnet5", "--sparsity", "0.5"], "resnet50"),
    (["prune", "--model", "fc_small", "--dataset", "digitz", "--sparsity", "0.5"], "digits"),
    (["prune", "--model", "fc_small", "--dataset", "digits", "--sparsity", "0.99", "--min-threshold", "50"],
     "largest feasible"),
    (["prune", "--model", "fc_small", "--dataset", "digits", "--sparsity", "0.5", "--min-threshold", "-1"],
     "min_threshold"),
    (["prune", "--model", "fc_small", "--dataset", "digits", "--sparsity", "0.5", "--min-threshold", "150"],
     "[0, 100]"),
    (["prune", "--model", "fc_small", "--dataset", "digits", "--checkpoint", "/nonexistent.pth"], "does not exist"),
    (["prune", "--model", "fc_small", "--dataset", "mnist", "--data-path", "/nonexistent"], "/nonexistent"),
    (["prune"], "--model"),
    (["finetune", "/nonexistent/run"], "does not exist"),
    (["report", "/nonexistent/run"], "does not exist"),
])
def test_bad_input_is_one_clear_error(tmp_path, capsys, args, needle):
    assert run_cli(*args, *(["--out", tmp_path / "o"] if args[0] == "prune" else [])) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err and "Traceback" not in err


def test_checkpoint_for_another_model_names_the_keys(tmp_path, capsys):
    torch.save(create_model("tiny_mlp", num_classes=10, input_shape=(1, 8, 8)).state_dict(), tmp_path / "m.pth")
    assert run_cli("prune", "--model", "fc_small", "--dataset", "digits", "--checkpoint", tmp_path / "m.pth",
                   "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert "does not fit" in err and "missing" in err


def test_truncated_checkpoint(tmp_path, capsys):
    ckpt, _ = tiny_checkpoint(tmp_path)
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    assert run_cli("prune", "--model", "fc_small", "--checkpoint", ckpt, "--input-shape", "1,8,8",
                   "--out", tmp_path / "o") == 2
    assert "corrupt, truncated" in capsys.readouterr().err


@pytest.mark.parametrize("content,needle", [
    (b"hello", "not a PyTorch checkpoint"),
    (bytes(range(256)) * 4, "not a valid PyTorch checkpoint"),
])
def test_checkpoint_that_is_not_one(tmp_path, capsys, content, needle):
    (tmp_path / "x.pth").write_bytes(content)
    assert run_cli("prune", "--model", "fc_small", "--dataset", "digits", "--checkpoint", tmp_path / "x.pth",
                   "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert needle in err and "--allow-pickle" not in err and err.count("\n") == 1


@pytest.mark.parametrize("device", ["foo", "mps"])
def test_bad_device(tmp_path, capsys, device):
    assert run_cli("prune", "--model", "fc_small", "--dataset", "digits", "--device", device,
                   "--out", tmp_path / "o") == 2
    assert f"device {device!r}" in capsys.readouterr().err


def test_mask_file_for_another_model(tmp_path, capsys):
    ckpt, _ = tiny_checkpoint(tmp_path)
    assert run_cli("prune", "--model", "tiny_cnn", "--sparsity", "0.5", "--out", tmp_path / "cnn", "--no-progress") == 0
    assert run_cli("finetune", "--model", "fc_small", "--checkpoint", ckpt, "--masks",
                   tmp_path / "cnn" / "gp" / "weight_mask.safetensors", "--dataset", "digits",
                   "--out", tmp_path / "ft") == 2
    assert "another model" in capsys.readouterr().err


def test_model_needing_input_shape_says_which_flag(tmp_path, capsys):
    assert run_cli("prune", "--model", "fc_small", "--out", tmp_path / "o") == 2
    assert "--input-shape" in capsys.readouterr().err


def test_validate_and_ls(capsys):
    assert run_cli("validate", "--quiet", "default", "FC_CIFAR10_l1", "GP_ResNet50_ImageNet") == 0
    assert capsys.readouterr().out.count("OK") == 3
    assert run_cli("ls") == 0
    text = capsys.readouterr().out
    for name in ("resnet50", "wrn-28-8", "fc_small", "digits", "imagenet", "FC_CIFAR10_l1"):
        assert name in text


def test_validate_applies_key_value_overrides_like_run(capsys):
    # with overrides only: the embedded default config, overridden
    assert run_cli("validate", "spectrum.top_k=7", "spectrum.batched_probes=true") == 0
    text = capsys.readouterr().out
    assert "top_k: 7" in text and "batched_probes: 'true'" in text
    # overrides apply to every config named; a bad value fails each of them, naming the key
    assert run_cli("validate", "--quiet", "default", "FC_CIFAR10", "spectrum.top_k=0") == 2
    captured = capsys.readouterr()
    assert captured.out.count("FAILED") == 2 and "spectrum.top_k=0 must be an integer >= 1" in captured.out
    assert "2 of 2 config(s) failed validation" in captured.err


def test_run_embedded_default_small(tmp_path, capsys):
    """The default pipeline end to end, shortened: limit stages, then GP and GP+MT at the prediction."""
    out = tmp_path / "default"
    args = ["run", "train.epochs=15", "limit.sweep_points=100", "spectrum.lanczos_iter=24",
            "spectrum.trace_samples=4", "finetune.epochs=1", "--out", out, "--no-progress"]
    assert run_cli(*args) == 0
    text = capsys.readouterr().out
    assert "predicted (Gaussian width fixed point)" in text and "GP+MT" in text
    lim = out / "limit"
    for name in ("sweep.csv", "result.json", "result.txt", "spectrum.json", "density.csv", "sweep.png",
                 "gaussian_width.png", "spectral_density.png"):
        assert (lim / name).exists(), name
    txt = (lim / "result.txt").read_text().splitlines()
    assert len(txt) == 4 and txt[3].startswith("conventions: loss data, actual = rule above_baseline read as largest")
    assert "loss convention: data loss" in text and "(std, ddof 0, of the per-batch train data loss)" in text
    result = json.loads((lim / "result.json").read_text())
    assert result["loss"] == "data" and result["epsilon_ddof"] == 0
    assert result["actual"]["above_baseline"]["reading"] == "largest_passing"
    table = rows(lim / "sweep.csv")
    assert len(table) == 100
    for r in table:   # the evaluator's loss is the data loss plus the L1 term, and the term shrinks with pruning
        assert float(r["train_loss"]) == pytest.approx(float(r["train_data_loss"]) + float(r["l1_penalty"]), rel=1e-6)
    assert float(table[0]["l1_penalty"]) > float(table[-1]["l1_penalty"]) > 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["stage_seconds"]) == {"data", "dense", "sweep", "spectrum", "limit", "gp_prune",
                                             "gp_finetune", "gp_mt_prune", "gp_mt_finetune"}   # the stages run
    assert "reused_stages" not in summary   # everything was computed by this command
    assert all(v >= 0 for v in summary["stage_seconds"].values())
    assert "seconds per stage: data" in text
    for method in ("gp", "gp_mt"):
        for name in ("prune_log.csv", "prunedmodel.pth.tar", "weight_mask.safetensors", "finetune_log.csv",
                     "model_best.pth.tar", "checkpoint_last.pth.tar"):
            assert (out / method / name).exists(), (method, name)
    assert (out / "gp_mt" / "layer_sparsities.csv").exists()
    # a rerun skips every finished stage
    assert run_cli(*args) == 0
    assert capsys.readouterr().out.count("finished earlier") >= 4
    assert run_cli("report", out) == 0
    # the same directory with a different fine-tuning recipe is refused, naming the key, not silently reused
    assert run_cli(*args, "finetune.lr=0.5") == 2
    assert "finetune.lr: 0.002 -> 0.5" in capsys.readouterr().err


def test_prune_summary_reports_size_and_compute_from_the_saved_masks(tmp_path, capsys):
    out = tmp_path / "p"
    assert run_cli("prune", "--model", "tiny_mlp", "--input-shape", "1,8,8", "--num-classes", "2", "--sparsity", "0.9",
                   "--min-threshold", "5", "--out", out, "--no-progress") == 0
    masks = load_masks(out / "gp_mt" / "weight_mask.safetensors")
    model = create_model("tiny_mlp", num_classes=2, input_shape=(1, 8, 8))
    n_params = sum(p.numel() for p in model.parameters())
    pruned = sum(int((~m).sum()) for m in masks.values())
    # tiny_mlp: 64 -> 16 -> 2; one example costs one MAC per weight, the pruned ones none
    dense_macs = 64 * 16 + 16 * 2
    size = json.loads((out / "summary.json").read_text())["gp"]["gp_mt"]["size_and_compute"]
    assert size["params"] == n_params and size["nonzeros"] == n_params - pruned
    assert size["dense_macs"] == dense_macs and size["sparse_macs"] == dense_macs - pruned
    line = [s for s in capsys.readouterr().out.splitlines() if s.startswith("  GP+MT size and compute:")]
    assert line == [f"  GP+MT size and compute: {n_params - pruned:,} of {n_params:,} parameters non-zero; theoretical "
                    f"speed-up {dense_macs / (dense_macs - pruned):.2f}x, {size['bytes_dense']:,} bytes dense, "
                    f"{size['bytes_compressed']:,} compressed"]
