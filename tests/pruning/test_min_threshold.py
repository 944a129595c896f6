"""GP+MT: floors, exact totals, the proportional rescale/clamp loop against a float reimplementation,
the global mode against a brute-force greedy walk, MT = 0 equals GP, and the feasibility errors."""
from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from torch import nn

from prunelimit.pruning import (LAYER_SPARSITY_COLUMNS, global_magnitude_masks, max_feasible_min_threshold,
                                max_feasible_sparsity, min_threshold_masks, min_threshold_plan, prunable_parameters,
                                prune_count)

from test_pruning import as_numpy, assert_same_masks, reference_order


class MixedNet(nn.Module):
    """Layer sizes from 12 to 1200 so that floors clamp some layers and leave tiny ones dense."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)  # 36
        self.conv2 = nn.Conv2d(4, 8, 3)  # 288
        self.fc1 = nn.Linear(100, 12)  # 1200
        self.fc2 = nn.Linear(12, 1)  # 12
        self.fc3 = nn.Linear(30, 20)  # 600


SIZES = [36, 288, 1200, 12, 600]
N = sum(SIZES)


def mixed_net(seed=0, ties=False, small_last=False):
    torch.manual_seed(seed)
    net = MixedNet()
    with torch.no_grad():
        for i, (_, p) in enumerate(prunable_parameters(net)):
            if ties:
                p.copy_(torch.randint(-4, 5, p.shape).float())
            else:
                p.normal_(0, 1.0 / (i + 1) if small_last else 1.0 + i)  # layers on different scales
    return net


# --------------------------------------------------------------------------- references
def float_proportional(sizes, gp_counts, floor, k):
    """The published rescale/clamp loop in plain floats: returns per-layer pruned amounts and clamped."""
    n = np.array(sizes, dtype=float)
    s = np.array(gp_counts, dtype=float) / n
    dense = n <= floor
    s[dense] = 0.0
    clamped = np.zeros(len(n), dtype=bool)
    target = k / n.sum()
    for _ in range(100):
        free = ~dense & ~clamped
        fixed = (n * s)[clamped].sum()
        s[free] *= (target * n.sum() - fixed) / (n * s)[free].sum()
        over = free & (n * (1 - s) < floor - 1e-9)
        if not over.any():
            break
        s[over] = 1 - floor / n[over]
        clamped |= over
    return n * s, clamped


def greedy_global(model, k, floor):
    """Walk the global (|w|, layer, index) order; skip weights of layers that reached their floor."""
    names, sizes, layer, index, _ = reference_order(model)
    caps = [n - min(n, floor) for n in sizes]
    taken = [0] * len(sizes)
    keep = [np.ones(n, dtype=bool) for n in sizes]
    total = 0
    for l, i in zip(layer, index):
        if total == k:
            break
        if taken[l] < caps[l]:
            keep[l][i] = False
            taken[l] += 1
            total += 1
    return dict(zip(names, keep)), taken


def layerwise_smallest(model, counts):
    """Each layer's own `count` smallest magnitudes, ties by flat index (stable argsort per layer)."""
    out = {}
    for (name, p), c in zip(prunable_parameters(model), counts):
        a = p.detach().abs().flatten().numpy()
        keep = np.ones(a.size, dtype=bool)
        keep[np.argsort(a, kind="stable")[:c]] = False
        out[name] = keep
    return out


# --------------------------------------------------------------------------- proportional
@pytest.mark.parametrize("seed, ties, small_last", [(0, False, False), (1, False, True), (2, True, False)])
@pytest.mark.parametrize("sparsity, mt", [(0.9, 1.0), (0.8, 2.5), (0.95, 0.3), (0.5, 10.0)])
def test_proportional_matches_float_loop(seed, ties, small_last, sparsity, mt):
    net = mixed_net(seed, ties, small_last)
    plan = min_threshold_plan(net, sparsity, mt, mode="proportional")
    k = prune_count(sparsity, N)
    floor = int(N * mt / 100)
    assert (plan.k, plan.floor, plan.N) == (k, floor, N)
    gp = [lp.gp_pruned for lp in plan.layers]
    assert gp == [int((~torch.from_numpy(m)).sum()) for m in as_numpy(global_magnitude_masks(net, sparsity)).values()]
    amounts, clamped = float_proportional(SIZES, gp, floor, k)
    counts = [lp.pruned for lp in plan.layers]
    assert sum(counts) == k
    assert all(abs(c - a) < 1 for c, a in zip(counts, amounts)), (counts, amounts)
    assert [lp.clamped for lp in plan.layers] == list(clamped)
    for lp in plan.layers:
        assert lp.kept >= min(lp.n, floor) and lp.kept == lp.n - lp.pruned
        assert lp.dense_by_floor == (lp.n <= floor) and (not lp.dense_by_floor or lp.pruned == 0)
    masks = min_threshold_masks(net, sparsity, mt, mode="proportional")
    assert_same_masks(masks, layerwise_smallest(net, counts))


def test_proportional_when_gp_leaves_free_layers_untouched():
    """GP prunes only the small layer; after clamping it nothing is left to rescale, so the rest of the
    budget is shared by the free layers in proportion to their size."""
    net = nn.Sequential(nn.Linear(10, 1, bias=False), nn.Linear(10, 10, bias=False), nn.Linear(10, 30, bias=False))
    with torch.no_grad():
        net[0].weight.fill_(1e-3)
        net[1].weight.fill_(1.0)
        net[2].weight.fill_(2.0)
    sizes = [10, 100, 300]
    mt = 5 * 100 / sum(sizes)  # floor 5
    plan = min_threshold_plan(net, 10 / 410, mt)  # k = 10: GP prunes all of layer 0 and nothing else
    assert plan.floor == 5 and plan.k == 10
    assert [lp.gp_pruned for lp in plan.layers] == [10, 0, 0]
    # layer 0 clamped at 5; the other 5 split 100:300 = 1.25 : 3.75 -> largest remainder 1 : 4
    assert [lp.pruned for lp in plan.layers] == [5, 1, 4]
    assert [lp.clamped for lp in plan.layers] == [True, False, False]


# --------------------------------------------------------------------------- global (water-filling)
@pytest.mark.parametrize("seed, ties, small_last", [(0, False, False), (1, False, True), (3, True, False)])
@pytest.mark.parametrize("sparsity, mt", [(0.9, 1.0), (0.8, 2.5), (0.95, 0.3), (0.5, 10.0), (0.6, 0.5)])
def test_global_matches_greedy(seed, ties, small_last, sparsity, mt):
    net = mixed_net(seed, ties, small_last)
    k, floor = prune_count(sparsity, N), int(N * mt / 100)
    want, taken = greedy_global(net, k, floor)
    masks = min_threshold_masks(net, sparsity, mt, mode="global")
    assert_same_masks(masks, want)
    plan = min_threshold_plan(net, sparsity, mt, mode="global")
    assert [lp.pruned for lp in plan.layers] == taken
    # clamped: the final water level reaches more of the layer's weights than its floor lets go
    mags = [p.detach().abs() for _, p in prunable_parameters(net)]
    level = max(float(m[~torch.from_numpy(keep).view(m.shape)].max()) for m, keep in zip(mags, want.values())
                if (~keep).any())
    for lp, m in zip(plan.layers, mags):
        cap = lp.n - min(lp.n, floor)
        assert lp.clamped == (lp.pruned == cap and cap > 0 and int((m <= level).sum()) > cap), lp.name


@pytest.mark.parametrize("mode", ["proportional", "global"])
@pytest.mark.parametrize("ties", [False, True])
def test_mt_zero_is_gp(mode, ties):
    net = mixed_net(5, ties)
    for p in (0.3, 0.9, 0.99):
        assert_same_masks(min_threshold_masks(net, p, 0.0, mode=mode), as_numpy(global_magnitude_masks(net, p)))
        plan = min_threshold_plan(net, p, 0, mode=mode)
        assert [lp.pruned for lp in plan.layers] == [lp.gp_pruned for lp in plan.layers]
        assert not plan.clamped_layers and not plan.dense_layers


@pytest.mark.parametrize("mode", ["proportional", "global"])
def test_floors_and_dense_layers(mode, caplog):
    net = mixed_net(1, small_last=True)
    mt = 1.0  # floor 21: fc2 (12 weights) stays dense
    with caplog.at_level(logging.INFO, logger="prunelimit"):
        masks = min_threshold_masks(net, 0.95, mt, mode=mode)
    floor = int(N * mt / 100)
    assert floor == 21
    total_pruned = 0
    for (name, _), m in zip(prunable_parameters(net), masks.values()):
        kept = int(m.sum())
        assert kept >= min(m.numel(), floor), name
        total_pruned += m.numel() - kept
    assert total_pruned == prune_count(0.95, N)
    assert bool(masks["fc2.weight"].all())
    plan = min_threshold_plan(net, 0.95, mt, mode=mode)
    assert plan.dense_layers == ["fc2.weight"] and plan.clamped_layers
    text = caplog.text
    assert "clamped by the floor" in text and all(n in text for n in plan.clamped_layers)
    assert "left dense" in text and "fc2.weight" in text


def test_plan_rows():
    plan = min_threshold_plan(mixed_net(), 0.9, 1.0)
    rows = plan.rows()
    assert len(rows) == 5 and len(rows[0]) == len(LAYER_SPARSITY_COLUMNS)
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5] and [r[2] for r in rows] == SIZES
    assert sum(r[4] for r in rows) == plan.k and all(r[4] + r[5] == r[2] for r in rows)


# --------------------------------------------------------------------------- feasibility
def brute_max_floor(sizes, room):
    f = 0
    while sum(min(n, f + 1) for n in sizes) <= room:
        f += 1
    return f


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.99, 0.999])
def test_max_feasible_min_threshold_is_exactly_at_the_boundary(sparsity):
    k = prune_count(sparsity, N)
    mt_max = max_feasible_min_threshold(SIZES, sparsity)
    f = brute_max_floor(SIZES, N - k)
    assert int(N * mt_max / 100) == f
    assert int(N * math.nextafter(mt_max, math.inf) / 100) == f + 1  # any larger MT raises the floor
    net = mixed_net()
    for mode in ("proportional", "global"):
        plan = min_threshold_plan(net, sparsity, mt_max, mode=mode)
        assert sum(lp.pruned for lp in plan.layers) == k
        with pytest.raises(ValueError, match="infeasible"):
            min_threshold_plan(net, sparsity, math.nextafter(mt_max, math.inf), mode=mode)


@pytest.mark.parametrize("mt", [0.5, 2.0, 5.0, 19.0])
def test_max_feasible_sparsity_is_exactly_at_the_boundary(mt):
    floor = int(N * mt / 100)
    room = N - sum(min(n, floor) for n in SIZES)
    p_max = max_feasible_sparsity(SIZES, mt)
    assert prune_count(p_max, N) == room  # prunes as much as the floors allow
    assert prune_count(math.nextafter(p_max, 1.0), N) == room + 1
    net = mixed_net(2)
    assert sum(lp.pruned for lp in min_threshold_plan(net, p_max, mt, mode="global").layers) == room
    with pytest.raises(ValueError, match="infeasible"):
        min_threshold_plan(net, math.nextafter(p_max, 1.0), mt, mode="global")


def test_infeasible_message_names_both_maxima():
    net = mixed_net()
    with pytest.raises(ValueError) as err:
        min_threshold_masks(net, 0.99, 5.0)
    msg = str(err.value)
    assert "min_threshold=5.0" in msg and "sparsity=0.99" in msg
    assert repr(max_feasible_min_threshold(SIZES, 0.99)) in msg
    assert repr(max_feasible_sparsity(SIZES, 5.0)) in msg


def test_no_floor_is_infeasible_at_sparsity_zero():
    assert max_feasible_min_threshold(SIZES, 0.0) == math.inf
    plan = min_threshold_plan(mixed_net(), 0.0, 100.0)
    assert plan.k == 0 and all(lp.pruned == 0 for lp in plan.layers)
    assert len(plan.dense_layers) == 5


@pytest.mark.parametrize("bad", [-0.01, float("nan"), float("inf"), "0.05", None])
def test_bad_min_threshold(bad):
    with pytest.raises(ValueError, match="min_threshold"):
        min_threshold_masks(mixed_net(), 0.9, bad)


def test_bad_mode_and_sparsity():
    with pytest.raises(ValueError, match="mt_mode='local'.*proportional, global"):
        min_threshold_masks(mixed_net(), 0.9, 0.1, mode="local")
    with pytest.raises(ValueError, match="sparsity"):
        min_threshold_plan(mixed_net(), 1.2, 0.1)
