"""Hessian spectrum: HVP operator, Lanczos/SLQ density, top eigenvalues, trace, important eigenvalues.

    op = HessianOperator(model, nn.functional.cross_entropy, [(x, y)])
    nodes, weights = slq_spectrum(op, steps=128, probes=1)
    eigenvalues, vectors = top_eigenvalues(op, k=5)
"""
from prunelimit.spectrum.config import SpectrumConfig
from prunelimit.spectrum.density import original_density, spectral_density
from prunelimit.spectrum.gauss_newton import GaussNewtonOperator, curvature_operator
from prunelimit.spectrum.eigen import hessian_trace, top_eigenvalues
from prunelimit.spectrum.lanczos import (LanczosInfo, format_bytes, lanczos_tridiagonal, memory_estimate,
                                         memory_message, rademacher, slq_spectrum, tridiagonal_eigh)
from prunelimit.spectrum.memory import MemoryBudget, resolve_budget
from prunelimit.spectrum.operator import HessianOperator, MatrixOperator
from prunelimit.spectrum.parameters import hessian_parameters
from prunelimit.spectrum.plots import plot_density, plot_row_norms
from prunelimit.spectrum.restricted import RestrictedOperator
from prunelimit.spectrum.rows import RowNormResult, hessian_row_norms

__all__ = [
    "GaussNewtonOperator", "HessianOperator", "LanczosInfo", "MatrixOperator", "MemoryBudget", "RestrictedOperator", "RowNormResult",
    "SpectrumConfig", "curvature_operator", "format_bytes", "hessian_parameters", "hessian_row_norms", "hessian_trace",
    "lanczos_tridiagonal", "memory_estimate", "memory_message", "original_density", "plot_density",
    "plot_row_norms", "rademacher", "resolve_budget", "slq_spectrum", "spectral_density", "top_eigenvalues",
    "tridiagonal_eigh",
]
