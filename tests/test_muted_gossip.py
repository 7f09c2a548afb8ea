"""Muted gossip: the continuous-time simulator against the reference's exact s = 0 and
s = 1 values, the round-based protocol on both engines, the accounting helpers."""

from __future__ import annotations

import copy
import math

import networkx as nx
import numpy as np
import pytest
import torch
from conftest import make_engine, set_up
from scipy import stats

from privlab.accounting.gossip import (
    clopper_pearson,
    empirical_delta,
    first_push_delta_lower_bound,
    muted_gossip_s0_delta,
    muted_gossip_s0_guarantee,
    push_first_spy_success,
)
from privlab.errors import PrivlabError
from privlab.mechanisms.muted_gossip import (
    MutedGossip,
    first_spy_guess,
    first_spy_success,
    simulate,
)
from privlab.protocol import PROTOCOLS
from privlab.topology import build_topology


def harmonic(k: int) -> float:
    return sum(1.0 / i for i in range(1, k + 1))


def within(mean: float, stderr: float, expected: float, sigmas: float = 3.0) -> bool:
    return abs(mean - expected) <= sigmas * stderr


# -- the simulator ---------------------------------------------------------------------


def test_s0_matches_the_exact_first_spy_and_cover_time():
    n, runs = 50, 3000
    out = simulate(n, 0.0, runs, curious=0.1, seed=3)
    m = int(round(0.1 * n))
    assert (out.num_curious == m).all()
    p = (m + 1) / n  # reference 2.4: P_u(sender = u) = (m + 1) / n
    assert within(first_spy_success(out), math.sqrt(p * (1 - p) / runs), p)
    times = out.spread_time
    expected = (n - 1) * harmonic(n - 1)  # cover time of K_n by the token
    assert within(times.mean(), times.std(ddof=1) / math.sqrt(runs), expected)
    assert (out.events >= n - 1).all()  # at least one push per newly informed node


def test_s1_is_push_and_spreads_in_about_2_ln_n():
    n, runs = 200, 1000
    out = simulate(n, 1.0, runs, curious=0.1, seed=4)
    times = out.spread_time
    # Exact for push on K_n in continuous time: sum_k (n-1)/(k(n-k)) = 2 (n-1) H_{n-1} / n.
    expected = 2 * (n - 1) * harmonic(n - 1) / n
    assert within(times.mean(), times.std(ddof=1) / math.sqrt(runs), expected)
    assert 0.8 * 2 * math.log(n) < times.mean() < 1.3 * 2 * math.log(n)  # reference: ~2 ln n
    assert abs(times.mean() - 11.7) < 0.5  # reference 2.5, n = 200: 11.7
    # push leaks far more than s = 0 (reference 2.5: 0.267 at n = 200, f = 0.1)
    p = first_spy_success(out)
    assert abs(p - 0.267) < 4 * math.sqrt(0.267 * 0.733 / runs)


def test_runs_are_consistent_trees():
    n = 30
    out = simulate(n, 0.5, 200, curious=[3, 7, 11], seed=5)
    rows = np.arange(out.runs)
    assert np.isfinite(out.informed_time).all()
    assert (out.informed_time[rows, out.source] == 0).all()
    assert (out.parent[rows, out.source] == -1).all()
    assert not np.isin(out.source, [3, 7, 11]).any()  # sources are honest
    parent_time = np.take_along_axis(out.informed_time, np.maximum(out.parent, 0), axis=1)
    others = out.parent >= 0
    assert (parent_time[others] < out.informed_time[others]).all()
    assert np.allclose(out.spread_time, out.informed_time.max(axis=1))
    guess = first_spy_guess(out)
    assert not np.isin(guess, [3, 7, 11]).any()  # spies never send before being reached
    sender, time = out.first_contacts()
    assert (sender[:, [3, 7, 11]] >= 0).all() and (sender[:, 0] == -1).all()
    assert np.isnan(time[:, 0]).all() and np.isfinite(time[:, [3, 7, 11]]).all()
    again = simulate(n, 0.5, 200, curious=[3, 7, 11], seed=5)
    assert np.array_equal(again.parent, out.parent)  # reproducible from the seed


def test_general_graph_pushes_along_edges():
    graph = nx.cycle_graph(12)
    out = simulate(12, 0.7, 100, curious=0.25, graph=graph, seed=6)
    child = out.parent >= 0
    gap = np.abs(out.parent - np.arange(12))[child]
    assert np.isin(gap, [1, 11]).all()  # every first contact came over a ring edge
    assert np.isfinite(out.spread_time).all()


def test_without_reactivation_s0_dies_after_the_first_push():
    out = simulate(20, 0.0, 50, curious=0.1, reactivate=False, seed=7)
    # the source pushes once, is muted; the receiver pushes once... a newly informed node
    # always becomes active, so the walk goes on until it hits an informed node, then dies
    assert (np.isinf(out.spread_time) | (out.spread_time > 0)).all()
    assert np.isinf(out.spread_time).mean() > 0.9


def test_simulate_rejects_bad_input():
    with pytest.raises(PrivlabError, match="mute"):
        simulate(10, 1.5, 10)
    with pytest.raises(PrivlabError, match="mute"):
        simulate(10, -0.1, 10)
    with pytest.raises(PrivlabError, match="num_nodes"):
        simulate(1, 0.5, 10)
    with pytest.raises(PrivlabError, match="runs"):
        simulate(10, 0.5, 0)
    with pytest.raises(PrivlabError, match="curious"):
        simulate(10, 0.5, 10, curious=1.0)
    with pytest.raises(PrivlabError, match="curious"):
        simulate(10, 0.5, 10, curious=[0, 0])
    with pytest.raises(PrivlabError, match="curious"):
        simulate(3, 0.5, 10, curious=[0, 1, 2])
    with pytest.raises(PrivlabError, match="graph"):
        simulate(5, 0.5, 10, graph=nx.path_graph(4))
    with pytest.raises(PrivlabError, match="curious"):
        first_spy_success(simulate(10, 0.5, 5, curious=0.0))


# -- accounting --------------------------------------------------------------------------


def test_s0_guarantee_and_exact_delta():
    assert muted_gossip_s0_guarantee(100, 10) == (0.0, 0.1)
    eps, delta = muted_gossip_s0_guarantee(100, 10, view="hops")
    assert eps == pytest.approx(math.log(89 / 88))
    assert delta == pytest.approx(10 / 99 * 100 / 99)
    assert muted_gossip_s0_delta(100, 10, 0.0) == pytest.approx(0.1)
    assert muted_gossip_s0_delta(100, 10, math.log(11)) == 0.0
    assert muted_gossip_s0_delta(100, 10, 1.0) == pytest.approx((11 - math.e) / 100)
    assert first_push_delta_lower_bound(100, 10, 0.0) == pytest.approx(10 / 99 - 1 / 89)
    assert push_first_spy_success(1001, 100) == pytest.approx(0.1 * math.log(10) / 0.9)
    with pytest.raises(PrivlabError, match="num_curious"):
        muted_gossip_s0_guarantee(10, 9)
    with pytest.raises(PrivlabError, match="epsilon"):
        muted_gossip_s0_delta(10, 2, -1.0)
    with pytest.raises(PrivlabError, match="view"):
        muted_gossip_s0_guarantee(10, 2, view="all")


def test_clopper_pearson_matches_scipy_and_known_values():
    low, high = clopper_pearson(0, 10)
    assert low == 0.0 and high == pytest.approx(1 - 0.025 ** (1 / 10))  # 0.30850
    assert clopper_pearson(10, 10)[0] == pytest.approx(0.025 ** (1 / 10))
    assert clopper_pearson(5, 10) == pytest.approx((0.18709, 0.81291), abs=1e-5)
    for k, n, level in [(3, 17, 0.95), (40, 300, 0.9), (299, 300, 0.99)]:
        ci = stats.binomtest(k, n).proportion_ci(confidence_level=level, method="exact")
        assert clopper_pearson(k, n, level) == pytest.approx((ci.low, ci.high), rel=1e-6)
    for bad in [dict(k=-1, n=5), dict(k=6, n=5), dict(k=1, n=0), dict(k=1, n=5, level=1.0)]:
        with pytest.raises(PrivlabError):
            clopper_pearson(**bad)


def test_empirical_delta_at_s0_brackets_m_over_n():
    n, runs = 40, 3000
    out = simulate(n, 0.0, runs, curious=0.1, seed=8)
    est = empirical_delta(out, 0.0)
    assert est.low <= 4 / 40 <= est.high  # exact m / n (reference 2.4); 95% level, fixed seed
    assert est.low <= est.delta <= est.high and est.runs == runs and est.honest == 36
    assert empirical_delta(out, math.log(5) + 0.5).delta == 0.0  # beyond ln(m + 1)
    with pytest.raises(PrivlabError, match="epsilon"):
        empirical_delta(out, -1.0)


# -- the round-based protocol -------------------------------------------------------------


def test_protocol_is_registered_and_checks_options():
    assert PROTOCOLS["muted-gossip"] is MutedGossip
    assert MutedGossip(source=2, mute=0.25).describe() == {
        "name": "muted-gossip",
        "source": 2,
        "mute": 0.25,
    }
    for bad in [1.5, -0.1, float("nan"), "0.5", True]:
        with pytest.raises(PrivlabError, match="mute"):
            MutedGossip(mute=bad)
    with pytest.raises(PrivlabError, match="source"):
        MutedGossip(source=-1)
    with pytest.raises(PrivlabError, match="source"):
        set_up(MutedGossip(source=9), build_topology("ring", 8), 1)


@pytest.mark.parametrize("mute", [0.0, 0.5, 1.0])
def test_protocol_engines_agree_and_inform_everybody(mute):
    protocol = MutedGossip(source=0, mute=mute)
    engines = [
        make_engine(kind, copy.deepcopy(protocol), nodes=8, topology="ring", topology_options={})
        for kind in ("vectorized", "loop")
    ]
    history = []
    for t in range(200):
        reports = [engine.run_round(t) for engine in engines]
        vec, loop = (engine.params for engine in engines)
        assert torch.equal(vec, loop)
        assert torch.equal(reports[0].bytes_sent, reports[1].bytes_sent)
        history.append(vec.clone())
        if bool((vec[:, 0] == 1).all()):
            break
    assert engines[0].params[:, 0].tolist() == [1.0] * 8
    if mute == 0.0:  # one token: exactly one active node after every round
        assert all(int(state[:, 1].sum()) == 1 for state in history)


def test_protocol_round_semantics():
    n = 6
    protocol = set_up(MutedGossip(source=2, mute=0.0), build_topology("ring", n), 1)
    state = protocol.initial_state(torch.zeros(n, 1))
    assert state.tolist() == [[0, 0], [0, 0], [1, 1], [0, 0], [0, 0], [0, 0]]
    plan = protocol.plan(0)
    assert int(plan.target[2]) in (1, 3) and not bool(plan.stay.any())
    msgs = protocol.send(state, plan, 0, 0)
    assert msgs.src.tolist() == [2] and msgs.dst.tolist() == [int(plan.target[2])]
    after = protocol.receive(state, msgs, plan, 0, 0)
    target = int(plan.target[2])
    assert after[2].tolist() == [1, 0] and after[target].tolist() == [1, 1]
    assert int(after[:, 0].sum()) == 2
    push = set_up(MutedGossip(source=2, mute=1.0), build_topology("ring", n), 1)
    assert bool(push.plan(0).stay.all())
