"""The magnitude ordering, the incremental sweep and the adaptive limit search."""
from __future__ import annotations

import csv
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

from prunelimit.limit import (MagnitudeOrdering, actual_limit, adaptive_limit_search, default_grid,
                              run_sweep)
from prunelimit.limit.rules import rule_predicate


class TinyConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def tied_model(seed: int = 0) -> TinyConvNet:
    """Random weights with deliberate magnitude ties inside and across layers."""
    torch.manual_seed(seed)
    m = TinyConvNet()
    with torch.no_grad():
        m.conv.weight.view(-1)[:6] = torch.tensor([0.05, -0.05, 0.05, 0.2, -0.2, 0.01])
        m.fc.weight.view(-1)[:5] = torch.tensor([-0.05, 0.05, 0.01, -0.01, 0.2])
    return m


def brute_force_pruned(model: nn.Module, p: float) -> list[tuple[int, int]]:
    """(layer, flat index) of the weights global magnitude pruning removes: k = round half up of p*N,
    ties by (layer order, flat index) -- built from Python tuples, no torch sort."""
    weights = [model.conv.weight, model.fc.weight]
    items = [(abs(float(v)), li, fi) for li, w in enumerate(weights) for fi, v in enumerate(w.detach().reshape(-1))]
    n = len(items)
    k = math.floor(Fraction(p).limit_denominator(10**9) * n + Fraction(1, 2))
    return [(li, fi) for _, li, fi in sorted(items)[:k]]


def prunable(model):
    return [model.conv.weight, model.fc.weight]


@pytest.mark.parametrize("p", [0.0, 0.1, 0.25, 1 / 3, 0.5, 0.77, 0.999, 1.0])
def test_radius_and_masks_match_brute_force(p):
    model = tied_model()
    ordering = MagnitudeOrdering.from_model(model)
    removed = brute_force_pruned(model, p)
    assert ordering.count(p) == len(removed)
    ws = prunable(model)
    norm = math.sqrt(sum(float(ws[li].detach().reshape(-1)[fi]) ** 2 for li, fi in removed))
    assert ordering.radius(p) == pytest.approx(norm, rel=1e-12, abs=1e-15)
    masks = ordering.masks(p)
    assert list(masks) == ["conv.weight", "fc.weight"]
    expect = [torch.ones(w.numel(), dtype=torch.bool) for w in ws]
    for li, fi in removed:
        expect[li][fi] = False
    for (name, m), e, w in zip(masks.items(), expect, ws):
        assert m.dtype == torch.bool and m.shape == w.shape
        assert torch.equal(m.reshape(-1), e), name


def test_ties_at_the_cutoff_break_by_layer_then_index():
    model = tied_model()
    ordering = MagnitudeOrdering.from_model(model)
    n = ordering.num_weights
    for tie in (0.01, 0.05):   # 3 and 5 equal magnitudes spread over both layers
        below = sum(int((w.detach().abs() < tie).sum()) for w in prunable(model))
        for extra in (1, 2, 3):   # cut inside the tie group
            p = (below + extra) / n
            removed = brute_force_pruned(model, p)
            got = [(li, fi) for li, m in enumerate(ordering.masks(p).values())
                   for fi in torch.nonzero(~m.reshape(-1)).flatten().tolist()]
            assert sorted(got) == sorted(removed), (tie, extra)


def test_float64_model_orders_on_float64_magnitudes():
    model = tied_model(4).double()
    with torch.no_grad():   # equal as float32, different as float64: the float64 order must win
        model.conv.weight.view(-1)[6:8] = torch.tensor([0.1 + 1e-12, 0.1], dtype=torch.float64)
    ordering = MagnitudeOrdering.from_model(model)
    below = sum(int((w.detach().abs() < 0.1).sum()) for w in prunable(model))
    p_cut = (below + 1) / ordering.num_weights   # removes exactly one of the two: it must be the 0.1 at index 7
    assert (0, 7) in brute_force_pruned(model, p_cut) and (0, 6) not in brute_force_pruned(model, p_cut)
    for p in (0.3, p_cut, 0.9):
        removed = brute_force_pruned(model, p)
        assert ordering.count(p) == len(removed)
        got = [(li, fi) for li, m in enumerate(ordering.masks(p).values())
               for fi in torch.nonzero(~m.reshape(-1)).flatten().tolist()]
        assert sorted(got) == sorted(removed)


def test_masks_equal_global_magnitude_masks():
    try:
        from prunelimit.pruning import global_magnitude_masks
    except ImportError as e:
        pytest.skip(f"prunelimit.pruning.global_magnitude_masks is not available yet ({e})")
    model = tied_model(3)
    ordering = MagnitudeOrdering.from_model(model)
    below = sum(int((w.detach().abs() < 0.05).sum()) for w in prunable(model))
    cuts = [(below + extra) / ordering.num_weights for extra in (1, 2, 3)]   # inside the tie group at 0.05
    for p in [0.0, 0.13, 0.5, 0.9, 0.998] + cuts:   # GP refuses a p that rounds to all 294 weights
        ref = global_magnitude_masks(model, p)
        ours = ordering.masks(p)
        assert set(ref) == set(ours)
        for name in ours:
            assert torch.equal(ref[name].cpu().bool(), ours[name]), (p, name)


def test_incremental_prune_to_equals_pruning_from_scratch():
    model = tied_model(1)
    dense = [w.detach().clone() for w in prunable(model)]
    ordering = MagnitudeOrdering.from_model(model)
    k_prev = 0
    for p in (0.0, 0.05, 0.3, 0.31, 0.6, 0.95, 1.0):
        k = ordering.count(p)
        ordering.prune_to(model, k_prev, k)
        k_prev = k
        for w, d, m in zip(prunable(model), dense, ordering.masks(p).values()):
            assert torch.equal(w.detach(), d * m)
    with pytest.raises(ValueError, match="k_prev"):
        ordering.prune_to(model, 10, 5)


def test_prune_to_handles_channels_last_weights():
    model = tied_model(2)
    ordering = MagnitudeOrdering.from_model(model)
    dense = model.conv.weight.detach().clone()
    model = model.to(memory_format=torch.channels_last)
    assert not model.conv.weight.is_contiguous()
    ordering.prune_to(model, 0, ordering.count(0.5))
    assert torch.equal(model.conv.weight.detach(), dense * ordering.masks(0.5)["conv.weight"])


def test_save_load_roundtrip_and_bad_files(tmp_path):
    model = tied_model()
    ordering = MagnitudeOrdering.from_model(model)
    path = ordering.save(tmp_path / "ordering.safetensors")
    back = MagnitudeOrdering.load(path)
    assert back.names == ordering.names and back.num_weights == ordering.num_weights
    for p in (0.2, 0.7):
        assert back.radius(p) == ordering.radius(p)
        for a, b in zip(back.masks(p).values(), ordering.masks(p).values()):
            assert torch.equal(a, b)
    with pytest.raises(ValueError, match="does not exist"):
        MagnitudeOrdering.load(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="junk.safetensors"):
        MagnitudeOrdering.load(tmp_path / "junk.safetensors")


def test_ordering_rejects_bad_inputs():
    model = tied_model()
    ordering = MagnitudeOrdering.from_model(model)
    with pytest.raises(ValueError, match="prune_fraction"):
        ordering.count(1.5)
    other = tied_model(seed=9)
    with pytest.raises(ValueError, match="not the ones this ordering was built from"):
        ordering.check_model(other)
    with pytest.raises(ValueError, match="no parameter 'conv.weight'"):
        ordering.check_model(nn.Sequential(nn.Linear(3, 3)))
    with torch.no_grad():
        other.fc.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="fc.weight"):
        MagnitudeOrdering.from_model(other)


# ---- the sweep ----------------------------------------------------------------------------------------------
class Recorder:
    """evaluate() that records the pruned state it sees; optionally fails on call number ``fail_at``."""

    def __init__(self, model, dense, fail_at=None):
        self.model, self.dense, self.fail_at, self.calls, self.seen = model, dense, fail_at, 0, []

    def __call__(self, model):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise RuntimeError("simulated crash")
        ws = [w.detach() for w in prunable(model)]
        zeros = sum(int((w == 0).sum()) for w in ws)
        removed = math.sqrt(sum(float(((d.double() - w.double()) ** 2).sum()) for d, w in zip(self.dense, ws)))
        self.seen.append((zeros, removed))
        return {"loss": 1.0 + zeros / 100, "top1": 100.0 - zeros / 10}


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(model, saved):
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k]), k


def test_sweep_rows_counts_and_restoration(tmp_path):
    model = tied_model()
    model.train()
    saved = state(model)
    dense = [w.detach().clone() for w in prunable(model)]
    ordering = MagnitudeOrdering.from_model(model)
    grid = default_grid(40)
    rec = Recorder(model, dense)
    rows = run_sweep(model, ordering, grid, rec, show_progress=False, csv_path=tmp_path / "sweep.csv")
    assert rec.calls == len(grid) == len(rows)
    n = ordering.num_weights
    for row, p, (zeros, removed) in zip(rows, grid, rec.seen):
        k = len(brute_force_pruned(model, p))
        assert row["prune_fraction"] == p and row["keep_fraction"] == pytest.approx(1 - p)
        assert row["pruned_weights"] == k == zeros and row["kept_weights"] == n - k
        assert row["R"] == pytest.approx(removed, rel=1e-9, abs=1e-12)
        assert row["test_acc"] == 100.0 - k / 10 and row["train_loss"] is None
    assert_same_state(model, saved)
    assert model.training
    with open(tmp_path / "sweep.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows)
    assert float(table[7]["R"]) == rows[7]["R"] and table[7]["train_acc"] == ""


def test_sweep_restores_dense_weights_after_exception():
    model = tied_model()
    saved = state(model)
    ordering = MagnitudeOrdering.from_model(model)
    rec = Recorder(model, [w.detach().clone() for w in prunable(model)], fail_at=5)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_sweep(model, ordering, default_grid(20), rec, show_progress=False)
    assert_same_state(model, saved)


@pytest.mark.parametrize("grid, match", [([0.1, 0.2], "must start at 0"), ([], "must start at 0"),
                                         ([0.0, 0.3, 0.2], "strictly ascending"), ([0.0, 1.5], r"\[0, 1\]")])
def test_sweep_grid_errors(grid, match):
    model = tied_model()
    with pytest.raises(ValueError, match=match):
        run_sweep(model, MagnitudeOrdering.from_model(model), grid, lambda m: {"loss": 0.0, "top1": 1.0})


def test_sweep_rejects_bad_evaluate_results():
    model = tied_model()
    ordering = MagnitudeOrdering.from_model(model)
    with pytest.raises(ValueError, match="'loss' and, for a classifier, 'top1'"):
        run_sweep(model, ordering, [0.0], lambda m: {"top1": 1.0}, show_progress=False)
    with pytest.raises(ValueError, match="percentages"):
        run_sweep(model, ordering, [0.0], lambda m: {"loss": 1.0, "top1": 0.5 + 100}, show_progress=False)
    with pytest.raises(ValueError, match="resume=True needs csv_path"):
        run_sweep(model, ordering, [0.0], lambda m: {"loss": 1.0, "top1": 1.0}, resume=True)


def test_sweep_resume_skips_finished_rows(tmp_path):
    model = tied_model()
    dense = [w.detach().clone() for w in prunable(model)]
    ordering = MagnitudeOrdering.from_model(model)
    grid, path = default_grid(30), tmp_path / "sweep.csv"
    crash = Recorder(model, dense, fail_at=12)
    train = Recorder(model, dense)
    with pytest.raises(RuntimeError):
        run_sweep(model, ordering, grid, crash, train, show_progress=False, csv_path=path)
    with open(path, newline="") as f:
        assert len(list(csv.DictReader(f))) == 11   # written on the way out, before the exception propagates
    again = Recorder(model, dense)
    rows = run_sweep(model, ordering, grid, again, train, show_progress=False, csv_path=path, resume=True)
    assert again.calls == len(grid) - 11
    fresh = run_sweep(model, ordering, grid, Recorder(model, dense), Recorder(model, dense), show_progress=False)
    assert rows == fresh
    other = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="prunable weights"):
        run_sweep(other, MagnitudeOrdering.from_model(other), grid, again, show_progress=False, csv_path=path,
                  resume=True)


# ---- adaptive search ----------------------------------------------------------------------------------------
class SyntheticCurve:
    """Accuracy / loss as closed-form functions of the measured sparsity of the model."""

    def __init__(self, acc_fn, loss_fn=lambda s: 0.1 + s ** 6):
        self.acc_fn, self.loss_fn, self.calls = acc_fn, loss_fn, 0

    def __call__(self, model):
        self.calls += 1
        ws = list(model.parameters())[0::2]
        s = sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws)
        return {"loss": self.loss_fn(s), "top1": self.acc_fn(s)}


def wide_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 40), nn.ReLU(), nn.Linear(40, 10))   # N = 2960 > grid size


CURVES = {
    "acc_drop": lambda s: 95.0 - 60.0 * max(0.0, s - 0.6137),
    "above_baseline": lambda s: 90.0 + 5.0 * s if s < 0.7 else 93.5 - 50.0 * (s - 0.7),
    "loss_increase": lambda s: 90.0,
}


@pytest.mark.parametrize("rule", sorted(CURVES))
def test_adaptive_matches_full_grid_on_monotone_curve(rule):
    model = wide_model()
    ordering = MagnitudeOrdering.from_model(model)
    full = SyntheticCurve(CURVES[rule])
    rows = run_sweep(model, ordering, default_grid(1000), full, full, show_progress=False)
    expect = actual_limit(rows, rule, delta=1.0, epsilon=0.05)
    assert 0.05 < expect < 0.95     # the drop is inside the grid, so the search has something to find
    curve = SyntheticCurve(CURVES[rule])
    limit, arows = adaptive_limit_search(model, ordering, curve, rule, evaluate_train=curve, delta=1.0,
                                         epsilon=0.05, tol=1 / 1000, show_progress=False)
    assert limit == pytest.approx(expect, abs=1e-12)
    assert len(arows) <= 40 and curve.calls == 2 * len(arows)
    assert [r["prune_fraction"] for r in arows] == sorted(r["prune_fraction"] for r in arows)


def test_adaptive_misses_a_dip_between_coarse_points_as_documented():
    model = wide_model()
    ordering = MagnitudeOrdering.from_model(model)
    # a narrow failure at s ~ 0.12 (between coarse points 0.10 and 0.15), the real drop at ~0.61
    acc = lambda s: 80.0 if 0.118 < s < 0.122 else CURVES["acc_drop"](s)  # noqa: E731
    rows = run_sweep(model, ordering, default_grid(1000), SyntheticCurve(acc), show_progress=False)
    full = actual_limit(rows, "acc_drop", delta=1.0)
    limit, _ = adaptive_limit_search(model, ordering, SyntheticCurve(acc), "acc_drop", show_progress=False)
    assert full < 0.13 and limit > 0.6


def test_adaptive_errors():
    model = wide_model()
    ordering = MagnitudeOrdering.from_model(model)
    ev = SyntheticCurve(CURVES["acc_drop"])
    with pytest.raises(ValueError, match="unknown limit rule"):
        adaptive_limit_search(model, ordering, ev, "best")
    with pytest.raises(ValueError, match="evaluate_train"):
        adaptive_limit_search(model, ordering, ev, "loss_increase", epsilon=0.1)
    with pytest.raises(ValueError, match="coarse_points"):
        adaptive_limit_search(model, ordering, ev, "acc_drop", coarse_points=1)
    # a user baseline the unpruned model already misses: no limit, as actual_limit says on the full grid
    limit, rows = adaptive_limit_search(model, ordering, ev, "acc_drop", baseline=99.0, show_progress=False)
    assert limit is None and actual_limit(rows, "acc_drop", delta=1.0, baseline=99.0) is None


def _digits_model():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=g)
    tr, te = perm[:1400], perm[1400:]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(150):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x[tr]), y[tr])
        loss = loss + 1e-4 * sum(p.abs().sum() for p in model.parameters())
        loss.backward()
        opt.step()
    model.eval()

    def evaluator(idx):
        @torch.no_grad()
        def evaluate(m):
            out = m(x[idx])
            return {"loss": float(nn.functional.cross_entropy(out, y[idx])),
                    "top1": 100.0 * float((out.argmax(1) == y[idx]).float().mean())}
        return evaluate

    return model, evaluator(te), evaluator(tr)


def test_adaptive_matches_full_grid_on_trained_digits_model():
    model, ev_test, ev_train = _digits_model()
    ordering = MagnitudeOrdering.from_model(model)
    rows = run_sweep(model, ordering, default_grid(200), ev_test, ev_train, show_progress=False)
    assert rows[0]["test_acc"] > 90
    eps, base = 0.02, rows[0]
    for rule in ("loss_increase", "acc_drop"):
        full = actual_limit(rows, rule, delta=2.0, epsilon=eps)
        # the search's premise, checked on the full grid: the rule holds up to one point, then fails
        ok = rule_predicate(rule, baseline=base["test_acc"], baseline_loss=base["train_loss"], delta=2.0,
                            epsilon=eps)
        pattern = "".join("1" if ok(r) else "0" for r in rows)
        assert pattern.rstrip("0").count("0") == 0 and "0" in pattern, (rule, pattern)
        limit, arows = adaptive_limit_search(model, ordering, ev_test, rule, evaluate_train=ev_train, delta=2.0,
                                             epsilon=eps, tol=1 / 200, show_progress=False)
        assert limit == full, rule
        assert len(arows) < 40
        # the adaptive rows are exactly the full sweep's rows at the same fractions
        by_p = {r["prune_fraction"]: r for r in rows}
        for r in arows:
            assert r == by_p[r["prune_fraction"]]
    np.testing.assert_allclose([r["R"] for r in rows], ordering.radii(default_grid(200)).numpy())


@pytest.mark.parametrize("rule", ["acc_drop", "above_baseline"])
def test_adaptive_largest_passing_matches_full_grid(rule):
    # a dip to 80 % at s ~ 0.3 and a recovery before the real drop: the two readings differ by ~0.3
    base = CURVES[rule]
    acc = lambda s: 80.0 if 0.29 < s < 0.31 else base(s)  # noqa: E731
    model = wide_model()
    ordering = MagnitudeOrdering.from_model(model)
    rows = run_sweep(model, ordering, default_grid(1000), SyntheticCurve(acc), show_progress=False)
    first = actual_limit(rows, rule, reading="first_failure", delta=1.0)
    largest = actual_limit(rows, rule, reading="largest_passing", delta=1.0)
    assert largest > 0.6 and (first is None or first < 0.3)
    limit, arows = adaptive_limit_search(model, ordering, SyntheticCurve(acc), rule, reading="largest_passing",
                                         delta=1.0, show_progress=False)
    assert limit == largest and len(arows) < 45


def test_sweep_table_carries_data_loss_and_l1_penalty(tmp_path):
    from prunelimit.limit.sweep import SWEEP_COLUMNS, read_sweep_csv
    from prunelimit.train import evaluate, l1_penalty

    model, _, _ = _digits_model()
    torch.manual_seed(1)
    x, y = torch.randn(50, 64), torch.randint(0, 10, (50,))
    lam = 1e-3

    def ev(m):
        return evaluate(m, [(x, y)], l1_lambda=lam, l1_params="weight_bias")

    ordering = MagnitudeOrdering.from_model(model)
    rows = run_sweep(model, ordering, default_grid(10), ev, ev, show_progress=False, csv_path=tmp_path / "s.csv")
    for row, p in zip(rows, default_grid(10)):
        pruned = [w.detach().clone() for w in ordering.params_of(model)]
        ordering.prune_to(model, 0, row["pruned_weights"])
        with torch.no_grad():
            want_data = float(nn.functional.cross_entropy(model(x), y))
            want_pen = lam * float(l1_penalty(model, "weight_bias"))
        with torch.no_grad():
            for w, d in zip(ordering.params_of(model), pruned):
                w.copy_(d)
        assert row["test_data_loss"] == pytest.approx(want_data, rel=1e-5)
        assert row["l1_penalty"] == pytest.approx(want_pen, rel=1e-5)
        assert row["train_loss"] == pytest.approx(row["train_data_loss"] + row["l1_penalty"], rel=1e-6)
    assert rows[0]["l1_penalty"] > rows[-1]["l1_penalty"] > 0     # pruning shrinks the penalty
    assert read_sweep_csv(tmp_path / "s.csv") == rows
    assert list(csv.DictReader(open(tmp_path / "s.csv")))[0].keys() == set(SWEEP_COLUMNS)


def test_old_sweep_table_without_loss_columns_loads_and_resumes(tmp_path):
    from prunelimit.limit.sweep import LOSS_COLUMNS, SWEEP_COLUMNS, has_loss_columns, read_sweep_csv

    model = tied_model()
    ordering = MagnitudeOrdering.from_model(model)
    dense = [w.detach().clone() for w in prunable(model)]
    rows = run_sweep(model, ordering, default_grid(10), Recorder(model, dense), show_progress=False)
    old_cols = [c for c in SWEEP_COLUMNS if c not in LOSS_COLUMNS]
    path = tmp_path / "sweep.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(old_cols)
        w.writerows([[r[c] if r[c] is not None else "" for c in old_cols] for r in rows])
    old = read_sweep_csv(path)
    assert [r["test_acc"] for r in old] == [r["test_acc"] for r in rows]
    assert all(r[c] is None for r in old for c in LOSS_COLUMNS) and not has_loss_columns(old)
    rec = Recorder(model, dense)
    again = run_sweep(model, ordering, default_grid(10), rec, show_progress=False, csv_path=path, resume=True)
    assert rec.calls == 10 and has_loss_columns(again)      # rows without the new columns are evaluated again
    assert has_loss_columns(read_sweep_csv(path))


def test_tail_grid_resolves_limits_beyond_the_last_uniform_point():
    from prunelimit.limit.rules import rule_limit
    from prunelimit.limit.sweep import tail_grid

    n = 2960
    grid = tail_grid(100, 30, n)
    assert grid[:100] == default_grid(100) and len(grid) > 100
    counts = [math.floor(p * n + 0.5) for p in grid]
    assert counts == sorted(set(counts)) and counts[-1] == n - 1        # down to one kept weight, never all
    keeps = [1 - p for p in grid[100:]]
    ratios = [b / a for a, b in zip(keeps, keeps[1:])]
    assert max(ratios) < 0.95 and min(ratios) > 0.5                      # geometric in keep fraction
    assert tail_grid(100, 0, n) == default_grid(100) and tail_grid(100, 5, 50) == default_grid(100)
    with pytest.raises(ValueError, match="tail_points"):
        tail_grid(100, -1, n)
    # accuracy holds to p = 0.995: on the uniform grid the rule never fails, the tail finds the drop
    model = wide_model()
    ordering = MagnitudeOrdering.from_model(model)
    acc = lambda s: 95.0 if s <= 0.995 else 50.0  # noqa: E731
    coarse = run_sweep(model, ordering, default_grid(100), SyntheticCurve(acc), show_progress=False)
    lim = rule_limit(coarse, "acc_drop", delta=1.0)
    assert lim.prune_fraction is None and lim.lower_bound == 0.99 and "tail_points" in lim.reason
    fine = run_sweep(model, ordering, grid, SyntheticCurve(acc), show_progress=False)
    limit = rule_limit(fine, "acc_drop", delta=1.0).prune_fraction
    assert 0.99 < limit and [r["prune_fraction"] for r in fine if r["prune_fraction"] > limit][0] > 0.995 - 1e-9
