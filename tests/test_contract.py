"""One contract suite over every registered component, in the way dp_accounting tests
every accountant through one base class.

Every protocol registered in ``privlab.protocol.PROTOCOLS`` (they register when
``privlab.mechanisms`` is imported) and every toy protocol of ``toy_protocols`` runs a
few rounds on a small federation (8 nodes, digits, MLP with one hidden layer of 16) on
both engines, and must:

* send well-formed ``Messages`` (src/dst int64 ``[E]``, payload ``[E, k]`` float or
  integer, indices of the payload's shape or None, labels ``[E]``, bytes by sender
  non-negative int64 ``[n]`` split into payload / indices / metadata, summing over the
  exchanges to the round's report);
* be deterministic: the same seed gives bit-identical parameters and reports, a
  different seed different parameters (for protocols that train);
* compute on the ``VectorizedEngine`` what the ``LoopEngine`` computes (parameters within
  ``test_engine.TOLERANCE``, equal bytes);
* let an observer (a lone curious node, or a coalition) see exactly the messages
  addressed to it, one ``Observation`` per watched exchange with messages, with the
  right round and exchange numbers and ``true_sender`` equal to ``src``;
* stay finite, and report metrics as ``[n]`` tensors.

Every gradient mechanism of ``privlab.gradient.GRADIENT_MECHANISMS`` (and None, no
mechanism) runs under D-PSGD (or the first registered protocol that trains) and must
emit privacy events at every local step (so every node's epsilon is > 0), give equal
parameters on both engines (1e-5), and privatize and draw batches for any block of nodes
as it does for all nodes (block reproducibility, which distributed runs rely on).

Components are built with their default options. A protocol that needs a particular
topology is listed in ``TOPOLOGY_NEEDS`` (``epidemic`` needs a dynamic one); a protocol
not listed gets the first of ``FALLBACK_TOPOLOGIES`` that its ``setup`` accepts (a random
4-regular graph, else EL-Oracle). So a NEW registered protocol or gradient mechanism is
tested here without writing a new test: only a protocol that needs something else than
these (or options without defaults) needs a line in ``TOPOLOGY_NEEDS``; a gradient
mechanism whose defaults hold for one model only gets it from ``MODEL_NEEDS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from conftest import make_engine, set_up
from test_engine import TOLERANCE
from toy_protocols import (
    MaskedSum,
    PerReceiverNoise,
    PseudonymousChunks,
    RepeatedGossip,
    Rumor,
    VirtualPushes,
)

import privlab.mechanisms  # noqa: F401  (registers the protocols and gradient mechanisms)
from privlab.accounting import GaussianEvent
from privlab.engine import RoundReport
from privlab.errors import PrivlabError
from privlab.gradient import GRADIENT_MECHANISMS
from privlab.ledger import PrivacyLedger
from privlab.observe import Observer, threat_model_from
from privlab.protocol import PROTOCOLS, Protocol
from privlab.topology import build_topology
from privlab.training import LocalTraining, SGDConfig

NODES = 8
ROUNDS = 3
TRAINING = LocalTraining(batch_size=8, local_steps=2, sgd=SGDConfig(lr=0.1, momentum=0.9))
CURIOUS = 0
COALITION = (0, 3, 7)
BYTE_KINDS = {"payload", "indices", "metadata"}

Topo = tuple[str, dict]
TOPOLOGY_NEEDS: dict[str, Topo] = {"epidemic": ("el-oracle", {"fanout": 3})}
MODEL_NEEDS: dict[str, tuple[str, dict]] = {"relative-gaussian": ("logreg", {})}
"""Gradient mechanisms whose default options hold for one model only (the relative
Gaussian mechanism computes its sensitivity for logistic regression)."""
"""Registered protocols that need a particular topology (name and options)."""
FALLBACK_TOPOLOGIES: tuple[Topo, ...] = (("regular", {"degree": 4}), ("el-oracle", {"fanout": 3}))
"""What any other protocol is tried on, in order: the first its ``setup`` accepts."""

TOYS: dict[str, Callable[[], Protocol]] = {
    "toy-noise": PerReceiverNoise,
    "toy-chunks": PseudonymousChunks,
    "toy-masked": MaskedSum,
    "toy-rumor": Rumor,
    "toy-repeated": RepeatedGossip,
    "toy-virtual": VirtualPushes,
}


def topology_for(name: str, factory: Callable[[], Protocol]) -> Topo:
    """The topology protocol ``name`` runs on: its entry in ``TOPOLOGY_NEEDS``, or the first
    fallback whose setup it accepts."""
    if name in TOPOLOGY_NEEDS:
        return TOPOLOGY_NEEDS[name]
    refusals = []
    for topology, options in FALLBACK_TOPOLOGIES:
        try:
            set_up(factory(), build_topology(topology, NODES, seed=0, **options), dim=4)
        except PrivlabError as error:
            refusals.append(f"{topology}: {error}")
            continue
        return topology, options
    raise AssertionError(
        f"protocol {name!r} accepts none of the fallback topologies; add what it needs to "
        "TOPOLOGY_NEEDS in tests/test_contract.py. Refusals: " + "; ".join(refusals)
    )


SILENT = frozenset({"local"})
"""Protocols that send nothing (the no-collaboration baseline)."""
OPTION_NEEDS: dict[str, dict] = {"muted-gossip": {"mute": 1.0}}
"""Protocols whose defaults show the observer nothing in ``ROUNDS`` rounds: muted gossip's
source is node 0, the lone curious node, and only plain push (mute 1) brings the rumour
back to it in time."""


def protocol_factories() -> dict[str, Callable[[], Protocol]]:
    registered = {
        name: (lambda name=name: PROTOCOLS[name](**OPTION_NEEDS.get(name, {})))
        for name in PROTOCOLS.names()
    }
    return registered | TOYS


PROTOCOL_CASES = protocol_factories()


def training_protocol() -> str:
    """The protocol the gradient mechanisms run under: D-PSGD, else any that trains."""
    names = PROTOCOLS.names()
    trainers = [n for n in names if PROTOCOLS[n].trains]
    assert trainers, "no registered protocol trains"
    return "d-psgd" if "d-psgd" in trainers else trainers[0]


# -- recording what goes on the wire ------------------------------------------------------


@dataclass
class Sent:
    """A copy of one exchange's messages, as the engine handed them to the observer."""

    round: int
    exchange: int
    src: torch.Tensor
    dst: torch.Tensor
    payload: torch.Tensor
    indices: torch.Tensor | None
    sender: torch.Tensor
    receiver_label: torch.Tensor | None
    bytes_by_kind: dict[str, torch.Tensor]


def check_messages(messages, n: int) -> None:
    """The shapes and types every ``Messages`` must have."""
    src, dst = messages.src, messages.dst
    e = len(messages)
    assert src.dtype == torch.int64 and dst.dtype == torch.int64
    assert src.shape == (e,) and dst.shape == (e,)
    if e:
        assert 0 <= int(src.min()) and int(src.max()) < n
        assert 0 <= int(dst.min()) and int(dst.max()) < n
    payload = messages.payload
    assert payload.ndim == 2 and payload.shape[0] == e
    assert payload.dtype.is_floating_point or not (
        payload.dtype.is_complex or payload.dtype == torch.bool
    ), f"payload dtype {payload.dtype} is neither float nor integer"
    assert messages.indices is None or messages.indices.shape == payload.shape
    if messages.indices is not None:
        assert messages.indices.dtype == torch.int64
    for label in (messages.sender_label, messages.receiver_label):
        assert label is None or label.shape == (e,)
    assert messages.seen_sender.shape == (e,) and messages.seen_receiver.shape == (e,)
    by_sender = messages.bytes_by_sender(n)
    assert set(by_sender) == BYTE_KINDS
    for size in by_sender.values():
        assert size.dtype == torch.int64 and size.shape == (n,) and bool((size >= 0).all())


class Capture:
    """An observer stand-in: checks and copies every exchange's messages and feeds them
    to real observers."""

    def __init__(self, n: int, *observers: Observer):
        self.n, self.observers = n, observers
        self.sent: list[Sent] = []

    def record(self, round: int, exchange: int, messages) -> None:
        check_messages(messages, self.n)

        def copy(t):
            return None if t is None else t.clone()

        self.sent.append(
            Sent(
                round,
                exchange,
                messages.src.clone(),
                messages.dst.clone(),
                messages.payload.clone(),
                copy(messages.indices),
                messages.seen_sender.clone(),
                copy(messages.receiver_label),
                messages.bytes_by_sender(self.n),
            )
        )
        for observer in self.observers:
            observer.record(round, exchange, messages)


# -- running a component ------------------------------------------------------------------


@dataclass
class Run:
    params: torch.Tensor
    start: torch.Tensor
    reports: list[RoundReport]
    engine: object


def run(
    kind: str,
    factory,
    topology: Topo,
    *,
    seed=0,
    observe=None,
    gradient=None,
    model=None,
    device="cpu",
) -> Run:
    """``ROUNDS`` rounds on a ``kind`` engine; ``observe(dim)`` makes its observer."""
    model_name, model_options = model or ("mlp", {"hidden": [16]})
    engine = make_engine(
        kind,
        factory(),
        nodes=NODES,
        topology=topology[0],
        topology_options=topology[1],
        model=model_name,
        model_options=model_options,
        training=TRAINING,
        gradient=gradient,
        seed=seed,
        device=device,
    )
    if observe is not None:  # the observer needs the model's width, known from the engine
        engine.observer = observe(engine.spec.dim)
    reports = [engine.run_round(t) for t in range(ROUNDS)]
    return Run(engine.params.clone(), engine.initial_state.clone(), reports, engine)


@dataclass
class ProtocolRuns:
    name: str
    trains: bool
    vectorized: Run
    again: Run
    other_seed: Run | None
    loop: Run
    capture: Capture
    lone: Observer
    coalition: Observer


@pytest.fixture(scope="module", params=sorted(PROTOCOL_CASES))
def protocol_runs(request) -> ProtocolRuns:
    name = request.param
    factory = PROTOCOL_CASES[name]
    topology = topology_for(name, factory)
    probe = factory()
    observers: dict[str, Observer] = {}

    def observe(dim: int) -> Capture:
        observers["lone"] = Observer(threat_model_from(curious_nodes=[CURIOUS]), NODES, dim)
        observers["coalition"] = Observer(
            threat_model_from(curious_nodes=COALITION, colluding=True), NODES, dim
        )
        return Capture(NODES, *observers.values())

    vectorized = run("vectorized", factory, topology, observe=observe)
    again = run("vectorized", factory, topology)
    other = run("vectorized", factory, topology, seed=1) if probe.trains else None
    loop = run("loop", factory, topology)
    capture = vectorized.engine.observer
    return ProtocolRuns(name, probe.trains, vectorized, again, other, loop, capture, **observers)


def assert_same_reports(a: list[RoundReport], b: list[RoundReport], exact: bool) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.round == y.round
        assert set(x.bytes_by_kind) == set(y.bytes_by_kind)
        for kind in x.bytes_by_kind:
            assert torch.equal(x.bytes_by_kind[kind], y.bytes_by_kind[kind])
        assert (x.batch_loss is None) == (y.batch_loss is None)
        if x.batch_loss is not None:
            if exact:
                assert torch.equal(x.batch_loss, y.batch_loss)
            else:
                torch.testing.assert_close(x.batch_loss, y.batch_loss, rtol=0, atol=1e-5)
        assert set(x.emitted.metrics) == set(y.emitted.metrics)
        for name, values in x.emitted.metrics.items():
            if exact:
                assert torch.equal(values, y.emitted.metrics[name])
            else:
                torch.testing.assert_close(values, y.emitted.metrics[name], rtol=1e-5, atol=1e-5)
        assert len(x.emitted.node_events) == len(y.emitted.node_events)
        for (e1, n1), (e2, n2) in zip(x.emitted.node_events, y.emitted.node_events):
            assert e1 == e2 and (n1 is None) == (n2 is None)
            assert n1 is None or torch.equal(n1, n2)
        assert len(x.emitted.pair_events) == len(y.emitted.pair_events)
        for (e1, o1, s1), (e2, o2, s2) in zip(x.emitted.pair_events, y.emitted.pair_events):
            assert e1 == e2 and torch.equal(o1, o2) and torch.equal(s1, s2)


# -- the protocol contract ---------------------------------------------------------------


def test_messages_are_well_formed_and_bytes_add_up_over_exchanges(protocol_runs):
    runs = protocol_runs
    sent, reports = runs.capture.sent, runs.vectorized.reports
    exchanges = runs.vectorized.engine.protocol.exchanges
    assert [(s.round, s.exchange) for s in sent] == [
        (t, x) for t in range(ROUNDS) for x in range(exchanges)
    ]
    for report in reports:
        assert set(report.bytes_by_kind) == BYTE_KINDS
        for kind in BYTE_KINDS:
            total = sum(s.bytes_by_kind[kind] for s in sent if s.round == report.round)
            assert torch.equal(report.bytes_by_kind[kind], total)
    sent_bytes = sum(int(r.bytes_sent.sum()) for r in reports)
    assert (sent_bytes == 0) == (runs.name in SILENT)


def test_same_seed_same_numbers_and_another_seed_other_numbers(protocol_runs):
    runs = protocol_runs
    assert torch.equal(runs.vectorized.params, runs.again.params)
    assert_same_reports(runs.vectorized.reports, runs.again.reports, exact=True)
    if runs.trains:
        assert (runs.vectorized.params - runs.vectorized.start).abs().max() > 1e-3
        assert not torch.allclose(runs.vectorized.params, runs.other_seed.params)


def test_vectorized_engine_equals_loop_engine(protocol_runs):
    runs = protocol_runs
    assert runs.vectorized.params.shape == runs.loop.params.shape
    assert (runs.vectorized.params - runs.loop.params).abs().max() < TOLERANCE
    assert_same_reports(runs.vectorized.reports, runs.loop.reports, exact=False)


@pytest.mark.parametrize("party", ["lone", "coalition"])
def test_observer_sees_exactly_the_messages_addressed_to_it(protocol_runs, party):
    runs = protocol_runs
    observer = getattr(runs, party)
    watched = torch.tensor(sorted(observer.threat_model.curious_nodes))
    expected = [s for s in runs.capture.sent if bool(torch.isin(s.dst, watched).any())]
    observations = list(observer.log.observations)
    assert [(o.round, o.exchange) for o in observations] == [
        (s.round, s.exchange) for s in expected
    ]
    for o, s in zip(observations, expected):
        mask = torch.isin(s.dst, watched)
        assert torch.equal(o.receiver, s.dst[mask])
        assert torch.equal(o.true_sender, s.src[mask])
        assert torch.equal(o.sender, s.sender[mask])
        assert torch.equal(o.payload, s.payload[mask])
        assert (o.indices is None) == (s.indices is None)
        assert o.indices is None or torch.equal(o.indices, s.indices[mask])
        assert (o.virtual_receiver is None) == (s.receiver_label is None)
        if o.virtual_receiver is not None:
            assert torch.equal(o.virtual_receiver, s.receiver_label[mask])
        assert bool((o.party == 0).all())  # one curious node, or one coalition
    assert bool(observations) != (runs.name in SILENT), "the observer saw nothing"


def test_finite_state_and_per_node_metrics(protocol_runs):
    for run_ in (protocol_runs.vectorized, protocol_runs.loop):
        assert bool(torch.isfinite(run_.params).all())
        for report in run_.reports:
            metrics = report.metrics()
            assert "bytes_sent" in metrics
            assert ("batch_loss" in metrics) == protocol_runs.trains
            for name, values in metrics.items():
                assert isinstance(values, torch.Tensor) and values.shape == (NODES,), name
                assert bool(torch.isfinite(values).all()), name
        metrics = run_.engine.evaluate()
        for name, values in metrics.items():
            assert values.shape == (NODES,) and bool(torch.isfinite(values).all()), name


# -- the gradient mechanism contract ------------------------------------------------------

MECHANISM_CASES = [None, *GRADIENT_MECHANISMS.names()]


@dataclass
class MechanismRuns:
    name: str | None
    vectorized: Run
    loop: Run


@pytest.fixture(scope="module", params=MECHANISM_CASES, ids=lambda name: name or "none")
def mechanism_runs(request) -> MechanismRuns:
    name = request.param
    protocol = training_protocol()
    factory = PROTOCOL_CASES[protocol]
    topology = topology_for(protocol, factory)

    def gradient():
        return None if name is None else GRADIENT_MECHANISMS[name]()

    model = MODEL_NEEDS.get(name)
    vectorized = run("vectorized", factory, topology, gradient=gradient(), model=model)
    loop = run("loop", factory, topology, gradient=gradient(), model=model)
    return MechanismRuns(name, vectorized, loop)


def events_per_node(report: RoundReport) -> torch.Tensor:
    """How many node events covered each node in a round."""
    counts = torch.zeros(NODES, dtype=torch.int64)
    for _, nodes in report.emitted.node_events:
        if nodes is None:
            counts += 1
        else:
            counts.index_add_(0, nodes, torch.ones_like(nodes))
    return counts


def test_mechanism_emits_events_every_local_step(mechanism_runs):
    for run_ in (mechanism_runs.vectorized, mechanism_runs.loop):
        ledger = PrivacyLedger(NODES)
        for report in run_.reports:
            counts = events_per_node(report)
            if mechanism_runs.name is None:
                assert not report.emitted.node_events and not report.emitted.pair_events
            else:
                assert bool((counts >= TRAINING.local_steps).all())
                assert bool((counts % TRAINING.local_steps == 0).all())
            ledger.record(report.emitted)
        if mechanism_runs.name is None:
            assert not ledger.claims_dp and ledger.epsilon() is None
        else:
            epsilon = ledger.epsilon()
            assert epsilon.shape == (NODES,) and bool((epsilon > 0).all())
            assert bool(torch.isfinite(epsilon).all())


def test_mechanism_gives_equal_params_on_both_engines(mechanism_runs):
    vec, loop = mechanism_runs.vectorized, mechanism_runs.loop
    assert (vec.params - vec.start).abs().max() > 1e-3
    assert bool(torch.isfinite(vec.params).all())
    assert (vec.params - loop.params).abs().max() < 1e-5
    assert_same_reports(vec.reports, loop.reports, exact=False)
    for report in vec.reports:
        for name, values in report.metrics().items():
            assert values.shape == (NODES,), name


def real_samples(batch, row: int) -> torch.Tensor:
    """The sample indices of one row of a batch (padding dropped)."""
    if batch.weights is None:
        return batch.indices[row]
    return batch.indices[row][batch.weights[row] > 0]


@pytest.mark.parametrize("block", [[3], [1, 4, 7], [7, 2]], ids=["one", "sorted", "unsorted"])
def test_mechanism_on_a_block_of_nodes_equals_all_nodes_restricted(mechanism_runs, block):
    if mechanism_runs.name is None:
        pytest.skip("no gradient mechanism")
    mechanism = mechanism_runs.vectorized.engine.gradient_mechanism
    assert mechanism.clip_norm == mechanism_runs.vectorized.engine.context.clip_norm
    everyone, nodes = torch.arange(NODES), torch.tensor(block)
    dim = mechanism_runs.vectorized.engine.spec.dim
    for round, step in [(ROUNDS, 0), (ROUNDS + 1, 1)]:
        grads = torch.randn(NODES, dim, generator=torch.Generator().manual_seed(round))
        whole = mechanism.privatize(grads.clone(), round, step, everyone)
        part = mechanism.privatize(grads[nodes].clone(), round, step, nodes)
        assert torch.equal(part, whole[nodes])
        assert not torch.equal(whole, grads)  # it does transform the gradients
        all_batches = mechanism.batch(round, step, everyone)
        block_batches = mechanism.batch(round, step, nodes)
        assert (all_batches is None) == (block_batches is None)
        if all_batches is not None:
            for row, node in enumerate(block):
                assert torch.equal(
                    real_samples(block_batches, row), real_samples(all_batches, node)
                )


# -- what components emit through the round context ---------------------------------------


def test_emissions_take_node_ids_and_refuse_masks_and_floats():
    protocol = set_up(PROTOCOL_CASES[training_protocol()](), build_topology("ring", 4, seed=0), 3)
    context = protocol.context
    event = GaussianEvent(2.0)
    context.emit_event(event, [2, 3])
    context.emit_event(event, torch.tensor([], dtype=torch.int64))
    context.emit_pair_event(event, torch.tensor([0]), torch.tensor([1]))
    context.emit_metric("toy", torch.arange(4))
    for bad in (torch.tensor([True, False, True, True]), torch.tensor([0.0, 2.0])):
        with pytest.raises(PrivlabError, match="integer node ids"):
            context.emit_event(event, bad)  # a mask must not become nodes 0 and 1
        with pytest.raises(PrivlabError, match="integer node ids"):
            context.emit_pair_event(event, bad, bad)
    with pytest.raises(PrivlabError):
        context.emit_event(event, [4])
    with pytest.raises(PrivlabError):
        context.emit_metric("toy", torch.ones(3))
    emitted = context.drain()
    assert [nodes.tolist() for _, nodes in emitted.node_events] == [[2, 3], []]
    assert len(emitted.pair_events) == 1 and emitted.metrics["toy"].dtype == torch.float32
    assert not context.drain().node_events  # drained once


def test_an_unlisted_protocol_gets_the_first_fallback_topology_it_accepts():
    """How a newly registered protocol finds its topology without a line in TOPOLOGY_NEEDS."""
    static, dynamic = FALLBACK_TOPOLOGIES
    assert topology_for("unlisted", PROTOCOL_CASES["d-psgd"]) == static
    assert topology_for("unlisted", PROTOCOL_CASES["epidemic"]) == dynamic  # refuses static


def test_every_registered_component_is_in_the_suite():
    assert set(PROTOCOLS.names()) <= set(PROTOCOL_CASES)
    assert set(GRADIENT_MECHANISMS.names()) <= set(MECHANISM_CASES)
    assert set(TOPOLOGY_NEEDS) <= set(PROTOCOLS.names())  # no stale entries


def test_setup_hands_protocol_and_mechanism_one_round_context():
    from privlab.mechanisms import DPSGD, DecentralizedSGD
    from privlab.training import LocalTraining, SGDConfig

    seen = {}

    class Spy(DecentralizedSGD):
        def setup(self, context):
            super().setup(context)
            seen["protocol"] = context

    mechanism = DPSGD(noise_multiplier=1.5, max_grad_norm=0.7)
    training = LocalTraining(batch_size=8, local_steps=2, sgd=SGDConfig(lr=0.03))
    engine = make_engine(
        "vectorized", Spy(), nodes=12, training=training, gradient=mechanism, seed=4
    )
    context = seen["protocol"]
    assert mechanism.context is context  # one context for both components
    assert (context.num_nodes, context.dim) == (12, engine.spec.dim)
    assert context.topology is engine.topology
    assert (context.lr, context.batch_size, context.clip_norm) == (0.03, 8, 0.7)
    assert torch.equal(context.node_sizes, engine.node_sizes)
    assert context.streams.seed == 4


def test_a_registry_key_is_the_components_one_name():
    from privlab.engine import ENGINES
    from privlab.protocol import PROTOCOLS

    for registry in (PROTOCOLS, GRADIENT_MECHANISMS, ENGINES):
        for name in registry:
            assert registry[name].name == name
