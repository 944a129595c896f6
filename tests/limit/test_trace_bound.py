"""The Jensen trace bound on the predicted limit: closed form, below the SLQ prediction, tight for one eigenvalue."""
from __future__ import annotations

import numpy as np
import pytest

from prunelimit.limit import normalized_gaussian_width, predict_limit
from prunelimit.limit.trace_bound import trace_bound_limit


def radius(p: float) -> float:   # weights of |w| = 0.01 removed in order: R(p) = 0.01 sqrt(p N), N = 10 000
    return 0.01 * np.sqrt(p * 10_000)


def test_bound_is_the_closed_form_fixed_point_and_below_the_slq_prediction():
    nodes, weights, eps = [0.0, 0.5, 3.0, 40.0], [0.5, 0.3, 0.15, 0.05], 0.02
    trace, dim = 10_000 * float(np.dot(np.abs(nodes), weights)), 10_000
    bound = trace_bound_limit(trace, dim, eps, radius, tol=1e-9)
    slq = predict_limit(nodes, weights, eps, radius, tol=1e-9)
    # closed form: p = 2 eps D / (2 eps D + R(p)^2 Tr) with R(p)^2 = 1e-4 p N  ->  a quadratic in p
    a, c = 1e-4 * 10_000 * trace, 2 * eps * dim
    p_star = (-c + np.sqrt(c * c + 4 * a * c)) / (2 * a)
    assert bound.limit == pytest.approx(p_star, abs=1e-8)
    assert bound.limit < slq.limit
    for R in (0.1, 0.7, 3.0):                                # Jensen, pointwise in R
        low = 2 * eps * dim / (2 * eps * dim + R * R * trace)
        assert low <= normalized_gaussian_width(nodes, weights, eps, R) + 1e-15


def test_bound_is_tight_for_a_single_eigenvalue_and_absent_for_a_negative_trace():
    eps = 0.05
    slq = predict_limit([2.0], [1.0], eps, radius, tol=1e-9)
    bound = trace_bound_limit(2.0 * 500, 500, eps, radius, tol=1e-9)
    assert bound.limit == pytest.approx(slq.limit, abs=1e-9)
    none = trace_bound_limit(-3.0, 500, eps, radius)
    assert none.limit is None and "not positive" in none.reason


def test_spectrum_traces_reads_negative_mass_and_abs_trace_from_the_slq_measure():
    from prunelimit.limit.trace_bound import spectrum_traces

    # weights given unnormalised (sum 2): normalised 0.2, 0.3, 0.5
    traces = spectrum_traces([-2.0, 1.0, 3.0], [0.4, 0.6, 1.0], dim=10)
    assert traces.negative_weight == pytest.approx(0.2)
    assert traces.abs_trace == pytest.approx(10 * (0.2 * 2 + 0.3 * 1 + 0.5 * 3))
    # rounding-level negatives of a PSD matrix (1e-9 of the top) are not negative curvature
    assert spectrum_traces([-1e-9, 0.5, 1.0], [1, 1, 1], dim=3).negative_weight == 0.0


def test_the_signed_trace_overshoots_an_indefinite_spectrum_and_abs_trace_does_not():
    from prunelimit.limit.trace_bound import spectrum_traces

    nodes, weights, eps, dim = [-5.0, 5.1], [0.5, 0.5], 0.02, 10_000
    slq = predict_limit(nodes, weights, eps, radius, tol=1e-9)
    signed = trace_bound_limit(dim * float(np.dot(nodes, weights)), dim, eps, radius, tol=1e-9)   # Tr H
    by_abs = trace_bound_limit(spectrum_traces(nodes, weights, dim).abs_trace, dim, eps, radius, tol=1e-9)
    assert signed.limit > slq.limit + 0.1        # Tr H << Tr|H|: the "bound" lies far above the prediction
    assert by_abs.limit <= slq.limit + 1e-9      # Jensen on |λ|: at or below it (tight: |λ| nearly equal)
    assert by_abs.limit == pytest.approx(slq.limit, abs=2e-3)
