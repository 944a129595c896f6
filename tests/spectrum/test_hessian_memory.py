"""The memory budget of the cached gradient graphs: sizes, budgets, the graph meter, cache_graph=true."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import prunelimit.spectrum.memory as memory
from prunelimit.errors import PrunelimitError
from prunelimit.spectrum import HessianOperator
from prunelimit.spectrum.memory import GraphMeter, parse_size, resolve_budget


def test_sizes_and_budgets(monkeypatch):
    assert parse_size("6GiB") == 6 * 2**30 and parse_size("512 MB") == 512_000_000 and parse_size("1e3") == 1000
    with pytest.raises(PrunelimitError, match="'lots' is not a size"):
        parse_size("lots")
    monkeypatch.setattr(memory, "available_memory", lambda device: (8 * 2**30, "available RAM (test)"))
    assert resolve_budget(None, torch.device("cpu")).bytes == int(memory.DEFAULT_FRACTION * 8 * 2**30)
    quarter = resolve_budget(0.25, torch.device("cpu"))
    assert quarter.bytes == 2 * 2**30 and "available RAM (test)" in str(quarter)
    assert resolve_budget("0.25", torch.device("cpu")).bytes == 2 * 2**30
    assert resolve_budget("3GiB", torch.device("cpu")).bytes == 3 * 2**30
    assert resolve_budget(12345, torch.device("cpu")).bytes == 12345
    for bad in (-1, 0, True, float("nan")):
        with pytest.raises(PrunelimitError, match="memory_budget"):
            resolve_budget(bad, torch.device("cpu"))


def test_available_memory_on_cpu_is_positive_and_named():
    avail, what = memory.available_memory(torch.device("cpu"))
    assert avail > 0 and "RAM" in what


@pytest.mark.parametrize("n", [16, 256])
def test_graph_meter_counts_the_saved_activations(n):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(100, 50), nn.Tanh(), nn.Linear(50, 10))
    x, y = torch.randn(n, 100), torch.randint(0, 10, (n,))
    params = list(net.parameters())
    with GraphMeter(params, torch.device("cpu")) as meter:
        loss = nn.functional.cross_entropy(net(x), y)
        meter.add(torch.autograd.grad(loss, params, create_graph=True))
    activations = n * (100 + 50 + 10) * 4           # input, hidden, logits: at least these are kept
    gradients = sum(p.numel() for p in params) * 4
    assert activations + gradients <= meter.bytes <= 8 * (activations + gradients)


def test_cache_graph_true_refuses_a_cache_over_budget():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 10), nn.Tanh(), nn.Linear(10, 3))
    batches = [(torch.randn(32, 20), torch.randint(0, 3, (32,))) for _ in range(4)]
    with pytest.raises(PrunelimitError, match="cache_graph=true needs the gradient graphs of all batches"):
        HessianOperator(net, nn.functional.cross_entropy, batches, cache_graph=True, memory_budget=1000)
    op = HessianOperator(net, nn.functional.cross_entropy, batches, cache_graph=False)
    assert op.cached_batches == 0 and "recomputed in every HVP" in op.cache_report


def test_lean_graphs_option_matches_plain_double_backward():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 3 * 3, 5)).double()
    batches = [(torch.randn(6, 3, 8, 8, dtype=torch.float64), torch.randint(0, 5, (6,))) for _ in range(2)]
    lean = HessianOperator(net, nn.functional.cross_entropy, batches, lean_graphs=True)
    plain = HessianOperator(net, nn.functional.cross_entropy, batches, lean_graphs=False)
    assert lean.lean_graphs and not plain.lean_graphs
    V = torch.randn(3, lean.dim, dtype=torch.float64)
    torch.testing.assert_close(lean.matmat(V), plain.matmat(V), rtol=1e-10, atol=1e-12)
    with pytest.raises(PrunelimitError, match="lean_graphs="):
        HessianOperator(net, nn.functional.cross_entropy, batches, lean_graphs="yes")


def test_hessian_batch_size_is_all_data_when_it_fits_else_a_quarter_of_the_budget():
    assert memory.hessian_batch_size(1000.0, 10**9, 4000) == 4000          # 4 MB of graphs: one batch
    assert memory.hessian_batch_size(1000.0, 10**6, 4000) == 250           # 1 MB budget: 250 kB per batch
    assert memory.hessian_batch_size(10.0**9, 10**6, 4000) == 1            # never below one sample


def test_rebatched_data_gives_the_same_hessian():
    """The pipeline re-batches the full data for speed: H v must not depend on the batching."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    x, y = torch.randn(40, 5, dtype=torch.float64), torch.randint(0, 3, (40,))
    small = list(zip(x.split(6), y.split(6)))                              # ragged last batch of 4
    one = [(x, y)]
    v = torch.randn(sum(p.numel() for p in net.parameters()), dtype=torch.float64)
    a = HessianOperator(net, nn.functional.cross_entropy, small).matvec(v)
    b = HessianOperator(net, nn.functional.cross_entropy, one).matvec(v)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
