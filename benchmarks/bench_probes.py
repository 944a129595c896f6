"""Several probes per HVP: the double backward looped over the probes vs one vmap'd backward.

    python benchmarks/bench_probes.py [--threads 1] [--repeats 3] [--probes 1,2,4,8] [--cases digits,cnn,r18]

Every batch is recomputed in every HVP (cache_graph=false), the case where sharing matters: both paths
run each batch's forward + first-order backward ONCE for all probes (HessianOperator.matmat), then
either loop the double backward over the probes (batched_probes=false) or run it once with
``is_grads_batched`` (true). Printed per probe count: the median time of each (interleaved rounds, after
a warm-up), loop/vmap (>1: vmap faster), the largest difference of the results relative to the largest
entry, and the per-probe cost against k separate HVPs (what one forward + backward per probe would cost).
Cases are those of bench_hessian.py: digits FC in 12 batches, the small CNN in 4 batches of 64,
ResNet-18 on 2 batches of 16 CIFAR-size images. ``batched_probes=auto`` follows what this prints.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from bench_hessian import cnn_case, digits_case, resnet18_case
from prunelimit.spectrum import HessianOperator


def bench_case(name, model, batches, probe_counts, repeats):
    model.eval()
    ops = {flag: HessianOperator(model, nn.functional.cross_entropy, batches, cache_graph=False,
                                 batched_probes=flag) for flag in (False, True)}
    dim = ops[False].dim
    print(f"\n== {name}: {dim:,} parameters, {len(batches)} batches recomputed per HVP, "
          f"{torch.get_num_threads()} thread(s)")
    print(f"   {'probes':>6s}{'loop ms':>10s}{'vmap ms':>10s}{'loop/vmap':>11s}{'k single HVPs ms':>18s}"
          f"{'max rel diff':>14s}")
    gen = torch.Generator().manual_seed(0)
    for k in probe_counts:
        V = torch.randn(k, dim, generator=gen)
        times = {False: [], True: [], "single": []}
        results = {}
        for r in range(repeats + 1):                               # round 0: warm-up
            for what in ((False, True, "single") if r % 2 else ("single", True, False)):
                t0 = time.perf_counter()
                if what == "single":
                    torch.stack([ops[False].matvec(v) for v in V])
                else:
                    results[what] = ops[what].matmat(V)
                    assert ops[what].batched_hvp is what, "the vmap path fell back to the loop"
                if r:
                    times[what].append(time.perf_counter() - t0)
        loop, vmap, single = (statistics.median(times[w]) * 1e3 for w in (False, True, "single"))
        diff = float((results[True] - results[False]).abs().max() / results[False].abs().max())
        print(f"   {k:6d}{loop:10.0f}{vmap:10.0f}{loop / vmap:11.2f}{single:18.0f}{diff:14.1e}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--probes", default="1,2,4,8")
    parser.add_argument("--cases", default="digits,cnn,r18")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    counts = [int(k) for k in args.probes.split(",")]
    cases = {"digits": ("digits FC, 12 batches of 128", lambda: digits_case(0, 128)),
             "cnn": ("small CNN, 4 batches of 64", lambda: cnn_case(0)),
             "r18": ("ResNet-18, 2 batches of 16", lambda: resnet18_case(0, 2, batch_size=16))}
    for case in args.cases.split(","):
        if case not in cases:
            raise SystemExit(f"unknown case {case!r}; choose from {','.join(cases)}")
        title, make = cases[case]
        bench_case(title, *make(), counts, args.repeats)


if __name__ == "__main__":
    main()
