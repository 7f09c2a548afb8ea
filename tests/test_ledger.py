"""The per-node / per-pair privacy ledger against the accountants it composes with."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from privlab.accounting import (
    ComposedEvent,
    GaussianEvent,
    NoOpEvent,
    NoPrivacyEvent,
    PLDAccountant,
    PoissonSampledEvent,
    RDPAccountant,
    RelativeGaussianEvent,
    SelfComposedEvent,
    UnsupportedEventError,
)
from privlab.accounting.events import flatten
from privlab.context import Emissions
from privlab.errors import PrivlabError
from privlab.ledger import PrivacyLedger

ACCOUNTANTS = {"rdp": RDPAccountant, "pld": PLDAccountant}
STEP = PoissonSampledEvent(0.1, GaussianEvent(1.0))


def nodes(*ids: int) -> torch.Tensor:
    return torch.tensor(ids, dtype=torch.int64)


def reference(name: str, events, count: int = 1, delta: float = 1e-5) -> float:
    accountant = ACCOUNTANTS[name]()
    for event in events:
        accountant.compose(event, count)
    return accountant.get_epsilon(delta)


@pytest.mark.parametrize("name", ["rdp", "pld"])
def test_every_node_gets_the_accountants_epsilon(name):
    ledger = PrivacyLedger(8, accountant=name)
    for _ in range(100):
        ledger.record(Emissions(node_events=[(STEP, None)]))
    expected = ACCOUNTANTS[name]().compose(STEP, 100).get_epsilon(1e-5)
    eps = ledger.epsilon()
    assert eps.dtype == torch.float64 and eps.shape == (8,)
    assert eps.tolist() == [expected] * 8
    assert ledger.claims_dp
    assert ledger.events(3) == ComposedEvent((SelfComposedEvent(STEP, 100),))


@pytest.mark.parametrize("name", ["rdp", "pld"])
def test_nodes_with_different_sample_rates_get_their_own_epsilon(name):
    fast, slow = (
        PoissonSampledEvent(0.1, GaussianEvent(1.0)),
        PoissonSampledEvent(0.05, GaussianEvent(1.0)),
    )
    ledger = PrivacyLedger(8, accountant=name)
    for _ in range(50):
        ledger.record(Emissions(node_events=[(fast, nodes(0, 1, 2, 3)), (slow, nodes(4, 5, 6, 7))]))
    eps = ledger.epsilon()
    assert eps[:4].tolist() == [reference(name, [fast], 50)] * 4
    assert eps[4:].tolist() == [reference(name, [slow], 50)] * 4
    assert eps[0] > eps[4] > 0


@pytest.mark.parametrize("name", ["rdp", "pld"])
def test_subset_emissions_accumulate_like_a_per_node_loop(name):
    gen = torch.Generator().manual_seed(0)
    events = [
        GaussianEvent(4.0),
        PoissonSampledEvent(0.1, GaussianEvent(1.0)),
        PoissonSampledEvent(0.2, GaussianEvent(1.5)),
    ]
    n, rounds = 6, 10
    ledger = PrivacyLedger(n, accountant=name)
    per_node: list[list] = [[] for _ in range(n)]
    for _ in range(rounds):
        emitted = []
        for event in events:
            size = int(torch.randint(0, 2 * n, (1,), generator=gen))
            ids = torch.randint(0, n, (size,), generator=gen)  # may repeat: counts twice
            emitted.append((event, ids))
            for i in ids.tolist():
                per_node[i].append(event)
        ledger.record(Emissions(node_events=emitted))
    eps = ledger.epsilon()
    for i in range(n):
        expected = reference(name, per_node[i]) if per_node[i] else 0.0
        assert eps[i].item() == pytest.approx(expected, rel=1e-9, abs=1e-12)
        assert dict(flatten(ledger.events(i))) == dict(flatten(ComposedEvent(tuple(per_node[i]))))
        # the node's ledger is re-accountable on its own
        if per_node[i] and i < 2:
            again = ACCOUNTANTS[name]().compose(ledger.events(i)).get_epsilon(1e-5)
            assert again == pytest.approx(eps[i].item(), rel=1e-9)


def test_node_without_events_gets_zero_and_no_privacy_gets_inf():
    ledger = PrivacyLedger(5)
    ledger.record(Emissions(node_events=[(STEP, nodes(0, 1, 2)), (NoPrivacyEvent(), nodes(2))]))
    eps = ledger.epsilon()
    assert eps[:2].tolist() == [reference("rdp", [STEP])] * 2
    assert math.isinf(eps[2]) and eps[3:].tolist() == [0.0, 0.0]
    summary = ledger.summary()
    assert summary["accountant"] == "rdp" and summary["delta"] == 1e-5
    assert summary["epsilon"]["max"] == math.inf and math.isinf(summary["epsilon"]["mean"])
    assert summary["epsilon"]["per_node"][3] == 0.0
    assert all(type(v) is float for v in summary["epsilon"]["per_node"])
    assert json.loads(json.dumps(summary))["epsilon"]["max"] == math.inf


def test_summary_values():
    ledger = PrivacyLedger(4)
    ledger.record(Emissions(node_events=[(STEP, nodes(0, 1))]))
    summary = ledger.summary()
    one = reference("rdp", [STEP])
    assert summary == {
        "accountant": "rdp",
        "delta": 1e-5,
        "epsilon": {"mean": pytest.approx(one / 2), "max": one, "per_node": [one, one, 0.0, 0.0]},
    }


def test_no_events_means_no_claim():
    ledger = PrivacyLedger(6, accountant="pld", delta=1e-6)
    assert not ledger.claims_dp
    assert ledger.epsilon() is None and ledger.summary() is None
    ledger.record(Emissions())
    ledger.record(Emissions(metrics={"loss": torch.zeros(6)}))
    assert not ledger.claims_dp
    assert ledger.epsilon() is None and ledger.summary() is None
    assert ledger.pair_epsilon() == {}
    assert ledger.events(0) == ComposedEvent(())
    assert json.loads(json.dumps(ledger.to_dict()))["node_ledgers"] == []


def test_noop_events_claim_dp_with_zero_epsilon():
    ledger = PrivacyLedger(3)
    ledger.record(Emissions(node_events=[(NoOpEvent(), None)]))
    assert ledger.claims_dp and ledger.epsilon().tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("name", ["rdp", "pld"])
def test_pair_events(name):
    gauss = GaussianEvent(2.0)
    ledger = PrivacyLedger(4, accountant=name)
    for _ in range(3):
        ledger.record(Emissions(pair_events=[(gauss, nodes(0, 1, 0), nodes(1, 0, 2))]))
    ledger.record(Emissions(pair_events=[(gauss, nodes(3, 3), nodes(2, 2))]))  # twice at once
    pairs = ledger.pair_epsilon()
    three, two = reference(name, [gauss], 3), reference(name, [gauss], 2)
    assert pairs == {(0, 1): three, (1, 0): three, (0, 2): three, (3, 2): two}
    assert ledger.claims_dp and ledger.epsilon() is None  # no node events
    summary = ledger.summary()
    assert summary["epsilon"] is None
    assert summary["pair_epsilon"] == {
        "mean": pytest.approx((3 * three + two) / 4),
        "max": three,
        "num_pairs": 4,
    }
    pairs[(0, 1)] = -1.0  # a copy: the cache is not touched
    assert ledger.pair_epsilon()[(0, 1)] == three
    # a new pair sorting between known ones; the known pairs keep their ledgers
    ledger.record(Emissions(pair_events=[(gauss, nodes(1), nodes(2))]))
    one = reference(name, [gauss])
    assert ledger.pair_epsilon() == {
        (0, 1): three,
        (1, 0): three,
        (0, 2): three,
        (1, 2): one,
        (3, 2): two,
    }


def test_pair_and_node_events_are_kept_apart():
    ledger = PrivacyLedger(3)
    ledger.record(
        Emissions(
            node_events=[(STEP, None)],
            pair_events=[(NoPrivacyEvent(), nodes(0), nodes(1))],
        )
    )
    assert ledger.epsilon().tolist() == [reference("rdp", [STEP])] * 3
    assert ledger.pair_epsilon() == {(0, 1): math.inf}


def test_bad_accountant_and_delta():
    with pytest.raises(
        PrivlabError, match=r"privacy\.accountant must be one of 'rdp', 'pld', got 'x'"
    ):
        PrivacyLedger(4, accountant="x")
    with pytest.raises(ValueError, match=r"^privacy\.delta must be in \(0, 1\), got 2$"):
        PrivacyLedger(4, delta=2)
    for bad in (0.0, 1.0, -1e-5, float("nan"), "1e-5", True):
        with pytest.raises(PrivlabError, match=r"privacy\.delta"):
            PrivacyLedger(4, delta=bad)
    with pytest.raises(PrivlabError, match="num_nodes"):
        PrivacyLedger(0)


def test_unsupported_event_leaves_the_ledger_unchanged():
    ledger = PrivacyLedger(4, accountant="pld")
    ledger.record(Emissions(node_events=[(STEP, None)]))
    before_eps, before_dump = ledger.epsilon(), ledger.to_dict()
    relative = RelativeGaussianEvent(1.0, 0.5)
    bad_rounds = [
        Emissions(node_events=[(STEP, nodes(0)), (relative, nodes(1))]),
        Emissions(node_events=[(STEP, None)], pair_events=[(relative, nodes(0), nodes(1))]),
    ]
    for emissions in bad_rounds:
        with pytest.raises(UnsupportedEventError, match="PLDAccountant") as info:
            ledger.record(emissions)
        assert info.value.event == relative
    assert ledger.to_dict() == before_dump
    assert torch.equal(ledger.epsilon(), before_eps)
    assert ledger.pair_epsilon() == {}
    # the RDP accountant supports it
    rdp = PrivacyLedger(4)
    rdp.record(bad_rounds[0])
    assert rdp.epsilon()[1].item() == pytest.approx(reference("rdp", [relative]))


def test_node_ids_may_be_lists_or_arrays():
    ledger = PrivacyLedger(4)
    ledger.record(Emissions(node_events=[(STEP, [0, 1]), (STEP, np.array([1, 3]))]))
    ledger.record(Emissions(pair_events=[(STEP, [2], np.array([3]))]))
    one, two = reference("rdp", [STEP]), reference("rdp", [STEP], 2)
    assert ledger.epsilon().tolist() == [one, two, 0.0, one]
    assert ledger.pair_epsilon() == {(2, 3): one}


def test_bad_node_ids_leave_the_ledger_unchanged():
    ledger = PrivacyLedger(4)
    for emissions in (
        Emissions(node_events=[(STEP, nodes(0)), (STEP, nodes(4))]),
        Emissions(node_events=[(STEP, nodes(0)), (STEP, torch.tensor([0.5]))]),
        Emissions(node_events=[(STEP, nodes(0))], pair_events=[(STEP, nodes(0, 1), nodes(2))]),
        Emissions(node_events=[("not an event", nodes(0))]),
    ):
        with pytest.raises(PrivlabError):
            ledger.record(emissions)
    assert not ledger.claims_dp and ledger.epsilon() is None


def test_epsilon_is_cached_until_new_events(monkeypatch):
    calls = []
    original = PrivacyLedger._ledger_epsilon

    def counting(self, ledger):
        calls.append(ledger)
        return original(self, ledger)

    monkeypatch.setattr(PrivacyLedger, "_ledger_epsilon", counting)
    ledger = PrivacyLedger(6)
    ledger.record(Emissions(node_events=[(STEP, nodes(0, 1, 2))]))
    first = ledger.epsilon()
    assert len(calls) == 2  # one per distinct ledger: {STEP: 1} and the empty one
    first[0] = -1.0  # a copy
    assert ledger.epsilon()[0] > 0 and len(calls) == 2
    ledger.record(Emissions())  # nothing new
    ledger.epsilon()
    assert len(calls) == 2
    ledger.record(Emissions(node_events=[(STEP, nodes(0))]))
    ledger.epsilon()
    assert len(calls) == 3  # only the new ledger {STEP: 2}; the others are remembered


def test_to_dict_round_trip():
    ledger = PrivacyLedger(5, accountant="rdp", delta=1e-6)
    ledger.record(
        Emissions(
            node_events=[(STEP, nodes(0, 1)), (GaussianEvent(3.0), None)],
            pair_events=[(GaussianEvent(2.0), nodes(0, 4), nodes(1, 3))],
        )
    )
    ledger.record(Emissions(node_events=[(STEP, nodes(1))]))
    dump = json.loads(json.dumps(ledger.to_dict()))
    assert dump["events"][0] == {
        "type": "poisson_sampled",
        "sample_rate": 0.1,
        "event": {"type": "gaussian", "noise_multiplier": 1.0},
    }
    assert sorted(len(g["nodes"]) for g in dump["node_ledgers"]) == [1, 1, 3]
    again = PrivacyLedger.from_dict(dump)
    assert torch.equal(again.epsilon(), ledger.epsilon())
    assert again.pair_epsilon() == ledger.pair_epsilon()
    assert [again.events(i) for i in range(5)] == [ledger.events(i) for i in range(5)]
    assert again.to_dict() == dump


def test_many_distinct_ledgers_over_many_rounds():
    """Random subsets create many short-lived ledgers; forgotten ones are compacted."""
    gen = torch.Generator().manual_seed(1)
    n, rounds = 300, 40
    events = [GaussianEvent(5.0), GaussianEvent(8.0)]
    ledger = PrivacyLedger(n)
    counts = torch.zeros(len(events), n, dtype=torch.int64)
    for _ in range(rounds):
        emitted = []
        for k, event in enumerate(events):
            ids = torch.nonzero(torch.rand(n, generator=gen) < 0.5).flatten()
            emitted.append((event, ids))
            counts[k, ids] += 1
        ledger.record(Emissions(node_events=emitted))
    assert len(ledger._nodes.ledgers) < 4 * n + 1024 < rounds * n  # old ledgers forgotten
    for i in range(n):
        expected = {e: int(c) for e, c in zip(events, counts[:, i]) if c}
        assert dict(flatten(ledger.events(i))) == expected
    eps = ledger.epsilon()
    # un-subsampled Gaussians: epsilon depends on sum_k c_k / sigma_k^2 only
    precision = (counts.double() / torch.tensor([25.0, 64.0]).unsqueeze(1)).sum(0)
    order = torch.argsort(precision)
    assert torch.all(eps[order].diff() >= -1e-12)


def test_hundred_thousand_nodes():
    n = 100_000
    events = [PoissonSampledEvent(q, GaussianEvent(1.0)) for q in (0.01, 0.02, 0.05)]
    groups = torch.arange(n) % 3
    members = [torch.nonzero(groups == k).flatten() for k in range(3)]
    ledger = PrivacyLedger(n)
    for _ in range(200):
        ledger.record(Emissions(node_events=list(zip(events, members))))
    eps = ledger.epsilon()
    assert eps.shape == (n,)
    for k, event in enumerate(events):
        assert torch.all(eps[members[k]] == reference("rdp", [event], 200))
    summary = ledger.summary()
    assert len(summary["epsilon"]["per_node"]) == n
    assert summary["epsilon"]["max"] == reference("rdp", [events[2]], 200)
