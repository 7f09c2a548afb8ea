"""Zip-DL (Biswas et al., PoPETs 2025, Algorithm 1): the paper's lemmas on regular and
irregular graphs, D-PSGD at zero noise, and equal results on both engines."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import make_engine, set_up
from test_engine import TOLERANCE

import privlab.mechanisms.zipdl  # noqa: F401  (registers "zipdl")
from privlab.errors import PrivlabError
from privlab.mechanisms.gossip import DecentralizedSGD
from privlab.mechanisms.zipdl import ZipDL
from privlab.protocol import PROTOCOLS
from privlab.topology import build_topology
from privlab.training import LocalTraining, SGDConfig

NODES = 16
TOPOLOGIES = {
    "ring": ("ring", {}),
    "regular-6": ("regular", {"degree": 6}),
    "erdos-renyi": ("erdos_renyi", {"p": 0.3}),
}


def topology(key: str):
    name, options = TOPOLOGIES[key]
    return build_topology(name, NODES, seed=3, **options)


def zipdl_on(key: str, dim: int, noise_multiplier: float = 1.0, seed: int = 0) -> ZipDL:
    return set_up(ZipDL(noise_multiplier), topology(key), dim=dim, seed=seed)


def weighted_noise_per_sender(plan, edge_noise, self_noise):
    """``sum over v in Gamma_u of W[v, u] Z_{u->v}`` for every sender ``u`` ``[n, D]``."""
    total = (plan.self_weight.unsqueeze(1) * self_noise).double()
    return total.index_add_(0, plan.src, (plan.weight.unsqueeze(1) * edge_noise).double())


def test_erdos_renyi_graph_is_irregular_with_non_uniform_weights():
    plan = topology("erdos-renyi").plan(0)
    assert plan.out_degree().min() < plan.out_degree().max()
    node = int(plan.out_degree().argmin())  # its neighbours have higher degrees
    weights = torch.cat([plan.weight[plan.src == node], plan.self_weight[node : node + 1]])
    assert weights.min() < weights.max()  # the authors' unweighted zero-sum would not cancel


def test_registered_and_described():
    assert PROTOCOLS["zipdl"] is ZipDL
    assert ZipDL(0.5).describe() == {"name": "zipdl", "noise_multiplier": 0.5}


@pytest.mark.parametrize("value", [-0.1, math.inf, math.nan, True, "1"])
def test_bad_noise_multiplier_refused(value):
    with pytest.raises(PrivlabError, match="noise_multiplier must be >= 0 and finite"):
        ZipDL(value)


@pytest.mark.parametrize("key", TOPOLOGIES)
def test_lemma_3_1_weighted_noise_sums_to_zero_per_sender(key):
    protocol = zipdl_on(key, dim=64, noise_multiplier=10.0)
    plan = protocol.context.topology.plan(0)
    edge, own = protocol.noise(plan, round=2, exchange=0, dim=64)
    assert edge.abs().max() > 0.1  # there is noise
    assert weighted_noise_per_sender(plan, edge, own).abs().max() < 1e-6
    for node in range(NODES):  # the per-node reference draws the same noises
        node_edge, node_own = protocol.node_noise(node, plan, 2, 0, 64)
        assert torch.allclose(node_edge, edge[plan.src == node], atol=1e-6)
        assert torch.allclose(node_own, own[node], atol=1e-6)


@pytest.mark.parametrize("key", TOPOLOGIES)
def test_corollary_3_2_averaging_keeps_the_network_mean(key):
    dim = 32
    params = torch.randn(NODES, dim, generator=torch.Generator().manual_seed(1))
    results = []
    for noise in (0.0, 10.0):
        protocol = zipdl_on(key, dim, noise)
        plan = protocol.context.topology.plan(0)
        messages = protocol.send(params, plan, 0, 0)
        results.append(protocol.receive(params, messages, plan, 0, 0))
    clean, noisy = results
    assert (noisy - clean).abs().max() > 0.1  # the noise did not cancel per node
    assert torch.allclose(noisy.mean(dim=0), clean.mean(dim=0), atol=1e-5)
    assert torch.allclose(clean.mean(dim=0), params.mean(dim=0), atol=1e-5)


def lemma_3_3_variance(weights: list[float], v: int, scale: float) -> float:
    """sigma^2_{u->v} of Lemma 3.3 for a sender whose closed neighbourhood has the
    receiver weights ``weights`` (``v`` indexes the receiver)."""
    d = len(weights)
    others = sum(w * w for j, w in enumerate(weights) if j != v)
    return ((d - 1) ** 2 / d**2 + others / (d * weights[v]) ** 2) * scale**2


@pytest.mark.parametrize("key", TOPOLOGIES)
def test_lemma_3_3_per_message_variance(key):
    dim, rounds = 20_000, 2
    protocol = zipdl_on(key, dim, noise_multiplier=2.0)
    protocol.context.clip_norm = 0.5  # varsigma = noise_multiplier * clip norm
    scale = protocol.context.lr * 2.0 * 0.5
    assert protocol.noise_std() == pytest.approx(scale)
    plan = protocol.context.topology.plan(0)
    draws = [protocol.noise(plan, r, 0, dim) for r in range(rounds)]
    edge_var = torch.cat([e for e, _ in draws], dim=1).double().var(dim=1)
    self_var = torch.cat([s for _, s in draws], dim=1).double().var(dim=1)
    regular = key != "erdos-renyi"
    for node in range(NODES):
        out = (plan.src == node).nonzero().flatten().tolist()
        weights = [float(plan.weight[e]) for e in out] + [float(plan.self_weight[node])]
        measured = [float(edge_var[e]) for e in out] + [float(self_var[node])]
        for v, found in enumerate(measured):
            expected = lemma_3_3_variance(weights, v, scale)
            assert found == pytest.approx(expected, rel=0.03), (node, v)
            if regular:  # Remark 3.4: (d - 1) / d of the draws' variance
                d = len(weights)
                assert expected == pytest.approx((d - 1) / d * scale**2, rel=1e-5)


TRAINING = LocalTraining(batch_size=8, local_steps=2, sgd=SGDConfig(lr=0.1, momentum=0.9))


def run(kind, protocol, rounds=2, **kwargs):
    engine = make_engine(kind, copy.deepcopy(protocol), nodes=10, training=TRAINING, **kwargs)
    for t in range(rounds):
        engine.run_round(t)
    return engine.params


@pytest.mark.parametrize("kind", ["vectorized", "loop"])
def test_zero_noise_is_d_psgd(kind):
    options = {"topology": "erdos_renyi", "topology_options": {"p": 0.4}}
    zipdl = run(kind, ZipDL(0.0), **options)
    dpsgd = run(kind, DecentralizedSGD(), **options)
    assert (zipdl - dpsgd).abs().max() < 1e-6


@pytest.mark.parametrize(
    ("name", "options"),
    [("regular", {"degree": 6}), ("erdos_renyi", {"p": 0.4})],
    ids=["regular-6", "erdos-renyi"],
)
def test_both_engines_agree_with_noise(name, options):
    protocol = ZipDL(1.0)
    vec = run("vectorized", protocol, topology=name, topology_options=options)
    loop = run("loop", protocol, topology=name, topology_options=options)
    clean = run("vectorized", ZipDL(0.0), topology=name, topology_options=options)
    assert (vec - clean).abs().max() > 1e-3  # the noise changed the models
    assert (vec - loop).abs().max() < TOLERANCE


def test_the_authors_unweighted_zero_sum_fails_lemma_3_1_on_irregular_graphs():
    """Subtracting the plain mean of the draws (``ZeroSumSharing``) cancels on a regular
    graph only; the weighted correction cancels on both."""
    for key, cancels in (("regular-6", True), ("erdos-renyi", False)):
        protocol = zipdl_on(key, dim=32, noise_multiplier=10.0)
        plan = protocol.context.topology.plan(0)
        owners = torch.cat([plan.src, torch.arange(NODES)])
        draws = protocol.context.streams.normal("zipdl", 0, 0, owners, 32)
        edge, own = draws[: plan.num_edges], draws[plan.num_edges :]
        mean = own.clone().index_add_(0, plan.src, edge) / (plan.out_degree() + 1).unsqueeze(1)
        total = weighted_noise_per_sender(plan, edge - mean[plan.src], own - mean)
        assert (total.abs().max() < 1e-5) == cancels, key
