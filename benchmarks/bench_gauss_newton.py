"""The Gauss-Newton matrix against the Hessian: cached-graph memory, time per product, spectrum ends.

    python benchmarks/bench_gauss_newton.py [--rounds 5] [--steps 48]

Two cases, each built once: the digits MLP 64-300-100-10 after a short full-batch fit (one batch of
1437 images) and a small CNN (conv16-pool-conv32-pool-fc10) on 4 batches of 64 random 32x32 images.
For the Hessian (``HessianOperator`` with its lean graphs, and with PyTorch's plain double-backward
graphs) and ``GaussNewtonOperator`` it prints the measured
graph of batch 0 that each caches (``graph_bytes_first``), the milliseconds per matrix-vector product
(1 thread, cached graphs, interleaved H H' G H H' G ... over ``--rounds`` rounds, median), and from one SLQ
run (same probe) the smallest and largest Ritz values and the trace estimate Σ w λ · D.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from prunelimit.spectrum import GaussNewtonOperator, HessianOperator, format_bytes, slq_spectrum


def digits_case():
    from prunelimit.data.digits import digits_split

    split = digits_split()
    x = torch.tensor(split.train_images).reshape(-1, 64)
    y = torch.tensor(split.train_labels)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(150):   # a short full-batch fit, so the matrices are those of a trained net
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, [(x, y)]


def cnn_case():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(32 * 8 * 8, 10))
    gen = torch.Generator().manual_seed(1)
    return model, [(torch.randn(64, 3, 32, 32, generator=gen), torch.randint(0, 10, (64,), generator=gen))
                   for _ in range(4)]


def ms_per_product(ops: dict, rounds: int) -> dict:
    v = torch.randn(1, next(iter(ops.values())).dim, generator=torch.Generator().manual_seed(0))
    times = {name: [] for name in ops}
    for _ in range(rounds):                       # interleaved: H H' G H H' G ...
        for name, op in ops.items():
            start = time.perf_counter()
            op.matmat(v)
            times[name].append(1000 * (time.perf_counter() - start))
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=48)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(f"{'case':30s}{'matrix':>14s}{'graph, batch 0':>16s}{'ms/product':>12s}{'min Ritz':>12s}"
          f"{'max Ritz':>12s}{'trace':>12s}")
    for name, (model, batches) in (("digits MLP, 1 batch of 1437", digits_case()),
                                   ("small CNN, 4 batches of 64", cnn_case())):
        ops = {"Hessian": HessianOperator(model, nn.functional.cross_entropy, batches, cache_graph=True),
               "H, plain": HessianOperator(model, nn.functional.cross_entropy, batches, cache_graph=True,
                                           lean_graphs=False),
               "Gauss-Newton": GaussNewtonOperator(model, nn.functional.cross_entropy, batches, cache_graph=True)}
        ms = ms_per_product(ops, args.rounds)
        for matrix, op in ops.items():
            nodes, weights = slq_spectrum(op, args.steps, 1, seed=0)
            print(f"{name:30s}{matrix:>14s}{format_bytes(op.graph_bytes_first):>16s}{ms[matrix]:12.1f}"
                  f"{float(nodes.min()):12.4g}{float(nodes.max()):12.4g}{float((nodes * weights).sum()) * op.dim:12.4g}")


if __name__ == "__main__":
    main()
