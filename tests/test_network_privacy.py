"""Runs of protocols with a linear Gaussian view report each party's network privacy."""

from __future__ import annotations

import math

import pytest

from privlab.accounting.network import gdp_epsilon, pairwise_network_mu
from privlab.config import parse_config
from privlab.experiment import build, run


def config(protocol: dict, observer: dict | None, topology: dict | None = None) -> dict:
    return {
        "nodes": 8,
        "rounds": 3,
        "eval_every": 3,
        "model": {"name": "mlp", "hidden": [8]},
        "topology": topology or {"name": "regular", "degree": 3},
        "protocol": protocol,
        "training": {"local_steps": 1},
        "observer": observer,
    }


@pytest.mark.parametrize(
    ("protocol", "mechanism", "steps"),
    [
        ({"name": "zipdl", "noise_multiplier": 2.0}, "zipdl", 1),
        ({"name": "muffliato", "noise_multiplier": 2.0, "gossip_steps": 2}, "muffliato", 2),
    ],
)
def test_each_party_gets_its_exact_epsilon_over_rounds(protocol, mechanism, steps):
    raw = config(protocol, {"curious_nodes": [0, 5]})
    results = run(parse_config(raw), progress=False)
    network = results.summary["network_privacy"]
    assert network["rounds"] == 3 and set(network["parties"]) == {"node:0", "node:5"}
    topology = build(parse_config(raw)).topology
    W = topology.plan(1).mixing_matrix("dense").double().numpy()
    per_round = pairwise_network_mu(mechanism, W, [0], steps, 2.0)
    expected = {u: gdp_epsilon(math.sqrt(3) * e["mu"], 1e-5) for u, e in per_round.items()}
    party = network["parties"]["node:0"]
    assert party["epsilon"]["max"] == pytest.approx(max(expected.values()), rel=1e-9)
    assert party["worst_source"] == max(expected, key=expected.get)
    assert 0 < party["epsilon"]["max"] < math.inf


def test_a_coalition_is_one_party_and_learns_at_least_as_much():
    alone = run(parse_config(config({"name": "zipdl"}, {"curious_nodes": [0]})), progress=False)
    both = run(
        parse_config(config({"name": "zipdl"}, {"curious_nodes": [0, 1], "colluding": True})),
        progress=False,
    )
    (coalition,) = both.summary["network_privacy"]["parties"].values()
    single = alone.summary["network_privacy"]["parties"]["node:0"]
    assert coalition["epsilon"]["max"] >= single["epsilon"]["max"] - 1e-9


def test_no_view_no_network_privacy():
    for raw in (
        config({"name": "zipdl"}, None),  # nobody observes
        config({"name": "d-psgd"}, {"curious_nodes": [0]}),  # no linear Gaussian view
        config({"name": "muffliato", "chebyshev": True}, {"curious_nodes": [0]}),
    ):
        assert "network_privacy" not in run(parse_config(raw), progress=False).summary
