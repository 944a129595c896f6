"""`finetune RUN` with another model or dataset is refused before anything is written (issue 7, bug 7).

model.name was taken for the volatile run name and never compared, so `finetune RUN --model X` rewrote
config.yaml and failed on the checkpoint; every later plain `finetune RUN` then failed too. `--dataset`
did the same with a dataset the run was not pruned on."""
from __future__ import annotations

from pathlib import Path

import pytest

from helpers import cli, one_error


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
            and p.name != ".lock"}


@pytest.fixture
def pruned(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli("prune", "--model", "fc_small", "--dataset", "digits", "--sparsity", "0.5", "--out", out,
               "--no-progress") == 0
    capsys.readouterr()
    return out


def test_finetune_with_another_model_or_dataset_is_refused_and_writes_nothing(pruned, capsys):
    before = snapshot(pruned)
    assert cli("finetune", pruned, "--model", "tiny_mlp", "--epochs", "1", "--no-progress") == 2
    assert "(model: name 'fc_small' -> 'tiny_mlp')" in one_error(capsys)
    assert snapshot(pruned) == before
    assert cli("finetune", pruned, "--dataset", "mnist", "--epochs", "1", "--no-progress") == 2
    line = one_error(capsys)
    assert "--dataset mnist" in line and "pruned on dataset 'digits'" in line and "drop --dataset" in line
    assert snapshot(pruned) == before
    assert cli("finetune", pruned, "--dataset", "digits", "--epochs", "1", "--no-progress") == 0   # the same one
