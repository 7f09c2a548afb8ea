"""Events: validation, value semantics, JSON round trip, unsupported-event errors."""

from __future__ import annotations

import pytest

from privlab.accounting import (
    ComposedEvent,
    GaussianEvent,
    LaplaceEvent,
    NoOpEvent,
    NoPrivacyEvent,
    PLDAccountant,
    PoissonSampledEvent,
    RDPAccountant,
    RelativeGaussianEvent,
    SelfComposedEvent,
    UnsupportedEventError,
    event_from_dict,
    event_from_json,
    event_to_json,
)
from privlab.errors import PrivlabError

ALL_EVENTS = [
    GaussianEvent(1.1),
    LaplaceEvent(2.0),
    PoissonSampledEvent(0.01, GaussianEvent(0.8)),
    SelfComposedEvent(PoissonSampledEvent(0.5, GaussianEvent(2.0)), 100),
    ComposedEvent([GaussianEvent(1.0), SelfComposedEvent(LaplaceEvent(1.0), 3)]),
    RelativeGaussianEvent(4.5, 0.01, 0.2, 22),
    NoPrivacyEvent(),
    NoOpEvent(),
    ComposedEvent([]),
]


@pytest.mark.parametrize("event", ALL_EVENTS, ids=lambda e: type(e).__name__)
def test_json_round_trip_gives_an_equal_event(event):
    text = event_to_json(event)
    back = event_from_json(text)
    assert back == event
    assert hash(back) == hash(event)
    assert event_to_json(back) == text


def test_events_compare_by_value_and_are_immutable():
    a = PoissonSampledEvent(0.01, GaussianEvent(1.0))
    assert a == PoissonSampledEvent(0.01, GaussianEvent(1))
    assert a != PoissonSampledEvent(0.02, GaussianEvent(1.0))
    assert ComposedEvent([a, a]) == ComposedEvent((a, a))
    with pytest.raises(AttributeError):
        a.sample_rate = 0.5  # type: ignore[misc]
    assert len({a, PoissonSampledEvent(0.01, GaussianEvent(1.0))}) == 1


@pytest.mark.parametrize(
    "make, name, valid",
    [
        (lambda: GaussianEvent(0.0), "noise_multiplier", "> 0"),
        (lambda: GaussianEvent(-1.0), "noise_multiplier", "> 0"),
        (lambda: GaussianEvent(float("nan")), "noise_multiplier", "real number"),
        (lambda: LaplaceEvent(-2), "scale", "> 0"),
        (lambda: PoissonSampledEvent(0.0, GaussianEvent(1)), "sample_rate", "(0, 1]"),
        (lambda: PoissonSampledEvent(1.5, GaussianEvent(1)), "sample_rate", "(0, 1]"),
        (lambda: SelfComposedEvent(GaussianEvent(1), 0), "count", "positive integer"),
        (lambda: SelfComposedEvent(GaussianEvent(1), 2.5), "count", "positive integer"),
        (lambda: RelativeGaussianEvent(1.0, 1.0, 0.0, 3), "relative_sensitivity", "[0, 1)"),
        (lambda: RelativeGaussianEvent(1.0, 0.1, -1.0, 3), "absolute_sensitivity", ">= 0"),
        (lambda: RelativeGaussianEvent(1.0, 0.1, 0.0, 0), "dimension", "positive integer"),
    ],
)
def test_bad_parameters_name_the_parameter_and_range(make, name, valid):
    with pytest.raises(ValueError) as info:
        make()
    assert isinstance(info.value, PrivlabError)
    assert name in str(info.value) and valid in str(info.value)


def test_event_from_dict_rejects_unknown_types_and_keys():
    with pytest.raises(PrivlabError, match="unknown event type 'banana'"):
        event_from_dict({"type": "banana"})
    with pytest.raises(PrivlabError, match="unknown keys"):
        event_from_dict({"type": "gaussian", "noise_multiplier": 1.0, "sigma": 2})


def test_unsupported_event_error_names_the_innermost_event():
    rgm = RelativeGaussianEvent(3.0, 0.01, 0.0, 10)
    ledger = ComposedEvent([GaussianEvent(1.0), SelfComposedEvent(ComposedEvent([rgm]), 5)])
    acc = PLDAccountant()
    with pytest.raises(UnsupportedEventError) as info:
        acc.compose(ledger)
    assert info.value.event == rgm
    assert "RelativeGaussianEvent" in str(info.value)
    assert len(acc) == 0 and acc.ledger == ComposedEvent([])  # nothing was recorded
    sampled_laplace = PoissonSampledEvent(0.1, LaplaceEvent(1.0))
    for accountant in (RDPAccountant(), PLDAccountant()):
        with pytest.raises(UnsupportedEventError) as info:
            accountant.compose(ComposedEvent([GaussianEvent(2.0), sampled_laplace]))
        assert info.value.event == sampled_laplace
        assert not accountant.supports(sampled_laplace)
        assert accountant.supports(GaussianEvent(1.0))


def test_ledger_can_be_reaccounted_by_another_accountant():
    step = PoissonSampledEvent(0.01, GaussianEvent(1.0))
    rdp = RDPAccountant().compose(step, 500).compose(GaussianEvent(5.0), 2)
    ledger = event_from_json(event_to_json(rdp.ledger))
    assert ledger == ComposedEvent(
        [SelfComposedEvent(step, 500), SelfComposedEvent(GaussianEvent(5.0), 2)]
    )
    again = RDPAccountant().compose(ledger)
    assert again.get_epsilon(1e-5) == pytest.approx(rdp.get_epsilon(1e-5), rel=1e-12)
    pld = PLDAccountant().compose(ledger)
    assert 0 < pld.get_epsilon(1e-5) < rdp.get_epsilon(1e-5)


def test_no_privacy_and_no_op():
    for acc in (RDPAccountant(), PLDAccountant()):
        assert acc.get_epsilon(1e-5) == 0.0  # empty ledger
        acc.compose(NoOpEvent(), 10)
        assert acc.get_epsilon(1e-5) == 0.0
        acc.compose(NoPrivacyEvent())
        assert acc.get_epsilon(1e-5) == float("inf")
        assert acc.get_delta(10.0) == 1.0
