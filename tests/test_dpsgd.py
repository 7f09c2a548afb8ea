"""DP-SGD end to end: both engines agree, the round contract carries several exchanges and
virtual receivers, privlab's noisy step equals Opacus's, and the epsilon equals Opacus's
RDP accountant.

The Opacus cross-check (one node, same model, batch and noise draw) holds to 1e-6
absolute in float32: privlab and Opacus clip the same per-sample gradients, sum them in
different orders (about 1e-7 relative apart) and add the very same noise vector, scaled
and divided by the same expected batch size; the differences measured are ~1e-8.
"""

from __future__ import annotations

import copy
import functools
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import make_engine
from opacus import GradSampleModule
from opacus.accountants import RDPAccountant
from opacus.optimizers import DPOptimizer
from opacus.optimizers import optimizer as opacus_optimizer
from toy_protocols import RepeatedGossip, VirtualPushes

from privlab.accounting import GaussianEvent
from privlab.config import parse_config
from privlab.context import RoundContext
from privlab.experiment import run
from privlab.ledger import PrivacyLedger
from privlab.mechanisms import DPSGD, DecentralizedSGD
from privlab.mechanisms.dp_sgd import SHUFFLE_NOTE
from privlab.observe import Observer, threat_model_from
from privlab.rng import NodeStreams
from privlab.topology import build_topology
from privlab.training import LocalTraining, SGDConfig

TOLERANCE = 1e-5
CNN = {"channels": [4], "groups": 2}
RING = {"topology": "ring", "topology_options": {}}


def both_engines(factory, rounds: int, *, observe=None, **kwargs):
    """``rounds`` rounds of ``factory()`` on each engine; ``observe(kind, dim)`` makes the
    engine's observer (it needs the model's width, known once the engine is built)."""
    runs = []
    for kind in ("vectorized", "loop"):
        engine = make_engine(kind, factory(), **kwargs)
        if observe is not None:
            engine.observer = observe(kind, engine.spec.dim)
        runs.append((engine, [engine.run_round(t) for t in range(rounds)]))
    return runs


# -- DP-SGD on both engines ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "options", "nodes", "rounds", "mechanism", "batch_size"),
    [
        ("mlp", {"hidden": [16]}, 6, 3, {"sample_rate": 0.01}, 8),
        ("mlp", {"hidden": [16]}, 6, 3, {"sampling": "shuffle"}, 8),
        ("cnn", CNN, 4, 2, {"sample_rate": 0.005}, 4),
        ("cnn", CNN, 4, 2, {"sampling": "shuffle"}, 4),
    ],
    ids=["mlp-poisson", "mlp-shuffle", "cnn-poisson", "cnn-shuffle"],
)
def test_dp_sgd_gives_equal_params_on_both_engines(
    model, options, nodes, rounds, mechanism, batch_size
):
    """Poisson batches of varying size, some of them empty (tiny sample rates), and
    shuffled fixed-size batches; the MLP path and the vmap path (CNN)."""
    steps = 2
    training = LocalTraining(
        batch_size=batch_size, local_steps=steps, sgd=SGDConfig(lr=0.1, momentum=0.9)
    )
    engines, reports = [], []
    for kind in ("vectorized", "loop"):
        engine = make_engine(
            kind,
            DecentralizedSGD(),
            nodes=nodes,
            model=model,
            model_options=options,
            training=training,
            gradient=DPSGD(noise_multiplier=0.8, max_grad_norm=0.5, **mechanism),
            **RING,
        )
        engines.append(engine)
        reports.append([engine.run_round(t) for t in range(rounds)])
    vec, loop = engines
    dp = vec.gradient_mechanism
    if dp.sampling == "poisson":  # batch sizes vary, and some node's batch is empty
        sizes = torch.stack(
            [
                dp.batch(t, s, vec.nodes).weights.sum(dim=1)
                for t in range(rounds)
                for s in range(steps)
            ]
        )
        assert sizes.unique().numel() > 2 and bool((sizes == 0).any())
    assert (vec.params - vec.initial_state).abs().max() > 1e-3
    assert bool(torch.isfinite(vec.params).all())
    assert (vec.params - loop.params).abs().max() < TOLERANCE
    for a, b in zip(*reports):
        torch.testing.assert_close(a.batch_loss, b.batch_loss, rtol=0, atol=1e-5)
        assert torch.equal(a.bytes_sent, b.bytes_sent)
        assert len(a.emitted.node_events) == len(b.emitted.node_events) > 0


# -- the round contract: several exchanges, virtual receivers ------------------------------


class Tee:
    """Feeds messages to an observer and keeps each exchange's wire facts."""

    def __init__(self, observer: Observer, n: int):
        self.observer, self.n, self.sent = observer, n, []

    def record(self, round: int, exchange: int, messages) -> None:
        self.sent.append(
            {
                "round": round,
                "exchange": exchange,
                "bytes": messages.bytes_by_sender(self.n),
                "metadata": messages.bytes_per_message()["metadata"],
                "src": messages.src.clone(),
                "dst": messages.dst.clone(),
                "label": None
                if messages.receiver_label is None
                else messages.receiver_label.clone(),
            }
        )
        self.observer.record(round, exchange, messages)


def test_two_exchanges_per_round_on_both_engines():
    rounds, n = 3, 8
    tees = {}

    def observe(kind, dim):
        tees[kind] = Tee(Observer(threat_model_from(curious_nodes=[0, 5]), n, dim), n)
        return tees[kind]

    (vec, vec_reports), (loop, loop_reports) = both_engines(
        lambda: RepeatedGossip(steps=2), rounds, observe=observe, nodes=n
    )
    assert vec.protocol.exchanges == 2
    assert (vec.params - loop.params).abs().max() < TOLERANCE
    assert (vec.params - vec.initial_state).abs().max() > 1e-3
    for kind, reports in (("vectorized", vec_reports), ("loop", loop_reports)):
        sent = tees[kind].sent
        assert [(s["round"], s["exchange"]) for s in sent] == [
            (t, x) for t in range(rounds) for x in (0, 1)
        ]
        for report in reports:
            mine = [s for s in sent if s["round"] == report.round]
            for part in ("payload", "indices", "metadata"):  # a round's bytes: both exchanges
                assert torch.equal(report.bytes_by_kind[part], sum(s["bytes"][part] for s in mine))
            plan = vec.topology.plan(report.round)
            header = torch.zeros(n, dtype=torch.int64).index_add_(0, plan.src, 4 + plan.src % 3)
            assert torch.equal(report.bytes_by_kind["metadata"], 2 * header)  # per message
            for s in mine:
                assert torch.equal(s["metadata"], 4 + s["src"] % 3)
            payload = 2 * plan.out_degree() * vec.spec.dim * 4
            assert torch.equal(report.bytes_by_kind["payload"], payload)
            assert "toy_norm" in report.metrics()
            assert report.emitted.node_events == [(GaussianEvent(4.0), None)]
        log = tees[kind].observer.log
        assert [(o.round, o.exchange) for o in log.observations] == [
            (t, x) for t in range(rounds) for x in (0, 1)
        ]
        for first, second in zip(log.observations[::2], log.observations[1::2]):
            assert torch.equal(first.true_sender, second.true_sender)
            assert not torch.equal(first.payload, second.payload)  # averaged in between
    assert torch.equal(vec_reports[-1].bytes_sent, loop_reports[-1].bytes_sent)
    ledger = PrivacyLedger(n)
    for report in vec_reports:
        ledger.record(report.emitted)
    assert bool((ledger.epsilon() > 0).all())


def test_virtual_receivers_are_kept_and_engines_agree():
    rounds, n, copies = 3, 8, 2
    everyone = threat_model_from(curious_nodes=range(n))
    tees = {}

    def observe(kind, dim):
        tees[kind] = Tee(Observer(everyone, n, dim), n)
        return tees[kind]

    (vec, vec_reports), (loop, loop_reports) = both_engines(
        lambda: VirtualPushes(copies=copies, pushes=3), rounds, observe=observe, nodes=n
    )
    assert (vec.params - loop.params).abs().max() < TOLERANCE
    for a, b in zip(vec_reports, loop_reports):
        assert torch.equal(a.bytes_sent, b.bytes_sent)
    twice = 0
    for o, s in zip(tees["vectorized"].observer.log.observations, tees["vectorized"].sent):
        assert o.virtual_receiver is not None
        assert torch.equal(o.virtual_receiver, s["label"]) and torch.equal(o.receiver, s["dst"])
        assert torch.equal(o.virtual_receiver // copies, o.receiver)
        assert torch.equal(o.true_sender, s["src"])
        for node in range(n):  # a real node receiving on two of its virtual nodes
            labels = o.virtual_receiver[o.receiver == node]
            twice += int(labels.unique().numel() == 2)
    assert twice > 0
    loop_log = tees["loop"].observer.log
    for a, b in zip(tees["vectorized"].observer.log.observations, loop_log.observations):
        assert torch.equal(a.virtual_receiver, b.virtual_receiver)
        torch.testing.assert_close(a.payload, b.payload, rtol=0, atol=TOLERANCE)


# -- Opacus: the same noisy step -----------------------------------------------------------


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
@pytest.mark.parametrize(
    ("model", "options"), [("mlp", {"hidden": [16]}), ("cnn", CNN)], ids=["mlp", "cnn-vmap"]
)
def test_noisy_clipped_gradient_equals_opacus(model, options, monkeypatch):
    """Node 2's DP-SGD gradient at (round 1, step 1): privlab's clipped sum through
    ``DPSGD.privatize`` against Opacus's ``GradSampleModule`` + ``DPOptimizer`` given the
    same batch and privlab's noise draw; then the same SGD step on both."""
    sigma, clip, rate, lr = 1.3, 0.5, 0.07, 0.1
    node, round, step = 2, 1, 1
    mechanism = DPSGD(noise_multiplier=sigma, max_grad_norm=clip, sample_rate=rate)
    engine = make_engine(
        "vectorized",
        DecentralizedSGD(),
        nodes=6,
        model=model,
        model_options=options,
        training=LocalTraining(batch_size=8, local_steps=2, sgd=SGDConfig(lr=lr)),
        gradient=mechanism,
        **RING,
    )
    engine.run_round(0)  # nodes' models differ
    before = engine.params.clone()
    batch = engine._batch(round, step)
    x, y = engine.X[batch.indices], engine.y[batch.indices]
    sums, _ = engine._gradient.clipped_sum(before, x, y, batch.weights, clip)
    unclipped, _ = engine._gradient(before, x, y, batch.weights)
    assert not torch.allclose(sums[node], unclipped[node], atol=1e-3)  # some samples clipped
    expected_batch = float(mechanism.expected_batch[node])
    assert expected_batch != round_(expected_batch)  # q * m is not an integer here
    ours = mechanism.privatize(sums[node : node + 1].clone(), round, step, torch.tensor([node]))[0]

    # Opacus on a copy of the model, with node 2's parameters and its real samples
    net = copy.deepcopy(engine.model)
    engine.spec.load(net, before[node])
    params = list(net.parameters())
    real = batch.weights[node] > 0
    assert int(real.sum()) > 1
    z = engine.context.streams.normal("dp-sgd", round, step, [node], engine.spec.dim)[0]
    slices = iter(z.split([p.numel() for p in params]))

    def privlab_noise(std, reference, generator=None, secure_mode=False):
        assert std == sigma * clip
        return std * next(slices).view_as(reference)

    monkeypatch.setattr(opacus_optimizer, "_generate_noise", privlab_noise)
    module = GradSampleModule(net)
    optimizer = DPOptimizer(
        torch.optim.SGD(params, lr=lr),
        noise_multiplier=sigma,
        max_grad_norm=clip,
        expected_batch_size=expected_batch,
    )
    optimizer.zero_grad()
    F.cross_entropy(module(x[node][real]), y[node][real]).backward()
    optimizer.step()
    module._close()
    assert next(slices, None) is None  # Opacus drew the whole noise vector
    theirs = torch.cat([p.grad.reshape(-1) for p in params])
    noiseless = sums[node] / expected_batch
    assert (ours - noiseless).abs().max() > 0.05  # the noise is there
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)

    # the engine's own step for node 2 equals Opacus's step
    engine._local_step(batch, round, step)
    opacus_params = torch.cat([p.detach().reshape(-1) for p in params])
    torch.testing.assert_close(engine.params[node], opacus_params, rtol=0, atol=1e-6)
    torch.testing.assert_close(engine.params[node], before[node] - lr * ours, rtol=0, atol=1e-7)


def round_(value: float) -> float:
    return float(round(value))


# -- epsilon: the same as Opacus's RDP accountant -----------------------------------------

BASE = {
    "nodes": 16,
    "rounds": 3,
    "eval_every": 1,
    "model": {"name": "mlp", "hidden": [16]},
    "training": {"batch_size": 8, "local_steps": 2},
}
DP = {"name": "dp-sgd", "noise_multiplier": 1.1, "max_grad_norm": 1.0}


@functools.cache
def opacus_epsilon(sigma: float, rate: float, steps: int, delta: float) -> float:
    accountant = RDPAccountant()
    accountant.history = [(sigma, rate, steps)]
    return accountant.get_epsilon(delta)


def epsilon_rows(results) -> dict[int, list[float]]:
    """Per round, the ``epsilon`` of every node in ``metrics`` (node order)."""
    rows = results.metrics[results.metrics.metric == "epsilon"].sort_values(["round", "node"])
    return {int(t): group["value"].tolist() for t, group in rows.groupby("round")}


@pytest.fixture(scope="module")
def rdp_run():
    return run(parse_config(BASE | {"gradient": DP}), progress=False)


def test_epsilon_equals_opacus_rdp_for_every_node_and_round(rdp_run):
    summary = rdp_run.summary
    sizes = [sum(h) for h in summary["data"]["node_label_histogram"]]
    assert len(set(sizes)) == 2  # iid on 16 nodes: sizes 67 and 68, so two sample rates
    batch_size, steps = BASE["training"]["batch_size"], BASE["training"]["local_steps"]
    delta = summary["privacy"]["delta"]
    rows = epsilon_rows(rdp_run)
    assert sorted(rows) == [1, 2, 3]
    for t, epsilons in rows.items():
        assert len(epsilons) == 16
        for size, epsilon in zip(sizes, epsilons):
            expected = opacus_epsilon(DP["noise_multiplier"], batch_size / size, t * steps, delta)
            assert math.isclose(epsilon, expected, rel_tol=1e-3), (t, size, epsilon, expected)
    assert rows[1] < rows[2] < rows[3]
    assert summary["privacy"]["epsilon"]["per_node"] == pytest.approx(rows[3], rel=1e-12)
    smaller, larger = sizes.index(min(sizes)), sizes.index(max(sizes))
    assert rows[3][smaller] > rows[3][larger]  # a higher sample rate costs more


def test_explicit_sample_rate_gives_opacus_epsilon():
    results = run(
        parse_config(BASE | {"rounds": 2, "gradient": DP | {"sample_rate": 0.05}}),
        progress=False,
    )
    expected = opacus_epsilon(DP["noise_multiplier"], 0.05, 2 * 2, 1e-5)
    for epsilon in epsilon_rows(results)[2]:
        assert math.isclose(epsilon, expected, rel_tol=1e-3)
    assert results.summary["gradient"]["sample_rate"] == 0.05


def test_pld_epsilon_is_at_most_the_rdp_one(rdp_run):
    pld = run(
        parse_config(BASE | {"gradient": DP, "privacy": {"accountant": "pld"}}), progress=False
    )
    assert pld.summary["privacy"]["accountant"] == "pld"
    for pld_eps, rdp_eps in zip(epsilon_rows(pld)[3], epsilon_rows(rdp_run)[3]):
        assert 0 < pld_eps <= rdp_eps


def test_no_gradient_mechanism_means_no_privacy_claim():
    results = run(parse_config(BASE | {"rounds": 1}), progress=False)
    assert "privacy" not in results.summary and results.summary["gradient"] is None
    assert not (results.metrics.metric == "epsilon").any()


def test_shuffled_batches_carry_the_poisson_note(rdp_run):
    results = run(parse_config(BASE | {"gradient": DP | {"sampling": "shuffle"}}), progress=False)
    gradient = results.summary["gradient"]
    assert gradient["sampling"] == "shuffle" and gradient["epsilon_note"] == SHUFFLE_NOTE
    assert "Poisson" in gradient["epsilon_note"]
    assert "epsilon_note" not in rdp_run.summary["gradient"]
    assert epsilon_rows(results) == epsilon_rows(rdp_run)  # accounted at the same rates


# -- the noise scale -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "expected_batch"),
    [
        ({}, [5.0, 10.0, 10.0]),  # q = batch_size / m: q m = batch size (all of a small node)
        ({"sample_rate": 0.1}, [0.5, 4.0, 20.0]),
        ({"sampling": "shuffle"}, [5.0, 10.0, 10.0]),
    ],
    ids=["poisson", "sample-rate", "shuffle"],
)
def test_noise_on_zero_gradients_has_std_sigma_c_over_expected_batch(options, expected_batch):
    sizes = torch.tensor([5, 40, 200])
    n, dim = len(sizes), 40_000
    indices = torch.arange(200).repeat(n, 1)
    context = RoundContext(
        num_nodes=n,
        dim=dim,
        topology=build_topology("ring", n, seed=0),
        training=LocalTraining(batch_size=10),
        node_indices=torch.where(indices < sizes.unsqueeze(1), indices, -1),
        node_sizes=sizes,
        streams=NodeStreams(11),
    )
    sigma, clip = 2.0, 0.7
    mechanism = DPSGD(noise_multiplier=sigma, max_grad_norm=clip, **options)
    mechanism.setup(context)
    assert mechanism.expected_batch.tolist() == pytest.approx(expected_batch)
    noisy = mechanism.privatize(torch.zeros(n, dim), 3, 1, torch.arange(n))
    expected_std = sigma * clip / torch.tensor(expected_batch)
    std = noisy.std(dim=1)
    assert torch.allclose(std, expected_std, rtol=0.05)
    assert bool((noisy.mean(dim=1).abs() < 5 * expected_std / dim**0.5).all())
    again = mechanism.privatize(torch.zeros(n, dim), 3, 2, torch.arange(n))
    correlation = torch.corrcoef(torch.stack([noisy[1], again[1], noisy[2]]))
    assert correlation.fill_diagonal_(0).abs().max() < 0.05  # fresh noise per step and node
