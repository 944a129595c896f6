"""Training loop: config checks, schedules against closed forms, objective, evaluate, masks, divergence."""
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prunelimit.runs.io import read_csv
from prunelimit.train import (LOG_COLUMNS, LRSchedule, MaskEnforcer, TrainConfig, TrainingDiverged, evaluate,
                              finetune, gp_finetune_config, l1_penalty, make_criterion, train)


def make_data(n=64, dim=8, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    w = torch.randn(dim, classes, generator=g)
    return TensorDataset(x, (x @ w).argmax(1))


def make_net(seed=0, dim=8, classes=4):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(dim, 16), nn.ReLU(), nn.Linear(16, classes))


def half_masks(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=g) > 0.5 for n, p in model.named_parameters() if n.endswith("weight")}


def quick_cfg(**kw):
    base = dict(epochs=3, batch_size=16, lr=0.1, schedule="none", amp=False)
    base.update(kw)
    return TrainConfig(**base)


# ---------------------------------------------------------------- config

@pytest.mark.parametrize("key,value", [
    ("epochs", 0), ("epochs", 2.5), ("batch_size", True), ("lr", 0.0), ("lr", float("nan")),
    ("momentum", 1.0), ("weight_decay", -1e-4), ("optimizer", "sgdd"), ("criterion", "hinge"),
    ("label_smoothing", 1.0), ("schedule", "poly"), ("gamma", 0.0), ("warmup_epochs", -1),
    ("scheduler_step", "batch"), ("l1_lambda", -1.0), ("l1_params", "bias"), ("amp", "yes"),
    ("eval_every", 0), ("milestones", [3, 2]), ("milestones", "60,120"),
])
def test_config_rejects_bad_values_naming_the_key(key, value):
    with pytest.raises(ValueError, match=repr(key)):
        TrainConfig(**{key: value})


def test_config_cross_field_checks():
    with pytest.raises(ValueError, match="'milestones'"):
        TrainConfig(schedule="multistep")
    with pytest.raises(ValueError, match="'milestones'"):
        TrainConfig(schedule="step", milestones=[10, 20])
    with pytest.raises(ValueError, match="'nesterov'"):
        TrainConfig(nesterov=True, momentum=0.0)
    with pytest.raises(ValueError, match="'warmup_epochs'"):
        TrainConfig(epochs=5, warmup_epochs=5, schedule="cosine")
    with pytest.raises(ValueError, match="'scheduler_step'"):
        TrainConfig(schedule="linear", scheduler_step="iteration")
    assert TrainConfig(weight_decay=0).weight_decay == 0.0  # YAML's integer 0 is accepted


def test_gp_finetune_config_scales_lr_with_batch():
    cfg = gp_finetune_config(512)
    assert cfg.lr == pytest.approx(0.2048) and cfg.batch_size == 512
    assert (cfg.momentum, cfg.weight_decay, cfg.label_smoothing, cfg.schedule) == (0.875, 7e-6, 0.1, "cosine")
    assert not cfg.nesterov and gp_finetune_config(wide_resnet=True).nesterov
    assert gp_finetune_config(128, lr=0.3, epochs=7).lr == 0.3
    with pytest.raises(ValueError, match="lrr"):
        gp_finetune_config(lrr=0.1)


# ---------------------------------------------------------------- schedules

def lr_trace(cfg, iters_per_epoch):
    """The lr each iteration used, as lists per epoch."""
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=cfg.lr)
    sched = LRSchedule(opt, cfg, iters_per_epoch)
    out = []
    for e in range(cfg.epochs):
        row = []
        for _ in range(iters_per_epoch):
            row.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.after_iteration(e)
        out.append(row)
    return out


@pytest.mark.parametrize("schedule", ["none", "cosine", "linear", "multistep", "step"])
def test_epoch_schedules_match_closed_forms(schedule):
    lr0, E = 0.2, 12
    ms = {"multistep": [3, 7], "step": [5]}.get(schedule, [])
    cfg = TrainConfig(epochs=E, lr=lr0, schedule=schedule, milestones=ms, gamma=0.5)
    trace = lr_trace(cfg, 3)
    for e in range(E):
        expected = {"none": lr0,
                    "cosine": 0.5 * (1 + math.cos(math.pi * e / E)) * lr0,
                    "linear": lr0 - e / E * lr0,
                    "multistep": lr0 * (1 if e < 3 else 0.5 if e < 7 else 0.25),
                    "step": lr0 * 0.5 ** (e // 5)}[schedule]
        assert trace[e] == pytest.approx([expected] * 3, rel=1e-12, abs=1e-15)


def test_warmup_ramps_per_iteration_then_cosine_over_the_rest():
    lr0, E, w, ipe = 0.1, 10, 2, 4
    trace = lr_trace(TrainConfig(epochs=E, lr=lr0, schedule="cosine", warmup_epochs=w), ipe)
    ramp = [x for row in trace[:w] for x in row]
    assert ramp == pytest.approx([lr0 * (t + 1) / (w * ipe) for t in range(w * ipe)], rel=1e-12)
    for e in range(w, E):
        assert trace[e] == pytest.approx([0.5 * (1 + math.cos(math.pi * (e - w) / (E - w))) * lr0] * ipe)
    # multistep milestones stay absolute epoch numbers after warm-up
    ms = lr_trace(TrainConfig(epochs=8, lr=lr0, schedule="multistep", milestones=[4], warmup_epochs=2), 2)
    assert [row[0] for row in ms[2:]] == pytest.approx([lr0, lr0, lr0 * 0.1, lr0 * 0.1, lr0 * 0.1, lr0 * 0.1])


def test_iteration_compat_reproduces_the_limit_repo_bug():
    # The limit repo: MultiStepLR(milestones=[60,120,160]) and a warm-up scheduler both stepped every
    # iteration. Iteration t < W = 5*50 uses lr0*t/W (the warm-up overwrites the lr each step; at a
    # milestone t the multistep factor shows for that single iteration only); afterwards no milestone
    # is ever reached again, so all 200 epochs run at lr0.
    lr0, ipe, W = 0.01, 50, 250
    cfg = TrainConfig(epochs=200, lr=lr0, schedule="multistep", milestones=[60, 120, 160], gamma=0.2,
                      warmup_epochs=5, scheduler_step="iteration")
    flat = [x for row in lr_trace(cfg, ipe) for x in row]
    expected = [lr0 * t / W * (0.2 if t in (60, 120, 160) else 1.0) for t in range(W)] + [lr0] * (200 * ipe - W)
    assert flat == pytest.approx(expected, rel=1e-9, abs=1e-15)
    # the same config in epoch mode decays at epochs 60, 120, 160
    fixed = lr_trace(TrainConfig(**{**cfg.__dict__, "scheduler_step": "epoch"}), 2)
    assert [fixed[e][0] for e in (59, 60, 120, 199)] == pytest.approx([lr0, lr0 * 0.2, lr0 * 0.04, lr0 * 0.008])
    # without warm-up all three milestones pass within the first epoch
    nowarm = lr_trace(TrainConfig(**{**cfg.__dict__, "warmup_epochs": 0}), 200)
    assert nowarm[0][59] == lr0 and nowarm[0][60] == pytest.approx(lr0 * 0.2)
    assert nowarm[199][0] == pytest.approx(lr0 * 0.008)
    # cosine with T_max = epochs stepped per iteration oscillates with a period of 2 * epochs iterations
    cos = [x for row in lr_trace(TrainConfig(epochs=20, lr=lr0, schedule="cosine", scheduler_step="iteration"), 30)
           for x in row]
    assert cos == pytest.approx([0.5 * (1 + math.cos(math.pi * t / 20)) * lr0 for t in range(600)], abs=1e-12)
    assert cos[40] == pytest.approx(lr0) and cos[20] == pytest.approx(0.0, abs=1e-15)


# ---------------------------------------------------------------- objective

class WithNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.bn = nn.BatchNorm1d(4)
        self.conv = nn.Conv2d(1, 2, 2, bias=False)
        self.scale = nn.Parameter(torch.tensor([-3.0, 2.0]))

    def forward(self, x):
        return self.bn(self.fc(x)) * self.scale.sum()


def test_l1_penalty_equals_hand_sums():
    torch.manual_seed(0)
    m = WithNorm()
    with torch.no_grad():
        m.bn.weight.uniform_(-1, 1)
        m.bn.bias.uniform_(-1, 1)
    a = {n: np.abs(p.detach().numpy()).sum() for n, p in m.named_parameters()}
    wb = a["fc.weight"] + a["fc.bias"] + a["bn.weight"] + a["bn.bias"] + a["conv.weight"]
    def l1(which):
        return float(l1_penalty(m, which).detach())

    assert l1("weight_bias") == pytest.approx(wb, rel=1e-6)
    assert l1("prunable") == pytest.approx(a["fc.weight"] + a["conv.weight"], rel=1e-6)
    assert l1("all") == pytest.approx(wb + 5.0, rel=1e-6)
    l1_penalty(m).backward()
    assert torch.equal(m.fc.weight.grad, m.fc.weight.detach().sign()) and m.scale.grad is None
    with pytest.raises(ValueError, match="l1_params"):
        l1_penalty(m, "weights")


def test_criteria_match_formulas():
    torch.manual_seed(0)
    logits, y = torch.randn(6, 5, dtype=torch.float64), torch.tensor([0, 4, 2, 2, 1, 3])
    logp = logits - logits.exp().sum(1, keepdim=True).log()
    s = 0.1
    manual = ((1 - s) * -logp[torch.arange(6), y] + s * -logp.mean(1)).mean()
    assert float(make_criterion(TrainConfig(label_smoothing=s), 5)(logits, y)) == pytest.approx(float(manual))
    onehot = np.eye(5)[y.numpy()]
    mse = ((logits.numpy() - onehot) ** 2).mean()
    assert float(make_criterion(TrainConfig(criterion="mse"), 5)(logits, y)) == pytest.approx(mse)
    with pytest.raises(ValueError, match="num_classes"):
        make_criterion(TrainConfig(criterion="mse"), 7)(logits, y)


def test_evaluate_matches_manual_computation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 7), nn.Dropout(0.5))
    x, y = torch.randn(37, 6), torch.randint(0, 7, (37,))
    model.train()
    res = evaluate(model, DataLoader(TensorDataset(x, y), batch_size=8), l1_lambda=0.01)
    assert model.training  # mode restored
    with torch.no_grad():
        z = (x @ model[0].weight.T + model[0].bias).double().numpy()  # eval mode: dropout is identity
    order = np.argsort(-z, axis=1)
    top1 = 100 * np.mean(order[:, 0] == y.numpy())
    top5 = 100 * np.mean([y[i].item() in order[i, :5] for i in range(37)])
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    data_loss = -logp[np.arange(37), y.numpy()].mean()
    l1 = sum(np.abs(p.detach().numpy()).sum() for p in model.parameters())
    assert res["count"] == 37
    assert res["top1"] == pytest.approx(top1) and res["top5"] == pytest.approx(top5)
    assert res["data_loss"] == pytest.approx(data_loss, rel=1e-5)
    assert res["loss"] == pytest.approx(data_loss + 0.01 * l1, rel=1e-5)
    with pytest.raises(ValueError, match="criterion"):
        evaluate(model, DataLoader(TensorDataset(x, y)), criterion="nll")
    with pytest.raises(ValueError, match="no samples"):
        evaluate(model, DataLoader(TensorDataset(x[:0], y[:0])))


# ---------------------------------------------------------------- masks

def test_masked_training_keeps_pruned_weights_exactly_zero(tmp_path):
    model = make_net()
    masks = half_masks(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = quick_cfg(epochs=3, momentum=0.9, nesterov=True, weight_decay=5e-3, l1_lambda=1e-3, schedule="cosine")
    loader = DataLoader(make_data(), batch_size=16, shuffle=True)
    res = train(model, loader, DataLoader(make_data(seed=1), batch_size=32), cfg, masks=masks,
                run_dir=tmp_path, show_progress=False)
    last = torch.load(tmp_path / "checkpoint_last.pth.tar", weights_only=True)
    best = torch.load(tmp_path / "model_best.pth.tar", weights_only=True)
    assert set(best) == {"state_dict", "epoch", "top1"} and best["top1"] == res.best_top1
    names = [n for n, _ in model.named_parameters()]
    for name, keep in masks.items():
        for sd in (model.state_dict(), last["model"], best["state_dict"]):
            assert (sd[name][~keep] == 0).all()
        assert not torch.equal(model.state_dict()[name][keep], before[name][keep])
        buf = last["optimizer"]["state"][names.index(name)]["momentum_buffer"]
        assert (buf[~keep] == 0).all() and (buf[keep] != 0).any()
    pruned = sum(int((~k).sum()) for k in masks.values())
    rows = read_csv(tmp_path / "train_log.csv")
    assert float(rows[-1]["% Pruning"]) == pytest.approx(100 * pruned / sum(k.numel() for k in masks.values()))


def test_mask_enforcer_clears_existing_momentum():
    model = make_net()
    masks = half_masks(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for p in model.parameters():
        opt.state[p]["momentum_buffer"] = torch.ones_like(p)
    MaskEnforcer(model, masks, torch.device("cpu")).apply_to_optimizer_state(opt)
    for name, p in model.named_parameters():
        buf = opt.state[p]["momentum_buffer"]
        expected = masks[name].float() if name in masks else torch.ones_like(p)
        assert torch.equal(buf, expected)


def test_bad_masks_are_rejected():
    model = make_net()
    good = half_masks(model)
    cases = [({"2.weight_typo": good["2.weight"]}, "2.weight_typo"),
             ({"0.weight": good["2.weight"]}, "shape"),
             ({"0.weight": torch.full((16, 8), 2.0)}, "0/1")]
    for masks, fragment in cases:
        with pytest.raises(ValueError, match=fragment):
            train(model, DataLoader(make_data(), batch_size=16), None, quick_cfg(), masks=masks, show_progress=False)
    with pytest.raises(ValueError, match="masks"):
        finetune(model, None, DataLoader(make_data(), batch_size=16), None, quick_cfg())


# ---------------------------------------------------------------- logs, divergence, resume checks

def test_csv_log_and_orig_acc(tmp_path):
    model = make_net()
    test_loader = DataLoader(make_data(seed=1), batch_size=32)
    orig = evaluate(model, test_loader)["top1"]
    res = train(model, DataLoader(make_data(), batch_size=16), test_loader, quick_cfg(eval_every=2),
                run_dir=tmp_path, show_progress=False)
    rows = read_csv(tmp_path / "train_log.csv")
    assert list(rows[0]) == list(LOG_COLUMNS) and [r["Epoch"] for r in rows] == ["1", "2", "3"]
    assert all(float(r["Orig Acc"]) == pytest.approx(orig) for r in rows)
    assert rows[0]["Test Acc"] == "" and rows[1]["Test Acc"] != ""  # eval_every=2, and the last epoch
    assert float(rows[2]["Test Acc"]) == pytest.approx(evaluate(model, test_loader)["top1"])
    assert float(rows[2]["Best Test Acc"]) == res.best_top1 == max(float(rows[i]["Test Acc"]) for i in (1, 2))
    assert res.epochs_run == 3 and res.resumed_from is None and res.final["epoch"] == 3


class ExplodingNet(nn.Module):
    """Finite outputs for the first `good_steps` training forwards, then NaN."""

    def __init__(self, good_steps):
        super().__init__()
        self.fc = nn.Linear(8, 4)
        self.good_steps, self.calls = good_steps, 0

    def forward(self, x):
        out = self.fc(x)
        if self.training:
            self.calls += 1
            if self.calls > self.good_steps:
                out = out * float("nan")
        return out


def test_non_finite_loss_raises_and_keeps_last_checkpoint(tmp_path):
    model = ExplodingNet(good_steps=4 + 2)  # 4 iterations per epoch: epoch 2 breaks at iteration 3
    with pytest.raises(TrainingDiverged, match=r"epoch 2, iteration 3.*lower the learning rate") as info:
        train(model, DataLoader(make_data(), batch_size=16), None, quick_cfg(), run_dir=tmp_path,
              show_progress=False)
    assert isinstance(info.value, ValueError) and "checkpoint_last" in str(info.value)
    last = torch.load(tmp_path / "checkpoint_last.pth.tar", weights_only=True)
    assert last["epoch"] == 1 and all(torch.isfinite(v).all() for v in last["model"].values())


def test_resume_with_changed_config_is_refused(tmp_path):
    loader = DataLoader(make_data(), batch_size=16)
    train(make_net(), loader, None, quick_cfg(), run_dir=tmp_path, show_progress=False, stop_after_epoch=1)
    with pytest.raises(ValueError, match=r"lr: 0\.1 -> 0\.05"):
        train(make_net(), loader, None, quick_cfg(lr=0.05), run_dir=tmp_path, show_progress=False)
    res = train(make_net(), loader, None, quick_cfg(lr=0.05), run_dir=tmp_path, resume=False, show_progress=False)
    assert res.resumed_from is None and res.epochs_run == 3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_amp_masked_training_and_resume_on_cuda(tmp_path):
    masks = half_masks(make_net())
    cfg = quick_cfg(epochs=3, amp=True, momentum=0.9, nesterov=True, weight_decay=1e-3, schedule="cosine")
    data, test = DataLoader(make_data(), batch_size=16, shuffle=True), DataLoader(make_data(seed=1), batch_size=32)
    full = make_net()
    train(full, data, test, cfg, masks=masks, device="cuda", run_dir=tmp_path / "full", show_progress=False)
    last = torch.load(tmp_path / "full" / "checkpoint_last.pth.tar", weights_only=True)
    assert last["scaler"] and last["model"]["0.weight"].device.type == "cpu"
    part = make_net()
    train(part, data, test, cfg, masks=masks, device="cuda", run_dir=tmp_path / "part", show_progress=False,
          stop_after_epoch=1)
    res = train(make_net(), data, test, cfg, masks=masks, device="cuda", run_dir=tmp_path / "part",
                show_progress=False)
    assert res.resumed_from == 1
    for name, keep in masks.items():
        w = full.state_dict()[name]
        assert w.device.type == "cuda" and (w[~keep.cuda()] == 0).all() and (w[keep.cuda()] != 0).all()
    resumed = torch.load(tmp_path / "part" / "checkpoint_last.pth.tar", weights_only=True)["model"]
    for k, v in last["model"].items():
        assert torch.allclose(v, resumed[k], atol=1e-6), k


def test_prunelimit_train_is_callable_after_the_package_is_imported():
    import prunelimit
    import prunelimit.train  # binds the attribute to the package

    res = prunelimit.train(make_net(), DataLoader(make_data(), batch_size=16), None, quick_cfg(epochs=1),
                           show_progress=False)
    assert res.epochs_run == 1 and prunelimit.finetune is finetune and prunelimit.evaluate is evaluate


def test_bad_train_arguments_are_named(tmp_path):
    data = make_data()
    loader = DataLoader(data, batch_size=16)
    cases = [
        (dict(cfg={"epochs": 1}), "cfg must be"),
        (dict(stop_after_epoch=0), "stop_after_epoch"),
        (dict(train_loader=DataLoader(TensorDataset(data.tensors[0], data.tensors[1], data.tensors[1]),
                                      batch_size=16)), r"training loader must yield \(inputs, targets\)"),
        (dict(train_loader=DataLoader(TensorDataset(data.tensors[0][:0], data.tensors[1][:0]), batch_size=16)),
         "0 batches per epoch"),
    ]
    for override, fragment in cases:
        args = dict(train_loader=loader, cfg=quick_cfg(epochs=1))
        args.update(override)
        kw = {k: v for k, v in override.items() if k not in ("cfg", "train_loader")}
        with pytest.raises(ValueError, match=fragment):
            train(make_net(), args["train_loader"], None, args["cfg"], show_progress=False, **kw)
    with pytest.raises(ValueError, match="l1_lambda"):
        evaluate(make_net(), loader, l1_lambda=-1.0)
    # a foreign file where the resume checkpoint should be
    torch.save({"state_dict": make_net().state_dict()}, tmp_path / "checkpoint_last.pth.tar")
    with pytest.raises(ValueError, match="checkpoint_last.pth.tar.*not a prunelimit training checkpoint"):
        train(make_net(), loader, None, quick_cfg(), run_dir=tmp_path, show_progress=False)
