"""HessianOperator under torch.distributed: 2 CPU processes (gloo), each with half the batches."""
from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
from torch import nn
from torch.func import functional_call
from helpers import free_port as _free_port

pytestmark = [pytest.mark.distributed]  # ~10-15 s: two fresh interpreters import torch


def _setup():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    gen = torch.Generator().manual_seed(1)
    data = [(torch.randn(n, 3, generator=gen, dtype=torch.float64), torch.randint(0, 2, (n,), generator=gen))
            for n in (5, 2, 4)]  # unequal sizes; rank 0 gets batches 0 and 2 (9 samples), rank 1 batch 1
    return net, data


def _full_data_hessian(net, data):
    """Explicit single-process Hessian of the size-weighted mean loss (no torch.distributed involved)."""
    names = [n for n, _ in net.named_parameters()]
    params = dict(net.named_parameters())
    shapes = [params[n].shape for n in names]
    total = sum(len(y) for _, y in data)

    def loss(flat):
        subst = {n: c.view(s) for n, c, s in zip(names, flat.split([math.prod(s) for s in shapes]), shapes)}
        return sum(nn.functional.cross_entropy(functional_call(net, subst, (x,)), y) * len(y) for x, y in data) / total

    flat0 = torch.cat([params[n].detach().reshape(-1) for n in names])
    return torch.autograd.functional.hessian(loss, flat0), torch.autograd.functional.jacobian(loss, flat0)


def _worker(rank: int, world: int, port: int):
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        from prunelimit.spectrum import HessianOperator, hessian_trace, top_eigenvalues
        torch.set_num_threads(1)
        net, data = _setup()
        H, g = _full_data_hessian(net, data)
        shard = data[rank::world]
        v = torch.randn(sum(p.numel() for p in net.parameters()), generator=torch.Generator().manual_seed(3),
                        dtype=torch.float64)
        for cache in (True, False):
            op = HessianOperator(net, nn.functional.cross_entropy, shard, cache_graph=cache)
            assert op.num_samples == 11 and op.local_count == (9 if rank == 0 else 2)
            torch.testing.assert_close(op.matvec(v), H @ v, rtol=1e-9, atol=1e-12)
            torch.testing.assert_close(op.gradient(), g, rtol=1e-9, atol=1e-12)
        evals, _ = top_eigenvalues(op, 2, max_iter=op.dim, tol=1e-9)
        torch.testing.assert_close(evals, torch.linalg.eigvalsh(H).flip(0)[:2], rtol=1e-7, atol=1e-9)
        mean, err = hessian_trace(op, 4)
        exact = torch.stack([z @ H @ z for z in _rademacher(4, op.dim)]).mean().item()
        assert abs(mean - exact) < 1e-9, (mean, exact)
    finally:
        tdist.destroy_process_group()


def _rademacher(num, dim):
    from prunelimit.spectrum import rademacher
    return rademacher(num, dim, 0, torch.float64)


def test_matvec_under_ddp_equals_full_data_matvec():
    mp.spawn(_worker, args=(2, _free_port()), nprocs=2, join=True)
