"""Shared test setup. The tests mirror the package (tests/spectrum/ tests prunelimit.spectrum, ...);
the helpers several folders use live in ``tests/helpers.py`` (free TCP port, the CLI in-process, the
one-line error of a refused command, a tied-weight model) and ``tests/model_zoo.py`` (tiny third-party
models). This file puts ``tests/`` on the import path so every folder imports them the same way
(``from helpers import cli``), and offers the common ones as fixtures."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

import helpers  # noqa: E402  (after the path is set)


@pytest.fixture
def free_port() -> int:
    """A TCP port nothing listens on now (for a gloo / torchrun rendezvous)."""
    return helpers.free_port()


@pytest.fixture
def run_cli():
    """``run_cli(*args) -> exit code``: the CLI in this process."""
    return helpers.cli


@pytest.fixture
def refusal(capsys):
    """``refusal() -> str``: the one ``error: ...`` line the last refused command printed."""
    return lambda: helpers.one_error(capsys)
