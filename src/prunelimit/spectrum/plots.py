"""Spectrum plots (matplotlib, Agg backend), written atomically and only on rank 0.

Figures are built with ``matplotlib.figure.Figure`` (Agg canvas) instead of pyplot, so plotting never
switches the user's global backend or leaks open figures."""
from __future__ import annotations

import io
import os

import torch

from prunelimit import dist
from prunelimit.runs.io import atomic_write_bytes


def _figure(nrows: int = 1, height: float = 4.0):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(6.4, height))
    return fig, fig.subplots(nrows, 1, squeeze=False)


def _save(fig, path) -> str | None:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=120)
    if not dist.is_main():
        return None
    atomic_write_bytes(path, buf.getvalue())  # temp file in the same folder, then os.replace
    return os.fspath(path)


def plot_density(path, grid, density, nodes, weights, *, sigma: float | None = None,
                 title: str | None = None) -> str | None:
    """Log-scale spectral density (like PyHessian's plot) above the SLQ nodes with their weights.

    ``sigma``: the Gaussian kernel's std, stated in the title. Below 1e-12 of the peak nothing is drawn
    (a log axis cannot show zeros, and a clamped floor would look like data)."""
    grid, density = torch.as_tensor(grid).double(), torch.as_tensor(density).double()
    nodes, weights = torch.as_tensor(nodes).double(), torch.as_tensor(weights).double()
    fig, axes = _figure(2, 6.0)
    ax = axes[0, 0]
    positive = density[density > 0]
    # log scale cannot show exact zeros; below 1e-12 of the peak there is nothing to see but kernel tails
    floor = max(positive.min().item(), positive.max().item() * 1e-12) if positive.numel() else 1e-30
    shown = torch.where(density >= floor, density, torch.full_like(density, float("nan")))  # gaps, not a plateau
    ax.semilogy(grid.numpy(), shown.numpy())
    ax.set_ylim(bottom=floor)
    ax.set_ylabel("Density (Log Scale)")
    kernel = f"Gaussian kernel sigma = {sigma:.3g}" if sigma is not None else "Gaussian kernel"
    ax.set_title((f"{title}\n" if title else "") + f"Hessian eigenvalue density (SLQ, {kernel})\n"
                 f"(values below 1e-12 of the peak are not drawn)", fontsize=9)
    ax2 = axes[1, 0]
    keep = weights > 0
    ax2.vlines(nodes[keep].numpy(), weights[keep].min().item() if keep.any() else 1e-30,
               weights[keep].numpy(), linewidth=1)
    ax2.set_yscale("log")
    ax2.set_xlim(ax.get_xlim())
    ax2.set_xlabel("Eigenvalue")
    ax2.set_ylabel("Quadrature weight")
    return _save(fig, path)


def plot_row_norms(path, row_result, *, title: str | None = None) -> str | None:
    """Hessian-row L1 norm of the weight at each magnitude quantile; flat rows (below the cut) in red.
    ``title`` (e.g. the model and dataset) heads the figure."""
    r = row_result
    x = (r.quantile * 100).numpy()
    floor = r.threshold / 10  # zero rows drawn just below the threshold so the log axis can show them
    y = r.row_l1.clamp_min(floor).numpy()
    flat = r.flat.numpy()
    fig, axes = _figure(1, 4.0)
    ax = axes[0, 0]
    ax.semilogy(x[~flat], y[~flat], "o", markersize=3, label="curved")
    ax.semilogy(x[flat], y[flat], "o", color="red", markersize=3, label="flat (< threshold)")
    ax.axhline(r.threshold, color="gray", linestyle="--", linewidth=1, label=f"threshold {r.threshold:g}")
    ax.set_xlabel("|w| quantile of the prunable weights (%)")
    ax.set_ylabel("Hessian row L1 norm")
    ax.set_title((f"{title}\n" if title else "")
                 + f"Important eigenvalues: q = {r.flat_fraction:.3f} ({r.flat_count}/{len(r.param_name)} flat)")
    ax.legend(loc="best", fontsize=8)
    return _save(fig, path)
