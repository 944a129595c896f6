"""HessianOperator under torch.distributed: 2 CPU processes (gloo), each with half the batches."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
from torch import nn
from helpers import explicit_hessian, free_port as _free_port

pytestmark = [pytest.mark.distributed]  # ~10-15 s: two fresh interpreters import torch


def _setup():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    gen = torch.Generator().manual_seed(1)
    data = [(torch.randn(n, 3, generator=gen, dtype=torch.float64), torch.randint(0, 2, (n,), generator=gen))
            for n in (5, 2, 4)]  # unequal sizes; rank 0 gets batches 0 and 2 (9 samples), rank 1 batch 1
    return net, data


def _worker(rank: int, world: int, port: int):
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        from prunelimit.spectrum import HessianOperator, hessian_trace, top_eigenvalues
        torch.set_num_threads(1)
        net, data = _setup()
        H, g = explicit_hessian(net, data)  # single process, no torch.distributed
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
