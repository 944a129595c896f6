"""Several probes per HVP share each recomputed batch's forward and first-order backward; their double
backward runs as a loop or as one vmap'd backward (``batched_probes``), with the same numbers."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from prunelimit.errors import PrunelimitError
from prunelimit.spectrum import HessianOperator, hessian_trace
from prunelimit.spectrum.operator import _batched_probes_choice

torch.set_num_threads(1)


def counted_net(seed: int = 0):
    """A float64 conv + linear net and a counter of its forward passes."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 4 * 4, 4)).double()
    calls = {"forward": 0}
    net.register_forward_hook(lambda *_: calls.__setitem__("forward", calls["forward"] + 1))
    return net, calls


def image_batches(sizes=(5, 4, 3), seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 2, 6, 6, generator=gen, dtype=torch.float64), torch.randint(0, 4, (n,), generator=gen))
            for n in sizes]


@pytest.mark.parametrize("batched", [False, True])
def test_probes_share_each_recomputed_batch_and_equal_one_hvp_per_probe(batched):
    net, calls = counted_net()
    batches = image_batches()
    op = HessianOperator(net, nn.functional.cross_entropy, batches, cache_graph=False, batched_probes=batched)
    V = torch.randn(4, op.dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    calls["forward"] = 0
    together = op.matmat(V)
    assert calls["forward"] == len(batches)               # one forward per batch serves all 4 probes
    assert op.batched_hvp is batched                      # the chosen path ran (no silent fall-back)
    calls["forward"] = 0
    one_by_one = torch.stack([op.matvec(v) for v in V])   # the per-probe reference: 4 forwards per batch
    assert calls["forward"] == len(batches) * len(V)
    torch.testing.assert_close(together, one_by_one, rtol=1e-12, atol=1e-14)
    # and against the plain double backward of the whole loss, built independently per probe
    params = [p for p in net.parameters()]
    total = sum(len(y) for _, y in batches)
    loss = sum(nn.functional.cross_entropy(net(x), y) * len(y) for x, y in batches) / total
    grads = torch.autograd.grad(loss, params, create_graph=True)
    for v, row in zip(V, together):
        parts = v.split([p.numel() for p in params])
        hv = torch.autograd.grad(grads, params, [c.view_as(p) for c, p in zip(parts, params)], retain_graph=True)
        torch.testing.assert_close(row, torch.cat([h.reshape(-1) for h in hv]), rtol=1e-10, atol=1e-12)


def test_hutchinson_trace_is_the_same_with_batched_and_looped_probes():
    net, _ = counted_net(3)
    batches = image_batches(seed=4)
    traces = [hessian_trace(HessianOperator(net, nn.functional.cross_entropy, batches, cache_graph=False,
                                            batched_probes=batched), 6, seed=1, batch=3)
              for batched in (False, True)]
    assert traces[0][0] == pytest.approx(traces[1][0], rel=1e-12)
    assert traces[0][1] == pytest.approx(traces[1][1], rel=1e-9)


def test_the_choice_is_automatic_per_device_overridable_and_reported():
    assert _batched_probes_choice("auto", torch.device("cpu")) == (False, "batched_probes=auto on cpu")
    assert _batched_probes_choice("auto", torch.device("cuda")) == (True, "batched_probes=auto on cuda")
    assert _batched_probes_choice("TRUE", torch.device("cpu"))[0] is True
    assert _batched_probes_choice(False, torch.device("cuda"))[0] is False
    net, _ = counted_net()
    op = HessianOperator(net, nn.functional.cross_entropy, image_batches(), cache_graph=False)
    assert op.batched_hvp is False and "double backward looped (batched_probes=auto on cpu)" in op.cache_report
    op = HessianOperator(net, nn.functional.cross_entropy, image_batches(), batched_probes=True)
    assert "double backward batched (vmap) (batched_probes=true)" in op.cache_report
    with pytest.raises(PrunelimitError, match="batched_probes='sometimes' is invalid"):
        HessianOperator(net, nn.functional.cross_entropy, image_batches(), batched_probes="sometimes")


def test_a_failing_vmap_backward_falls_back_to_the_loop_and_says_so(monkeypatch):
    net, _ = counted_net()
    op = HessianOperator(net, nn.functional.cross_entropy, image_batches(), cache_graph=False, batched_probes=True)
    V = torch.randn(3, op.dim, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    expected = torch.stack([op.matvec(v) for v in V])
    plain_grad = torch.autograd.grad

    def no_vmap(*args, **kwargs):
        if kwargs.get("is_grads_batched"):
            raise RuntimeError("Batching rule not implemented for aten::something")
        return plain_grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", no_vmap)
    with pytest.warns(UserWarning, match="batched \\(vmap\\) double backward failed .*looping over the probes"):
        result = op.matmat(V)
    torch.testing.assert_close(result, expected, rtol=1e-12, atol=1e-14)
    assert op.batched_hvp is False and "vmap failed, looping" in op.cache_report
