"""Projected cost of a limit experiment (train -> sweep -> spectrum -> rows) on THIS machine's device.

    python benchmarks/limit_cost.py VGG16_CIFAR10_l1 ResNet18_CIFAR100_l1 --device cuda

Times a few training steps, evaluation batches and Hessian-vector products of the config's model on
random inputs of its dataset's shape (no dataset files needed), then multiplies by the work the config
asks for: epochs x training batches, sweep points x (test + train) evaluation batches, and
(lanczos_iter x lanczos_num + up to 100 top-eigenvalue steps + trace_samples + row_quantiles) HVPs over
the whole training set. Prints one table per config and the total in hours. Data loading is not
included (the sweep and the Hessian read the data from memory in the pipeline; training with
augmentation needs enough loader workers to keep up).
"""
from __future__ import annotations

import argparse
import math
import time

import torch

import prunelimit as pl
from prunelimit.config.loader import load_config
from prunelimit.train import make_criterion

# (train samples, test samples) of the paper's datasets
SIZES = {"mnist": (60000, 10000), "cifar10": (50000, 10000), "cifar100": (50000, 10000),
         "tinyimagenet": (100000, 10000), "digits": (1437, 360)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device, steps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / steps


def work(name: str) -> dict:
    """The config's work without timing anything: forward MACs per example (dense) and pass counts."""
    cfg = load_config(name)
    info = pl.dataset_info(cfg.data.dataset)
    n_train, n_test = SIZES[cfg.data.dataset]
    model = pl.create_model(cfg.model.name, num_classes=info.num_classes, input_shape=tuple(info.input_shape))
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in pl.prunable_parameters(model)}
    macs = pl.sparsity_report(model, masks, torch.zeros(1, *info.input_shape)).dense_macs
    s, lc = cfg.spectrum, cfg.limit
    return {"model": cfg.model.name, "dataset": cfg.data.dataset, "gmacs_per_example": macs / 1e9,
            "train_passes": cfg.train.epochs,
            "sweep_forward_passes": lc.sweep_points * (n_test + (n_train if lc.sweep_train else 0)) / n_train,
            "hvp_passes": s.lanczos_iter * s.lanczos_num + (100 if s.top_k else 0) + s.trace_samples,
            "row_passes": s.row_quantiles if s.important_eigs else 0,
            "pmacs_per_forward_pass": macs * n_train / 1e15}


def project(name: str, device: torch.device, steps: int) -> list[tuple[str, int, float]]:
    cfg = load_config(name)
    info = pl.dataset_info(cfg.data.dataset)
    n_train, n_test = SIZES[cfg.data.dataset]
    torch.manual_seed(0)
    model = pl.create_model(cfg.model.name, num_classes=info.num_classes, input_shape=tuple(info.input_shape)).to(device)
    bs, ebs = cfg.train.batch_size, cfg.eval_batch_size or cfg.train.batch_size
    x = torch.randn(bs, *info.input_shape, device=device)
    y = torch.randint(0, info.num_classes, (bs,), device=device)
    xe = torch.randn(ebs, *info.input_shape, device=device)
    loss_fn = make_criterion(cfg.train, info.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def train_step():
        model.train()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    @torch.no_grad()
    def eval_step():
        model.eval()
        model(xe)

    t_train = _timed(train_step, device, steps)
    t_eval = _timed(eval_step, device, steps)
    model.eval()
    op = pl.HessianOperator(model, loss_fn, [(x, y)], device=device, cache_graph="false")
    v = torch.randn(op.dim, device=device, dtype=op.dtype)
    t_hvp = _timed(lambda: op.matvec(v), device, steps)   # one HVP over one training batch

    s, lc = cfg.spectrum, cfg.limit
    train_batches = math.ceil(n_train / bs)
    sweep_batches = lc.sweep_points * (math.ceil(n_test / ebs) + (math.ceil(n_train / ebs) if lc.sweep_train else 0))
    hvps = s.lanczos_iter * s.lanczos_num + (100 if s.top_k else 0) + s.trace_samples   # top-k: at most 100 steps
    rows = s.row_quantiles if s.important_eigs else 0
    print(f"{name}: per batch of {bs}: train step {t_train:.3g} s, evaluation {t_eval:.3g} s "
          f"({t_eval / t_train:.2f} train steps), HVP {t_hvp:.3g} s ({t_hvp / t_train:.2f} train steps)")
    return [("train", cfg.train.epochs * train_batches, t_train * cfg.train.epochs * train_batches),
            ("sweep", sweep_batches, t_eval * sweep_batches),
            ("spectrum (HVPs x batches)", hvps * train_batches, t_hvp * hvps * train_batches),
            ("important eigenvalues", rows * train_batches, t_hvp * rows * train_batches)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("configs", nargs="+", help="shipped config names or paths (their data files are not needed)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=3, help="timed repetitions of each operation (after 1 warm-up)")
    ap.add_argument("--work", action="store_true", help="only print the work (MACs, passes over the training "
                                                          "set); time nothing")
    args = ap.parse_args()
    if args.work:
        print("| config | model | GMAC / example | PMAC / forward pass over train | train: fwd+bwd passes | "
              "sweep: fwd passes | Hessian: HVP passes (+ q rows) |")
        print("|---|---|---|---|---|---|---|")
        for cfg_name in args.configs:
            w = work(cfg_name)
            rows = f" + {w['row_passes']}" if w["row_passes"] else ""
            print(f"| {cfg_name} | {w['model']} | {w['gmacs_per_example']:.3g} | {w['pmacs_per_forward_pass']:.3g} | "
                  f"{w['train_passes']} | {w['sweep_forward_passes']:.0f} | {w['hvp_passes']}{rows} |")
        return
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}")
    for cfg_name in args.configs:
        parts = project(cfg_name, device, args.steps)
        total = sum(sec for _, _, sec in parts)
        train_h = parts[0][2] / 3600
        print(f"{cfg_name}: projected {total / 3600:.2f} h = {total / 3600 / train_h:.1f} x its training")
        for stage, count, sec in parts:
            print(f"  {stage:<28} {count:>10,} batches  {sec / 3600:8.2f} h")


if __name__ == "__main__":
    main()
