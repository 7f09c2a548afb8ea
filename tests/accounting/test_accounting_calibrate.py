"""Calibration: one-sided guarantee, 1e-4 tightness, agreement with dp-accounting."""

from __future__ import annotations

import pytest

from privlab.accounting import (
    PLDAccountant,
    PoissonSampledEvent,
    RDPAccountant,
    RelativeGaussianEvent,
    SelfComposedEvent,
    calibrate,
    calibrate_noise_multiplier,
)
from privlab.accounting.events import GaussianEvent
from privlab.errors import PrivlabError


def epsilon(sigma, q, steps, delta, accountant):
    acc = RDPAccountant() if accountant == "rdp" else PLDAccountant()
    step = GaussianEvent(sigma) if q == 1 else PoissonSampledEvent(q, GaussianEvent(sigma))
    return acc.compose(step, steps).get_epsilon(delta)


@pytest.mark.parametrize(
    "target, q, steps, accountant",
    [
        (1.0, 256 / 60000, 10_000, "rdp"),
        (3.0, 0.01, 1000, "rdp"),
        (8.0, 1.0, 1, "rdp"),
        (2.0, 256 / 60000, 1000, "pld"),
        (1.0, 1.0, 10, "pld"),
    ],
)
def test_one_sided_and_within_1e4_of_the_smallest_noise(target, q, steps, accountant):
    sigma = calibrate_noise_multiplier(target, 1e-5, q, steps, accountant=accountant)
    assert epsilon(sigma, q, steps, 1e-5, accountant) <= target
    assert epsilon(sigma * (1 - 1e-4), q, steps, 1e-5, accountant) > target


def test_agrees_with_dp_accounting_calibration():
    dp_accounting = pytest.importorskip("dp_accounting")

    def make_event(sigma):
        return dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(0.01, dp_accounting.GaussianDpEvent(sigma)), 1000
        )

    theirs = dp_accounting.calibrate_dp_mechanism(
        lambda: dp_accounting.pld.PLDAccountant(), make_event, 2.0, 1e-5
    )
    ours = calibrate_noise_multiplier(2.0, 1e-5, 0.01, 1000, accountant="pld")
    assert ours == pytest.approx(theirs, rel=1e-4)


def test_generic_calibration_of_the_relative_gaussian():
    def make(k):
        return SelfComposedEvent(RelativeGaussianEvent(k, 0.001, 0.0, 22), 40)

    k = calibrate(make, 4.0, 1e-5)
    assert RDPAccountant().compose(make(k)).get_epsilon(1e-5) <= 4.0
    assert RDPAccountant().compose(make(k * (1 - 1e-4))).get_epsilon(1e-5) > 4.0
    with pytest.raises(PrivlabError, match="not reachable"):  # the variance term has a floor
        calibrate(
            lambda k: SelfComposedEvent(RelativeGaussianEvent(k, 0.3, 0.0, 1000), 40), 0.5, 1e-5
        )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(target_epsilon=-1.0), "target_epsilon must be > 0"),
        (dict(delta=1.5), "delta must be in \\(0, 1\\)"),
        (dict(sample_rate=0.0), "sample_rate must be in \\(0, 1\\]"),
        (dict(steps=0), "steps must be a positive integer"),
        (dict(accountant="gdp"), "accountant must be one of rdp, pld"),
    ],
)
def test_bad_input(kwargs, match):
    args = dict(target_epsilon=1.0, delta=1e-5, sample_rate=0.01, steps=100, accountant="rdp")
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        calibrate_noise_multiplier(**args)
