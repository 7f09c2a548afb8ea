"""Relative Gaussian mechanism RDP (Hendrikx, Mangold, Bellet 2024) against numerics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats

from privlab.accounting import RDPAccountant, RelativeGaussianEvent, relative_gaussian_rdp
from privlab.accounting.relative_gaussian import gaussian_renyi_divergence, max_order


def renyi_numeric(alpha: float, m1: float, s1: float, m2: float, s2: float) -> float:
    """1-D D_alpha(N(m1, s1^2) || N(m2, s2^2)) by quadrature."""

    def log_ratio_integrand(x: float) -> float:
        lp = stats.norm.logpdf(x, m1, s1)
        lq = stats.norm.logpdf(x, m2, s2)
        return math.exp(alpha * lp + (1 - alpha) * lq)

    lo = min(m1, m2) - 60 * max(s1, s2)
    hi = max(m1, m2) + 60 * max(s1, s2)
    val, _ = integrate.quad(
        log_ratio_integrand, lo, hi, points=[m1, m2], limit=400, epsabs=0, epsrel=1e-12
    )
    return math.log(val) / (alpha - 1)


@pytest.mark.parametrize(
    "alpha, shift, s1, s2",
    [
        (2.0, 0.5, 1.0, 1.1),
        (5.0, 0.0, 1.0, 0.9),
        (1.5, 1.0, 4.47, 4.2),
        (7.3, 1.0, 2.0, 2.3),
        (3.0, 1.0, 0.9, 1.0),
    ],
)
def test_closed_form_matches_numerical_integration(alpha, shift, s1, s2):
    closed = float(gaussian_renyi_divergence(alpha, shift, s1, s2, 1))
    assert closed == pytest.approx(renyi_numeric(alpha, 0.0, s1, shift, s2), rel=1e-8)


def test_worst_case_matches_brute_force_numerical_integration():
    """d = 3: the mean-shift coordinate plus 2 pure variance-mismatch coordinates."""
    k, delta, d, alpha = 2.0, 0.05, 3, 4.0
    worst = -math.inf
    for r in np.linspace(1 - delta, 1 + delta, 41):
        for s1, s2 in ((k, k * r), (k * r, k)):
            value = renyi_numeric(alpha, 0.0, s1, 1.0, s2) + (d - 1) * renyi_numeric(
                alpha, 0.0, s1, 0.0, s2
            )
            worst = max(worst, value)
    got = relative_gaussian_rdp(RelativeGaussianEvent(k, delta, 0.0, d), [alpha])[0]
    assert got == pytest.approx(worst, rel=1e-7)


@pytest.mark.parametrize(
    "d, delta, expected",
    [
        (1, 0.01, 0.0523),
        (22, 0.001, 0.0502),
        (22, 0.01, 0.0566),
        (22, 0.05, 0.191),
        (100, 0.01, 0.0727),
        (1000, 0.01, 0.258),
        (1000, 0.05, 5.93),
    ],
)
def test_reference_table_values(d, delta, expected):
    k = math.sqrt(2 / 0.1)  # the official code's alpha0 = 2, eps0 = 0.1
    got = relative_gaussian_rdp(RelativeGaussianEvent(k, delta, 0.0, d), [2.0])[0]
    assert got == pytest.approx(expected, rel=2e-3)  # the table has 3 significant digits


def test_orders_beyond_the_limit_are_excluded_not_nan():
    event = RelativeGaussianEvent(4.472, 0.01, 0.0, 22)
    assert max_order(0.01) == pytest.approx(1 / (0.02 - 1e-4))
    curve = relative_gaussian_rdp(event, [2.0, 45.0, 50.2, 50.3, 100.0, 1e4])
    assert np.all(np.isfinite(curve[:3])) and np.all(curve[3:] == np.inf)
    assert not np.isnan(curve).any()
    acc = RDPAccountant().compose(event, 40)
    eps, order = acc.get_epsilon_and_order(1e-5)
    assert math.isfinite(eps) and 1 < order < max_order(0.01)
    assert acc.get_delta(eps) == pytest.approx(1e-5, rel=1e-3)


def test_zero_relative_sensitivity_is_the_gaussian_mechanism():
    orders = np.array([1.5, 2.0, 10.0, 1000.0])
    got = relative_gaussian_rdp(RelativeGaussianEvent(3.0, 0.0, 1.0, 50), orders)
    np.testing.assert_allclose(got, orders / 18.0, rtol=1e-14)


def test_rdp_grows_with_dimension_and_relative_sensitivity_not_absolute():
    base = relative_gaussian_rdp(RelativeGaussianEvent(3.0, 0.02, 0.0, 10), [2.0, 8.0])
    assert np.all(
        relative_gaussian_rdp(RelativeGaussianEvent(3.0, 0.02, 0.0, 20), [2.0, 8.0]) > base
    )
    assert np.all(
        relative_gaussian_rdp(RelativeGaussianEvent(3.0, 0.03, 0.0, 10), [2.0, 8.0]) > base
    )
    np.testing.assert_array_equal(
        relative_gaussian_rdp(RelativeGaussianEvent(3.0, 0.02, 5.0, 10), [2.0, 8.0]), base
    )
