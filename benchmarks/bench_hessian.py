"""SLQ spectrum: prunelimit's HessianOperator + slq_spectrum versus PyHessian's ``hessian.density``.

    pip install pyhessian==0.1 --no-deps      # benchmark only, not a project dependency
    python benchmarks/bench_hessian.py [--device cpu|cuda] [--threads 1] [--repeats 3] [--plain]

Three cases, same model, data, start vector and number of Lanczos steps on both sides:
  digits/1 batch   FC 64→300→100→10 (50 610 parameters) briefly trained on sklearn's digits, the whole
                   training set as ONE batch: PyHessian's ``data=`` path, which already reuses its
                   gradient graph, so only the Lanczos bookkeeping differs.
  digits/loader    the same in batches of 128: PyHessian's ``dataloader=`` path rebuilds forward +
                   backward on every batch for every HVP; ours caches the graphs once.
  cnn/loader       a small CNN on random CIFAR-shaped data in batches of 64 (dataloader path).
PyHessian's start vector is ``randint_like`` per parameter from the global RNG; we draw the same one
after the same ``torch.manual_seed`` and pass it as ``start=``, so both run Lanczos on the same Krylov
space and their top Ritz values agree to float32 round-off. PyHessian 0.1 calls ``torch.eig``,
removed from PyTorch; we patch in a stand-in built on ``torch.linalg.eigh`` (T is symmetric).
Each side runs ``--repeats`` times, alternating, after one warm-up; the median time is reported.
Fairness: both sides run in this one process with the same ``torch.set_num_threads(--threads)``
(default 1), the same model, batches, start vector and step count. ``--plain`` also times our
operator on PyTorch's own double-backward graphs (``HessianOperator.lean_graphs = False``).

Reading the numbers on CPU: the HVP's large temporaries come from glibc malloc, which returns freed
heap tops to the OS and page-faults them back in on the next HVP; how often depends on the process'
allocation history, so the same run can differ by 20-40 %. The "page faults" column (minor faults
per run, median) shows when that happened. With the data as one batch (digits/1 batch) both sides
run the SAME double backward on the same cached graph, so only the Lanczos bookkeeping differs.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings

try:
    import resource
except ImportError:  # not on Windows
    resource = None

import torch
from torch import nn

from prunelimit.spectrum import HessianOperator, memory_message, slq_spectrum, top_eigenvalues


def _eig_standin(T: torch.Tensor, eigenvectors: bool = False):
    """``torch.eig``'s old return layout: (n, 2) real/imaginary eigenvalues, eigenvectors as columns."""
    evals, evecs = torch.linalg.eigh(T)
    return torch.stack([evals, torch.zeros_like(evals)], dim=1), evecs


def digits_case(device: torch.device, seed: int, batch_size: int | None = None):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X_train, _, y_train, _ = train_test_split(X / 16.0, y, test_size=0.2, random_state=seed, stratify=y)
    x = torch.tensor(X_train, dtype=torch.float32, device=device)
    t = torch.tensor(y_train, dtype=torch.long, device=device)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(150):  # a short full-batch fit, so the Hessian is that of a trained net
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), t).backward()
        opt.step()
    if batch_size is None:
        return model, [(x, t)], "single"
    return model, list(zip(x.split(batch_size), t.split(batch_size))), "loader"


def cnn_case(device: torch.device, seed: int, num_batches: int = 4, batch_size: int = 64):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 8 * 8, 10)).to(device)
    gen = torch.Generator().manual_seed(seed)
    batches = [(torch.randn(batch_size, 3, 32, 32, generator=gen).to(device),
                torch.randint(0, 10, (batch_size,), generator=gen).to(device)) for _ in range(num_batches)]
    return model, batches, "loader"


def pyhessian_start(model: nn.Module, seed: int) -> torch.Tensor:
    """The exact start vector PyHessian's density() draws after torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    parts = []
    for p in (p for p in model.parameters() if p.requires_grad):
        v = torch.randint_like(p, high=2)
        v[v == 0] = -1
        parts.append(v.reshape(-1))
    return torch.cat(parts)


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PlainGraphOperator(HessianOperator):
    lean_graphs = False  # PyTorch's own double-backward formulas (see spectrum/operator.py)


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource is not None else 0


def _with_faults(fn, *args):
    """fn's result (its own time first) with the minor page faults it caused inserted second."""
    faults = _minor_faults()
    out = fn(*args)
    return (out[0], _minor_faults() - faults, *out[1:])


def run_ours(model, batches, steps, start, device, cache, plain=False):
    _sync(device)
    t0 = time.perf_counter()
    op = (PlainGraphOperator if plain else HessianOperator)(model, nn.functional.cross_entropy, batches,
                                                            cache_graph=cache)
    nodes, weights = slq_spectrum(op, steps, 1, start=start.unsqueeze(0))
    _sync(device)
    return time.perf_counter() - t0, nodes, op


def run_pyhessian(model, batches, mode, steps, seed, device):
    from pyhessian import hessian

    torch.eig = _eig_standin  # PyHessian 0.1 calls the removed torch.eig
    _sync(device)
    t0 = time.perf_counter()
    if mode == "single":
        h = hessian(model, nn.functional.cross_entropy, data=batches[0], cuda=device.type == "cuda")
    else:
        h = hessian(model, nn.functional.cross_entropy, dataloader=batches, cuda=device.type == "cuda")
    torch.manual_seed(seed)  # the same RNG state pyhessian_start() used
    eigen_list, _ = h.density(iter=steps, n_v=1)
    _sync(device)
    elapsed = time.perf_counter() - t0
    model.zero_grad(set_to_none=True)  # PyHessian leaves create_graph gradients in .grad
    return elapsed, torch.tensor(eigen_list[0], dtype=torch.float64)


def bench(name, case, steps, device, seed, repeats, with_uncached, with_plain=False):
    model, batches, mode = case
    dim = sum(p.numel() for p in model.parameters())
    start = pyhessian_start(model, seed)
    print(f"\n== {name}: {dim:,} parameters, {sum(len(t) for _, t in batches)} samples in "
          f"{len(batches)} batch(es), {steps} Lanczos steps, device {device}, "
          f"{torch.get_num_threads()} thread(s) for both sides")
    print("   " + memory_message(dim, steps, torch.float32))
    runs = {"ours": [], "pyhessian": [], "uncached": [], "plain": []}  # (seconds, page faults) per run
    for r in range(repeats + 1):  # round 0 is a warm-up (allocator, kernels, lazy imports)
        t, faults, ours_nodes, op = _with_faults(run_ours, model, batches, steps, start, device, "auto")
        t_ph, faults_ph, ph_nodes = _with_faults(run_pyhessian, model, batches, mode, steps, seed, device)
        if r:
            runs["ours"].append((t, faults))
            runs["pyhessian"].append((t_ph, faults_ph))
            if with_uncached:
                runs["uncached"].append(_with_faults(run_ours, model, batches, steps, start, device, False)[:2])
            if with_plain:
                runs["plain"].append(_with_faults(run_ours, model, batches, steps, start, device, "auto", True)[:2])
    med = {k: (statistics.median(t for t, _ in v), statistics.median(f for _, f in v)) for k, v in runs.items() if v}
    ours_t, ph_t = med["ours"][0], med["pyhessian"][0]
    print(f"   {'':34s}  time (median of {repeats})   per step   page faults")
    rows = [(f"prunelimit (graph cached={op.cached})", "ours"), ("prunelimit, PyTorch's plain graphs", "plain"),
            ("prunelimit (graph not cached)", "uncached"), ("PyHessian 0.1 density()", "pyhessian")]
    for label, key in rows:
        if key in med:
            t, f = med[key]
            vs = f"   ({ph_t / t:.2f}x vs PyHessian)" if key in ("plain", "uncached") else ""
            print(f"   {label:34s}  {t:8.2f} s   {t / steps * 1e3:10.1f} ms   {f:11,.0f}{vs}")
    print(f"   speed-up: {ph_t / ours_t:.2f}x")
    top_ours = ours_nodes.sort(descending=True).values[:5]
    top_ph = ph_nodes.sort(descending=True).values[:5]
    ref = float64_reference(model, batches, len(top_ours), seed)
    print("   top Ritz values   prunelimit        PyHessian         float64 reference   rel. err ours / PyHessian")
    for a, b, c in zip(top_ours.tolist(), top_ph.tolist(), ref.tolist()):
        print(f"                     {a:<16.8g}  {b:<16.8g}  {c:<18.10g}  {abs(a - c) / abs(c):.1e} / {abs(b - c) / abs(c):.1e}")
    return {"case": name, "dim": dim, "ours_s": ours_t, "pyhessian_s": ph_t, "speedup": ph_t / ours_t,
            "top_ours": top_ours.tolist(), "top_pyhessian": top_ph.tolist(), "top_float64": ref.tolist()}


def float64_reference(model, batches, k, seed):
    """The top-k eigenvalues of the same Hessian in float64, converged to 1e-10 (a float64 copy)."""
    model64 = copy.deepcopy(model).double()
    batches64 = [(x.double(), t) for x, t in batches]
    op = HessianOperator(model64, nn.functional.cross_entropy, batches64)
    return top_eigenvalues(op, k, max_iter=min(op.dim, 300), tol=1e-10, seed=seed)[0]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads, both sides (default 1)")
    parser.add_argument("--steps", type=int, default=128, help="Lanczos steps for the digits cases")
    parser.add_argument("--cnn-steps", type=int, default=32, help="Lanczos steps for the CNN case")
    parser.add_argument("--cnn-batches", type=int, default=4, help="batches of 64 images in the CNN case")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--uncached", action="store_true", help="also time our operator without the cache")
    parser.add_argument("--plain", action="store_true",
                        help="also time our operator on PyTorch's plain double-backward graphs")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")  # PyHessian's
    device = torch.device(args.device)
    cases = [("digits FC, 1 batch", digits_case(device, args.seed), args.steps),
             ("digits FC, batches of 128", digits_case(device, args.seed, 128), args.steps),
             ("CNN, random CIFAR-shaped, batches of 64", cnn_case(device, args.seed, args.cnn_batches),
              args.cnn_steps)]
    results = [bench(name, case, steps, device, args.seed, args.repeats, args.uncached, args.plain)
               for name, case, steps in cases]
    print("\nsummary: " + "; ".join(f"{r['case']}: {r['speedup']:.2f}x" for r in results))
    return results


if __name__ == "__main__":
    main()
