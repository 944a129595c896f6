"""How the CLI ends: user errors in one line, bugs with their traceback, signals and closed pipes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prunelimit import PrunelimitError
from prunelimit.cli import commands
from prunelimit.cli.main import main
from prunelimit.config import ConfigError
from prunelimit.data import UnsafePickleError
from prunelimit.runs.checkpoint import CheckpointError
from prunelimit.train.loop import TrainingDiverged

SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.mark.parametrize("cls", [ConfigError, CheckpointError, UnsafePickleError, TrainingDiverged])
def test_user_error_classes_share_the_base_and_stay_value_errors(cls):
    assert issubclass(cls, PrunelimitError) and issubclass(cls, ValueError)


def test_a_user_error_is_one_line_with_exit_2(monkeypatch, capsys):
    def bad_input(args, argv):
        raise PrunelimitError("config 'x.yaml': train.lr must be > 0; got -1")

    monkeypatch.setitem(commands.COMMANDS, "ls", bad_input)
    assert main(["ls"]) == 2
    assert capsys.readouterr().err == "error: config 'x.yaml': train.lr must be > 0; got -1\n"


def test_a_plain_value_error_is_a_bug_and_keeps_its_traceback(monkeypatch, capsys):
    def internal_bug(args, argv):
        raise ValueError("shapes (3,) and (4,) do not match")

    monkeypatch.setitem(commands.COMMANDS, "ls", internal_bug)
    assert main(["ls"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "internal_bug" in err
    assert "ValueError: shapes (3,) and (4,) do not match" in err
    assert err.strip().splitlines()[-1].startswith("this is a bug in prunelimit")
    assert "error: " not in err


def test_sigterm_stops_like_ctrl_c_with_the_resume_message(monkeypatch, capsys):
    def killed(args, argv):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts this
        raise AssertionError("SIGTERM was not delivered")

    monkeypatch.setitem(commands.COMMANDS, "ls", killed)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["ls"]) == 143
    assert "run the same command again to resume" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_closed_pipe_exits_quietly_0_for_printing_commands_141_for_work_cut_short(monkeypatch, capsys):
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.Popen([sys.executable, "-m", "prunelimit", "ls"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # like `| head` that has read enough
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0   # `ls`/`report | head`: the reader got what it wanted
    assert err == ""

    def pipe_closes_mid_run(args, argv):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(commands, "dispatch", pipe_closes_mid_run)
    monkeypatch.setattr("prunelimit.cli.main._silence_stdout", lambda: None)
    assert main(["run"]) == 141          # `run | head`: the run stopped before its end, and says so
    assert "stopped before it finished; run the same command again to resume" in capsys.readouterr().err
    assert main(["report", "somewhere"]) == 0
    assert capsys.readouterr().err == ""


def test_a_collapsed_layer_is_named_in_one_warning_line(tmp_path, capsys):
    # one kept weight of 1,056: fc2's init range is twice fc1's, so fc1 is pruned to 100 %
    assert main(["prune", "--model", "tiny_mlp", "--input-shape", "1,8,8", "--num-classes", "2",
                 "--sparsity", "0.999", "--out", str(tmp_path / "p"), "--no-progress"]) == 0
    err = capsys.readouterr().err.splitlines()
    collapse = [line for line in err if "layer collapse" in line]
    assert len(collapse) == 1 and collapse[0].startswith("warning: GP at sparsity 0.999 prunes 1 layer(s) "
                                                          "entirely") and "fc1.weight" in collapse[0], err
    assert not any("UserWarning" in line for line in err), err


def test_warnings_from_other_libraries_keep_their_file_and_category(monkeypatch, capsys):
    import warnings

    def third_party(args, argv):
        warnings.warn("a third-party notice", UserWarning)  # raised from this test file, outside prunelimit
        return 0

    monkeypatch.setitem(commands.COMMANDS, "ls", third_party)
    with pytest.warns(UserWarning, match="a third-party notice") as caught:  # handed on to Python's machinery
        assert main(["ls"]) == 0
    assert [w.filename for w in caught] == [__file__]
    assert "warning: a third-party notice" not in capsys.readouterr().err


def test_refusals_a_new_user_met_are_one_line_that_says_what_to_do(tmp_path, capsys):
    from helpers import one_error

    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert main(["validate", str(empty)]) == 2             # its own error alone, no "1 of 1 failed" line
    assert "is empty" in one_error(capsys)
    assert main(["validate", "--quiet", "default", str(empty)]) == 2
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == "OK default" and lines[1].startswith(f"FAILED {empty}: ") and "is empty" in lines[1]
    assert captured.err == "error: 1 of 2 config(s) failed validation\n"
    with pytest.raises(SystemExit) as stop:                 # argparse's own refusals: no usage block
        main(["prune", "--sparsity", "x"])
    assert stop.value.code == 2 and "invalid float value: 'x'; see `prunelimit prune -h`" in one_error(capsys)
    assert main(["run", "--bogus"]) == 2
    assert one_error(capsys) == "error: unrecognized arguments: --bogus; see `prunelimit run -h`"
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in one_error(capsys)
    assert main(["report", str(tmp_path)]) == 2             # exists, but is no finished run
    assert "has no summary.json" in one_error(capsys)
    for argv in (["run", "train.lr"], ["run", "default", "train.lr"]):
        assert main(argv) == 2
        assert "write train.lr=VALUE" in one_error(capsys)
