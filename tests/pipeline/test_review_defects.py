"""Regression tests for the defects a new-user review found in the pipeline (issue 7, second round):
a folder named like a shipped config, a read-only run directory, the summary's file list."""
from __future__ import annotations

import errno
import os

import pytest

from prunelimit.config import load_config
from prunelimit.config.loader import resolve_config_path, shipped_configs
from prunelimit.errors import PrunelimitError
from prunelimit.runs.report import summary_lines
from prunelimit.pipeline.results import RunSummary
from prunelimit.runs.rundir import RunDir
from helpers import cli


def test_a_folder_named_default_does_not_hide_the_embedded_config(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "default").mkdir()                       # e.g. the run directory of `run --out default`
    shipped = shipped_configs()
    name = next(n for n in shipped if n != "default")
    (tmp_path / name).mkdir()
    assert resolve_config_path("default") == shipped["default"]
    assert resolve_config_path(name) == shipped[name]
    assert load_config("default").model.name == load_config(str(shipped["default"])).model.name
    assert cli("validate", "default") == 0
    capsys.readouterr()
    (tmp_path / "mine").mkdir()                          # a folder that names no shipped config is still refused
    with pytest.raises(PrunelimitError, match="'mine' is a directory"):
        resolve_config_path("mine")


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_a_read_only_run_directory_is_one_line_naming_it(tmp_path, monkeypatch, code):
    run = tmp_path / "run"
    run.mkdir()
    real_open = os.open

    def refuse(path, *a, **k):
        if str(path).startswith(str(run)):
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(PrunelimitError) as e:
        with RunDir(run).lock():
            pytest.fail("the lock must not be taken")
    msg = str(e.value)
    assert "\n" not in msg and str(run) in msg and f"errno {code}" in msg and "writable --out" in msg


def test_the_read_only_run_directory_through_the_cli(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    run.mkdir()
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, *a, **k: (_ for _ in ()).throw(OSError(errno.EROFS, "Read-only file system", str(path)))
                        if str(path).startswith(str(run)) else real_open(path, *a, **k))
    assert cli("run", "--out", run, "--no-progress") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(run) in err[0] and "errno 30" in err[0], err


def test_files_in_lists_the_top_level_files_dense_and_every_folder(tmp_path):
    for rel in ("config.yaml", "environment.json", "summary.json", "report.md", ".lock", "dense/train_log.csv",
                "dense/model_final.pth.tar", "limit/sweep.csv", "gp/masks.safetensors", "stages/dense.json"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    lines = summary_lines(RunSummary(pipeline="default", run_dir=str(tmp_path), gp={}))
    listed = "\n".join(lines[lines.index(f"Files in {tmp_path}/:"):])
    assert "  .: config.yaml, environment.json, report.md, summary.json" in listed   # no hidden .lock
    assert "  dense/: model_final.pth.tar, train_log.csv" in listed
    assert "  limit/: sweep.csv" in listed and "  stages/: dense.json" in listed
    assert "gp/" not in listed   # a folder of no method this summary names is not listed
