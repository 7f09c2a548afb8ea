"""Tight accountant from privacy loss distributions (see :mod:`privlab.accounting.pld`).

Each leaf event gets a pessimistic connect-the-dots PLD (Doroshenko et al., PETS 2022)
for both neighbouring directions (remove: the record is in D; add: it is in D'); the
ledger is composed by one FFT product per direction (Koskela, Jalko, Honkela 2020) and
the larger epsilon (or delta) of the two directions is reported. A ledger made only of
Gaussian mechanisms without subsampling is exactly a Gaussian mechanism with
``sigma = (sum_i 1 / sigma_i^2)^(-1/2)``; it is answered exactly (Balle & Wang 2018).
"""

from __future__ import annotations

import math

import numpy as np

from privlab.accounting.accountant import PrivacyAccountant
from privlab.accounting.events import (
    GaussianEvent,
    LaplaceEvent,
    NoOpEvent,
    NoPrivacyEvent,
    PoissonSampledEvent,
    PrivacyEvent,
    RelativeGaussianEvent,
    UnsupportedEventError,
    check_positive,
    flatten,
)
from privlab.accounting.pld import (
    DiscretePLD,
    PLDRangeError,
    analytic_gaussian_delta,
    analytic_gaussian_epsilon,
    compose_plds,
    laplace_pld,
    subsampled_gaussian_pld,
)
from privlab.errors import PrivlabError

__all__ = ["PLDAccountant", "PLDNoiseTooSmallError"]

_DIRECTIONS = ("remove", "add")


def _normalise(event: PrivacyEvent) -> PrivacyEvent:
    """Collapse nested Poisson sampling (rates multiply) and rate-1 sampling."""
    if isinstance(event, PoissonSampledEvent):
        q, inner = event.sample_rate, event.event
        while isinstance(inner, PoissonSampledEvent):
            q, inner = q * inner.sample_rate, inner.event
        if q == 1.0 or isinstance(inner, (NoOpEvent, NoPrivacyEvent)):
            return _normalise(inner)
        if isinstance(inner, GaussianEvent):
            return PoissonSampledEvent(q, inner)
        raise UnsupportedEventError(
            "PLDAccountant", event, "only Poisson-subsampled Gaussian events are supported"
        )
    if isinstance(event, (GaussianEvent, LaplaceEvent, NoOpEvent, NoPrivacyEvent)):
        return event
    reason = "use RDPAccountant" if isinstance(event, RelativeGaussianEvent) else ""
    raise UnsupportedEventError("PLDAccountant", event, reason)


class PLDAccountant(PrivacyAccountant):
    """Privacy-loss-distribution accountant (tight, pessimistic).

    ``value_discretization_interval``: the loss grid step (default 1e-4). It is doubled
    automatically (more at once where needed) when a composition would need more than
    2^23 grid points, up to the first doubling beyond 0.05; the step
    used last is in ``discretization_used``. ``exact_gaussian``: answer ledgers of
    un-subsampled Gaussians exactly (False forces the discretised path).
    """

    def __init__(
        self, value_discretization_interval: float = 1e-4, exact_gaussian: bool = True
    ) -> None:
        super().__init__()
        self.exact_gaussian = bool(exact_gaussian)
        self.dv = check_positive(value_discretization_interval, "value_discretization_interval")
        self.discretization_used = self.dv
        self._pld_cache: dict[tuple[int, str], DiscretePLD] = {}

    def _check_event(self, event: PrivacyEvent) -> None:
        for leaf, _ in flatten(event):
            _normalise(leaf)

    def _parts(self) -> list[tuple[PrivacyEvent, int]]:
        merged: dict[PrivacyEvent, int] = {}
        for leaf, count in self._leaves():
            leaf = _normalise(leaf)
            if not isinstance(leaf, NoOpEvent):
                merged[leaf] = merged.get(leaf, 0) + count
        return list(merged.items())

    def _gaussian_sigma(self, parts: list[tuple[PrivacyEvent, int]]) -> float | None:
        """Equivalent sigma when the ledger is only un-subsampled Gaussians, else None."""
        if not self.exact_gaussian or not parts:
            return None
        if not all(isinstance(e, GaussianEvent) for e, _ in parts):
            return None
        precision = sum(c / e.noise_multiplier**2 for e, c in parts)  # type: ignore[attr-defined]
        return 1.0 / math.sqrt(precision)

    def _leaf_pld(self, event: PrivacyEvent, direction: str, dv: float) -> DiscretePLD:
        if isinstance(event, GaussianEvent):
            return subsampled_gaussian_pld(event.noise_multiplier, 1.0, dv, "remove")
        if isinstance(event, PoissonSampledEvent):
            inner = event.event
            assert isinstance(inner, GaussianEvent)
            return subsampled_gaussian_pld(inner.noise_multiplier, event.sample_rate, dv, direction)
        assert isinstance(event, LaplaceEvent)
        return laplace_pld(event.scale, dv)

    def composed_pld(self, direction: str = "remove") -> DiscretePLD:
        """The composed discrete PLD of the ledger in one direction ("remove" or "add")."""
        if direction not in _DIRECTIONS:
            raise ValueError(f"direction must be one of {_DIRECTIONS}, got {direction!r}")
        key = (self._version, direction)
        if key in self._pld_cache:
            return self._pld_cache[key]
        parts = self._parts()
        if any(isinstance(e, NoPrivacyEvent) for e, _ in parts):
            result = DiscretePLD(self.dv, 0, _zero_probs(), 1.0)
        elif not parts:
            result = DiscretePLD(self.dv, 0, _zero_probs(), 0.0)
        else:
            dv = self.dv
            while True:
                try:
                    plds = [(self._leaf_pld(e, direction, dv), c) for e, c in parts]
                    result = compose_plds(plds)
                    break
                except PLDRangeError as error:
                    if dv > 0.05 or not math.isfinite(error.factor):
                        raise _range_error(parts, error) from None
                    # double dv (more at once where the error says that is not enough),
                    # up to the first doubling of self.dv beyond 0.05
                    last = self.dv * 2.0 ** max(0, math.ceil(math.log2(0.05 / self.dv) + 1e-9))
                    dv = min(dv * 2.0 ** max(1, min(math.ceil(math.log2(error.factor)), 20)), last)
            self.discretization_used = dv
        if len(self._pld_cache) > 8:
            self._pld_cache.clear()
        self._pld_cache[key] = result
        return result

    def get_epsilon_and_direction(self, delta: float) -> tuple[float, str]:
        """(epsilon, the neighbouring direction attaining it, or "exact" for pure Gaussians)."""
        delta = self._delta(delta)
        sigma = self._gaussian_sigma(self._parts())
        if sigma is not None:
            return analytic_gaussian_epsilon(sigma, delta), "exact"
        values = {d: self.composed_pld(d).epsilon(delta) for d in _DIRECTIONS}
        worst = max(values, key=lambda d: values[d])
        return values[worst], worst

    def get_epsilon(self, delta: float) -> float:
        """Smallest epsilon with (epsilon, delta)-DP, the max over both directions."""
        return self.get_epsilon_and_direction(delta)[0]

    def get_delta(self, epsilon: float) -> float:
        """Smallest delta with (epsilon, delta)-DP, the max over both directions."""
        epsilon = self._epsilon(epsilon)
        sigma = self._gaussian_sigma(self._parts())
        if sigma is not None:
            return analytic_gaussian_delta(sigma, epsilon)
        return max(self.composed_pld(d).delta(epsilon) for d in _DIRECTIONS)


class PLDNoiseTooSmallError(PrivlabError, PLDRangeError):
    """The ledger's privacy losses are too large for the PLD grid (noise too small)."""


def _range_error(parts: list[tuple[PrivacyEvent, int]], error: Exception) -> PrivlabError:
    """A clear error naming the noise parameter, for losses no PLD grid here can hold."""
    noises = []
    for event, _ in parts:
        inner = event.event if isinstance(event, PoissonSampledEvent) else event
        if isinstance(inner, GaussianEvent):
            noises.append(f"noise_multiplier {inner.noise_multiplier:g}")
        elif isinstance(inner, LaplaceEvent):
            noises.append(f"Laplace scale {inner.scale:g}")
    what = ", ".join(sorted(set(noises))) or "the ledger"
    releases = sum(c for _, c in parts)
    return PLDNoiseTooSmallError(
        f"{what} is too small for the PLD accountant: the privacy loss ({error}) does not "
        f"fit on its grid (losses up to ~4e5 in all); for {releases} release(s) use "
        f"noise_multiplier >= ~{math.sqrt(releases / 8e5):.2g}, or the RDP accountant"
    )


def _zero_probs() -> np.ndarray:
    """A point mass at loss 0."""
    return np.array([1.0])
