"""PLD accountant against dp-accounting's PLD and the exact analytic Gaussian."""

from __future__ import annotations

import math

import numpy as np
import pytest
from accounting_mp_reference import analytic_gaussian_epsilon as mp_gaussian_epsilon

from privlab.accounting import (
    GaussianEvent,
    LaplaceEvent,
    PLDAccountant,
    PoissonSampledEvent,
    RDPAccountant,
    analytic_gaussian_epsilon,
)
from privlab.accounting.pld import subsampled_gaussian_pld

dp_accounting = pytest.importorskip("dp_accounting")


def sgm(sigma: float, q: float):
    return GaussianEvent(sigma) if q == 1.0 else PoissonSampledEvent(q, GaussianEvent(sigma))


def dpacc_pld_eps(parts, delta, vdi):
    acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=vdi)
    for sigma, q, steps in parts:
        event = dp_accounting.GaussianDpEvent(sigma)
        if q < 1:
            event = dp_accounting.PoissonSampledDpEvent(q, event)
        acc.compose(event, steps)
    return acc.get_epsilon(delta)


@pytest.mark.parametrize(
    "sigma, q, steps",
    [(1.1, 256 / 60000, 1000), (1.0, 0.01, 100), (2.0, 0.01, 1), (5.0, 0.01, 100), (0.8, 0.01, 10)],
)
def test_matches_dp_accounting_pld(sigma, q, steps):
    ours = PLDAccountant().compose(sgm(sigma, q), steps).get_epsilon(1e-5)
    theirs = dpacc_pld_eps([(sigma, q, steps)], 1e-5, 1e-4)
    assert ours == pytest.approx(theirs, abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("q", [0.01, 256 / 60000])
@pytest.mark.parametrize("sigma", [0.5, 0.8, 1.1, 2.0, 5.0])
def test_within_1e3_of_fine_dp_accounting_pld(sigma, q):
    for steps in (1, 10, 100, 1000, 10_000):
        fine = dpacc_pld_eps([(sigma, q, steps)], 1e-5, 1e-5)
        if fine > 10:
            continue
        ours = PLDAccountant().compose(sgm(sigma, q), steps).get_epsilon(1e-5)
        assert abs(ours - fine) <= 1e-3, (steps, ours, fine)
        assert ours >= fine - 1e-4  # a pessimistic bound cannot be below the tight value


def test_mnist_example_close_to_fine_reference():
    step = sgm(1.1, 256 / 60000)
    eps = PLDAccountant().compose(step, 14063).get_epsilon(1e-5)
    assert eps == pytest.approx(2.3817, abs=1e-3)  # fine PLD / PRV reference 2.3817
    assert eps < 0.95 * RDPAccountant().compose(step, 14063).get_epsilon(1e-5)


@pytest.mark.parametrize("sigma, steps", [(0.5, 1), (1.0, 1), (1.0, 10), (2.0, 100), (5.0, 1000)])
def test_q1_never_below_the_exact_analytic_gaussian(sigma, steps):
    exact = mp_gaussian_epsilon(sigma / math.sqrt(steps), 1e-5)
    shortcut = PLDAccountant().compose(GaussianEvent(sigma), steps).get_epsilon(1e-5)
    assert shortcut == pytest.approx(exact, rel=1e-9) and shortcut >= exact * (1 - 1e-12)
    discretised = PLDAccountant(exact_gaussian=False).compose(GaussianEvent(sigma), steps)
    eps = discretised.get_epsilon(1e-5)
    assert exact <= eps <= exact + 1e-4
    assert analytic_gaussian_epsilon(sigma / math.sqrt(steps), 1e-5) >= exact


def test_both_directions_are_accounted_and_the_larger_reported():
    acc = PLDAccountant().compose(sgm(0.5, 0.01), 100)
    remove = acc.composed_pld("remove").epsilon(1e-5)
    add = acc.composed_pld("add").epsilon(1e-5)
    eps, direction = acc.get_epsilon_and_direction(1e-5)
    assert remove > add > 0  # the reference reports remove dominating (F09: 6.48 vs 0.72)
    assert eps == max(remove, add) and direction == "remove"
    assert acc.get_delta(eps) == pytest.approx(1e-5, rel=1e-6)


@pytest.mark.parametrize("direction", ["remove", "add"])
def test_single_step_pld_is_a_distribution_preserving_both_masses(direction):
    pld = subsampled_gaussian_pld(1.1, 256 / 60000, 1e-4, direction)
    assert pld.probs.min() >= 0
    assert pld.probs.sum() + pld.inf_mass == pytest.approx(1.0, abs=1e-12)
    # connect-the-dots keeps E_P[e^{-L}] = Q-mass = 1 (up to the truncated tails)
    assert np.dot(pld.probs, np.exp(-pld.losses)) == pytest.approx(1.0, abs=1e-10)


def test_heterogeneous_composition_matches_dp_accounting():
    parts = [(1.0, 0.01, 300), (2.0, 0.05, 200), (4.0, 1.0, 5)]
    acc = PLDAccountant()
    for sigma, q, steps in parts:
        acc.compose(sgm(sigma, q), steps)
    assert acc.get_epsilon(1e-6) == pytest.approx(dpacc_pld_eps(parts, 1e-6, 1e-4), abs=1e-5)


def test_laplace_matches_dp_accounting():
    acc = PLDAccountant().compose(LaplaceEvent(2.0), 20)
    theirs = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    theirs.compose(dp_accounting.LaplaceDpEvent(2.0), 20)
    assert acc.get_epsilon(1e-6) == pytest.approx(theirs.get_epsilon(1e-6), abs=1e-4)


def test_delta_and_epsilon_are_inverse_and_tight_pld_below_rdp():
    step = sgm(1.0, 0.02)
    pld = PLDAccountant().compose(step, 500)
    rdp = RDPAccountant().compose(step, 500)
    for delta in (1e-3, 1e-6, 1e-9):
        eps = pld.get_epsilon(delta)
        assert pld.get_delta(eps) <= delta * (1 + 1e-9)
        assert pld.get_delta(eps * 0.99) > delta
        assert eps < rdp.get_epsilon(delta)
