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


# ---- run directories store paths relative to themselves: a moved run works, a copied one reads its own ----
def _trained_run(tmp_path, monkeypatch):
    from test_stage_units import Stubs, context, tiny_data
    from prunelimit.pipeline.dense import dense_model

    Stubs(monkeypatch)
    ctx = context(tmp_path)
    model, result = dense_model(ctx, tiny_data())
    return ctx.run.path, model, result


def _reload(run_path, monkeypatch):
    import torch
    from test_stage_units import TINY, tiny_data
    from prunelimit.pipeline.common import Context
    from prunelimit.pipeline.dense import dense_model

    def no_training(*a, **k):
        raise AssertionError("a finished dense stage must load its weights, not train")

    monkeypatch.setattr("prunelimit.train.train", no_training)
    cfg = load_config("default", [*TINY, f"out={run_path}"])
    return dense_model(Context(cfg=cfg, run=RunDir(run_path), device=torch.device("cpu")), tiny_data())


def _same(a, b) -> bool:
    import torch

    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_markers_store_paths_relative_to_the_run(tmp_path, monkeypatch):
    import json

    run, _, result = _trained_run(tmp_path, monkeypatch)
    assert result.weights == "dense/model_final.pth.tar"
    assert json.loads((run / "stages" / "dense.json").read_text())["weights"] == "dense/model_final.pth.tar"


@pytest.mark.parametrize("how", ["move", "copy"])
def test_a_moved_or_copied_run_reads_its_own_weights(tmp_path, monkeypatch, how):
    import shutil

    import torch

    run, model, _ = _trained_run(tmp_path / "a", monkeypatch)
    other = tmp_path / "b" / run.name
    (shutil.move if how == "move" else shutil.copytree)(str(run), str(other))
    if how == "copy":   # the original's weights change afterwards: the copy must not see it
        torch.save({"state_dict": {k: torch.zeros_like(v) for k, v in model.state_dict().items()}},
                   run / "dense" / "model_final.pth.tar")
    loaded, result = _reload(other, monkeypatch)
    assert result.weights == "dense/model_final.pth.tar" and _same(loaded, model)


def test_an_older_absolute_path_is_read_inside_the_copy_or_refused(tmp_path, monkeypatch):
    import json
    import shutil

    import torch

    run, model, _ = _trained_run(tmp_path / "a", monkeypatch)
    marker = run / "stages" / "dense.json"
    record = json.loads(marker.read_text())
    record["weights"] = str(run / "dense" / "model_final.pth.tar")      # what older versions wrote
    marker.write_text(json.dumps(record))
    copy = tmp_path / "b" / run.name
    shutil.copytree(run, copy)
    torch.save({"state_dict": {k: torch.zeros_like(v) for k, v in model.state_dict().items()}},
               run / "dense" / "model_final.pth.tar")
    loaded, _ = _reload(copy, monkeypatch)
    assert _same(loaded, model)                   # the copy's own file, not the (changed) original's
    renamed = tmp_path / "c" / "renamed"
    shutil.copytree(copy, renamed)
    with pytest.raises(PrunelimitError, match=r"names the dense weights .* lies outside it"):
        _reload(renamed, monkeypatch)


# ---- a command refused for a config-only problem writes nothing ----------------------------------------
def test_a_missing_arrays_file_is_refused_before_the_run_directory_exists(tmp_path, capsys):
    out = tmp_path / "D"
    assert cli("run", f"data.dataset={tmp_path / 'mine.npz'}", "--out", out, "--no-progress") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mine.npz" in err[0] and "is not a file" in err[0], err
    assert not out.exists()


def test_eval_mode_without_weights_is_refused_by_validate_and_run_before_any_file(tmp_path, capsys):
    overrides = ["pipeline=limit", "stages.train=false"]
    with pytest.raises(PrunelimitError, match="stages.train is false .* set model.checkpoint"):
        load_config("default", overrides)
    cfg = tmp_path / "eval.yaml"
    cfg.write_text("pipeline: limit\nstages:\n  train: false\n")
    assert cli("validate", cfg) == 2
    said = capsys.readouterr()
    assert "stages.train is false" in said.out + said.err and "model.checkpoint" in said.out + said.err
    out = tmp_path / "D"
    assert cli("run", *overrides, "--out", out, "--no-progress") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stages.train is false" in err[0], err
    assert not out.exists()


# ---- a rerun's summary keeps the time of the run that did the work ----------------------------------
def test_a_reused_stage_keeps_the_seconds_it_took_when_computed(tmp_path, monkeypatch):
    import json

    from prunelimit.pipeline import stages as stages_mod
    from prunelimit.pipeline.results import JsonResult
    from prunelimit.pipeline.stages import Stage, StageRunner, StageUnit

    clock = [0.0]
    monkeypatch.setattr(stages_mod.time, "perf_counter", lambda: clock[0])

    class Slow(StageUnit):   # its work takes 100 s of the fake clock, loading it 0.5 s
        def stage(self):
            return Stage("slow", ("seed",))

        def run(self):
            clock[0] += 100.0
            return JsonResult()

        def load(self, record):
            clock[0] += 0.5
            return JsonResult()

    cfg = load_config("default")
    first = StageRunner(cfg, RunDir(tmp_path))
    first.drive(Slow())
    assert json.loads((tmp_path / "stages" / "slow.json").read_text())["_seconds"] == 100.0
    assert first.work_seconds(101.0, {"data": 1.0}) == (101.0, {"data": 1.0, "slow": 100.0}, ())
    again = StageRunner(cfg, RunDir(tmp_path))
    again.drive(Slow())
    total, per_stage, reused = again.work_seconds(1.6, {"data": 1.0})
    assert (total, per_stage, reused) == (101.1, {"data": 1.0, "slow": 100.0}, ("slow",))   # 1.6 - 0.5 + 100
    lines = summary_lines(RunSummary(pipeline="limit", seconds=total, stage_seconds=per_stage, reused_stages=reused))
    assert lines[-1] == "Finished in 101.1 s (seconds per stage: data 1.0, slow 100.0 (reused))."
    marker = tmp_path / "stages" / "slow.json"   # a marker of an older version kept no time
    marker.write_text(json.dumps({k: v for k, v in json.loads(marker.read_text()).items() if k != "_seconds"}))
    old = StageRunner(cfg, RunDir(tmp_path))
    old.drive(Slow())
    total, per_stage, reused = old.work_seconds(1.6, {"data": 1.0})
    assert (total, per_stage, reused) == (1.6, {"data": 1.0}, ("slow",))
    assert summary_lines(RunSummary(pipeline="limit", seconds=total, stage_seconds=per_stage,
                                    reused_stages=reused))[-1].endswith("(seconds per stage: data 1.0, slow reused).")


# ---- docs/ARCHITECTURE.md's "adding a stage" example runs as written -----------------------------------
def test_the_adding_a_stage_example_runs_as_written(tmp_path, monkeypatch):
    """The example's three code blocks, executed as they stand in the docs, give a stage that is planned,
    computes the trace of the fine-tuned weights, and loads it on a rerun (the fourth block, one line in
    run_gp, needs the field it names added to PruneResult and is not run here)."""
    import re
    from pathlib import Path

    import torch
    from test_stage_units import Stubs, context, prune_and_finetune, tiny_data
    from prunelimit.pipeline import stages as stages_mod
    from prunelimit.pipeline.dense import dense_model
    from prunelimit.pipeline.hessian import hessian_setup
    from prunelimit.pipeline.stages import planned_stages
    from prunelimit.spectrum import hessian_trace

    doc = (Path(__file__).parents[2] / "docs" / "ARCHITECTURE.md").read_text()
    section = doc[doc.index("### Adding a stage"):]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)[:3]
    namespace: dict = {}
    monkeypatch.setattr(stages_mod, "_PLANNERS", list(stages_mod._PLANNERS))   # the registration is undone
    for block in blocks:
        exec(compile(block, "ARCHITECTURE.md", "exec"), namespace)
    Stubs(monkeypatch)
    data = tiny_data()
    ctx = context(tmp_path, "spectrum.trace_samples=3")
    model, _ = dense_model(ctx, data)
    unit = prune_and_finetune(ctx, model, data)
    assert "gp_pruned_trace" in [s.name for s in planned_stages(ctx.cfg, ctx.run.path)]
    result = ctx.runner.drive(namespace["PrunedTraceStage"](ctx, unit.model, data, "gp"))
    expected = hessian_trace(hessian_setup(ctx, unit.model, data)[0](), 3, seed=ctx.cfg.seed)
    assert (result.trace, result.stderr) == pytest.approx(expected)
    again = ctx.runner.drive(namespace["PrunedTraceStage"](ctx, torch.nn.Identity(), data, "gp"))   # loaded
    assert again == result
