"""Global magnitude masks: prunelimit vs ``torch.nn.utils.prune.global_unstructured``.

    python benchmarks/bench_gp_masks.py                 # ResNet-50 (25.5 M prunable weights) at 90 %
    python benchmarks/bench_gp_masks.py --huge          # also 1.5 G synthetic float32 weights, ours only
    python benchmarks/bench_gp_masks.py --out res.json  # results JSON elsewhere (default: next to this file)

Each method runs in its own subprocess on the same seeded model, so peak memory is separable: wall
time is the median of ``--repeats`` calls; peak extra RSS is the peak resident memory of the first
call above the resident memory once the model is built (Linux: VmHWM reset through
/proc/self/clear_refs). Afterwards both mask sets are compared: ours must prune exactly k, theirs
k +- 1 (Python's round), and any weight the two treat differently must sit exactly at the threshold
magnitude (a tie). ``global_unstructured`` is not run on the huge model: at the ~27 bytes per weight
it needs (measured on ResNet-50 here) it would take ~40 GB.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def _reset_peak() -> int:
    """Reset the peak-RSS counter to the current RSS; return the current RSS in bytes."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kib("VmRSS:") * 1024


def _peak() -> int:
    return _status_kib("VmHWM:") * 1024


def resnet50(seed: int = 0) -> nn.Module:
    import torchvision

    torch.manual_seed(seed)
    return torchvision.models.resnet50()  # random init: no download, same weights in every process


def huge_model(total: float) -> nn.Module:
    """Linear layers of 8192 x 7630 float32 weights (62.5 M each) totalling ``total`` weights."""
    rows, cols = 8192, 7630
    layers = max(1, round(total / (rows * cols)))
    model = nn.Sequential(*[nn.utils.skip_init(nn.Linear, cols, rows, bias=False) for _ in range(layers)])
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model:
            m.weight.normal_(generator=gen)
    return model


def _conv_linear(model: nn.Module):
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def worker(method: str, sparsity: float, repeats: int, mask_out: str | None, huge_weights: float,
           threads: int) -> dict:
    import prunelimit as pl
    from torch.nn.utils import prune

    torch.set_num_threads(threads)
    model = huge_model(huge_weights) if method == "huge" else resnet50()
    layers = _conv_linear(model)
    n_total = sum(m.weight.numel() for _, m in layers)
    originals = None
    if method == "theirs":
        originals = {name: m.weight.detach().clone() for name, m in layers}  # to undo pruning between repeats
    times, peak_extra, masks = [], None, None
    for r in range(repeats):
        base = _reset_peak()
        t0 = time.perf_counter()
        if method == "theirs":
            prune.global_unstructured([(m, "weight") for _, m in layers], pruning_method=prune.L1Unstructured,
                                      amount=sparsity)
            masks = {f"{name}.weight": m.weight_mask.bool() for name, m in layers}
        else:
            masks = pl.global_magnitude_masks(model, sparsity)
        times.append(time.perf_counter() - t0)
        if r == 0:
            peak_extra = _peak() - base
            if mask_out:
                np.savez(mask_out, **{k: v.numpy() for k, v in masks.items()})
        if method == "theirs":
            with torch.no_grad():
                for name, m in layers:
                    prune.remove(m, "weight")
                    m.weight.copy_(originals[name])
        del masks
    return {"method": method, "N": n_total, "sparsity": sparsity, "threads": torch.get_num_threads(),
            "times_s": times, "median_s": statistics.median(times), "peak_extra_bytes": peak_extra,
            "bytes_per_weight": peak_extra / n_total}


def _run_worker(method: str, args, mask_out: str | None) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, "--sparsity", str(args.sparsity), "--repeats",
           str(args.repeats if method != "huge" else args.huge_repeats), "--huge-weights", str(args.huge_weights),
           "--threads", str(args.threads)]
    if mask_out:
        cmd += ["--mask-out", mask_out]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare_masks(ours_path: str, theirs_path: str, sparsity: float) -> dict:
    """Counts and set agreement; every disagreement must be a tie at the threshold magnitude."""
    model = resnet50()
    weights = {f"{name}.weight": m.weight.detach().abs() for name, m in _conv_linear(model)}
    ours, theirs = np.load(ours_path), np.load(theirs_path)
    n_total = sum(w.numel() for w in weights.values())
    k = int(np.floor(sparsity * n_total + 0.5))
    pruned_ours = sum(int((~ours[n]).sum()) for n in weights)
    pruned_theirs = sum(int((~theirs[n]).sum()) for n in weights)
    threshold = max(float(w[~torch.from_numpy(ours[n])].max()) for n, w in weights.items())
    differ, differ_off_tie = 0, 0
    for n, w in weights.items():
        d = torch.from_numpy(ours[n] != theirs[n])
        differ += int(d.sum())
        differ_off_tie += int((w[d] != threshold).sum())
    return {"k": k, "pruned_ours": pruned_ours, "pruned_theirs": pruned_theirs, "threshold": threshold,
            "weights_treated_differently": differ, "of_which_not_at_threshold": differ_off_tie,
            "same_count": pruned_ours == k and abs(pruned_theirs - k) <= 1, "same_set_up_to_ties": differ_off_tie == 0}


def _mib(b: int) -> str:
    return f"{b / 2**20:,.0f} MiB"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--huge", action="store_true", help="also prune 1.5 G synthetic weights with ours")
    p.add_argument("--huge-weights", type=float, default=1.5e9)
    p.add_argument("--huge-repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads in both workers (default 1: on a shared machine more threads than free "
                        "cores make every parallel op wait for a descheduled thread)")
    p.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    p.add_argument("--worker", choices=["ours", "theirs", "huge"], help=argparse.SUPPRESS)
    p.add_argument("--mask-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.sparsity, args.repeats, args.mask_out, args.huge_weights,
                                args.threads)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        ours = _run_worker("ours", args, f"{tmp}/ours.npz")
        theirs = _run_worker("theirs", args, f"{tmp}/theirs.npz")
        check = compare_masks(f"{tmp}/ours.npz", f"{tmp}/theirs.npz", args.sparsity)
    result = {"resnet50": {"ours": ours, "theirs": theirs, "check": check,
                           "speedup": theirs["median_s"] / ours["median_s"],
                           "memory_ratio": theirs["peak_extra_bytes"] / max(ours["peak_extra_bytes"], 1)}}
    print(f"ResNet-50, {ours['N']:,} prunable weights, sparsity {args.sparsity}, {ours['threads']} threads, "
          f"median of {args.repeats}")
    print(f"{'method':<34}{'time':>10}{'peak extra RSS':>18}{'bytes/weight':>14}")
    for name, r in (("prunelimit.global_magnitude_masks", ours), ("prune.global_unstructured", theirs)):
        print(f"{name:<34}{r['median_s']:>9.3f}s{_mib(r['peak_extra_bytes']):>18}{r['bytes_per_weight']:>14.2f}")
    print(f"ratio (theirs / ours): time {result['resnet50']['speedup']:.1f}x, "
          f"peak extra memory {result['resnet50']['memory_ratio']:.1f}x")
    print(f"pruned: ours {check['pruned_ours']:,} (k = {check['k']:,}), theirs {check['pruned_theirs']:,}; "
          f"weights treated differently {check['weights_treated_differently']} "
          f"(not ties: {check['of_which_not_at_threshold']})")
    if args.huge:
        huge = _run_worker("huge", args, None)
        huge["global_unstructured_estimate_bytes"] = {
            "at_27_bytes_per_weight": 27 * huge["N"],
            "at_measured_bytes_per_weight": theirs["bytes_per_weight"] * huge["N"]}
        result["huge"] = huge
        print(f"huge: {huge['N']:,} float32 weights in {huge['N'] // (8192 * 7630)} layers: {huge['median_s']:.1f}s, "
              f"peak extra RSS {_mib(huge['peak_extra_bytes'])} ({huge['bytes_per_weight']:.2f} bytes/weight, of "
              f"which 1 is the bool masks)")
        print(f"global_unstructured (not run): ~27 bytes/weight -> ~{27 * huge['N'] / 1e9:.0f} GB; at the "
              f"{theirs['bytes_per_weight']:.1f} bytes/weight measured above -> "
              f"~{theirs['bytes_per_weight'] * huge['N'] / 1e9:.0f} GB")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if check["same_count"] and check["same_set_up_to_ties"] else 1


if __name__ == "__main__":
    sys.exit(main())
