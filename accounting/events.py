"""Privacy events: immutable descriptions of what a mechanism released.

The model follows the event/ledger design of Google's dp-accounting library: an event
says *what happened* (a Gaussian release, a Poisson subsample of rate q, T repetitions,
...), an accountant says *what it costs*. Events are frozen dataclasses, so they are
hashable and compare by value, and they round-trip through JSON
(:func:`event_to_json` / :func:`event_from_json`).

Every constructor validates its parameters and raises :class:`PrivlabError` (a
``ValueError``) naming the parameter and the valid range.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from privlab.errors import PrivlabError

__all__ = [
    "PrivacyEvent",
    "GaussianEvent",
    "LaplaceEvent",
    "PoissonSampledEvent",
    "SelfComposedEvent",
    "ComposedEvent",
    "RelativeGaussianEvent",
    "NoPrivacyEvent",
    "NoOpEvent",
    "UnsupportedEventError",
    "event_to_dict",
    "event_from_dict",
    "event_to_json",
    "event_from_json",
]


class UnsupportedEventError(PrivlabError):
    """An accountant was given an event it cannot account for.

    ``event`` is the innermost event the accountant does not understand (for example
    the ``LaplaceEvent`` inside a ``PoissonSampledEvent``), never the whole ledger.
    """

    def __init__(self, accountant: str, event: PrivacyEvent, reason: str = ""):
        self.accountant, self.event = accountant, event
        detail = f": {reason}" if reason else ""
        super().__init__(f"{accountant} does not support {event!r}{detail}")


def _finite_real(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise PrivlabError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if math.isnan(value):
        raise PrivlabError(f"{name} must be a real number, got nan")
    return value


def check_positive(value: Any, name: str) -> float:
    """``value`` as a float, or ``PrivlabError`` unless it is finite and > 0."""
    value = _finite_real(value, name)
    if not (0.0 < value < math.inf):
        raise PrivlabError(f"{name} must be > 0 (and finite), got {value!r}")
    return value


NOISE_RANGE = (1e-12, 1e12)


def check_noise(value: Any, name: str) -> float:
    """A noise parameter (std or scale, in units of the sensitivity) in ``NOISE_RANGE``.

    Outside it the accountants' floating-point arithmetic overflows (and epsilon is
    either ~0 or astronomically large there), so it is refused with ``PrivlabError``.
    """
    value = check_positive(value, name)
    lo, hi = NOISE_RANGE
    if not lo <= value <= hi:
        raise PrivlabError(f"{name} must be in [{lo:g}, {hi:g}], got {value!r}")
    return value


def check_sample_rate(value: Any, name: str = "sample_rate") -> float:
    """``value`` as a float, or ``PrivlabError`` unless it lies in (0, 1]."""
    value = _finite_real(value, name)
    if not (0.0 < value <= 1.0):
        raise PrivlabError(f"{name} must be in (0, 1], got {value!r}")
    return value


def check_count(value: Any, name: str = "count") -> int:
    """``value`` as an int, or ``PrivlabError`` unless it is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, float) and value.is_integer() and value >= 1:
            return int(value)
        raise PrivlabError(f"{name} must be a positive integer (>= 1), got {value!r}")
    if value < 1:
        raise PrivlabError(f"{name} must be a positive integer (>= 1), got {value!r}")
    return int(value)


def check_delta(value: Any, name: str = "delta") -> float:
    """``value`` as a float, or ``PrivlabError`` unless it lies in (0, 1)."""
    value = _finite_real(value, name)
    if not (0.0 < value < 1.0):
        raise PrivlabError(f"{name} must be in (0, 1), got {value!r}")
    return value


def check_epsilon(value: Any, name: str = "epsilon") -> float:
    """``value`` as a float, or ``PrivlabError`` unless it is finite and >= 0."""
    value = _finite_real(value, name)
    if not (0.0 <= value < math.inf):
        raise PrivlabError(f"{name} must be >= 0 (and finite), got {value!r}")
    return value


class PrivacyEvent:
    """Base class of all events; subclasses are frozen dataclasses."""

    kind: ClassVar[str] = ""


_REGISTRY: dict[str, type[PrivacyEvent]] = {}


def _register(cls: type[PrivacyEvent]) -> type[PrivacyEvent]:
    _REGISTRY[cls.kind] = cls
    return cls


@_register
@dataclass(frozen=True)
class GaussianEvent(PrivacyEvent):
    """Gaussian mechanism with sensitivity 1 and noise std ``noise_multiplier``."""

    noise_multiplier: float
    kind: ClassVar[str] = "gaussian"

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "noise_multiplier", check_noise(self.noise_multiplier, "noise_multiplier")
        )


@_register
@dataclass(frozen=True)
class LaplaceEvent(PrivacyEvent):
    """Laplace mechanism with L1 sensitivity 1 and noise scale ``scale``."""

    scale: float
    kind: ClassVar[str] = "laplace"

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", check_noise(self.scale, "scale"))


@_register
@dataclass(frozen=True)
class PoissonSampledEvent(PrivacyEvent):
    """``event`` run on a Poisson subsample: each record is kept with prob. ``sample_rate``."""

    sample_rate: float
    event: PrivacyEvent
    kind: ClassVar[str] = "poisson_sampled"

    def __post_init__(self) -> None:
        object.__setattr__(self, "sample_rate", check_sample_rate(self.sample_rate))
        if not isinstance(self.event, PrivacyEvent):
            raise PrivlabError(f"event must be a PrivacyEvent, got {self.event!r}")


@_register
@dataclass(frozen=True)
class SelfComposedEvent(PrivacyEvent):
    """``event`` repeated ``count`` times (adaptive composition)."""

    event: PrivacyEvent
    count: int
    kind: ClassVar[str] = "self_composed"

    def __post_init__(self) -> None:
        object.__setattr__(self, "count", check_count(self.count))
        if not isinstance(self.event, PrivacyEvent):
            raise PrivlabError(f"event must be a PrivacyEvent, got {self.event!r}")


@_register
@dataclass(frozen=True)
class ComposedEvent(PrivacyEvent):
    """Adaptive composition of ``events`` (a tuple; an empty tuple costs nothing)."""

    events: tuple[PrivacyEvent, ...]
    kind: ClassVar[str] = "composed"

    def __post_init__(self) -> None:
        events = tuple(self.events) if isinstance(self.events, Iterable) else None
        if events is None or not all(isinstance(e, PrivacyEvent) for e in events):
            raise PrivlabError(f"events must be a sequence of PrivacyEvent, got {self.events!r}")
        object.__setattr__(self, "events", events)


@_register
@dataclass(frozen=True)
class RelativeGaussianEvent(PrivacyEvent):
    """Relative Gaussian mechanism (Hendrikx, Mangold, Bellet, AISTATS 2024).

    Releases ``f(D) + N(0, s^2 I_d)`` with ``s = noise_multiplier * S(f(D))`` and
    ``S(g) = relative_sensitivity * ||g|| + absolute_sensitivity`` the (affine) relative
    L2 sensitivity: ``||f(D) - f(D')|| <= S(f(D))``. ``dimension`` is d. The RDP does
    not depend on ``absolute_sensitivity`` (it only sets the noise floor); it is kept so
    the ledger records the mechanism faithfully.
    """

    noise_multiplier: float
    relative_sensitivity: float
    absolute_sensitivity: float = 0.0
    dimension: int = 1
    kind: ClassVar[str] = "relative_gaussian"

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "noise_multiplier", check_noise(self.noise_multiplier, "noise_multiplier")
        )
        rel = _finite_real(self.relative_sensitivity, "relative_sensitivity")
        if not 0.0 <= rel < 1.0:
            raise PrivlabError(f"relative_sensitivity must be in [0, 1), got {rel!r}")
        object.__setattr__(self, "relative_sensitivity", rel)
        absolute = _finite_real(self.absolute_sensitivity, "absolute_sensitivity")
        if not 0.0 <= absolute < math.inf:
            raise PrivlabError(f"absolute_sensitivity must be >= 0, got {absolute!r}")
        object.__setattr__(self, "absolute_sensitivity", absolute)
        object.__setattr__(self, "dimension", check_count(self.dimension, "dimension"))


@_register
@dataclass(frozen=True)
class NoPrivacyEvent(PrivacyEvent):
    """A release with no privacy protection: infinite epsilon (dp-accounting's NonPrivate)."""

    kind: ClassVar[str] = "no_privacy"


@_register
@dataclass(frozen=True)
class NoOpEvent(PrivacyEvent):
    """Nothing about the data was released: zero privacy cost."""

    kind: ClassVar[str] = "no_op"


def event_to_dict(event: PrivacyEvent) -> dict[str, Any]:
    """A JSON-ready nested dict with a ``"type"`` key per event."""
    if not isinstance(event, PrivacyEvent) or event.kind not in _REGISTRY:
        raise PrivlabError(f"event must be a privlab PrivacyEvent, got {event!r}")
    out: dict[str, Any] = {"type": event.kind}
    for field in fields(event):  # type: ignore[arg-type]
        value = getattr(event, field.name)
        if isinstance(value, PrivacyEvent):
            value = event_to_dict(value)
        elif isinstance(value, tuple):
            value = [event_to_dict(v) for v in value]
        out[field.name] = value
    return out


def event_from_dict(data: dict[str, Any]) -> PrivacyEvent:
    """Inverse of :func:`event_to_dict`; unknown types or keys raise ``PrivlabError``."""
    if not isinstance(data, dict) or "type" not in data:
        raise PrivlabError(f"event dict must have a 'type' key, got {data!r}")
    cls = _REGISTRY.get(data["type"])
    if cls is None:
        raise PrivlabError(
            f"unknown event type {data['type']!r}; valid: {', '.join(sorted(_REGISTRY))}"
        )
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    extra = set(data) - names - {"type"}
    if extra:
        raise PrivlabError(f"unknown keys for event {data['type']!r}: {sorted(extra)}")
    kwargs: dict[str, Any] = {}
    for name in names & set(data):
        value = data[name]
        if name == "event":
            value = event_from_dict(value)
        elif name == "events":
            value = tuple(event_from_dict(v) for v in value)
        kwargs[name] = value
    return cls(**kwargs)


def event_to_json(event: PrivacyEvent) -> str:
    """Serialise ``event`` as a JSON string."""
    return json.dumps(event_to_dict(event), sort_keys=True)


def event_from_json(text: str) -> PrivacyEvent:
    """Parse an event written by :func:`event_to_json`."""
    return event_from_dict(json.loads(text))


def flatten(event: PrivacyEvent, count: int = 1) -> list[tuple[PrivacyEvent, int]]:
    """Leaf events with multiplicities: Composed and SelfComposed are expanded.

    Equal leaves are merged, so a ledger of 10^4 identical steps stays one entry.
    """
    acc: dict[PrivacyEvent, int] = {}

    def walk(e: PrivacyEvent, c: int) -> None:
        if isinstance(e, SelfComposedEvent):
            walk(e.event, c * e.count)
        elif isinstance(e, ComposedEvent):
            for sub in e.events:
                walk(sub, c)
        else:
            acc[e] = acc.get(e, 0) + c

    walk(event, count)
    return list(acc.items())
