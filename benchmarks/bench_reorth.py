"""SLQ with and without full re-orthogonalisation, against the exact spectrum of small networks.

    python benchmarks/bench_reorth.py [--steps 64] [--probes 4]

For two small nets whose Hessian can be formed (torch.autograd.functional.hessian, float64) and
diagonalised exactly, run SLQ in float32 from the same Rademacher probes with full re-orthogonalisation
(the default), with partial re-orthogonalisation (``reorthogonalize="partial"``: only where Simon's
estimate of the lost orthogonality needs it) and without it (``reorthogonalize=False``), and compare with the exact spectrum the
quantities the limit prediction uses: the normalised Gaussian width g(R) at three radii (eps = 0.01),
the first two spectral moments tr(H)/D and tr(H^2)/D, and the top eigenvalue. Errors are relative.
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

from prunelimit.limit import normalized_gaussian_width
from prunelimit.spectrum import HessianOperator, slq_spectrum


def nets():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(20, 40), nn.Tanh(), nn.Linear(40, 30), nn.Tanh(), nn.Linear(30, 5))
    gen = torch.Generator().manual_seed(1)
    yield "MLP 20-40-30-5", mlp, [(torch.randn(200, 20, generator=gen), torch.randint(0, 5, (200,), generator=gen))]
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 5 * 5, 10))
    yield "CNN conv4-pool-fc10", cnn, [(torch.randn(128, 1, 12, 12, generator=gen), torch.randint(0, 10, (128,), generator=gen))]


def exact_eigenvalues(model, batches) -> torch.Tensor:
    op = HessianOperator(model.double(), nn.functional.cross_entropy, [(x.double(), y) for x, y in batches])
    eye = torch.eye(op.dim, dtype=torch.float64)
    H = torch.cat([op.matmat(eye[i:i + 256]) for i in range(0, op.dim, 256)])
    model.float()
    return torch.linalg.eigvalsh((H + H.T) / 2)


def summary(nodes, weights, eps=0.01, radii=(0.3, 1.0, 3.0)):
    w = weights / weights.sum()
    return {"g(R)": [normalized_gaussian_width(nodes, w, eps, R) for R in radii],
            "tr/D": float((w * nodes).sum()), "tr2/D": float((w * nodes ** 2).sum()), "top": float(nodes.max())}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--probes", type=int, default=4)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    for name, model, batches in nets():
        lam = exact_eigenvalues(model, batches)
        exact = summary(lam, torch.full_like(lam, 1.0 / lam.numel()))
        op = HessianOperator(model, nn.functional.cross_entropy, batches)
        print(f"\n== {name}: D = {op.dim}, {args.steps} steps, {args.probes} probes, float32")
        print(f"   {'':38s}{'g(0.3)':>10s}{'g(1)':>10s}{'g(3)':>10s}{'tr/D':>10s}{'tr2/D':>10s}{'top':>10s}")
        row = exact["g(R)"] + [exact["tr/D"], exact["tr2/D"], exact["top"]]
        print(f"   {'exact (eigvalsh)':38s}" + "".join(f"{v:10.4g}" for v in row))
        for reorth in (True, "partial", False):
            nodes, weights = slq_spectrum(op, args.steps, args.probes, seed=0, reorthogonalize=reorth)
            est = summary(nodes, weights)
            vals = est["g(R)"] + [est["tr/D"], est["tr2/D"], est["top"]]
            errs = [abs(a - b) / abs(b) for a, b in zip(vals, row)]
            label = {True: "full re-orthogonalisation", "partial": "partial re-orthogonalisation",
                     False: "no re-orthogonalisation"}[reorth]
            print(f"   {label + ' (rel. err)':38s}" + "".join(f"{e:10.1e}" for e in errs))
            copies = int((nodes > exact["top"] * (1 - 1e-4)).sum())
            print(f"   {'':38s}Ritz values at the top eigenvalue (all probes): {copies} for {args.probes} probes")


if __name__ == "__main__":
    main()
