"""CESAR-style secure aggregation with sparsification, and sparsified D-PSGD."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import make_engine, set_up
from scipy import stats

from privlab.errors import PrivlabError
from privlab.mechanisms.cesar import Cesar, mask_stream
from privlab.mechanisms.sparsification import SparseDPSGD, sparse_count
from privlab.observe import Observer, threat_model_from
from privlab.topology import build_topology

SPARSIFIERS = ("random", "independent-random", "topk")


def _setup(protocol, nodes=8, degree=3, dim=40, seed=0):
    topology = build_topology("regular", nodes, seed=seed, degree=degree)
    return set_up(protocol, topology, dim, seed=seed), topology.plan(0)


def _run(protocol, plan, state, round=0):
    """Every exchange of one round, by the vectorized receive; the last messages."""
    for exchange in range(protocol.exchanges):
        messages = protocol.send(state, plan, round, exchange)
        state = protocol.receive(state, messages, plan, round, exchange)
    return state, messages


@pytest.mark.parametrize("sparsifier", SPARSIFIERS)
def test_aggregate_is_the_plaintext_fixed_point_sum_bit_for_bit(sparsifier):
    protocol, plan = _setup(Cesar(fraction=0.5, sparsifier=sparsifier), dim=60)
    state = torch.randn(8, 60, generator=torch.Generator().manual_seed(1))
    protocol.send(state, plan, 3, 0)  # key agreement
    sent, encoded, wire = protocol.masked(state, plan, 3)  # before topk's reference moves
    messages = protocol.send(state, plan, 3, protocol.exchanges - 1)
    total, _ = protocol.aggregate(messages, plan, 8, 60)
    plain = np.zeros((8, 60), dtype=np.uint64)
    np.add.at(plain, plan.dst.numpy(), encoded.numpy().view(np.uint64))
    assert sent.any()
    assert np.array_equal(total, plain)
    masked = wire[sent.numpy()] != encoded.numpy().view(np.uint64)[sent.numpy()]
    assert masked.mean() > 0.99  # every shared coordinate carries masks


def test_masks_are_chacha20_under_the_hkdf_pair_seed_and_cancel():
    protocol, plan = _setup(Cesar(fraction=1.0))
    protocol.send(torch.zeros(8, 40), plan, 0, 0)
    v = 0
    i, j = plan.neighbors_in(v)[:2]
    seed = protocol.pair_seed(v, i, j)
    assert seed == protocol.pair_seed(v, j, i) and len(seed) == 32
    assert seed != protocol.pair_seed(1, *plan.neighbors_in(1)[:2])
    assert not np.array_equal(mask_stream(seed, 1, 8), mask_stream(seed, 2, 8))
    # zero models: v's aggregate is exactly zero although every message is masked
    messages = protocol.send(torch.zeros(8, 40), plan, 0, 1)
    total, _ = protocol.aggregate(messages, plan, 8, 40)
    assert (total == 0).all() and (messages.payload != 0).float().mean() > 0.99


def _top_bits(values: torch.Tensor, bits: int = 4) -> np.ndarray:
    return (values.numpy().view(np.uint64) >> np.uint64(64 - bits)).astype(np.int64)


def test_masked_values_are_uniform_and_independent_of_the_plaintext():
    dim, bins = 4000, 16
    counts = []
    for scale in (0.0, 100.0):
        protocol, plan = _setup(Cesar(fraction=1.0), dim=dim)
        state = torch.full((8, dim), scale)
        protocol.send(state, plan, 0, 0)
        message = protocol.send(state, plan, 0, 1).payload[0]  # one message
        count = np.bincount(_top_bits(message), minlength=bins)
        assert stats.chisquare(count).pvalue > 0.01
        counts.append(count)
    assert stats.chi2_contingency(np.stack(counts)).pvalue > 0.01
    # the low bits as well
    low = (message.numpy().view(np.uint64) & np.uint64(15)).astype(np.int64)
    assert stats.chisquare(np.bincount(low, minlength=bins)).pvalue > 0.01


@pytest.mark.parametrize("threshold", [1, 2])
def test_shared_fraction_matches_p_times_binomial_tail(threshold):
    k, dim, rounds = 4, 2000, 3
    protocol, plan = _setup(
        Cesar(fraction=0.3, sparsifier="independent-random", threshold=threshold),
        nodes=10,
        degree=k,
        dim=dim,
    )
    p = sparse_count(0.3, dim) / dim
    state = torch.zeros(10, dim)
    protocol.send(state, plan, 0, 0)  # key agreement
    shared = [protocol.masked(state, plan, r)[0].float().mean() for r in range(rounds)]
    measured = float(torch.stack(shared).mean())
    expected = p * stats.binom.sf(threshold - 1, k - 1, p)
    samples = plan.num_edges * dim * rounds
    error = math.sqrt(expected * (1 - expected) / samples)
    assert abs(measured - expected) < 6 * error  # receivers correlate senders: some slack


def test_coordinated_random_shares_everything_or_nothing():
    protocol, plan = _setup(Cesar(fraction=0.25, threshold=2), dim=400)  # degree 3
    protocol.send(torch.zeros(8, 400), plan, 0, 0)
    sent = protocol.masked(torch.zeros(8, 400), plan, 0)[0]
    assert float(sent.float().mean()) == sparse_count(0.25, 400) / 400
    with pytest.raises(PrivlabError, match="threshold must be at most 2"):  # 2 others < 3
        _setup(Cesar(fraction=0.25, threshold=3), dim=400)


def test_equals_sparse_dpsgd_within_quantisation_error():
    state = torch.randn(8, 50, generator=torch.Generator().manual_seed(2))
    cesar, plan = _setup(Cesar(fraction=0.3, threshold=1), dim=50)
    sparse, _ = _setup(SparseDPSGD(fraction=0.3), dim=50)
    secure, _ = _run(cesar, plan, state)
    plain, messages = _run(sparse, plan, state)
    assert (plain != state).any()  # coordinates were averaged
    assert (secure - plain).abs().max() < 4 * 2.0**-24 + 1e-6
    # the renormalised average, written out for one receiver and coordinate
    v = 0
    inbox = messages.inbox(v)
    c = int(inbox.indices[0, 0])
    weight = {int(u): float(w) for u, w, d in zip(plan.src, plan.weight, plan.dst) if int(d) == v}
    senders = [int(u) for u, idx in zip(inbox.src, inbox.indices) if c in idx.tolist()]
    wv = float(plan.self_weight[v])
    expected = (wv * state[v, c] + sum(weight[u] * state[u, c] for u in senders)) / (
        wv + sum(weight[u] for u in senders)
    )
    assert abs(float(plain[v, c]) - float(expected)) < 1e-6


def test_overflow_is_an_error():
    protocol, plan = _setup(Cesar(fraction=1.0))
    protocol.send(torch.zeros(8, 40), plan, 0, 0)
    with pytest.raises(PrivlabError, match="overflow"):
        protocol.send(torch.full((8, 40), 1e12), plan, 0, 1)
    with pytest.raises(PrivlabError, match="overflow"):
        protocol.send(torch.full((8, 40), float("nan")), plan, 0, 1)
    big_f, plan = _setup(Cesar(fraction=1.0, frac_bits=52))
    big_f.send(torch.zeros(8, 40), plan, 0, 0)
    with pytest.raises(PrivlabError, match="overflow"):
        big_f.send(torch.full((8, 40), 1e4), plan, 0, 1)


@pytest.mark.parametrize(
    "protocol",
    [
        SparseDPSGD(fraction=0.3),
        SparseDPSGD(fraction=0.3, sparsifier="topk"),
        Cesar(fraction=0.3),
        Cesar(fraction=0.5, sparsifier="independent-random"),
        Cesar(fraction=0.3, sparsifier="topk"),
    ],
    ids=["sparse-random", "sparse-topk", "cesar-random", "cesar-independent", "cesar-topk"],
)
def test_engines_agree(protocol):
    import copy

    engines = [
        make_engine(
            kind,
            copy.deepcopy(protocol),
            nodes=8,
            topology_options={"degree": 3},
            model_options={"hidden": [8]},
        )
        for kind in ("vectorized", "loop")
    ]
    reports = [[e.run_round(t) for t in range(2)] for e in engines]
    vec, loop = engines
    assert (vec.params - vec.initial_state).abs().max() > 1e-3
    assert (vec.params - loop.params).abs().max() < 1e-5
    for a, b in zip(*reports):
        assert a.bytes_by_kind.keys() == b.bytes_by_kind.keys()
        for kind in a.bytes_by_kind:
            assert torch.equal(a.bytes_by_kind[kind], b.bytes_by_kind[kind])


def test_bytes_count_key_material_once_on_a_static_topology():
    engine = make_engine(
        "vectorized",
        Cesar(fraction=0.1),
        nodes=8,
        topology_options={"degree": 3},
        model_options={"hidden": [8]},
    )
    first, second = engine.run_round(0), engine.run_round(1)
    dim = engine.params.shape[1]
    m = sparse_count(0.1, dim)
    # 3 neighbours: own key to each (32), the 2 others' keys relayed to each, 8-byte header
    assert (first.bytes_by_kind["metadata"] == 3 * (32 + 2 * 32 + 8)).all()
    assert (second.bytes_by_kind["metadata"] == 3 * 8).all()
    assert (second.bytes_by_kind["payload"] == 3 * 8 * m).all()
    assert (second.bytes_by_kind["indices"] == 3 * 4 * m).all()
    sparse = make_engine(
        "vectorized",
        SparseDPSGD(fraction=0.1),
        nodes=8,
        topology_options={"degree": 3},
        model_options={"hidden": [8]},
    )
    plain = sparse.run_round(0)
    assert (plain.bytes_by_kind["payload"] == 3 * 4 * m).all()  # float32 values


def test_index_announcement_is_counted_for_topk():
    protocol, plan = _setup(Cesar(fraction=0.25, sparsifier="topk"), dim=40)
    messages = protocol.send(torch.randn(8, 40), plan, 0, 1)
    m = sparse_count(0.25, 40)
    # the own set announced (m indices) and the 2 other senders' sets relayed (2 m)
    sizes = messages.bytes_per_message()
    assert (sizes["indices"] == 4 * m).all()
    assert (sizes["metadata"] == 4 * 2 * m).all()
    assert (sizes["payload"] == 0).all()


def test_the_log_holds_the_topk_sets_a_receiver_relays_and_the_masked_integers():
    curious = 2
    protocol, plan = _setup(Cesar(fraction=0.25, sparsifier="topk"), dim=40)
    observer = Observer(threat_model_from(curious_nodes=[curious]), 8, 40)
    state = torch.randn(8, 40, generator=torch.Generator().manual_seed(3))
    want = protocol.sparsifier.want(state, plan, 0, protocol.context.streams)
    for exchange in range(protocol.exchanges):
        messages = protocol.send(state, plan, 0, exchange)
        observer.record(0, exchange, messages)
        state = protocol.receive(state, messages, plan, 0, exchange)
    by_exchange = {o.exchange: o for o in observer.log.observations}
    announced, masked = by_exchange[1], by_exchange[2]
    into = (plan.dst == curious).nonzero().flatten()
    assert sorted(announced.true_sender.tolist()) == plan.src[into].tolist()
    assert announced.payload.shape == (len(into), 0)
    for sender, indices in zip(announced.true_sender.tolist(), announced.indices):
        edge = int(into[plan.src[into] == sender][0])
        assert indices[indices >= 0].tolist() == want[edge].nonzero().flatten().tolist()
    assert masked.payload.dtype == torch.int64  # ring elements, never the plaintext floats


@pytest.mark.parametrize(
    "make",
    [
        lambda: SparseDPSGD(fraction=0.0),
        lambda: SparseDPSGD(fraction=1.5),
        lambda: SparseDPSGD(sparsifier="bottomk"),
        lambda: Cesar(fraction=-0.1),
        lambda: Cesar(sparsifier="nope"),
        lambda: Cesar(threshold=0),
        lambda: Cesar(threshold=1.5),
        lambda: Cesar(frac_bits=-1),
        lambda: Cesar(frac_bits=60),
    ],
)
def test_bad_inputs_are_refused(make):
    with pytest.raises(PrivlabError):
        make()
