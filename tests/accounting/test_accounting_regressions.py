"""Regressions from review: RGM orders below the grid, large sigma, tiny sigma, odd inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from privlab.accounting import (
    GaussianEvent,
    PLDAccountant,
    PoissonSampledEvent,
    RDPAccountant,
    RelativeGaussianEvent,
    SelfComposedEvent,
    default_orders,
    subsampled_gaussian_rdp,
)
from privlab.accounting.conversion import epsilon_curve
from privlab.accounting.pld import subsampled_gaussian_pld
from privlab.accounting.relative_gaussian import max_order, relative_gaussian_rdp
from privlab.cli import main
from privlab.errors import PrivlabError


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """``privlab budget ...`` in-process; any exception other than SystemExit fails."""
    code = main(["budget", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def printed_epsilon(text: str) -> float:
    line = next(x for x in text.splitlines() if x.startswith("epsilon "))
    return float(line.split()[1])


# F3: Relative Gaussian mechanism with Delta >= ~0.7: every default order is infinite.


@pytest.mark.parametrize(("k", "dim"), [(2.0, 1), (10.0, 5)])
def test_rgm_large_relative_sensitivity_searches_below_the_order_limit(k, dim):
    event = RelativeGaussianEvent(k, 0.9, 0.0, dim)
    limit = max_order(0.9)  # 1.0101...: below the whole default grid
    assert np.all(np.isinf(relative_gaussian_rdp(event, default_orders())))
    eps, order = RDPAccountant().compose(event).get_epsilon_and_order(1e-5)
    assert math.isfinite(eps) and 1.0 < order < limit
    # brute force over a fine grid of orders in (1, limit)
    grid = 1.0 + (limit - 1.0) * np.linspace(1e-4, 1.0 - 1e-6, 3001)
    brute = min(
        epsilon_curve(part, relative_gaussian_rdp(event, part), 1e-5).min()
        for part in np.array_split(grid, 6)
    )
    assert math.isfinite(brute)
    assert eps == pytest.approx(brute, rel=1e-3)


def test_rgm_cli_prints_a_finite_epsilon_for_large_relative_sensitivity(capsys):
    code, out, _ = run_cli(
        capsys,
        "rgm",
        "--relative-sensitivity",
        "0.9",
        "--noise-multiplier",
        "2",
        "--dimension",
        "1",
        "--delta",
        "1e-5",
    )
    assert code == 0
    assert math.isfinite(printed_epsilon(out)) and "optimal order 1.0" in out


# F4: the fractional-order series grows with sigma^2; large sigma uses the chord bound.


@pytest.mark.parametrize("sigma", [1e4, 1e6])
def test_huge_sigma_rdp_is_finite(sigma):
    rdp = subsampled_gaussian_rdp(sigma, 0.004, default_orders())
    assert np.all(np.isfinite(rdp)) and np.all(rdp > 0)
    assert np.all(np.diff(rdp) >= -1e-12 * rdp[1:])  # nondecreasing in the order


@pytest.mark.parametrize(("sigma", "q"), [(0.8, 0.01), (2.0, 0.01), (5.0, 0.3), (30.0, 0.004)])
def test_chord_bound_is_above_the_exact_value_and_equal_at_integers(sigma, q):
    frac = np.array([1.05, 1.5, 2.5, 7.3, 33.3, 150.7])
    ints = np.array([2.0, 3.0, 7.0, 151.0])
    exact = subsampled_gaussian_rdp(sigma, q, frac)
    bound = subsampled_gaussian_rdp(sigma, q, frac, max_series_terms=1)  # force the bound
    assert np.all(bound >= exact) and np.all(bound <= exact * 2.1)
    np.testing.assert_array_equal(
        subsampled_gaussian_rdp(sigma, q, ints, max_series_terms=1),
        subsampled_gaussian_rdp(sigma, q, ints),
    )


def test_default_path_at_large_sigma_bounds_the_exact_series():
    # sigma = 100 at q = 0.004 needs ~56k terms per order: over the default cap, so the
    # default result is the chord bound; with a larger cap the exact series runs.
    orders = np.array([1.5, 2.5, 10.5, 300.25])
    bound = subsampled_gaussian_rdp(100.0, 0.004, orders)
    exact = subsampled_gaussian_rdp(100.0, 0.004, orders, max_series_terms=1 << 20)
    assert np.all(exact > 0) and np.all(bound >= exact)
    assert bound[-1] == pytest.approx(exact[-1], rel=1e-4)  # tight at large orders


def test_unreachable_tiny_target_epsilon_exits_promptly(capsys):
    code, out, err = run_cli(
        capsys,
        "dp-sgd",
        "--target-epsilon",
        "1e-9",
        "--sample-rate",
        "0.004",
        "--steps",
        "10",
        "--delta",
        "1e-5",
    )
    assert code in (0, 2)
    if code == 0:
        assert printed_epsilon(out) <= 1e-9
    else:
        assert err.count("\n") == 1 and "target_epsilon" in err


def test_calibration_fails_fast_when_the_largest_noise_misses_the_target():
    from privlab.accounting import calibrate_noise_multiplier

    # delta = 1e-300: no total-variation shortcut, epsilon at sigma = 1e6 is ~7e-4
    with pytest.raises(PrivlabError, match="not reachable with noise <= 1e"):
        calibrate_noise_multiplier(1e-9, 1e-300, 0.5, 10)


# F-PLD: tiny sigma overflowed the PLD bounds.


def test_pld_tiny_sigma_cli_gives_a_clean_answer(capsys):
    code, out, err = run_cli(
        capsys,
        "dp-sgd",
        "--noise-multiplier",
        "1e-3",
        "--sample-rate",
        "0.01",
        "--steps",
        "10",
        "--delta",
        "1e-5",
        "--accountant",
        "pld",
    )
    assert code in (0, 2)
    if code == 2:
        assert "noise_multiplier" in err and "RDP accountant" in err
    else:
        assert printed_epsilon(out) > 1e4


@pytest.mark.slow
def test_pld_calibration_through_tiny_sigma_cli(capsys):
    code, out, err = run_cli(
        capsys,
        "dp-sgd",
        "--target-epsilon",
        "5000",
        "--sample-rate",
        ".5",
        "--steps",
        "2",
        "--delta",
        "1e-5",
        "--accountant",
        "pld",
    )
    assert code in (0, 2)
    if code == 0:
        assert printed_epsilon(out) <= 5000


def test_pld_small_sigma_has_no_nan_and_stays_below_rdp():
    for direction in ("remove", "add"):
        pld = subsampled_gaussian_pld(0.03, 0.01, 1e-3, direction)
        assert np.all(np.isfinite(pld.probs))
        assert pld.probs.sum() + pld.inf_mass == pytest.approx(1.0, abs=1e-9)
    step = PoissonSampledEvent(0.01, GaussianEvent(0.03))
    eps = PLDAccountant(value_discretization_interval=1e-3).compose(step).get_epsilon(1e-5)
    assert 100 < eps <= RDPAccountant().compose(step).get_epsilon(1e-5)


# Other inputs to `privlab budget`: never anything but a result or a one-line error.


@pytest.mark.parametrize(
    "argv",
    [
        ["dp-sgd", "--noise-multiplier", "1", "--sample-rate", "0.01", "--steps", "1000000000"],
        ["dp-sgd", "--target-epsilon", "1", "--sample-rate", "0.01", "--steps", "1000000000"],
        ["dp-sgd", "--noise-multiplier", "1", "--sample-rate", "1e-12", "--steps", "10"],
        ["dp-sgd", "--noise-multiplier", "1e300", "--sample-rate", "0.5", "--steps", "10"],
        ["dp-sgd", "--noise-multiplier", "1e-300", "--sample-rate", "0.5", "--steps", "10"],
        ["gaussian", "--noise-multiplier", "1e-12", "--accountant", "pld"],
        ["gaussian", "--noise-multiplier", "1e300", "--accountant", "pld"],
        ["dp-sgd", "--target-epsilon", "0", "--sample-rate", "0.01", "--steps", "10"],
        ["dp-sgd", "--noise-multiplier", "1", "--sample-rate", "0.01", "--steps", "10"],
    ],
)
@pytest.mark.parametrize("delta", ["1e-5", "1e-300"])
def test_budget_odd_inputs_exit_cleanly(capsys, argv, delta):
    code, out, err = run_cli(capsys, *argv, "--delta", delta)
    assert code in (0, 2)
    if code == 0:
        assert not math.isnan(printed_epsilon(out))
    else:
        assert err.startswith("privlab: error: ") and err.count("\n") == 1


def test_noise_outside_the_supported_range_is_refused_by_name():
    with pytest.raises(PrivlabError, match=r"noise_multiplier must be in \[1e-12, 1e\+12\]"):
        GaussianEvent(1e300)
    with pytest.raises(PrivlabError, match="noise_multiplier must be in"):
        SelfComposedEvent(PoissonSampledEvent(0.5, GaussianEvent(1e-300)), 3)
