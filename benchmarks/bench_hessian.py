"""SLQ spectrum: prunelimit against PyHessian, curvlinops and hessian-eigenthings, in one process.

    pip install pyhessian curvlinops-for-pytorch hessian-eigenthings   # benchmark only
    python benchmarks/bench_hessian.py [--threads 1] [--repeats 3] [--cases digits1,digits,cnn,r18,r18budget]

Cases (the model is put in eval mode; every tool differentiates ALL trainable parameters, so all take
the same Hessian):
  digits1    FC 64-300-100-10 (50.6 k parameters) briefly trained on sklearn's digits, the whole
             training set (1437) as ONE batch, 128 Lanczos steps
  digits     the same in 12 batches of 128 (the last one 29), 128 steps
  cnn        a small CNN (25.6 k parameters), 4 batches of 64 random CIFAR-shaped images, 32 steps
  r18        torchvision ResNet-18 (random weights, 100 classes, 11.2 M parameters), 64 random
             CIFAR-size images in 2 batches, 8 steps
  r18budget  the same model, 128 images in 8 batches of 16, 8 steps, with our memory budget forced to
             3.5 batches' graphs: we cache 2 batches and recompute 6 per HVP (the peers recompute all 8)
  r50        torchvision ResNet-50 (random weights, 100 classes, 23.7 M parameters: the top of the
             issue's "up to 25 M"), 64 random CIFAR-size images in 2 batches, 8 steps; not in the
             default list (about 6 minutes more); its profile stops at 32 steps (a 128-step basis
             would take 12 GB)
Tools: prunelimit (HessianOperator + slq_spectrum: cached lean graphs, full re-orthogonalisation);
PyHessian 0.1 ``hessian.density`` (its removed ``torch.eig`` patched with ``torch.linalg.eigh``);
curvlinops ``HessianLinearOperator`` + ``fast_lanczos`` (Papyan's SLQ: no re-orthogonalisation, its
own random start); hessian-eigenthings ``HessianOperator`` + ``lanczos_tridiagonal`` (re-orthogonalised).
A tool that cannot be imported is reported as such, never estimated. PyHessian, hessian-eigenthings
and prunelimit start from the same vector (PyHessian's, drawn after ``torch.manual_seed``).

Timing: each round runs every tool once in a rotated order (no tool always follows the same one),
after a warm-up round; the median over ``--repeats`` rounds is reported, with each peer's time as a
multiple of ours (>1: we are faster). Accuracy: each tool's top Ritz value against a float64
reference (the same Hessian in float64, top eigenvalue by Lanczos converged to 1e-10; not run for the
ResNet cases, where a float64 copy is too slow on this machine: there the tools are compared with each
other). Also printed for prunelimit: one HVP as a multiple of one plain gradient (forward + backward
over the same batches), the split of a Lanczos step into HVP and bookkeeping (the median of 3 runs of
min(steps, 16) steps), and the peak RSS.
For the r18 case also one 128-step Lanczos run with full and one with partial re-orthogonalisation
(``reorthogonalize="partial"``), each step / HVP after 8, 32 and 128 steps, and the partial run's top
5 Ritz values against the full run's (``--no-profile`` skips this); for r50 the same up to 32 steps.
"""
from __future__ import annotations

import argparse
import copy
import resource
import statistics
import time
import warnings

import torch
from torch import nn

from prunelimit.spectrum import HessianOperator, slq_spectrum, top_eigenvalues
from prunelimit.spectrum.lanczos import _LanczosRun, tridiagonal_eigh


# ----------------------------------------------------------------------------- cases
def digits_case(seed: int, batch_size: int | None):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X_train, _, y_train, _ = train_test_split(X / 16.0, y, test_size=0.2, random_state=seed, stratify=y)
    x, t = torch.tensor(X_train, dtype=torch.float32), torch.tensor(y_train, dtype=torch.long)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(150):  # a short full-batch fit, so the Hessian is that of a trained net
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), t).backward()
        opt.step()
    batches = [(x, t)] if batch_size is None else list(zip(x.split(batch_size), t.split(batch_size)))
    return model, batches


def cnn_case(seed: int, num_batches: int = 4, batch_size: int = 64):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 8 * 8, 10))
    return model, _random_images(seed, num_batches, batch_size, 10)


def resnet18_case(seed: int, num_batches: int, batch_size: int = 32, arch: str = "resnet18"):
    import torchvision

    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(num_classes=100)
    return model, _random_images(seed, num_batches, batch_size, 100)


def _random_images(seed, num_batches, batch_size, classes):
    gen = torch.Generator().manual_seed(seed + 1)
    return [(torch.randn(batch_size, 3, 32, 32, generator=gen), torch.randint(0, classes, (batch_size,), generator=gen))
            for _ in range(num_batches)]


def pyhessian_start(model: nn.Module, seed: int) -> torch.Tensor:
    """The start vector PyHessian's density() draws after torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    parts = []
    for p in (p for p in model.parameters() if p.requires_grad):
        v = torch.randint_like(p, high=2)
        v[v == 0] = -1
        parts.append(v.reshape(-1))
    return torch.cat(parts)


# ----------------------------------------------------------------------------- tools
def run_prunelimit(model, batches, steps, start, seed, budget):
    t0 = time.perf_counter()
    op = HessianOperator(model, nn.functional.cross_entropy, batches, params=list(model.named_parameters()),
                         memory_budget=budget)
    nodes, _ = slq_spectrum(op, steps, 1, start=start.unsqueeze(0))
    return time.perf_counter() - t0, nodes, op.cache_report


def run_pyhessian(model, batches, steps, start, seed, budget):
    from pyhessian import hessian

    torch.eig = lambda T, eigenvectors=False: (  # PyHessian 0.1 calls the removed torch.eig
        torch.stack([torch.linalg.eigh(T)[0], torch.zeros(T.shape[0])], 1), torch.linalg.eigh(T)[1])
    t0 = time.perf_counter()
    if len(batches) == 1:
        h = hessian(model, nn.functional.cross_entropy, data=batches[0], cuda=False)
    else:
        h = hessian(model, nn.functional.cross_entropy, dataloader=batches, cuda=False)
    torch.manual_seed(seed)  # the RNG state pyhessian_start() used: the same start vector
    eigen_list, _ = h.density(iter=steps, n_v=1)
    elapsed = time.perf_counter() - t0
    model.zero_grad(set_to_none=True)  # PyHessian leaves create_graph gradients in .grad
    return elapsed, torch.tensor(eigen_list[0], dtype=torch.float64), ""


def run_curvlinops(model, batches, steps, start, seed, budget):
    from curvlinops import HessianLinearOperator
    from curvlinops.papyan2020traces.spectrum import fast_lanczos

    t0 = time.perf_counter()
    A = HessianLinearOperator(model, nn.CrossEntropyLoss(), [p for p in model.parameters() if p.requires_grad],
                              batches, check_deterministic=False)
    torch.manual_seed(seed)
    evals, _ = fast_lanczos(A, steps)
    return time.perf_counter() - t0, evals.double(), ""


def run_eigenthings(model, batches, steps, start, seed, budget):
    import hessian_eigenthings as he

    t0 = time.perf_counter()
    op = he.HessianOperator(model, batches, he.supervised_loss(nn.functional.cross_entropy))
    tri = he.lanczos_tridiagonal(op, start / start.norm(), steps)
    evals = tridiagonal_eigh(torch.as_tensor(tri.alphas).double(), torch.as_tensor(tri.betas).double())[0]
    return time.perf_counter() - t0, evals, ""


TOOLS = {"prunelimit": (run_prunelimit, None), "PyHessian": (run_pyhessian, "pyhessian"),
         "curvlinops": (run_curvlinops, "curvlinops"), "hessian-eigenthings": (run_eigenthings, "hessian_eigenthings")}


def available_tools() -> dict:
    out = {}
    for name, (fn, module) in TOOLS.items():
        try:
            if module:
                __import__(module)
            out[name] = fn
        except Exception as err:  # reported, not hidden
            print(f"{name}: cannot be imported ({type(err).__name__}: {err}); left out of every case")
    return out


# ----------------------------------------------------------------------------- our own numbers
def gradient_and_hvp_ms(model, batches, budget, rounds: int = 3) -> tuple[float, float]:
    """Median ms of one plain gradient (forward + backward over all batches) and of one of our HVPs."""
    params = [p for p in model.parameters() if p.requires_grad]
    op = HessianOperator(model, nn.functional.cross_entropy, batches, params=list(model.named_parameters()),
                         memory_budget=budget)
    v = torch.randn(1, op.dim)
    out = torch.empty_like(v)
    grads, hvps = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for x, y in batches:
            torch.autograd.grad(nn.functional.cross_entropy(model(x), y), params)
        grads.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        op.matmat(v, out=out)
        hvps.append(time.perf_counter() - t0)
    return statistics.median(grads) * 1e3, statistics.median(hvps) * 1e3


def lanczos_split(model, batches, steps, start, budget, rounds: int = 3) -> tuple[float, float]:
    """(HVP ms, bookkeeping ms) per step of our Lanczos runs: the run with the median step / HVP of
    ``rounds`` runs (one run's ratio moves with the load on a shared machine)."""
    op = HessianOperator(model, nn.functional.cross_entropy, batches, params=list(model.named_parameters()),
                         memory_budget=budget)
    splits = []
    for _ in range(rounds):
        run = _LanczosRun(op, start.unsqueeze(0), steps)
        run.advance(steps)
        splits.append((run.hvp_seconds / steps * 1e3, run.bookkeeping_seconds / steps * 1e3))
        del run
    splits.sort(key=lambda hb: (hb[0] + hb[1]) / hb[0])
    return splits[len(splits) // 2]


def step_profile(model, batches, start, budget, marks=(8, 32, 128)) -> dict:
    """Lanczos step / HVP after 8, 32 and 128 steps of one run (the first n steps of a run ARE an
    n-step run), with full and with partial re-orthogonalisation, and the partial run's top Ritz
    values against the full run's."""
    op = HessianOperator(model, nn.functional.cross_entropy, batches, params=list(model.named_parameters()),
                         memory_budget=budget)
    out, tops = {}, {}
    for mode in (True, "partial"):
        run = _LanczosRun(op, start.unsqueeze(0), max(marks), reorthogonalize=mode)
        for n in marks:
            run.advance_to(n)
            out[mode, n] = ((run.hvp_seconds + run.bookkeeping_seconds) / run.hvp_seconds,
                            run.hvp_seconds / n * 1e3, run.bookkeeping_seconds / n * 1e3)
        tops[mode] = tridiagonal_eigh(*run.tridiagonal(0))[0][-5:]
        read = run.omega[0].vectors_read if run.omega else sum(range(1, max(marks) + 1))
        out[mode, "read"] = read / sum(range(1, max(marks) + 1))
        del run
    out["top5_rel_diff"] = float(((tops["partial"] - tops[True]).abs() / tops[True].abs()).max())
    return out


def float64_top(model, batches, seed) -> float:
    model64 = copy.deepcopy(model).double()
    op = HessianOperator(model64, nn.functional.cross_entropy, [(x.double(), t) for x, t in batches],
                         params=list(model64.named_parameters()))
    return float(top_eigenvalues(op, 1, max_iter=min(op.dim, 300), tol=1e-10, seed=seed)[0][0])


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------- driver
def bench(name, model, batches, steps, tools, args, budget=None, reference=True, profile=False,
          marks=(8, 32, 128)):
    model.eval()
    dim = sum(p.numel() for p in model.parameters() if p.requires_grad)
    start = pyhessian_start(model, args.seed)
    print(f"\n== {name}: {dim:,} parameters, {sum(len(t) for _, t in batches)} samples in {len(batches)} "
          f"batch(es), {steps} Lanczos steps, {torch.get_num_threads()} thread(s)")
    names = list(tools)
    times = {n: [] for n in names}
    tops, notes = {}, {}
    for r in range(args.repeats + 1):                      # round 0: warm-up
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            t, nodes, note = tools[n](model, batches, steps, start, args.seed, budget)
            tops[n], notes[n] = float(nodes.max()), note
            if r:
                times[n].append(t)
    ref = float64_top(model, batches, args.seed) if reference else None
    ours = statistics.median(times["prunelimit"])
    print(f"   {'tool':22s}{'median s':>10s}{'vs prunelimit':>15s}{'top Ritz value':>18s}{'rel. err vs float64' if ref else 'rel. diff vs ours':>22s}")
    row = {"case": name}
    for n in names:
        med = statistics.median(times[n])
        err = abs(tops[n] - ref) / abs(ref) if ref else abs(tops[n] - tops["prunelimit"]) / abs(tops["prunelimit"])
        ratio = "1 (ours)" if n == "prunelimit" else f"{med / ours:.2f}x slower" if med >= ours else f"{ours / med:.2f}x FASTER"
        print(f"   {n:22s}{med:10.2f}{ratio:>15s}{tops[n]:18.8g}{err:22.1e}")
        row[n] = (med, err)
    if notes["prunelimit"]:
        print(f"   prunelimit: {notes['prunelimit']}")
    grad_ms, hvp_ms = gradient_and_hvp_ms(model, batches, budget)
    hvp_step, book = lanczos_split(model, batches, min(steps, 16), start, budget)
    print(f"   prunelimit: one HVP = {hvp_ms:.1f} ms = {hvp_ms / grad_ms:.2f}x one gradient ({grad_ms:.1f} ms); "
          f"Lanczos step = HVP {hvp_step:.1f} ms + bookkeeping {book:.1f} ms ({(hvp_step + book) / hvp_step:.3f}x the HVP); "
          f"peak RSS so far {peak_rss_mib():,.0f} MiB")
    row.update(hvp_over_grad=hvp_ms / grad_ms, step_over_hvp=(hvp_step + book) / hvp_step)
    if profile:
        prof = step_profile(model, batches, start, budget, marks)
        for mode, label in ((True, "full re-orthogonalisation"), ("partial", "partial re-orthogonalisation")):
            line = "; ".join(f"{n} steps {prof[mode, n][0]:.3f}x (HVP {prof[mode, n][1]:.0f} + {prof[mode, n][2]:.0f} ms)"
                             for n in marks)
            print(f"   Lanczos step / HVP, {label} (basis vectors read: {prof[mode, 'read']:.0%} of full): {line}")
        print(f"   partial vs full re-orthogonalisation, top 5 Ritz values after {max(marks)} steps: max rel. diff "
              f"{prof['top5_rel_diff']:.1e}")
        row.update(profile=prof, marks=marks)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads, all tools (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases", default="digits1,digits,cnn,r18,r18budget")
    parser.add_argument("--no-profile", action="store_true",
                        help="skip the 8/32/128-step Lanczos profile of the ResNet cases (~5 min)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # PyHessian's create_graph warning, torch.jit deprecations
    tools = available_tools()
    rows = []
    for case in args.cases.split(","):
        if case == "digits1":
            rows.append(bench("digits FC, 1 batch of 1437", *digits_case(args.seed, None), 128, tools, args))
        elif case == "digits":
            rows.append(bench("digits FC, 12 batches of 128", *digits_case(args.seed, 128), 128, tools, args))
        elif case == "cnn":
            rows.append(bench("small CNN, 4 batches of 64", *cnn_case(args.seed), 32, tools, args))
        elif case == "r18":
            rows.append(bench("ResNet-18, 2 batches of 32", *resnet18_case(args.seed, 2), 8, tools, args,
                              reference=False, profile=not args.no_profile))
        elif case == "r50":
            rows.append(bench("ResNet-50, 2 batches of 32", *resnet18_case(args.seed, 2, arch="resnet50"), 8, tools,
                              args, reference=False, profile=not args.no_profile, marks=(8, 32)))
        elif case == "r18budget":
            model, batches = resnet18_case(args.seed, 8, batch_size=16)
            probe = HessianOperator(model.eval(), nn.functional.cross_entropy, batches[:1],
                                    params=list(model.named_parameters()))
            per_batch = probe.graph_bytes_first - probe.gradient_bytes   # the gradients are held once
            probe_grad_mib = probe.gradient_bytes / 2**20
            budget = int(probe.gradient_bytes + 3.5 * per_batch)
            del probe
            print(f"\n(r18budget: one batch's graph measured at {per_batch / 2**20:.0f} MiB plus "
                  f"{probe_grad_mib:.0f} MiB of gradients held once; budget forced to {budget / 2**20:.0f} MiB)")
            rows.append(bench("ResNet-18, 8 batches of 16, budget 3.5 batches", model, batches, 8, tools, args,
                              budget=budget, reference=False))
        else:
            raise SystemExit(f"unknown case {case!r}; choose from digits1,digits,cnn,r18,r18budget,r50")
    print("\nsummary (peer time / prunelimit time; >1 = prunelimit faster):")
    for row in rows:
        peers = ", ".join(f"{n} {row[n][0] / row['prunelimit'][0]:.2f}x" for n in tools if n != "prunelimit")
        print(f"  {row['case']}: {peers}; HVP = {row['hvp_over_grad']:.2f} gradients; "
              f"Lanczos step = {row['step_over_hvp']:.3f} HVP")
        if "profile" in row:
            prof = row["profile"]
            marks = row["marks"]
            print(f"    Lanczos step / HVP at {', '.join(map(str, marks))} steps: full " +
                  ", ".join(f"{prof[True, n][0]:.3f}" for n in marks) + "; partial " +
                  ", ".join(f"{prof['partial', n][0]:.3f}" for n in marks))
    print(f"peak RSS {peak_rss_mib():,.0f} MiB")
    return rows


if __name__ == "__main__":
    main()
