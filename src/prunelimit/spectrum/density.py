"""Smoothed spectral density from SLQ nodes and weights (for plots; the width uses nodes directly)."""
from __future__ import annotations

import math
import warnings

import torch
from prunelimit.errors import PrunelimitError


def _as_float64(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=torch.float64).reshape(-1).cpu()
    if t.numel() == 0:
        raise PrunelimitError(f"{name} is empty; run slq_spectrum first")
    if not torch.isfinite(t).all():
        raise PrunelimitError(f"{name} contains inf/nan; the spectrum is not usable")
    return t


def _gaussian_mixture(grid: torch.Tensor, nodes: torch.Tensor, weights: torch.Tensor,
                      variance: float, chunk: int = 4096) -> torch.Tensor:
    """Σ_i w_i N(x; node_i, variance) at each grid point, in chunks of the grid (memory ≤ chunk·nodes)."""
    out = torch.empty_like(grid)
    norm = 1.0 / math.sqrt(2 * math.pi * variance)
    for s in range(0, grid.numel(), chunk):
        diff = grid[s:s + chunk, None] - nodes[None, :]                      # (chunk, nodes)
        out[s:s + chunk] = (torch.exp(-diff ** 2 / (2 * variance)) * weights).sum(dim=1) * norm
    return out


def default_sigma(nodes) -> float:
    """The density's default kernel std: 1 % of the node range (of max(|node|, 1) when all coincide)."""
    nodes = _as_float64(nodes, "nodes")
    lo, hi = nodes.min().item(), nodes.max().item()
    return 0.01 * (hi - lo if hi > lo else max(abs(hi), 1.0))


def spectral_density(nodes, weights, grid=None, *, sigma: float | None = None, num_points: int = 1000
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian-kernel smoothing of the SLQ measure Σ w_i δ(λ − node_i).

    ``sigma`` (kernel std) defaults to 1 % of the node range (or of max(|node|, 1) when all nodes
    coincide); the default grid spans the nodes ± 5 sigma with ``num_points`` points, so the density
    integrates to ≈ Σ weights = 1 over it. Returns (grid, density), float64 CPU tensors."""
    nodes, weights = _as_float64(nodes, "nodes"), _as_float64(weights, "weights")
    if nodes.shape != weights.shape:
        raise PrunelimitError(f"nodes and weights must have the same length; got {nodes.numel()} and {weights.numel()}")
    lo, hi = nodes.min().item(), nodes.max().item()
    if sigma is None:
        sigma = default_sigma(nodes)
    if not sigma > 0:
        raise PrunelimitError(f"density_sigma={sigma!r} must be positive (or None for 1% of the spectrum range)")
    if grid is None:
        if not isinstance(num_points, int) or num_points < 2:
            raise PrunelimitError(f"density_points={num_points!r} must be an integer >= 2")
        grid = torch.linspace(lo - 5 * sigma, hi + 5 * sigma, num_points, dtype=torch.float64)
    else:
        grid = _as_float64(grid, "grid")
    return grid, _gaussian_mixture(grid, nodes, weights, sigma ** 2)


def original_density(nodes, weights, *, probes: int = 1, num_bins: int = 100_000,
                     sigma_squared: float = 1e-10, overhead: float = 0.01
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The original code's density (PyHessian's ``density_generate``), for compatibility only.

    Grid: ``num_bins`` points from (mean over probes of min node) − overhead to (mean of max node) +
    overhead; kernel variance sigma_squared · max(1, range); density normalised to sum·Δx = 1.
    With variance 1e-10 (std 1e-5) on 100 000 bins the bin spacing (range/1e5) is usually far wider
    than the kernel, so exp(−Δ²/2σ²) underflows to 0 at almost every bin and most nodes contribute
    nothing: the curve is a few spikes and sums taken from it are biased. When every bin underflows
    the original divides 0 by 0 (all nan); we warn and return zeros instead.
    ``nodes``/``weights`` are slq_spectrum's output (probes·steps entries, weights averaged)."""
    nodes, weights = _as_float64(nodes, "nodes"), _as_float64(weights, "weights")
    if nodes.numel() % probes:
        raise PrunelimitError(f"probes={probes} does not divide the {nodes.numel()} nodes; pass lanczos_num")
    per_probe = nodes.view(probes, -1)
    lam_max = per_probe.max(dim=1).values.mean().item() + overhead
    lam_min = per_probe.min(dim=1).values.mean().item() - overhead
    grid = torch.linspace(lam_min, lam_max, num_bins, dtype=torch.float64)
    variance = sigma_squared * max(1.0, lam_max - lam_min)
    density = _gaussian_mixture(grid, nodes, weights, variance)             # = mean over probes
    total = density.sum().item() * (grid[1] - grid[0]).item()
    if total == 0.0:
        warnings.warn("original_density: every bin underflowed to zero (kernel variance "
                      f"{variance:.1e} vs bin width {(grid[1] - grid[0]).item():.1e}); use spectral_density",
                      RuntimeWarning, stacklevel=2)
        return grid, torch.zeros_like(grid)
    return grid, density / total
