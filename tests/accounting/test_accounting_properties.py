"""Hypothesis properties: monotonicity, no NaN, calibration round trip."""

from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from privlab.accounting import (
    GaussianEvent,
    PLDAccountant,
    PoissonSampledEvent,
    RDPAccountant,
    calibrate_noise_multiplier,
)

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
sigmas = st.floats(0.3, 20.0)
rates = st.one_of(st.just(1.0), st.floats(1e-4, 1.0))
steps_st = st.integers(1, 20_000)
deltas = st.floats(1e-12, 0.5)


def rdp_eps(sigma, q, steps, delta):
    step = GaussianEvent(sigma) if q == 1.0 else PoissonSampledEvent(q, GaussianEvent(sigma))
    return RDPAccountant().compose(step, steps).get_epsilon(delta)


@SETTINGS
@given(sigmas, rates, steps_st, deltas)
def test_never_nan_and_nonnegative(sigma, q, steps, delta):
    eps = rdp_eps(sigma, q, steps, delta)
    assert not math.isnan(eps) and 0.0 <= eps < math.inf


@SETTINGS
@given(sigmas, rates, steps_st, deltas, st.floats(1.01, 3.0))
def test_decreases_with_noise(sigma, q, steps, delta, factor):
    assert rdp_eps(sigma * factor, q, steps, delta) <= rdp_eps(sigma, q, steps, delta) * (1 + 1e-9)


@SETTINGS
@given(sigmas, rates, steps_st, deltas, st.floats(1.5, 100.0))
def test_decreases_with_delta(sigma, q, steps, delta, factor):
    bigger = min(delta * factor, 0.9)
    assert rdp_eps(sigma, q, steps, bigger) <= rdp_eps(sigma, q, steps, delta) * (1 + 1e-9)


@SETTINGS
@given(sigmas, rates, steps_st, deltas, st.integers(1, 1000))
def test_increases_with_steps(sigma, q, steps, delta, more):
    assert rdp_eps(sigma, q, steps + more, delta) >= rdp_eps(sigma, q, steps, delta) * (1 - 1e-9)


@SETTINGS
@given(sigmas, st.floats(1e-4, 0.5), steps_st, deltas, st.floats(1.05, 2.0))
def test_increases_with_sample_rate(sigma, q, steps, delta, factor):
    assert rdp_eps(sigma, min(q * factor, 1.0), steps, delta) >= rdp_eps(sigma, q, steps, delta) * (
        1 - 1e-9
    )


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.floats(0.5, 5.0), st.floats(1e-3, 0.1), st.integers(10, 3000), st.floats(1.02, 1.5))
def test_pld_monotone_in_noise_and_below_rdp(sigma, q, steps, factor):
    step = PoissonSampledEvent(q, GaussianEvent(sigma))
    pld = PLDAccountant().compose(step, steps).get_epsilon(1e-5)
    more_noise = (
        PLDAccountant()
        .compose(PoissonSampledEvent(q, GaussianEvent(sigma * factor)), steps)
        .get_epsilon(1e-5)
    )
    assert not math.isnan(pld) and more_noise <= pld + 1e-9
    assert pld <= RDPAccountant().compose(step, steps).get_epsilon(1e-5)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.floats(0.2, 20.0), rates, st.integers(1, 10_000), st.floats(1e-10, 1e-3))
def test_calibration_round_trips(target, q, steps, delta):
    sigma = calibrate_noise_multiplier(target, delta, q, steps)
    assert rdp_eps(sigma, q, steps, delta) <= target
    assert rdp_eps(sigma * (1 - 1e-4), q, steps, delta) > target
