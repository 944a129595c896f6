"""Helpers shared by several test folders (``from helpers import ...``; tests/conftest.py puts tests/ on the path)."""
from __future__ import annotations

import math
import socket

import torch
from torch import nn
from torch.func import functional_call

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


def explicit_hessian(model, batches, *, names=None, loss_fn=nn.functional.cross_entropy, regularizer=None):
    """``(H, g)``: d²L/dθ² and dL/dθ by torch.autograd.functional over the flat vector of the parameters
    ``names`` (default: all, in ``named_parameters`` order), with L = Σ_b n_b loss_b / N (+ the
    regularizer of the substituted parameters) and the model in eval mode: the independent reference
    the Hessian operators are checked against."""
    params = dict(model.named_parameters())
    names = list(params) if names is None else list(names)
    shapes = [params[n].shape for n in names]
    total = sum(len(y) for _, y in batches)

    def loss(flat):
        subst = {n: c.view(s) for n, c, s in zip(names, flat.split([math.prod(s) for s in shapes]), shapes)}
        value = sum(loss_fn(functional_call(model, subst, (x,)), y) * len(y) for x, y in batches) / total
        return value if regularizer is None else value + regularizer(subst)

    model.eval()
    flat0 = torch.cat([params[n].detach().reshape(-1) for n in names])
    return torch.autograd.functional.hessian(loss, flat0), torch.autograd.functional.jacobian(loss, flat0)
