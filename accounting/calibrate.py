"""Noise calibration with a one-sided guarantee: epsilon at the result <= target.

Generic search over a one-parameter event family, in the spirit of dp-accounting's
``calibrate_dp_mechanism``: bracket the parameter geometrically, run Brent's method on
``log(param)`` for ``epsilon(param) = target``, then step up until the evaluated
epsilon is <= target. The returned noise is the upper end of a bracket whose width is
below ``rtol`` (default 1e-6) relative, so it is within ``rtol`` of the smallest noise
meeting the target (epsilon is decreasing in the noise).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from scipy.optimize import brentq

from privlab.accounting.accountant import PrivacyAccountant
from privlab.accounting.events import (
    GaussianEvent,
    PoissonSampledEvent,
    PrivacyEvent,
    SelfComposedEvent,
    check_count,
    check_delta,
    check_positive,
    check_sample_rate,
)
from privlab.accounting.pld_accountant import PLDAccountant, PLDNoiseTooSmallError
from privlab.accounting.rdp_accountant import RDPAccountant
from privlab.errors import PrivlabError

__all__ = ["ACCOUNTANTS", "make_accountant", "calibrate", "calibrate_noise_multiplier"]

ACCOUNTANTS: dict[str, type[PrivacyAccountant]] = {"rdp": RDPAccountant, "pld": PLDAccountant}


def make_accountant(name: str) -> PrivacyAccountant:
    """A fresh accountant by name: ``"rdp"`` or ``"pld"``."""
    if name not in ACCOUNTANTS:
        raise PrivlabError(f"accountant must be one of {', '.join(ACCOUNTANTS)}, got {name!r}")
    return ACCOUNTANTS[name]()


def calibrate(
    make_event: Callable[[float], PrivacyEvent],
    target_epsilon: float,
    delta: float,
    accountant: str | Callable[[], PrivacyAccountant] = "rdp",
    initial: float = 1.0,
    max_param: float = 1e6,
    rtol: float = 1e-6,
) -> float:
    """Smallest parameter p (up to ``rtol``) with epsilon(make_event(p)) <= target.

    ``make_event(p)`` must describe the whole release (e.g. T subsampled steps with
    noise p) and its epsilon must decrease in p. The result always satisfies the
    target (one-sided guarantee); ``PrivlabError`` if even ``max_param`` does not.
    """
    target = check_positive(target_epsilon, "target_epsilon")
    delta = check_delta(delta)
    factory = (lambda: make_accountant(accountant)) if isinstance(accountant, str) else accountant
    if isinstance(accountant, str):
        make_accountant(accountant)  # validate the name early

    cache: dict[float, float] = {}

    def eps(p: float) -> float:
        if p not in cache:
            try:
                cache[p] = factory().compose(make_event(p)).get_epsilon(delta)
            except PLDNoiseTooSmallError:  # losses too large for the PLD grid: fails
                cache[p] = math.inf
        return cache[p]

    lo = hi = min(float(initial), max_param)
    if eps(hi) > target:
        # Fail fast: epsilon decreases in p, so if max_param misses the target, all do.
        if eps(max_param) > target:
            raise PrivlabError(
                f"target_epsilon {target:g} is not reachable with noise <= {max_param:g} "
                f"at delta={delta:g} (epsilon there is {eps(max_param):.3g})"
            )
        while eps(hi) > target:
            lo, hi = hi, min(hi * 2.0, max_param)
    else:
        while eps(lo) <= target:
            lo, hi = lo / 2.0, lo
            if lo < 1e-8:
                return hi

    # eps(lo) > target >= eps(hi): Brent on log p, then a one-sided clean-up.
    def f(u: float) -> float:
        return eps(math.exp(u)) - target

    try:
        root = math.exp(brentq(f, math.log(lo), math.log(hi), xtol=rtol / 8, rtol=1e-12))
        eps(root * (1.0 + rtol / 3))
        eps(root / (1.0 + rtol / 3))
    except ValueError:  # rounding made the signs equal: plain bisection below
        pass
    # Tightest bracket seen: a fails the target, b meets it, a < b.
    a = max(p for p, e in cache.items() if e > target)
    above = [p for p, e in cache.items() if e <= target and p > a]
    b = min(above) if above else a * (1.0 + rtol)
    while eps(b) > target:  # only reachable if epsilon is not monotone in p
        a, b = b, b * (1.0 + rtol)
    while b / a > 1.0 + rtol:
        mid = math.sqrt(a * b)
        if eps(mid) <= target:
            b = mid
        else:
            a = mid
    return b


def calibrate_noise_multiplier(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "rdp",
    rtol: float = 1e-6,
) -> float:
    """Smallest DP-SGD noise multiplier with epsilon <= ``target_epsilon`` after ``steps``.

    Poisson sampling at ``sample_rate`` (1 = full batch, the Gaussian mechanism);
    ``accountant`` is ``"rdp"`` or ``"pld"``. One-sided: the returned noise meets the
    target, and is within ``rtol`` (relative) of the smallest noise that does.
    """
    q = check_sample_rate(sample_rate)
    steps = check_count(steps, "steps")

    def make(sigma: float) -> PrivacyEvent:
        gauss = GaussianEvent(sigma)
        step = gauss if q == 1.0 else PoissonSampledEvent(q, gauss)
        return step if steps == 1 else SelfComposedEvent(step, steps)

    return calibrate(make, target_epsilon, delta, accountant=accountant, rtol=rtol)
