"""One-ordering incremental sweep versus the original's per-ratio procedure, in the same run.

    OMP_NUM_THREADS=1 python benchmarks/bench_sweep.py [--ratios 200] [--hidden 300,100] [--device cpu]

Model: an FC net on scikit-learn's digits (64 -> hidden -> 10), trained briefly with L1 so that it is
"trained-ish". Ours: ``MagnitudeOrdering.from_model`` once + ``run_sweep`` (incremental masks, one CSV,
the ordering saved so any ratio's mask can be recreated). The original's procedure, for every ratio:
deep-copy the model, concatenate and sort all prunable |w|, prune the k smallest, evaluate, and
``torch.save`` a full checkpoint. Both use the exact count k = floor(p*N + 0.5), so their rows must be
identical; the script checks that and reports time, time outside evaluation, and bytes written.
"""
from __future__ import annotations

import argparse
import copy
import math
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from prunelimit.limit import MagnitudeOrdering, default_grid, run_sweep
from prunelimit.pruning.prunable import prunable_parameters


def make_model_and_data(hidden: list[int], epochs: int, device: torch.device):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32, device=device)
    y = torch.tensor(y, device=device)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0)).to(device)
    tr, te = perm[:1437], perm[1437:]
    torch.manual_seed(0)
    layers, width = [], 64
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    model = nn.Sequential(*layers, nn.Linear(width, 10)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(epochs):
        for idx in tr[torch.randperm(len(tr), device=device)].split(128):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            (loss + 5e-4 * sum(p.abs().sum() for p in model.parameters())).backward()
            opt.step()
    model.eval()
    return model, x[te], y[te]


class Evaluator:
    def __init__(self, x, y):
        self.x, self.y, self.seconds = x, y, 0.0

    @torch.no_grad()
    def __call__(self, model):
        t = time.perf_counter()
        out = model(self.x)
        res = {"loss": float(nn.functional.cross_entropy(out, self.y)),
               "top1": 100.0 * float((out.argmax(1) == self.y).float().mean())}
        self.seconds += time.perf_counter() - t
        return res


def original_procedure(model, grid, evaluate, out_dir: Path) -> tuple[list[dict], int]:
    """Per ratio: deepcopy, concatenate + sort every |w|, prune, evaluate, save a checkpoint.

    Prunes exactly the k smallest (stable sort, ties by position) so that rows can be compared with ours;
    also counts the ratios where the original's own rule -- k = ceil(p*N) (at least 1), threshold = k-th
    smallest |w|, keep |w| > threshold -- would remove a different number of weights than k."""
    rows, miscounted = [], 0
    for i, p in enumerate(grid):
        cp = copy.deepcopy(model)
        weights = [w for _, w in prunable_parameters(cp)]
        flat = torch.cat([w.detach().reshape(-1) for w in weights]).abs()
        n = flat.numel()
        sorted_abs, order = torch.sort(flat, stable=True)
        k = int(p * n + 0.5)
        k_orig = max(1, math.ceil(p * n))
        miscounted += int((flat <= sorted_abs[k_orig - 1]).sum()) != k
        keep = torch.ones(n, dtype=torch.bool, device=flat.device)
        keep[order[:k]] = False
        with torch.no_grad():
            for w, m in zip(weights, keep.split([w.numel() for w in weights])):
                w.mul_(m.view_as(w).to(w.dtype))
        res = evaluate(cp)
        torch.save(cp.state_dict(), out_dir / f"model_{i}.pth")
        rows.append({"prune_fraction": p, "test_loss": res["loss"], "test_acc": res["top1"]})
    return rows, miscounted


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratios", type=int, default=200, help="grid size: p = i/ratios")
    ap.add_argument("--hidden", default="300,100", help="hidden layer widths, comma separated")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    model, x, y = make_model_and_data([int(h) for h in args.hidden.split(",")], args.epochs, device)
    grid = default_grid(args.ratios)
    n = sum(w.numel() for _, w in prunable_parameters(model))
    print(f"model: FC 64-{args.hidden.replace(',', '-')}-10, N = {n} prunable weights, {len(grid)} ratios, "
          f"device {device}, torch threads {torch.get_num_threads()}")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ev_ours = Evaluator(x, y)
        t = time.perf_counter()
        ordering = MagnitudeOrdering.from_model(model)
        ordering.save(tmp / "ordering.safetensors")
        ours = run_sweep(model, ordering, grid, ev_ours, show_progress=False, csv_path=tmp / "sweep.csv")
        t_ours = time.perf_counter() - t
        bytes_ours = sum(f.stat().st_size for f in tmp.iterdir())

        orig_dir = tmp / "original"
        orig_dir.mkdir()
        ev_orig = Evaluator(x, y)
        t = time.perf_counter()
        orig, miscounted = original_procedure(model, grid, ev_orig, orig_dir)
        t_orig = time.perf_counter() - t
        bytes_orig = sum(f.stat().st_size for f in orig_dir.iterdir())

    same = all(a["test_acc"] == b["test_acc"] and a["test_loss"] == b["test_loss"] for a, b in zip(ours, orig))
    over_ours, over_orig = t_ours - ev_ours.seconds, t_orig - ev_orig.seconds
    print(f"{'':22s}{'ours':>12s}{'original':>12s}{'ratio':>10s}")
    print(f"{'total time (s)':22s}{t_ours:12.3f}{t_orig:12.3f}{t_orig / t_ours:9.1f}x")
    print(f"{'time outside eval (s)':22s}{over_ours:12.3f}{over_orig:12.3f}{over_orig / max(over_ours, 1e-9):9.1f}x")
    print(f"{'bytes written':22s}{bytes_ours:12d}{bytes_orig:12d}{bytes_orig / bytes_ours:9.1f}x")
    print(f"rows identical (test acc and loss at all {len(grid)} ratios): {same}")
    print(f"the original's own count rule (ceil, at least 1, ties pruned) removes a number of weights other "
          f"than floor(p*N + 0.5) at {miscounted} of {len(grid)} ratios")
    if not same:
        raise SystemExit("the two procedures disagree; see the rows above")


if __name__ == "__main__":
    main()
