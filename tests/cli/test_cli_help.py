"""--help says what every flag does and its default; piped output gets no progress bars."""
from __future__ import annotations

import argparse

from prunelimit.cli import commands
from prunelimit.cli.main import build_parser


def subparsers():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


def test_every_flag_has_help_and_config_flags_name_key_and_default():
    for name, p in subparsers().items():
        for action in p._actions:
            if isinstance(action, argparse._HelpAction) or not action.option_strings:
                continue
            assert action.help, f"{name} {action.option_strings} has no help"
            key = commands.FLAG_KEYS.get(action.dest)
            if key is not None:
                assert f"config key {key}; default:" in action.help, (name, action.option_strings, action.help)
    text = subparsers()["prune"].format_help()
    assert "--sparsity SPARSITY" in text and "else 0.9]" in text  # PruneConfig's built-in sparsity


def test_finetune_offers_no_pruning_flags():
    text = subparsers()["finetune"].format_help()
    assert "--sparsity" not in text and "--min-threshold" not in text
    assert "(fine-tuning recipe)" in text and "and pruning" not in text   # its group label says so too


def flag_help(command: str, dest: str) -> str:
    return next(a.help for a in subparsers()[command]._actions if a.dest == dest)


def test_each_default_is_stated_once_and_agrees_with_what_the_command_does():
    for command in ("run", "prune", "finetune", "limit"):
        out = flag_help(command, "out")
        assert out.count("default") == 1, out           # was stated twice, once in the flag's own text
        progress = flag_help(command, "no_progress")
        assert "terminal" in progress and "True" not in progress, progress
    # prune without CONFIG or --dataset evaluates nothing ("no dataset configured"), not digits
    dataset = flag_help("prune", "dataset")
    assert "digits" not in dataset and "nothing is evaluated" in dataset, dataset
    assert "omit to skip" not in flag_help("finetune", "dataset")
    assert "RUN_DIR" in flag_help("finetune", "out") and "CONFIG" not in flag_help("finetune", "epochs")


def test_piped_output_turns_progress_bars_off(monkeypatch):
    args = argparse.Namespace(config=None, overrides=[])
    monkeypatch.setattr(commands, "_interactive", lambda: False)
    assert commands._config(args).show_progress is False
    monkeypatch.setattr(commands, "_interactive", lambda: True)
    assert commands._config(args).show_progress is True
