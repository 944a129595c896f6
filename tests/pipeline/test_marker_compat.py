"""A stage marker written before a config key existed still resumes while that key stays at its default
(the older version ran as the default), and is refused once the key is set to something else."""
from __future__ import annotations

import dataclasses

import pytest

from prunelimit.config import load_config
from prunelimit.errors import PrunelimitError
from prunelimit.pipeline.stages import StageRunner, spectrum_stage
from prunelimit.runs.rundir import RunDir


def _older_marker(run: RunDir, runner: StageRunner, stage, dropped: str) -> None:
    """Mark ``stage`` done with a fingerprint lacking ``spectrum.<dropped>``, as an older version wrote it."""
    fp = runner.fingerprint(stage)
    section = fp["spectrum"]
    assert dropped in section            # the key exists now ...
    del section[dropped]                 # ... but not when the marker was written
    run.mark_done(stage.name, {"dim": 3}, fp)


def test_marker_without_a_newer_key_resumes_at_its_default_and_is_refused_otherwise(tmp_path):
    cfg = load_config("default")
    run = RunDir(tmp_path / "run")
    runner = StageRunner(cfg, run)
    _older_marker(run, runner, spectrum_stage(cfg), "matrix")
    assert cfg.spectrum.matrix == "hessian"
    assert runner.check(spectrum_stage(cfg))["dim"] == 3          # default: the older run's matrix

    gn = dataclasses.replace(cfg, spectrum=dataclasses.replace(cfg.spectrum, matrix="gauss_newton"))
    with pytest.raises(PrunelimitError, match=r"spectrum\.matrix: None -> 'gauss_newton'"):
        StageRunner(gn, run).check(spectrum_stage(gn))


def test_a_changed_existing_key_is_still_refused(tmp_path):
    cfg = load_config("default")
    run = RunDir(tmp_path / "run")
    runner = StageRunner(cfg, run)
    _older_marker(run, runner, spectrum_stage(cfg), "matrix")
    other = dataclasses.replace(cfg, spectrum=dataclasses.replace(cfg.spectrum, lanczos_iter=cfg.spectrum.lanczos_iter + 1))
    with pytest.raises(PrunelimitError, match="spectrum.lanczos_iter"):
        StageRunner(other, run).check(spectrum_stage(other))


def test_a_later_partial_command_keeps_the_sections_it_did_not_run():
    """`prunelimit spectrum` on a directory `prunelimit run` made: summary.json keeps the limit and GP."""
    from prunelimit.pipeline.results import RunSummary

    full = RunSummary.from_json({"pipeline": "default", "model": "fc_small", "dataset": "digits", "sparsity": 0.9,
                                 "dense": {"source": "trained", "test_top1": 97.0},
                                 "extra": {"note": "earlier"}})
    partial = RunSummary(pipeline="limit", model="fc_small", dataset="digits", seconds=1.0,
                         extra={"note": "now"})
    merged = partial.keeping(full)
    assert merged.dense == full.dense and merged.sparsity == 0.9     # kept from the earlier summary
    assert merged.seconds == 1.0 and merged.extra["note"] == "now"   # this command's own values win
    assert merged.pipeline == "default"
    assert partial.keeping(None) is partial
    assert RunSummary.from_json(merged.to_json()) == merged


def _open_and(cfg, action):
    from prunelimit.pipeline.common import open_run

    with open_run(cfg, ["test"]) as ctx:
        action(ctx)


def test_a_command_failing_before_any_stage_leaves_the_recorded_config_as_it_was(tmp_path):
    """`finetune RUN --data-path /wrong` failed while loading data and still rewrote config.yaml, so every
    later plain `finetune RUN` inherited /wrong: a command that started no stage now puts it back."""
    from prunelimit.pipeline.stages import Stage

    base = dataclasses.replace(load_config("default"), out=str(tmp_path / "run"))
    config = tmp_path / "run" / "config.yaml"
    _open_and(base, lambda ctx: ctx.runner.start(Stage("dense", ("train",))))
    before = config.read_bytes()

    other = dataclasses.replace(base, eval_batch_size=7)   # a value the failing command would record

    def fail_while_loading(ctx):
        assert b"eval_batch_size: 7" in config.read_bytes()   # written when the run opened ...
        raise PrunelimitError("data_path '/wrong' does not exist")

    with pytest.raises(PrunelimitError):
        _open_and(other, fail_while_loading)
    assert config.read_bytes() == before                       # ... and put back when it failed

    def fail_after_starting(ctx):
        ctx.runner.start(Stage("dense", ("train",)))
        raise PrunelimitError("failed during the stage")

    with pytest.raises(PrunelimitError):
        _open_and(other, fail_after_starting)
    assert b"eval_batch_size: 7" in config.read_bytes()      # work began under it: the record stays
