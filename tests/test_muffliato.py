"""Muffliato (Cyffers, Even, Bellet, Massoulie, NeurIPS 2022): local noise once per round,
then K gossip exchanges, plain or Chebyshev-accelerated.

Checked: noise 0 and K = 1 is D-PSGD on both engines; K exchanges are observed and cost
K D-PSGD exchanges; the network mean moves by exactly the mean of the nodes' own noise
draws (sigma scaled by the clipping bound when one is set); both engines agree with
noise, with and without Chebyshev; Chebyshev reaches consensus faster than plain gossip on
a ring; bad options and dynamic topologies are refused naming the field.
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_engine, set_up

import privlab.mechanisms.gossip  # noqa: F401  (registers d-psgd)
import privlab.mechanisms.muffliato  # noqa: F401  (registers muffliato)
from privlab.errors import PrivlabError
from privlab.mechanisms.muffliato import Muffliato, chebyshev_gamma
from privlab.observe import Observer, threat_model_from
from privlab.protocol import PROTOCOLS
from privlab.rng import NodeStreams
from privlab.topology import build_topology

TOLERANCE = 1e-5
RING = {"topology": "ring", "topology_options": {}}


def run_engines(factory, rounds: int, **kwargs):
    """``rounds`` rounds of ``factory()`` on each engine: ``{kind: (engine, reports)}``."""
    out = {}
    for kind in ("vectorized", "loop"):
        engine = make_engine(kind, factory(), **kwargs)
        out[kind] = (engine, [engine.run_round(t) for t in range(rounds)])
    return out


def gossip(protocol: Muffliato, x: torch.Tensor, round: int = 0, per_node: bool = False):
    """One round of ``protocol``'s exchanges on states ``x[n, D]`` (no training), through
    ``receive`` or, with ``per_node``, ``receive_node`` node by node."""
    plan = protocol.plan(round)
    for exchange in range(protocol.exchanges):
        messages = protocol.send(x, plan, round, exchange)
        if per_node:
            rows = [
                protocol.receive_node(v, x[v], messages.inbox(v), plan, round, exchange)
                for v in range(len(x))
            ]
            x = torch.stack(rows)
        else:
            x = protocol.receive(x, messages, plan, round, exchange)
    return x


def consensus_distance(x: torch.Tensor) -> float:
    return float((x - x.mean(dim=0)).pow(2).sum())


def test_no_noise_one_step_is_d_psgd_on_both_engines():
    runs = {
        name: run_engines(factory, 2, nodes=8)
        for name, factory in {
            "muffliato": lambda: Muffliato(noise_multiplier=0.0, gossip_steps=1),
            "d-psgd": PROTOCOLS["d-psgd"],
        }.items()
    }
    reference = runs["d-psgd"]["vectorized"][0].params
    for kind in ("vectorized", "loop"):
        params = runs["muffliato"][kind][0].params
        assert (params - reference).abs().max() < 1e-6
        for a, b in zip(runs["muffliato"][kind][1], runs["d-psgd"][kind][1]):
            assert torch.equal(a.bytes_sent, b.bytes_sent)


def test_k_exchanges_are_observed_and_cost_k_d_psgd_exchanges():
    rounds, n, k = 2, 8, 3
    for kind in ("vectorized", "loop"):
        engine = make_engine(kind, Muffliato(noise_multiplier=0.5, gossip_steps=k), nodes=n)
        engine.observer = Observer(threat_model_from(curious_nodes=[0, 5]), n, engine.spec.dim)
        reports = [engine.run_round(t) for t in range(rounds)]
        single = make_engine(kind, PROTOCOLS["d-psgd"](), nodes=n).run_round(0)
        assert engine.protocol.exchanges == k
        observations = engine.observer.log.observations
        assert [(o.round, o.exchange) for o in observations] == [
            (t, x) for t in range(rounds) for x in range(k)
        ]
        for report in reports:
            for part, size in report.bytes_by_kind.items():
                assert torch.equal(size, k * single.bytes_by_kind[part])
        for first, second in zip(observations[::k], observations[1::k]):
            assert not torch.equal(first.payload, second.payload)  # averaged in between


@pytest.mark.parametrize("chebyshev", [False, True])
@pytest.mark.parametrize("clip_norm", [None, 2.0])
def test_mean_moves_by_the_mean_noise(chebyshev, clip_norm):
    n, dim, seed, noise_multiplier = 16, 5, 3, 0.7
    protocol = Muffliato(noise_multiplier, gossip_steps=40, chebyshev=chebyshev)
    set_up(protocol, build_topology("complete", n, seed=0), dim, seed=seed)
    protocol.context.clip_norm = clip_norm
    x = torch.randn(n, dim, generator=torch.Generator().manual_seed(1))
    sigma = noise_multiplier * (1.0 if clip_norm is None else clip_norm)
    noise = sigma * NodeStreams(seed).normal("muffliato", 2, 0, range(n), dim)
    y = gossip(protocol, x, round=2)
    torch.testing.assert_close(
        y.mean(dim=0) - x.mean(dim=0), noise.mean(dim=0), atol=TOLERANCE, rtol=0
    )
    # K large on the complete graph: every node holds the noisy network mean
    torch.testing.assert_close(y, (x + noise).mean(dim=0).expand(n, dim), atol=TOLERANCE, rtol=0)


def test_noise_is_drawn_once_per_round_from_each_nodes_stream():
    n, dim = 6, 4
    protocol = set_up(Muffliato(1.0, gossip_steps=2), build_topology("ring", n), dim, seed=5)
    plan = protocol.plan(0)
    x = torch.zeros(n, dim)
    first = protocol.send(x, plan, 0, 0).rows
    torch.testing.assert_close(first, NodeStreams(5).normal("muffliato", 0, 0, range(n), dim))
    assert torch.equal(protocol.send(x, plan, 0, 1).rows, x)  # no fresh noise at exchange 1


@pytest.mark.parametrize("chebyshev", [False, True])
def test_engines_agree_with_noise(chebyshev):
    runs = run_engines(
        lambda: Muffliato(0.1, gossip_steps=3, chebyshev=chebyshev), 2, nodes=8, **RING
    )
    (vec, vec_reports), (loop, loop_reports) = runs["vectorized"], runs["loop"]
    assert (vec.params - loop.params).abs().max() < TOLERANCE
    assert (vec.params - vec.initial_state).abs().max() > 1e-3
    for a, b in zip(vec_reports, loop_reports):
        assert torch.equal(a.bytes_sent, b.bytes_sent)


@pytest.mark.parametrize("chebyshev", [False, True])
def test_receive_and_receive_node_agree(chebyshev):
    n, dim = 16, 3
    x = torch.randn(n, dim, generator=torch.Generator().manual_seed(0))
    out = []
    for per_node in (False, True):
        protocol = Muffliato(0.3, gossip_steps=5, chebyshev=chebyshev)
        set_up(protocol, build_topology("ring", n), dim, seed=1)
        out.append(gossip(protocol, x, round=1, per_node=per_node))
    torch.testing.assert_close(out[0], out[1], atol=TOLERANCE, rtol=0)


def test_chebyshev_reaches_consensus_faster_on_a_ring():
    n, dim, k = 16, 4, 10
    x = torch.randn(n, dim, generator=torch.Generator().manual_seed(0))
    distance = {}
    for chebyshev in (False, True):
        protocol = Muffliato(0.0, gossip_steps=k, chebyshev=chebyshev)
        set_up(protocol, build_topology("ring", n), dim)
        y = gossip(protocol, x)
        torch.testing.assert_close(y.mean(dim=0), x.mean(dim=0), atol=TOLERANCE, rtol=0)
        distance[chebyshev] = consensus_distance(y)
    assert 1.0 < protocol.gamma < 2.0
    assert distance[True] < 0.5 * distance[False]
    assert distance[False] < consensus_distance(x)


def test_chebyshev_gamma_matches_the_heavy_ball_optimum():
    for gap in (0.01, 0.2, 0.9):
        c = 1 - gap / 2
        assert chebyshev_gamma(gap) == pytest.approx(2 / (1 + (1 - c * c) ** 0.5))


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"noise_multiplier": -1.0}, "noise_multiplier"),
        ({"noise_multiplier": float("nan")}, "noise_multiplier"),
        ({"noise_multiplier": float("inf")}, "noise_multiplier"),
        ({"noise_multiplier": "1"}, "noise_multiplier"),
        ({"noise_multiplier": True}, "noise_multiplier"),
        ({"gossip_steps": 0}, "gossip_steps"),
        ({"gossip_steps": 1.5}, "gossip_steps"),
        ({"gossip_steps": True}, "gossip_steps"),
        ({"chebyshev": 1}, "chebyshev"),
        ({"chebyshev": "yes"}, "chebyshev"),
    ],
)
def test_bad_options_are_refused(options, field):
    with pytest.raises(PrivlabError, match=field):
        Muffliato(**options)


def test_chebyshev_refuses_dynamic_topologies():
    topology = build_topology("el-oracle", 8, seed=0, fanout=3)
    with pytest.raises(PrivlabError, match="chebyshev.*dynamic"):
        set_up(Muffliato(chebyshev=True), topology, dim=4)
    set_up(Muffliato(), topology, dim=4)  # plain gossip runs on any plan


def test_describe_lists_every_option():
    assert Muffliato(0.5, 4, True).describe() == {
        "name": "muffliato",
        "noise_multiplier": 0.5,
        "gossip_steps": 4,
        "chebyshev": True,
    }
