"""Helpers shared by several test folders (``from helpers import ...``; tests/conftest.py puts tests/ on the path)."""
from __future__ import annotations

import socket

import torch
from torch import nn

from prunelimit.cli.main import main


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, for a fresh gloo/torchrun rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args) -> int:
    """The CLI in this process; arguments may be paths or numbers."""
    return main([str(a) for a in args])


def one_error(capsys) -> str:
    """The one ``error: ...`` line a refused command printed (and nothing else on stderr)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


class TiedLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(11, 6)
        self.fc = nn.Linear(6, 6)
        self.head = nn.Linear(6, 11, bias=False)
        self.head.weight = self.wte.weight  # GPT-2 style tying

    def forward(self, ids):
        return self.head(torch.relu(self.fc(self.wte(ids))))
