"""Regression tests for the pipeline bugs of issue 7 (one test or more per bug, numbered as in the issue).

They run the CLI in-process on the embedded digits data with tiny settings (seconds each)."""
from __future__ import annotations

import errno
import math
import os
from pathlib import Path

import pytest
import torch
import yaml

from prunelimit import apply_masks, create_model, global_magnitude_masks, min_threshold_masks, save_masks
from prunelimit.config import ConfigError, load_config
from prunelimit.errors import PrunelimitError
from helpers import cli, one_error

TINY_LIMIT = ["pipeline=limit", "train.epochs=2", "spectrum.lanczos_iter=8", "spectrum.trace_samples=0",
              "spectrum.top_k=1", "limit.sweep_points=40"]


def write_yaml(tmp_path, data, name="c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def prune_digits(out, *extra) -> int:
    return cli("prune", "--model", "fc_small", "--dataset", "digits", "--out", out, "--no-progress", *extra)


# 1 ---------------------------------------------------------------------------------------------------
def test_1_finetune_a_run_pruned_with_exclude(tmp_path, capsys):
    out = tmp_path / "run"
    assert prune_digits(out, "--sparsity", "0.5", "--exclude", "fc3") == 0
    assert cli("finetune", out, "--epochs", "1", "--no-progress") == 0
    assert "fine-tuned, best test top-1" in capsys.readouterr().out


# 2 ---------------------------------------------------------------------------------------------------
def test_2_adaptive_search_with_the_loss_rule_uses_the_given_epsilon(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli("run", *TINY_LIMIT, "limit.adaptive=true", "limit.rule=loss_increase", "limit.epsilon=0.01",
               "--out", out, "--no-progress") == 0
    result = yaml.safe_load((out / "limit" / "result.json").read_text())
    assert result["eps"] == pytest.approx(0.01) and result["eps_source"] == "given (limit.epsilon)"
    assert result["actual"]["loss_increase"]["prune_fraction"] is not None


# 3 is in test_pipeline_runner.py (fingerprints with input checksums)

# 4 ---------------------------------------------------------------------------------------------------
def test_4_one_minibatch_with_the_loss_std_epsilon_is_refused_by_validate(tmp_path, capsys):
    bad = write_yaml(tmp_path, {"data": {"dataset": "digits", "use_full_data": False}})
    assert cli("validate", bad) == 2
    assert "use_full_data" in capsys.readouterr().err   # one config: its error is the one stderr line
    good = write_yaml(tmp_path, {"data": {"dataset": "digits", "use_full_data": False}, "limit": {"epsilon": 0.01}},
                      "good.yaml")
    assert cli("validate", good, "--quiet") == 0


@pytest.mark.parametrize("overrides, needle", [
    (["limit.rule=loss_increase", "limit.sweep_train=false"], "sweep_train"),
    (["stages.sweep=false"], "stages.limit needs the sweep"),
    (["pipeline=gp"], "predicted_limit"),
    (["data=null"], "data is null"),
])
def test_4_cross_section_combinations_fail_at_load_time(overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config("default", overrides)


# 5 ---------------------------------------------------------------------------------------------------
def test_5_prune_config_keeps_the_configs_methods(tmp_path):
    cfg = write_yaml(tmp_path, {"pipeline": "gp", "model": {"name": "fc_small"}, "data": {"dataset": "digits"},
                                "prune": {"sparsity": 0.6, "min_threshold": 1.0}, "gp": {"methods": ["gp", "gp_mt"]}})
    out = tmp_path / "run"
    assert cli("prune", cfg, "--out", out, "--no-progress") == 0
    assert (out / "gp" / "weight_mask.safetensors").exists() and (out / "gp_mt" / "weight_mask.safetensors").exists()


def test_5_prune_without_config_runs_one_method_as_the_gp_code(tmp_path):
    out = tmp_path / "run"
    assert prune_digits(out, "--sparsity", "0.6") == 0
    assert (out / "gp").is_dir() and not (out / "gp_mt").exists()


# 8 ---------------------------------------------------------------------------------------------------
def test_8_the_top_level_seed_reaches_training_and_probes(monkeypatch):
    cfg = load_config("default", ["seed=7"])
    assert cfg.train.seed is None and cfg.spectrum.seed is None and cfg.finetune.seed is None
    assert cfg.seed_for(cfg.train.seed) == 7 and cfg.seed_for(cfg.spectrum.seed) == 7
    explicit = load_config("default", ["seed=7", "spectrum.seed=3"])
    assert explicit.seed_for(explicit.spectrum.seed) == 3


def test_8_seed_changes_the_trained_dense_model(tmp_path):
    weights = []
    for seed in (0, 0, 1):
        out = tmp_path / f"s{seed}_{len(weights)}"
        assert cli("train", "default", "train.epochs=1", "--seed", seed, "--out", out, "--no-progress") == 0
        weights.append(torch.load(out / "dense" / "model_final.pth.tar", weights_only=True)["state_dict"])
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])


def test_8_save_model_false_keeps_no_dense_weights_and_a_rerun_trains_again(tmp_path, capsys):
    out = tmp_path / "run"
    args = ("train", "default", "train.epochs=1", "stages.save_model=false", "--out", out, "--no-progress")
    assert cli(*args) == 0
    assert sorted(p.name for p in (out / "dense").iterdir()) == ["train_log.csv"]
    capsys.readouterr()
    assert cli(*args) == 0
    assert "training it again" in capsys.readouterr().out


def test_8_train_workers_is_gone_and_data_workers_is_the_key():
    with pytest.raises(ConfigError, match="workers"):
        load_config("default", ["train.workers=2"])
    assert load_config("default", ["data.workers=2"]).data.workers == 2


def test_8_original_density_kernel_changes_the_width_measure():
    from prunelimit.config import load_config as lc
    from prunelimit.pipeline.limit import width_measure
    from prunelimit.pipeline.results import SpectrumResult
    from prunelimit.spectrum.density import original_density

    spectrum = SpectrumResult(nodes=(0.0, 0.5, 1.0, 2.0), weights=(0.4, 0.3, 0.2, 0.1), lanczos_num=1)
    nodes, weights = width_measure(lc("default").spectrum, spectrum)
    assert tuple(nodes.tolist()) == spectrum.nodes and tuple(weights.tolist()) == spectrum.weights
    orig = lc("default", ["spectrum.density_kernel=original"]).spectrum
    grid, density = width_measure(orig, spectrum)
    g2, d2 = original_density(torch.tensor(spectrum.nodes, dtype=torch.float64),
                              torch.tensor(spectrum.weights, dtype=torch.float64))
    assert torch.equal(grid, g2) and torch.equal(density, d2) and grid.numel() == 100_000


# 12 --------------------------------------------------------------------------------------------------
def test_12_a_flag_the_pipeline_would_ignore_is_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli("run", "--sparsity", "0.5", "--out", out) == 2
    line = one_error(capsys)
    assert "--sparsity sets prune.sparsity" in line and "gp.sparsity_from=config" in line
    assert not out.exists()
    assert cli("run", *TINY_LIMIT, "--epochs", "3", "--out", out) == 2
    assert "pipeline 'limit' does not prune" in one_error(capsys)
    assert cli("run", "pipeline=limit", "finetune.lr=0.1", "--out", out) == 2
    assert "override 'finetune.lr=0.1'" in one_error(capsys)
    assert not out.exists()


# 13 --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_13_non_finite_weights_are_refused_naming_the_parameter(tmp_path, capsys, bad):
    model = create_model("fc_small", num_classes=10, input_shape=(1, 8, 8))
    with torch.no_grad():
        model.fc2.weight[3, 4] = bad
    ckpt = tmp_path / "nan.pth"
    torch.save(model.state_dict(), ckpt)
    assert prune_digits(tmp_path / "run", "--checkpoint", ckpt, "--sparsity", "0.5") == 2
    assert "fc2.weight" in one_error(capsys)
    for make in (lambda: global_magnitude_masks(model, 0.5), lambda: min_threshold_masks(model, 0.5, 1.0)):
        with pytest.raises(PrunelimitError, match="fc2.weight contain NaN or Inf"):
            make()


# 14 --------------------------------------------------------------------------------------------------
def test_14_out_naming_a_file_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert prune_digits(blocker, "--sparsity", "0.5") == 2
    assert str(blocker) in one_error(capsys)


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC])
def test_14_read_only_or_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path, capsys, monkeypatch, code):
    import prunelimit.runs.io as rio

    real_replace = os.replace

    def refuse(src, dst):
        if str(dst).endswith("prunedmodel.pth.tar"):
            raise OSError(code, os.strerror(code), str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(rio.os, "replace", refuse)
    out = tmp_path / "run"
    assert prune_digits(out, "--sparsity", "0.5") == 2
    line = one_error(capsys)
    assert f"errno {code}" in line and "prunedmodel.pth.tar" in line
    assert not list(out.rglob("*.tmp")) and not (out / "gp" / "prunedmodel.pth.tar").exists()


# 15 --------------------------------------------------------------------------------------------------
def test_15_a_sparsity_that_rounds_to_everything_is_refused(tmp_path, capsys):
    assert prune_digits(tmp_path / "run", "--sparsity", "0.9999999999") == 2
    assert "rounds to pruning all" in one_error(capsys)
    model = create_model("fc_small", num_classes=10, input_shape=(1, 8, 8))
    n = sum(p.numel() for name, p in model.named_parameters() if name.endswith("weight"))
    largest = 1 - 0.5 / n
    global_magnitude_masks(model, largest - 1e-9)  # keeps exactly one weight
    with pytest.raises(PrunelimitError, match="rounds to pruning all"):
        global_magnitude_masks(model, largest)


def test_15_an_empty_yaml_is_refused(tmp_path, capsys):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing here\n")
    assert cli("run", empty, "--out", tmp_path / "run") == 2
    assert "is empty" in one_error(capsys)
    assert not (tmp_path / "run").exists()


def test_15_apply_masks_without_masks_and_save_masks_to_a_directory(tmp_path):
    model = create_model("fc_small", num_classes=10, input_shape=(1, 8, 8))
    with pytest.raises(PrunelimitError, match="no masks"):
        apply_masks(model, {})
    masks = global_magnitude_masks(model, 0.5)
    with pytest.raises(PrunelimitError, match="is a directory"):
        save_masks(tmp_path, masks)


# polish: the density plot states its kernel and draws no floor plateau --------------------------------------
def test_density_kernel_width_is_the_one_the_density_used(tmp_path):
    from prunelimit.spectrum.density import default_sigma, spectral_density
    from prunelimit.spectrum.plots import plot_density

    nodes = torch.tensor([0.0, 0.2, 3.0], dtype=torch.float64)
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    sigma = default_sigma(nodes)
    assert sigma == pytest.approx(0.03)
    grid, density = spectral_density(nodes, weights)
    assert float(grid[0]) == pytest.approx(-5 * sigma) and float(grid[-1]) == pytest.approx(3.0 + 5 * sigma)
    assert torch.equal(density, spectral_density(nodes, weights, sigma=sigma)[1])
    assert plot_density(tmp_path / "d.png", grid, density, nodes, weights, sigma=sigma, title="t") is not None
