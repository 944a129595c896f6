"""Cost of keeping pruned weights at zero, per training step, against the same step without a mask.

    python benchmarks/bench_masking.py [--threads 1] [--rounds 7] [--steps 40] [--batch 128] [--sparsity 0.9]

Model: the limit paper's FC net (784 -> 1000 -> 600 -> 300 -> 100 -> 10, 1.4 M weights) on random
MNIST-shaped batches, SGD with momentum and weight decay, one process. Four variants of the same step:
  dense        forward, backward, optimizer step; no mask
  mul_         prunelimit's MaskEnforcer as the training loop uses it: gradients multiplied by float
               0/1 masks; SGD then leaves the pruned weights at exactly 0, so they need no re-masking
  masked_fill_ the bool-mask fill it replaced (gradients and weights), for reference
  prune hook   torch.nn.utils.prune.custom_from_mask: weight = weight_orig * mask in a forward pre-hook
  dense again  a second, identical dense model: its row shows the noise floor of the measurement
Each round times ``--steps`` steps of every variant in turn, the order rotated by one each round (so no
variant always follows the same one), after a warm-up round; the table gives the median time per step
and its ratio to the dense step's median. On a shared machine read the mask rows against "dense again".
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn
from torch.nn.utils import prune

from prunelimit.train import MaskEnforcer


def fc_net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    widths = [784, 1000, 600, 300, 100, 10]
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def random_masks(net: nn.Module, sparsity: float, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.rand(p.shape, generator=gen) >= sparsity for name, p in net.named_parameters()
            if name.endswith("weight")}


class Variant:
    """One model + optimizer + the way it enforces the mask; ``run(steps)`` returns seconds."""

    def __init__(self, kind: str, base: nn.Module, masks, batches):
        self.kind, self.batches = kind, batches
        self.net = copy.deepcopy(base)
        self.masks = masks
        self.enforcer = None
        if kind == "mul_":
            self.enforcer = MaskEnforcer(self.net, masks)
            self.enforcer.apply_to_weights()
        elif kind == "masked_fill_":
            named = dict(self.net.named_parameters())
            self.pruned = [(named[n], ~m) for n, m in masks.items()]
        elif kind == "prune hook":
            modules = dict(self.net.named_modules())
            for name, keep in masks.items():
                prune.custom_from_mask(modules[name.rsplit(".", 1)[0]], "weight", keep)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        self.i = 0

    def step(self) -> None:
        x, y = self.batches[self.i % len(self.batches)]
        self.i += 1
        self.opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(self.net(x), y).backward()
        if self.enforcer is not None:
            self.enforcer.apply_to_gradients()
        elif self.kind == "masked_fill_":
            with torch.no_grad():
                for p, pruned in self.pruned:
                    p.grad.masked_fill_(pruned, 0.0)
        self.opt.step()
        if self.enforcer is not None:
            self.enforcer.after_step(self.opt)  # SGD: no re-masking needed (masking.py docstring)
        elif self.kind == "masked_fill_":
            with torch.no_grad():
                for p, pruned in self.pruned:
                    p.masked_fill_(pruned, 0.0)

    def run(self, steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        return (time.perf_counter() - start) / steps

    def pruned_weights_are_zero(self) -> bool:
        named = dict(self.net.named_parameters())
        if self.kind == "prune hook":  # the effective weight is the module's attribute
            modules = dict(self.net.named_modules())
            return all(bool((getattr(modules[n.rsplit(".", 1)[0]], "weight")[~m] == 0).all()) for n, m in self.masks.items())
        if self.kind == "dense":
            return False
        return all(bool((named[n][~m] == 0).all()) for n, m in self.masks.items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--sparsity", type=float, default=0.9)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = fc_net(0)
    masks = random_masks(base, args.sparsity, 1)
    gen = torch.Generator().manual_seed(2)
    batches = [(torch.randn(args.batch, 784, generator=gen), torch.randint(0, 10, (args.batch,), generator=gen))
               for _ in range(8)]
    kinds = ["dense", "mul_", "masked_fill_", "prune hook", "dense again"]
    variants = {k: Variant("dense" if k == "dense again" else k, base, masks, batches) for k in kinds}
    for v in variants.values():                     # warm-up round (allocator, caches)
        v.run(args.steps)
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for r in range(args.rounds):
        for k in kinds[r % len(kinds):] + kinds[:r % len(kinds)]:
            times[k].append(variants[k].run(args.steps))
    dense = statistics.median(times["dense"])
    print(f"FC 784-1000-600-300-100-10, batch {args.batch}, sparsity {args.sparsity:.0%}, "
          f"{args.threads} thread(s), {args.rounds} rounds x {args.steps} steps, medians")
    print(f"{'variant':<14}{'ms/step':>9}{'vs dense':>10}   pruned weights exactly 0")
    for k in kinds:
        med = statistics.median(times[k])
        zero = "-" if k.startswith("dense") else ("yes" if variants[k].pruned_weights_are_zero() else "NO")
        print(f"{k:<14}{med * 1e3:>9.3f}{(med / dense - 1) * 100:>+9.1f}%   {zero}")


if __name__ == "__main__":
    main()
