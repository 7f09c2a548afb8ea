"""The accountant interface shared by the RDP and PLD accountants.

The design follows dp-accounting's ``PrivacyAccountant``: ``compose(event, count)``
validates the event (raising :class:`UnsupportedEventError` naming the innermost event
it does not understand, and leaving the ledger untouched) and records it; ``ledger``
returns everything composed so far as one event, which another accountant can
re-account later. An Opacus-style ``step(noise_multiplier, sample_rate)`` is a shortcut
for composing one Poisson-subsampled Gaussian event.
"""

from __future__ import annotations

import abc

from privlab.accounting.events import (
    ComposedEvent,
    GaussianEvent,
    PoissonSampledEvent,
    PrivacyEvent,
    SelfComposedEvent,
    UnsupportedEventError,
    check_count,
    check_delta,
    check_epsilon,
    flatten,
)
from privlab.errors import PrivlabError

__all__ = ["PrivacyAccountant"]


class PrivacyAccountant(abc.ABC):
    """Base class: keeps the ledger; subclasses turn it into epsilon and delta."""

    def __init__(self) -> None:
        self._entries: list[tuple[PrivacyEvent, int]] = []
        self._version = 0

    @abc.abstractmethod
    def _check_event(self, event: PrivacyEvent) -> None:
        """Raise UnsupportedEventError unless ``event`` can be accounted for."""

    def supports(self, event: PrivacyEvent) -> bool:
        """Whether ``compose(event)`` would succeed (a dry run)."""
        try:
            self._check_event(event)
        except UnsupportedEventError:
            return False
        return True

    def compose(self, event: PrivacyEvent, count: int = 1) -> PrivacyAccountant:
        """Record ``count`` adaptive repetitions of ``event``; returns ``self`` (chainable)."""
        if not isinstance(event, PrivacyEvent):
            raise PrivlabError(f"event must be a PrivacyEvent, got {event!r}")
        count = check_count(count)
        self._check_event(event)
        self._entries.append((event, count))
        self._version += 1
        return self

    def step(
        self, noise_multiplier: float, sample_rate: float = 1.0, count: int = 1
    ) -> PrivacyAccountant:
        """Opacus-style: ``count`` DP-SGD steps with Poisson sampling."""
        gauss = GaussianEvent(noise_multiplier)
        event = gauss if sample_rate == 1.0 else PoissonSampledEvent(sample_rate, gauss)
        return self.compose(event, count)

    @property
    def ledger(self) -> ComposedEvent:
        """Everything composed so far, as one event (re-accountable later)."""
        return ComposedEvent(
            tuple(e if c == 1 else SelfComposedEvent(e, c) for e, c in self._entries)
        )

    def _leaves(self) -> list[tuple[PrivacyEvent, int]]:
        """Distinct leaf events of the ledger with their total counts."""
        return flatten(self.ledger)

    @abc.abstractmethod
    def get_epsilon(self, delta: float) -> float:
        """Smallest epsilon such that the ledger is (epsilon, delta)-DP."""

    @abc.abstractmethod
    def get_delta(self, epsilon: float) -> float:
        """Smallest delta such that the ledger is (epsilon, delta)-DP."""

    @staticmethod
    def _delta(delta: float) -> float:
        return check_delta(delta, "delta")

    @staticmethod
    def _epsilon(epsilon: float) -> float:
        return check_epsilon(epsilon, "epsilon")

    def __len__(self) -> int:
        return sum(c for _, c in self._entries)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self._entries)} ledger entries)"
