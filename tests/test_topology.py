"""Tests for privlab.topology: graphs, mixing weights and Epidemic Learning plans."""

from __future__ import annotations

import json

import networkx as nx
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from privlab.errors import PrivlabError, UnknownNameError
from privlab.topology import (
    CommPlan,
    EpidemicLocal,
    EpidemicOracle,
    StaticTopology,
    available_topologies,
    build_topology,
    from_networkx,
    metropolis_hastings_weights,
    uniform_weights,
)


def dense(plan: CommPlan) -> torch.Tensor:
    return plan.mixing_matrix("dense", dtype=torch.float64)


def assert_well_formed(plan: CommPlan) -> None:
    """Sorted unique edges, no self edges, csr == dense, rows summing to one."""
    n = plan.num_nodes
    key = (plan.dst * n + plan.src).tolist()
    assert key == sorted(key) and len(set(key)) == len(key)
    assert not bool((plan.src == plan.dst).any())
    w = dense(plan)
    csr = plan.mixing_matrix("csr", dtype=torch.float64)
    assert csr.layout == torch.sparse_csr and csr._nnz() == plan.num_edges + n
    assert torch.equal(csr.to_dense(), w)
    torch.testing.assert_close(w.sum(1), torch.ones(n, dtype=torch.float64), atol=1e-6, rtol=0)
    assert bool((w >= 0).all())


def consensus_ratio(plan: CommPlan, seed: int) -> float:
    x = torch.randn(plan.num_nodes, 50, generator=torch.Generator().manual_seed(seed))

    def distance(v: torch.Tensor) -> float:
        return ((v - v.mean(0)) ** 2).sum(1).mean().item()

    return distance(plan.mixing_matrix() @ x) / distance(x)


@pytest.mark.parametrize("name", available_topologies())
@pytest.mark.parametrize("weights", ["metropolis", "uniform"])
def test_every_topology_is_row_stochastic_and_sorted(name: str, weights: str) -> None:
    topology = build_topology(name, 16, seed=3, weights=weights)
    for t in (0, 1, 7):
        plan = topology.plan(t)
        assert plan.num_nodes == 16
        assert_well_formed(plan)
    assert (topology.plan(0) is topology.plan(0)) and (topology.dynamic == name.startswith("el"))


def test_registry_names() -> None:
    assert available_topologies() == [
        "complete",
        "el-local",
        "el-oracle",
        "erdos_renyi",
        "regular",
        "ring",
        "small_world",
        "torus",
    ]


def test_ring_degrees_and_weights() -> None:
    plan = build_topology("ring", 8).plan(0)
    assert plan.in_degree().tolist() == [2] * 8 and plan.out_degree().tolist() == [2] * 8
    assert plan.neighbors_in(0) == [1, 7] and plan.neighbors_in(5) == [4, 6]
    torch.testing.assert_close(plan.weight, torch.full((16,), 1 / 3))  # DECOR's ring value
    torch.testing.assert_close(plan.self_weight, torch.full((8,), 1 / 3))
    two = build_topology("ring", 2).plan(0)
    assert two.num_edges == 2 and two.weight.tolist() == [0.5, 0.5]


@pytest.mark.parametrize(("n", "shape"), [(16, (4, 4)), (12, (3, 4)), (15, (3, 5)), (9, (3, 3))])
def test_torus_default_shape_is_most_square(n: int, shape: tuple[int, int]) -> None:
    topology = build_topology("torus", n)
    assert (topology.describe()["rows"], topology.describe()["cols"]) == shape
    plan = topology.plan(0)
    assert plan.in_degree().tolist() == [4] * n
    torch.testing.assert_close(plan.weight, torch.full((4 * n,), 1 / 5))


def test_torus_explicit_shape_and_node_order() -> None:
    topology = build_topology("torus", 15, rows=5)
    assert topology.describe()["cols"] == 3
    # (i, j) -> 3 i + j: node 0 = (0, 0) touches (0, 1), (0, 2), (1, 0), (4, 0).
    assert topology.plan(0).neighbors_in(0) == [1, 2, 3, 12]


def test_complete_and_regular_degrees() -> None:
    plan = build_topology("complete", 5).plan(0)
    assert plan.num_edges == 20 and plan.in_degree().tolist() == [4] * 5
    torch.testing.assert_close(dense(plan), torch.full((5, 5), 0.2, dtype=torch.float64))
    regular = build_topology("regular", 20, degree=5, seed=1)
    plan = regular.plan(0)
    assert plan.in_degree().tolist() == [5] * 20 and plan.out_degree().tolist() == [5] * 20
    assert nx.is_isomorphic(regular.graph, nx.random_regular_graph(5, 20, seed=1))
    assert build_topology("regular", 32).describe()["degree"] == 5  # floor(log2 32)


def test_metropolis_weights_on_a_star_are_symmetric_doubly_stochastic() -> None:
    plan = metropolis_hastings_weights(nx.star_graph(3))  # centre 0 of degree 3
    w = dense(plan)
    expected = torch.tensor(
        [
            [0.25, 0.25, 0.25, 0.25],
            [0.25, 0.75, 0.0, 0.0],
            [0.25, 0.0, 0.75, 0.0],
            [0.25, 0.0, 0.0, 0.75],
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(w, expected)
    karate = dense(metropolis_hastings_weights(nx.karate_club_graph()))
    torch.testing.assert_close(karate, karate.T)
    torch.testing.assert_close(karate.sum(0), torch.ones(34, dtype=torch.float64))


def test_uniform_weights_are_row_stochastic_not_symmetric() -> None:
    plan = uniform_weights(nx.star_graph(3))
    w = dense(plan)
    torch.testing.assert_close(w[0], torch.full((4,), 0.25, dtype=torch.float64))
    torch.testing.assert_close(w[1], torch.tensor([0.5, 0.5, 0, 0], dtype=torch.float64))
    assert not torch.equal(w, w.T)
    assert_well_formed(plan)


def test_from_networkx_relabels_sorted_and_drops_self_loops() -> None:
    graph = nx.Graph([("c", "a"), ("b", "c"), ("b", "b")])
    topology = from_networkx(graph, weights="uniform")
    plan = topology.plan(0)
    assert sorted(topology.graph.edges()) == [(0, 2), (1, 2)]  # a=0, b=1, c=2
    assert plan.src.tolist() == [2, 2, 0, 1] and plan.dst.tolist() == [0, 1, 2, 2]
    assert plan.self_weight.tolist() == pytest.approx([0.5, 0.5, 1 / 3])
    assert topology.describe() == {"name": "graph", "num_nodes": 3, "weights": "uniform"}
    with pytest.raises(nx.NetworkXError):
        topology.graph.add_edge(0, 1)  # frozen


def test_disconnected_graph_is_an_error() -> None:
    with pytest.raises(PrivlabError, match="topology is disconnected: .* 2 components"):
        from_networkx(nx.Graph([(0, 1), (2, 3)]))
    with pytest.raises(PrivlabError, match="topology is disconnected: .* components"):
        build_topology("regular", 10, degree=1)  # a perfect matching
    with pytest.raises(PrivlabError, match="topology is disconnected: .*increase p"):
        build_topology("erdos_renyi", 40, p=0.01)


def test_random_builders_retry_seeds_until_connected() -> None:
    # seed 1 gives a disconnected G(30, 0.12); the builder moves on to derived seeds.
    assert not nx.is_connected(nx.fast_gnp_random_graph(30, 0.12, seed=1))
    topology = build_topology("erdos_renyi", 30, p=0.12, seed=1)
    assert nx.is_connected(topology.graph)
    again = build_topology("erdos_renyi", 30, p=0.12, seed=1)
    assert torch.equal(topology.plan(0).src, again.plan(0).src)


def test_static_plan_is_cached_and_describe_round_trips() -> None:
    for name in available_topologies():
        topology = build_topology(name, 12, seed=5)
        description = topology.describe()
        json.dumps(description)
        rebuilt = build_topology(**description)
        for t in (0, 4):
            assert torch.equal(rebuilt.plan(t).src, topology.plan(t).src)
            assert torch.equal(rebuilt.plan(t).dst, topology.plan(t).dst)
            assert torch.equal(rebuilt.plan(t).weight, topology.plan(t).weight)
    ring = build_topology("ring", 6)
    assert isinstance(ring, StaticTopology) and ring.plan(0) is ring.plan(99)


def test_el_oracle_degrees_and_uniform_weights() -> None:
    topology = EpidemicOracle(20, 3, seed=4)
    for t in range(5):
        plan = topology.plan(t)
        assert plan.in_degree().tolist() == [3] * 20 and plan.out_degree().tolist() == [3] * 20
        assert plan.weight.tolist() == [0.25] * 60 and plan.self_weight.tolist() == [0.25] * 20
        w = dense(plan)
        torch.testing.assert_close(w, w.T)


def test_el_oracle_fresh_each_round_and_independent_of_call_order() -> None:
    forward, backward = EpidemicOracle(30, 4, seed=9), EpidemicOracle(30, 4, seed=9)
    plans = [forward.plan(t) for t in range(6)]
    late = {t: backward.plan(t) for t in (5, 2, 0, 5)}
    for t, plan in late.items():
        assert torch.equal(plan.src, plans[t].src) and torch.equal(plan.dst, plans[t].dst)
    keys = {tuple((p.dst * 30 + p.src).tolist()) for p in plans}
    assert len(keys) == 6
    other_seed = EpidemicOracle(30, 4, seed=10).plan(0)
    assert not torch.equal(other_seed.src, plans[0].src) or not torch.equal(
        other_seed.dst, plans[0].dst
    )


def test_el_local_push_structure_and_weights() -> None:
    n, s = 50, 1
    topology = EpidemicLocal(n, s, seed=2)
    for t in range(4):
        plan = topology.plan(t)
        assert plan.out_degree().tolist() == [s] * n
        assert not bool((plan.src == plan.dst).any())
        indeg = plan.in_degree().double()
        torch.testing.assert_close(plan.self_weight.double(), 1 / (indeg + 1), rtol=1e-6, atol=0)
        torch.testing.assert_close(
            plan.weight.double(), 1 / (indeg[plan.dst] + 1), rtol=1e-6, atol=0
        )
        lonely = indeg == 0
        assert bool(lonely.any()) and plan.self_weight[lonely].tolist() == [1.0] * int(lonely.sum())
        assert_well_formed(plan)
    assert not torch.equal(topology.plan(0).dst, topology.plan(1).dst)
    assert torch.equal(EpidemicLocal(n, s, seed=2).plan(3).dst, topology.plan(3).dst)


@pytest.mark.parametrize(("n", "s"), [(7, 2), (20, 13)])  # the two sampling branches
def test_el_local_peers_are_distinct_and_uniform(n: int, s: int) -> None:
    rounds = 600
    topology = EpidemicLocal(n, s, seed=1)
    counts = np.zeros((n, n))
    for t in range(rounds):
        plan = topology.plan(t)
        assert plan.out_degree().tolist() == [s] * n
        np.add.at(counts, (plan.src.numpy(), plan.dst.numpy()), 1)
    assert np.diag(counts).sum() == 0
    off = counts[~np.eye(n, dtype=bool)]
    expected = rounds * s / (n - 1)
    sd = np.sqrt(expected * (1 - s / (n - 1)))
    assert np.abs(off - expected).max() < 5 * sd


def test_el_oracle_consensus_contraction_matches_reference() -> None:
    # Reference §5.1: one EL-Oracle round at n = 96, s = 7 contracts by about 0.116.
    ratios = [consensus_ratio(EpidemicOracle(96, 7, seed=seed).plan(0), seed) for seed in range(3)]
    assert all(0.08 < r < 0.16 for r in ratios)
    local = [consensus_ratio(EpidemicLocal(96, 7, seed=seed).plan(0), seed) for seed in range(3)]
    assert all(0.10 < r < 0.17 for r in local)  # reference: about 0.132
    assert np.mean(ratios) < np.mean(local)


def test_default_fanout_is_floor_log2() -> None:
    assert build_topology("el-oracle", 96).describe()["fanout"] == 6
    assert build_topology("el-local", 2).describe()["fanout"] == 1
    assert build_topology("el-local", 16, weights="uniform").describe()["fanout"] == 4


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: build_topology("ring", 1), "num_nodes must be >= 2"),
        (lambda: build_topology("ring", 5, seed=-1), "seed"),
        (lambda: build_topology("torus", 7), "num_nodes"),
        (lambda: build_topology("torus", 10, rows=3), "rows * cols"),
        (lambda: build_topology("torus", 10, rows=5), "rows and cols"),
        (lambda: build_topology("torus", 12, cols=2), "cols"),
        (lambda: build_topology("regular", 10, degree=10), "degree"),
        (lambda: build_topology("regular", 10, degree=0), "degree"),
        (lambda: build_topology("regular", 9, degree=3), "num_nodes * degree must be even"),
        (lambda: build_topology("erdos_renyi", 10, p=0.0), "p must be in (0, 1]"),
        (lambda: build_topology("erdos_renyi", 10, p=1.5), "p must be in (0, 1]"),
        (lambda: build_topology("small_world", 10, k=3), "k must be even"),
        (lambda: build_topology("small_world", 10, k=10), "k must be in [2, num_nodes)"),
        (lambda: build_topology("small_world", 4), "k must be in"),
        (lambda: build_topology("small_world", 10, p=-0.1), "p must be in [0, 1]"),
        (lambda: build_topology("el-oracle", 10, fanout=10), "fanout"),
        (lambda: build_topology("el-local", 10, fanout=0), "fanout"),
        (lambda: EpidemicOracle(9, 3), "num_nodes * fanout must be even"),
        (lambda: build_topology("ring", 5, degree=2), "unknown option 'degree'"),
        (lambda: build_topology("ring", 5, weights="max"), "unknown weights 'max'"),
        (lambda: EpidemicOracle(10, 3).plan(-1), "round"),
        (lambda: build_topology("ring", 5).plan(0).neighbors_in(5), "node"),
        (lambda: build_topology("ring", 5).plan(0).mixing_matrix("coo"), "layout"),
        (lambda: from_networkx(nx.DiGraph([(0, 1), (1, 0)])), "graph must be undirected"),
        (lambda: from_networkx(nx.Graph([(0, "a")])), "mutually comparable"),
        (lambda: from_networkx(nx.empty_graph(1)), "num_nodes"),
    ],
)
def test_invalid_inputs_name_the_field(make, field: str) -> None:
    with pytest.raises(PrivlabError) as info:
        make()
    assert field in str(info.value)


def test_unknown_topology_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError, match="unknown topology 'hypercube'; valid: complete"):
        build_topology("hypercube", 8)


def test_comm_plan_from_edges_sorts_and_plan_rejects_unsorted() -> None:
    plan = CommPlan.from_edges(3, [0, 2, 1], [1, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.0, 1.0])
    assert plan.dst.tolist() == [0, 0, 1] and plan.src.tolist() == [1, 2, 0]
    assert plan.neighbors_in(0) == [1, 2] and plan.in_degree().tolist() == [2, 1, 0]
    with pytest.raises(PrivlabError, match="sorted by"):
        CommPlan(3, torch.tensor([0, 1]), torch.tensor([1, 0]), torch.ones(2), torch.ones(3))
    with pytest.raises(PrivlabError, match="self edges"):
        CommPlan.from_edges(3, [1], [1], [0.5], [1.0, 0.5, 1.0])
    with pytest.raises(PrivlabError, match="weight"):
        CommPlan(
            2,
            torch.tensor([1]),
            torch.tensor([0]),
            torch.ones(1, dtype=torch.float64),
            torch.ones(2),
        )


@settings(max_examples=40, deadline=None)
@given(n=st.integers(3, 40), k=st.integers(1, 39), seed=st.integers(0, 2**31 - 1))
def test_regular_metropolis_weights_property(n: int, k: int, seed: int) -> None:
    k = 1 + k % (n - 1)
    if n * k % 2:
        k = k - 1 if k > 1 else k + 1
    plan = metropolis_hastings_weights(nx.random_regular_graph(k, n, seed=seed))
    w = dense(plan)
    torch.testing.assert_close(w, w.T)
    torch.testing.assert_close(w.sum(1), torch.ones(n, dtype=torch.float64), atol=1e-6, rtol=0)
    assert plan.in_degree().tolist() == [k] * n
    torch.testing.assert_close(plan.weight, torch.full((n * k,), 1 / (k + 1)))
