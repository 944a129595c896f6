"""Mask enforcement by float-mask multiplication: the same training trajectory as a bool masked_fill_
reference, pruned weights exactly zero, and non-finite weights refused."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from prunelimit.errors import PrunelimitError
from prunelimit.train import MaskEnforcer


def net_and_masks(seed: int = 0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    gen = torch.Generator().manual_seed(seed + 1)
    masks = {name: torch.rand(p.shape, generator=gen) > 0.6 for name, p in net.named_parameters()
             if name.endswith("weight")}
    return net, masks


def train_steps(net, masks, enforce, steps: int = 6):
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True)
    gen = torch.Generator().manual_seed(7)
    for _ in range(steps):
        x, y = torch.randn(32, 8, generator=gen), torch.randint(0, 4, (32,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        enforce("grad")
        opt.step()
        enforce("weight")


def test_float_mask_multiplication_follows_the_masked_fill_trajectory_exactly():
    ours, masks = net_and_masks()
    reference = net_and_masks()[0]
    enforcer = MaskEnforcer(ours, masks)
    enforcer.apply_to_weights()
    named_ref = dict(reference.named_parameters())

    def reference_enforce(what: str):  # the bool masked_fill_ the enforcer used before
        with torch.no_grad():
            for name, keep in masks.items():
                target = named_ref[name] if what == "weight" else named_ref[name].grad
                target.masked_fill_(~keep, 0.0)

    reference_enforce("weight")
    train_steps(ours, masks, lambda what: enforcer.apply_to_weights() if what == "weight"
                else enforcer.apply_to_gradients())
    train_steps(reference, masks, reference_enforce)
    for name, p in ours.named_parameters():
        assert torch.equal(p, named_ref[name]), name             # -0.0 == 0.0: same values everywhere
        if name in masks:
            assert bool((p[~masks[name]] == 0).all())
            assert bool((p[masks[name]] != 0).all())            # kept weights still train


def test_non_finite_masked_weights_are_refused_with_the_parameter_name():
    net, masks = net_and_masks()
    with torch.no_grad():
        net[2].weight[0, 0] = float("nan")
    with pytest.raises(PrunelimitError, match=r"'2\.weight' has 1 non-finite"):
        MaskEnforcer(net, masks)
    with torch.no_grad():
        net[2].weight[0, 0] = 0.5
    enforcer = MaskEnforcer(net, masks)
    with torch.no_grad():
        net[0].weight[1, 1] = float("inf")
    with pytest.raises(PrunelimitError, match=r"'0\.weight'"):
        enforcer.check_finite()


class LeakySGD(torch.optim.SGD):
    """An optimizer whose update is NOT zero where the gradient is: after_step must re-mask it."""

    @torch.no_grad()
    def step(self, closure=None):
        super().step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                p.add_(1e-3)


@pytest.mark.parametrize("make_opt", [
    lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True),
    lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=1e-3),
    lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=1e-2),
    lambda ps: LeakySGD(ps, lr=0.1),
])
def test_after_step_keeps_pruned_weights_zero_for_exact_and_other_optimizers(make_opt):
    net, masks = net_and_masks()
    enforcer = MaskEnforcer(net, masks)
    enforcer.apply_to_weights()
    opt = make_opt(list(net.parameters()))
    enforcer.apply_to_optimizer_state(opt)
    gen = torch.Generator().manual_seed(3)
    for _ in range(5):
        x, y = torch.randn(16, 8, generator=gen), torch.randint(0, 4, (16,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        enforcer.apply_to_gradients()
        opt.step()
        enforcer.after_step(opt)
    enforcer.check_pruned_zero()
    named = dict(net.named_parameters())
    for name, keep in masks.items():
        assert bool((named[name][~keep] == 0).all())


def test_check_pruned_zero_reports_a_leak():
    net, masks = net_and_masks()
    enforcer = MaskEnforcer(net, masks)
    enforcer.apply_to_weights()
    enforcer.check_pruned_zero()
    name = sorted(masks)[0]
    idx = torch.nonzero(~masks[name])[0]
    with torch.no_grad():
        dict(net.named_parameters())[name][tuple(idx)] = 0.25
    with pytest.raises(RuntimeError, match="1 pruned weight"):
        enforcer.check_pruned_zero()
