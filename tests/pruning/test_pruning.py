"""Global magnitude pruning: exact counts and sets against a brute-force sort, the original rule,
dtypes, validation, PruneConfig, and that no tensor larger than the largest layer is ever made."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import prunelimit as pl
from prunelimit.pruning import (PruneConfig, apply_masks, global_magnitude_masks, mask_sparsity, masks_for_config,
                                masks_sparsity_of_model, min_threshold_masks, prunable_parameters, prune_count)


# --------------------------------------------------------------------------- references
def reference_order(model, include=None, exclude=None):
    """Global ascending order of (|w|, layer, flat index) by numpy lexsort — written independently of
    the library's radix select. Returns (names, sizes, order as (layer, index) arrays, magnitudes)."""
    params = prunable_parameters(model, include, exclude)
    mags, layer, index = [], [], []
    for i, (_, p) in enumerate(params):
        a = p.detach().double().abs().flatten().numpy()  # float64 holds every float32/16 value exactly
        mags.append(a)
        layer.append(np.full(a.size, i))
        index.append(np.arange(a.size))
    mags, layer, index = map(np.concatenate, (mags, layer, index))
    mags_sortable = np.where(np.isnan(mags), np.inf, mags)  # NaN last, after +inf (as torch.sort)
    nan_last = np.isnan(mags).astype(np.int8)
    order = np.lexsort((index, layer, nan_last, mags_sortable))
    return [n for n, _ in params], [p.numel() for _, p in params], layer[order], index[order], mags[order]


def reference_gp_masks(model, k, include=None, exclude=None):
    names, sizes, layer, index, _ = reference_order(model, include, exclude)
    keep = [np.ones(n, dtype=bool) for n in sizes]
    for l, i in zip(layer[:k], index[:k]):
        keep[l][i] = False
    return dict(zip(names, keep))


def as_numpy(masks):
    return {k: v.flatten().cpu().numpy() for k, v in masks.items()}


def assert_same_masks(got, want):
    assert list(got) == list(want)
    for name in want:
        np.testing.assert_array_equal(as_numpy(got)[name], want[name], err_msg=name)


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)  # 54 weights
        self.bn = nn.BatchNorm2d(3)
        self.fc1 = nn.Linear(27, 13)  # 351
        self.fc2 = nn.Linear(13, 7)  # 91


def tie_net(seed=0, low=-3, high=4):
    """Integer-valued weights: most magnitudes tie, many are exactly zero."""
    torch.manual_seed(seed)
    net = TinyNet()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randint(low, high, p.shape).float())
    return net


def random_net(seed=0):
    torch.manual_seed(seed)
    return TinyNet()


N_TINY = 54 + 351 + 91


# --------------------------------------------------------------------------- exact GP
@pytest.mark.parametrize("make", [tie_net, random_net])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.9, 0.99, 1 - 0.6 / N_TINY])
def test_gp_matches_bruteforce(make, sparsity):
    net = make()
    k = int(math.floor(sparsity * N_TINY + 0.5))
    masks = global_magnitude_masks(net, sparsity)
    assert_same_masks(masks, reference_gp_masks(net, k))
    assert mask_sparsity(masks).pruned == k


def test_gp_refuses_a_sparsity_that_rounds_to_everything():
    net = random_net()
    assert mask_sparsity(global_magnitude_masks(net, 1 - 0.6 / N_TINY)).pruned == N_TINY - 1  # keeps one
    with pytest.raises(ValueError, match="rounds to pruning all 496"):
        global_magnitude_masks(net, 1 - 0.4 / N_TINY)  # rounds to k = N, as 1.0 would


def test_half_rounds_up():
    net = random_net()
    for half, want in [(122.5, 123), (123.5, 124)]:  # Python's round() would give 122 and 124
        p = half / N_TINY
        assert p * N_TINY == half  # the product is exactly .5 in binary floating point
        assert prune_count(p, N_TINY) == want
        assert mask_sparsity(global_magnitude_masks(net, p)).pruned == want
    assert prune_count(0.125, 4) == 1 and prune_count(0.375, 4) == 2


def test_every_pruned_le_every_kept_and_tie_order():
    net = tie_net(seed=3)
    masks = global_magnitude_masks(net, 0.6)
    w = {n: p.detach().abs() for n, p in prunable_parameters(net)}
    pruned_max = max(float(w[n][~m].max()) for n, m in masks.items() if (~m).any())
    kept_min = min(float(w[n][m].min()) for n, m in masks.items() if m.any())
    assert pruned_max <= kept_min
    # the tied magnitude at the threshold: pruned ones come before kept ones in (layer, index) order
    t = pruned_max
    seq = []
    for n, m in masks.items():
        flat_w, flat_m = w[n].flatten(), m.flatten()
        seq += [bool(x) for x in flat_m[flat_w == t]]
    assert seq == sorted(seq)  # all False (pruned) first, then True


def test_all_weights_equal_prunes_first_in_layer_order():
    net = TinyNet()
    with torch.no_grad():
        for _, p in prunable_parameters(net):
            p.fill_(-0.5)
    masks = global_magnitude_masks(net, 0.3)
    k = prune_count(0.3, N_TINY)
    flat = torch.cat([m.flatten() for m in masks.values()])
    assert not flat[:k].any() and flat[k:].all()


def test_rule_original_prunes_k_minus_one_without_ties():
    net = random_net(5)
    for p in (0.5, 0.9):
        k = prune_count(p, N_TINY)
        masks = global_magnitude_masks(net, p, rule="original")
        assert mask_sparsity(masks).pruned == k - 1
        assert_same_masks(masks, reference_gp_masks(net, k - 1))


def test_rule_original_with_ties_keeps_all_ties():
    net = tie_net(seed=1)
    k = prune_count(0.5, N_TINY)
    *_, mags = reference_order(net)
    threshold = mags[k - 1]
    masks = global_magnitude_masks(net, 0.5, rule="original")
    for (n, p), m in zip(prunable_parameters(net), masks.values()):
        np.testing.assert_array_equal(m.numpy(), p.detach().abs().numpy() >= threshold)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes(dtype):
    net = random_net(2).to(dtype)
    k = prune_count(0.7, N_TINY)
    masks = global_magnitude_masks(net, 0.7)
    assert_same_masks(masks, reference_gp_masks(net, k))
    tnet = tie_net(4).to(dtype)
    assert_same_masks(global_magnitude_masks(tnet, 0.7), reference_gp_masks(tnet, k))


def test_mixed_float64_and_float32_layers():
    net = random_net(6)
    net.fc1.double()
    k = prune_count(0.8, N_TINY)
    assert_same_masks(global_magnitude_masks(net, 0.8), reference_gp_masks(net, k))


def test_wide_keys_distinguish_close_doubles():
    net = random_net(7).double()
    with torch.no_grad():  # magnitudes that differ only below float32 precision
        net.fc2.weight.copy_(1.0 + torch.arange(91, dtype=torch.float64).view(7, 13) * 1e-12)
        net.fc1.weight.fill_(2.0)
        net.conv.weight.fill_(3.0)
    masks = global_magnitude_masks(net, 45 / N_TINY)
    np.testing.assert_array_equal(masks["fc2.weight"].flatten().numpy(), np.arange(91) >= 45)


def test_nan_and_inf_weights_are_refused_naming_them():
    """A NaN ranks above every magnitude, so GP would keep it (issue 7, bug 13): refuse instead."""
    net = random_net(8)
    with torch.no_grad():
        net.fc1.weight[0, 0] = float("nan")
        net.conv.weight[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"conv.weight, fc1.weight contain NaN or Inf"):
        global_magnitude_masks(net, 0.99)


def test_include_exclude_and_mask_properties():
    net = random_net()
    masks = global_magnitude_masks(net, 0.5, exclude=["fc2"])
    assert list(masks) == ["conv.weight", "fc1.weight"]
    assert all(m.dtype == torch.bool and m.shape == dict(net.named_parameters())[n].shape for n, m in masks.items())
    assert mask_sparsity(masks).pruned == prune_count(0.5, 54 + 351)
    assert_same_masks(masks, reference_gp_masks(net, prune_count(0.5, 405), exclude=["fc2"]))
    masks = global_magnitude_masks(net, 0.5, include=["bn", "fc2"])
    assert list(masks) == ["bn.weight", "fc2.weight"]


def test_apply_masks_and_measured_sparsity():
    net = random_net()
    masks = pl.global_magnitude_masks(net, 0.75)
    pl.apply_masks(net, masks)
    assert masks_sparsity_of_model(net) == pytest.approx(prune_count(0.75, N_TINY) / N_TINY)
    for n, p in prunable_parameters(net):
        assert (p[~masks[n]] == 0).all() and (p[masks[n]] != 0).all()
    assert net.bn.weight.eq(1).all()  # untouched


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), float("inf"), "0.5", None, True])
def test_bad_sparsity(bad):
    with pytest.raises(ValueError, match="sparsity"):
        global_magnitude_masks(random_net(), bad)


def test_bad_rule_and_no_prunable():
    with pytest.raises(ValueError, match="rule='nearest'.*exact, original"):
        global_magnitude_masks(random_net(), 0.5, rule="nearest")
    with pytest.raises(ValueError, match="no prunable parameters"):
        global_magnitude_masks(nn.Sequential(nn.ReLU()), 0.5)
    net = random_net()
    net.fc1.weight.data = net.fc1.weight.data.long().float()
    net.fc2.weight = nn.Parameter(torch.ones(7, 13, dtype=torch.int64), requires_grad=False)
    with pytest.raises(ValueError, match="fc2.weight has dtype torch.int64"):
        global_magnitude_masks(net, 0.5)


# --------------------------------------------------------------------------- PruneConfig
def test_prune_config_defaults_and_dispatch():
    cfg = PruneConfig()
    assert cfg.sparsity == 0.9 and cfg.keep_fraction == pytest.approx(0.1) and not cfg.uses_min_threshold
    net = random_net()
    assert_same_masks(masks_for_config(net, PruneConfig(sparsity=0.5)),
                      reference_gp_masks(net, prune_count(0.5, N_TINY)))
    mt = PruneConfig(sparsity=0.5, min_threshold=10.0, mt_mode="global", include="fc*")
    assert mt.include == ["fc*"]
    got = masks_for_config(net, mt)
    want = min_threshold_masks(net, 0.5, 10.0, mode="global", include=["fc*"])
    assert_same_masks(got, as_numpy(want))


@pytest.mark.parametrize("kwargs, key", [
    ({"sparsity": 1.0}, "prune.sparsity"), ({"sparsity": "a"}, "prune.sparsity"),
    ({"min_threshold": -1}, "prune.min_threshold"), ({"min_threshold": float("nan")}, "prune.min_threshold"),
    ({"mt_mode": "local"}, "prune.mt_mode"), ({"rule": "approx"}, "prune.rule"),
    ({"rule": "original", "min_threshold": 0.05}, "prune.rule"), ({"include": [1]}, "prune.include"),
    ({"exclude": 3}, "prune.exclude"),
])
def test_prune_config_errors_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        PruneConfig(**kwargs)


# --------------------------------------------------------------------------- no N-sized copy
class LargestOutput(TorchDispatchMode):
    """Records the largest numel of any tensor an op returns while active."""

    def __init__(self):
        super().__init__()
        self.largest = 0
        self.op = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.numel() > self.largest:
                self.largest, self.op = t.numel(), str(func)
        return out


def wide_net(layers=10, width=1414):
    torch.manual_seed(0)
    net = nn.Sequential(*[nn.Linear(width, width, bias=False) for _ in range(layers)])
    with torch.no_grad():
        for m in net:
            m.weight.normal_()
    return net


def test_guard_catches_a_concatenation():
    net = wide_net(layers=3, width=100)
    with LargestOutput() as guard:
        torch.cat([p.detach().abs().flatten() for p in net.parameters()]).kthvalue(10)
    assert guard.largest == 3 * 100 * 100  # the check below would flag this approach


def test_no_tensor_larger_than_a_layer_on_20m_weights():
    net = wide_net()  # 10 x 1414^2 = 20.0 M weights
    largest_layer = 1414 * 1414
    k = prune_count(0.9, 10 * largest_layer)
    with LargestOutput() as guard:
        masks = global_magnitude_masks(net, 0.9)
    assert guard.largest <= largest_layer, guard.op
    assert mask_sparsity(masks).pruned == k
    # with exactly k pruned, "every pruned |w| <= every kept |w|" pins the set down up to ties
    pruned_max = max(float(p.detach().abs()[~masks[n]].max()) for n, p in net.named_parameters())
    kept_min = min(float(p.detach().abs()[masks[n]].min()) for n, p in net.named_parameters())
    assert pruned_max <= kept_min


def test_no_tensor_larger_than_a_layer_min_threshold():
    net = wide_net(layers=6, width=600)
    net[5] = nn.Linear(600, 20, bias=False)  # a small layer the floor clamps
    largest_layer = 600 * 600
    for mode in ("proportional", "global"):
        with LargestOutput() as guard:
            masks = min_threshold_masks(net, 0.95, 0.5, mode=mode)
        assert guard.largest <= largest_layer, (mode, guard.op)
        assert mask_sparsity(masks).pruned == prune_count(0.95, 5 * largest_layer + 600 * 20)


def test_apply_masks_then_gp_again_is_idempotent():
    net = random_net(9)
    masks = global_magnitude_masks(net, 0.6)
    apply_masks(net, masks)
    again = global_magnitude_masks(net, 0.6)  # the zeros are the smallest: the same weights again
    assert_same_masks(again, as_numpy(masks))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_masks_equal_cpu_masks():
    for make in (tie_net, random_net):
        net = make(11)
        want = as_numpy(global_magnitude_masks(net, 0.8))
        want_mt = as_numpy(min_threshold_masks(net, 0.8, 5.0, mode="global"))
        net = net.to("cuda")
        got = global_magnitude_masks(net, 0.8)
        assert all(m.device.type == "cuda" for m in got.values())
        assert_same_masks(got, want)
        assert_same_masks(min_threshold_masks(net, 0.8, 5.0, mode="global"), want_mt)
