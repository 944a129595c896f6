"""Third-party models, plain and wrapped: masks, coverage, round trips, Hessian products and fine-tuning.

The models come from tiny configs (tests/model_zoo.py; nothing is downloaded). For each one, plain and
under torch.compile / nn.DataParallel:
 - GP prunes exactly round(p N) weights, the same set as a brute-force sort of all prunable |w|;
 - coverage: every weight matrix is prunable except the embedding-like tables left out on purpose;
 - masks apply / save / load and the pruned weights round-trip through a checkpoint into a fresh plain model;
 - HessianOperator's H v equals an independent plain double backward (finite differences of the
   gradient where PyTorch has no double backward: MobileNet-V3's hardsigmoid);
 - a short masked fine-tune with the model's own loss leaves every pruned weight exactly zero (tied included);
 - the sparsity report finds every masked layer in the forward pass (MACs = weights x positions), and the
   masks survive a torch.nn.utils.prune round trip and the compressed export.
"""
import copy

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import prunelimit as pl
from prunelimit.pruning import count_nonzero_pruned, prunable_parameters, prune_count
from prunelimit.train.batches import call_model

from model_zoo import BUILDERS, WRAPPERS, build, first_example

pytest.importorskip("timm")
pytest.importorskip("transformers")

SPARSITY = 0.6


def brute_force_masks(model, include):
    """The k smallest |w| over all prunable weights by a stable sort of their concatenation."""
    params = prunable_parameters(model, include)
    flat = torch.cat([p.detach().abs().reshape(-1) for _, p in params])
    k = prune_count(SPARSITY, flat.numel())
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[torch.sort(flat, stable=True).indices[:k]] = False
    return {n: m.view(p.shape) for (n, p), m in zip(params, keep.split([p.numel() for _, p in params]))}


def mean_loss(model, case):
    """Size-weighted mean loss over the case's batches."""
    total, count = 0.0, 0
    for x, y in case.batches:
        n = y.shape[0]
        total = total + case.loss_fn(call_model(model, x), y) * n
        count += n
    return total / count


def reference_hvp(model, case, params, v):
    """H v by a plain double backward of the whole loss (math attention kernel: the fused ones have none)."""
    with sdpa_kernel([SDPBackend.MATH]):
        grads = torch.autograd.grad(mean_loss(model, case), params, create_graph=True)
    flat = torch.cat([g.reshape(-1) for g in grads])
    return torch.cat([h.reshape(-1) for h in torch.autograd.grad(flat @ v, params)])


def finite_difference_hvp(model, case, params, v, h=1e-5):
    """(g(w + h v) - g(w - h v)) / 2h: first derivatives only, so it needs no double backward at all."""
    def grad_at(sign):
        with torch.no_grad():
            offset = 0
            for p in params:
                p += sign * h * v[offset:offset + p.numel()].view_as(p)
                offset += p.numel()
        g = torch.autograd.grad(mean_loss(model, case), params)
        with torch.no_grad():
            offset = 0
            for p in params:
                p -= sign * h * v[offset:offset + p.numel()].view_as(p)
                offset += p.numel()
        return torch.cat([x.reshape(-1) for x in g])
    return (grad_at(1) - grad_at(-1)) / (2 * h)


# Every model, plain and through every wrapper (the same checks again through the wrapper's names).
CASES = [(name, wrapper) for name in BUILDERS for wrapper in WRAPPERS]


@pytest.mark.parametrize("name, wrapper", CASES)
def test_model_matrix(name, wrapper, tmp_path):
    case = build(name)
    plain = case.model
    model = WRAPPERS[wrapper](plain)
    fresh = copy.deepcopy(plain)

    # exact count, same set as the brute-force sort; keys are the plain model's names whatever the wrapper
    masks = pl.global_magnitude_masks(model, SPARSITY, include=case.include)
    ref = brute_force_masks(plain, case.include)
    assert list(masks) == list(ref) == [n for n, _ in prunable_parameters(plain, case.include)]
    assert all(torch.equal(masks[k], ref[k]) for k in ref)
    total = sum(m.numel() for m in masks.values())
    assert sum(int((~m).sum()) for m in masks.values()) == prune_count(SPARSITY, total)
    for alias, canonical in case.tied.items():
        assert canonical in masks and alias not in masks

    # coverage: every weight matrix but the deliberate exclusions
    cov = pl.coverage(model)
    assert {x.name for x in cov.left_out} == case.left_out
    assert cov.covered_matrix_weights == cov.matrix_weights - sum(x.numel for x in cov.left_out)

    # apply / save / load round trip, into a fresh plain model, tied aliases and wrapper prefixes accepted
    pl.apply_masks(model, masks)
    path = tmp_path / "mask.safetensors"
    pl.save_masks(path, masks)
    loaded = pl.load_masks(path)
    keyed = {("module." if wrapper == "dataparallel" else "") + k: v for k, v in loaded.items()}
    for alias, canonical in case.tied.items():
        keyed[alias] = keyed.pop(("module." if wrapper == "dataparallel" else "") + canonical)
    pl.apply_masks(fresh, keyed)
    assert count_nonzero_pruned(fresh, loaded) == 0 and count_nonzero_pruned(model, loaded) == 0
    torch.save({"state_dict": model.state_dict()}, tmp_path / "pruned.pth")
    from prunelimit.runs.checkpoint import load_model_weights
    load_model_weights(fresh, tmp_path / "pruned.pth")
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), plain.state_dict().values()))

    # H v against an independent computation
    op = pl.HessianOperator(model, case.loss_fn, case.batches)
    assert op.param_names == [n for n, _ in pl.spectrum.hessian_parameters(plain)]
    gen = torch.Generator().manual_seed(11)
    v = torch.randn(op.dim, generator=gen, dtype=torch.float64)
    hv = op.matvec(v)
    if name == "mobilenet_v3":  # hardsigmoid has no double backward in PyTorch
        want = finite_difference_hvp(plain, case, op.params, v)
        torch.testing.assert_close(hv, want, rtol=1e-5, atol=1e-7 * want.abs().max().item())
    else:
        want = reference_hvp(plain, case, op.params, v)
        torch.testing.assert_close(hv, want, rtol=1e-9, atol=1e-11 * want.abs().max().item())

    # a short masked fine-tune with the model's own loss: pruned weights stay exactly zero
    before = {n: p.detach().clone() for n, p in plain.named_parameters()}
    cfg = pl.TrainConfig(epochs=1, batch_size=2, lr=0.05, momentum=0.9, weight_decay=1e-3, schedule="none")
    result = pl.finetune(model, masks, case.batches, case.batches[:1], cfg, loss_fn=case.loss_fn,
                         show_progress=False)
    assert count_nonzero_pruned(plain, masks) == 0
    for alias in case.tied:
        assert int((plain.get_parameter(alias) != 0).sum()) == int(masks[case.tied[alias]].sum())
    moved = [n for n, p in plain.named_parameters() if not torch.equal(p, before[n])]
    assert any(n in masks for n in moved), "fine-tuning changed no prunable weight"
    assert result.final["test_loss"] == result.final["test_loss"]  # evaluated, finite

    # sparsity report on one example, torch.nn.utils.prune and compressed-export round trips
    rep = pl.sparsity_report(model, masks, first_example(case))
    assert all(x.dense_macs is not None and x.dense_macs % x.params == 0 for x in rep.layers), \
        [x.name for x in rep.layers if x.dense_macs is None]
    assert rep.sparse_macs < rep.dense_macs and rep.nonzeros == rep.params - pl.mask_sparsity(masks).pruned
    pl.save_compressed(tmp_path / "c.safetensors", model, masks)
    other = copy.deepcopy(fresh)
    pl.load_compressed(tmp_path / "c.safetensors", other)
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), plain.state_dict().values()))
    pl.to_torch_prune(plain, masks)
    back = pl.from_torch_prune(model)
    assert sorted(back) == sorted(masks) and all(torch.equal(back[k], masks[k]) for k in masks)
