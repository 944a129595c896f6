"""Float64-accurate reductions of float32 vectors without float64 copies of whole vectors.

Lanczos needs its dot products and norms float64-accurate: T's entries come from them, and an outlier
eigenvalue whose direction starts with a tiny component (7e-4 of a Rademacher start at 2 M entries)
amplifies their errors. Measured on a 2 M-entry diagonal operator, 12 steps: float32 dot products
summed per 65 536-entry chunk in float64 (error ~3e-8 relative: float32 partial sums of same-sign
terms round with a bias) put the top Ritz value 1e-5 off float64 Lanczos; float64 accumulation gives
1e-8. Converting whole vectors to float64 costs a 90 MB copy per call at 11 M entries (~45 ms, mostly
page faults). So each chunk's float32 products go to one cache-sized scratch vector and are summed
with a float64 accumulator (``sum(dtype=float64)``), and the chunk results summed in float64.
11.2 M entries, 1 CPU thread: 5.5 ms per dot product (error 1e-12 of |x||y|) against 65 ms for a
full-length product summed in float64 and 185 ms for whole-vector float64 copies.
The projections onto the basis (re-orthogonalisation coefficients) are one blocked float32 pass with
the blocks summed in float64 (``project64``).
"""
from __future__ import annotations

import torch

CHUNK = 65_536          # CPU: 512 KiB float64 temporaries stay in cache; ~170 calls at 11 M entries
CHUNK_CUDA = 1 << 22    # CUDA: fewer, larger kernels (32 MiB temporaries)
PROJECT_BLOCK = 16_384  # CPU projections: float32 GEMV length per block (accuracy vs call overhead)


def _chunk(x: torch.Tensor) -> int:
    return CHUNK_CUDA if x.device.type == "cuda" else CHUNK


def dot64(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Row-wise dot products of x, y (P, dim) as float64 (P,) on their device."""
    if x.dtype == torch.float64:
        return (x * y).sum(dim=-1)
    L = _chunk(x)
    scratch = torch.empty(min(L, x.shape[-1]), dtype=x.dtype, device=x.device)  # one cache-sized temporary
    rows = [torch.stack([torch.mul(a, b, out=scratch[:a.numel()]).sum(dtype=torch.float64)
                         for a, b in zip(r.split(L), s.split(L))]) for r, s in zip(x, y)]
    return torch.stack(rows).sum(dim=1)


def norm64(x: torch.Tensor) -> torch.Tensor:
    """Row-wise Euclidean norms of x (P, dim) as float64 (P,)."""
    return dot64(x, x).clamp_min(0).sqrt()


def project64(Q: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Coefficients Q w for a basis Q (m, dim) and a vector w (dim,) as float64 (m,).

    CPU: ONE blocked pass over Q: a float32 GEMV per column block of ``PROJECT_BLOCK`` entries writes
    an (m,) partial into a small float32 table, and the table is summed over blocks in float64. The
    float32 accumulation inside a block is short, so its error stays ~1e-9 of |q||w| (float64 GEMVs on
    float64 copies of the blocks: exact products, but 2x slower, the conversion costing more than the
    memory traffic). Measured at 11.2 M entries, m = 32, 1 thread: 68 ms against 131 ms for the float64
    blocks and 57 ms for one unblocked float32 GEMV; on the 2 M-entry diagonal test (tests/spectrum)
    the top Ritz values moved from 1.3e-8 to 2.6e-7 relative of float64 Lanczos (4 096-entry blocks:
    1.1e-7 at 105 ms; 65 536: 1.0e-6; unblocked: 1e-4 — the error grows with the block length
    because partial sums of same-sign terms round with a bias, and re-orthogonalisation writes the
    error back into the vector). CUDA keeps the float64 blocks (bandwidth, not conversion, bounds it
    there)."""
    if Q.dtype == torch.float64:
        return Q @ w
    if w.device.type != "cuda":
        L = PROJECT_BLOCK
        table = torch.empty(-(-w.numel() // L), Q.shape[0], dtype=Q.dtype, device=Q.device)
        for row, a, b in zip(table, Q.split(L, dim=1), w.split(L)):
            torch.mv(a, b, out=row)
        return table.sum(dim=0, dtype=torch.float64)
    L = max(4096, min(_chunk(w), (1 << 19) // max(1, Q.shape[0])))
    parts = [torch.mv(a.double(), b.double()) for a, b in zip(Q.split(L, dim=1), w.split(L))]
    return torch.stack(parts).sum(dim=0)
