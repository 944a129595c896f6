"""Security: unpickling is allowed only by the --allow-pickle flag of the command that loads the file.

The opt-in is never read from a config file or a run directory's config.yaml, and never saved where a
later command reads it back. Each test uses a pickle whose ``__reduce__`` creates a marker file when
unpickled, and asserts the marker never appears and the refusal is one line.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from prunelimit.config import load_config
from helpers import cli, one_error as one_error_line


class _CreatesMarker:
    """Unpickling this object calls ``open(marker, "w")``: a stand-in for arbitrary code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def evil_npy(tmp_path, marker):
    path = tmp_path / "evil.npy"
    arr = np.empty(1, dtype=object)
    arr[0] = _CreatesMarker(marker)
    np.save(path, arr, allow_pickle=True)
    return path


def evil_checkpoint(tmp_path, marker):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "payload": _CreatesMarker(marker)}, path)
    return path


@pytest.fixture
def pruned_run(tmp_path, capsys):
    """A run directory made by `prune ... --allow-pickle` on the embedded digits data."""
    out = tmp_path / "run"
    assert cli("prune", "--model", "fc_small", "--dataset", "digits", "--sparsity", "0.5", "--out", out,
               "--allow-pickle", "--no-progress") == 0
    capsys.readouterr()
    return out


def test_the_evil_files_do_run_code_when_unpickled(tmp_path):
    """Positive control: without this the tests below could pass with a harmless pickle."""
    marker = tmp_path / "ran"
    np.load(evil_npy(tmp_path, marker), allow_pickle=True)
    assert marker.exists()
    marker.unlink()
    torch.load(evil_checkpoint(tmp_path, marker), weights_only=False)
    assert marker.exists()


def test_prune_with_flag_saves_no_opt_in_in_the_run_directory(pruned_run):
    text = (pruned_run / "config.yaml").read_text()
    assert "pickle" not in text
    assert "allow_pickle" not in yaml.safe_load(text)["model"]


@pytest.mark.parametrize("loaded", ["masks", "checkpoint"])
def test_finetune_after_prune_with_flag_does_not_unpickle_without_its_own_flag(tmp_path, pruned_run, capsys,
                                                                                loaded):
    marker = tmp_path / "ran"
    flag = (["--masks", evil_npy(tmp_path, marker)] if loaded == "masks"
            else ["--checkpoint", evil_checkpoint(tmp_path, marker)])
    assert cli("finetune", pruned_run, *flag, "--epochs", "1", "--no-progress") == 2
    assert "--allow-pickle" in one_error_line(capsys)
    assert not marker.exists()


@pytest.mark.parametrize("where", ["model", "top"])
def test_a_crafted_run_directory_cannot_opt_in(tmp_path, pruned_run, capsys, where):
    cfg_path = pruned_run / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    if where == "model":
        cfg["model"]["allow_pickle"] = True
    else:
        cfg["allow_pickle"] = True
    cfg_path.write_text(yaml.safe_dump(cfg))
    marker = tmp_path / "ran"
    assert cli("finetune", pruned_run, "--masks", evil_npy(tmp_path, marker), "--epochs", "1",
               "--no-progress") == 2
    line = one_error_line(capsys)
    assert "allow_pickle" in line and "--allow-pickle flag" in line
    assert not marker.exists()


@pytest.mark.parametrize("text", ["model: {name: fc_small, allow_pickle: true}\n", "allow_pickle: true\n"])
def test_a_user_yaml_cannot_opt_in(tmp_path, capsys, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match="--allow-pickle flag"):
        load_config(path)
    assert cli("validate", path) == 2
    assert cli("run", path, "--out", tmp_path / "r") == 2
    assert not (tmp_path / "r").exists()
    for override in ("model.allow_pickle=true", "allow_pickle=true"):
        with pytest.raises(ValueError, match="--allow-pickle flag"):
            load_config("default", [override])


def test_run_directories_of_older_versions_still_load(tmp_path):
    """They recorded the safe default ``model.allow_pickle: false``; it is accepted and means nothing."""
    path = tmp_path / "c.yaml"
    path.write_text("model: {name: fc_small, allow_pickle: false}\n")
    assert load_config(path).model.name == "fc_small"


def test_the_flag_on_the_loading_command_line_is_what_opts_in(tmp_path, pruned_run, capsys):
    """With --allow-pickle on finetune itself the file is unpickled (and then refused as not a mask list)."""
    marker = tmp_path / "ran"
    rc = cli("finetune", pruned_run, "--masks", evil_npy(tmp_path, marker), "--epochs", "1", "--no-progress",
             "--allow-pickle")
    assert rc == 2 and marker.exists()
