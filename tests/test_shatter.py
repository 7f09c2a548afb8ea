"""Shatter (Biswas et al., PoPETs 2025): virtual nodes, chunks, unlinkable pseudonyms,
Epidemic Learning at k = 1, and equal results on both engines."""

from __future__ import annotations

import pytest
import torch
from conftest import make_engine, set_up

import privlab.mechanisms.shatter  # noqa: F401  (registers "shatter")
from privlab.config import parse_config
from privlab.errors import PrivlabError
from privlab.experiment import build
from privlab.mechanisms.shatter import METADATA_BYTES, Shatter
from privlab.protocol import INDEX_BYTES, PROTOCOLS
from privlab.rng import derive_seed
from privlab.topology import build_topology
from privlab.training import LocalTraining, SGDConfig

NODES = 8
TRAINING = LocalTraining(batch_size=8, sgd=SGDConfig(lr=0.1))


def shatter_on(dim: int, nodes: int = NODES, seed: int = 0, **options) -> Shatter:
    topology = build_topology("ring", nodes, seed=seed)  # ignored: Shatter draws its own
    return set_up(Shatter(**options), topology, dim=dim, seed=seed)


def test_registered_and_described():
    assert PROTOCOLS["shatter"] is Shatter
    assert Shatter().describe() == {
        "name": "shatter",
        "virtual_nodes": 2,
        "degree": 3,
        "chunking": "random",
        "dynamic": True,
    }


@pytest.mark.parametrize(
    ("options", "nodes", "match"),
    [
        ({"virtual_nodes": 0}, NODES, "virtual_nodes must be >= 1"),
        ({"virtual_nodes": 1.5}, NODES, "virtual_nodes must be >= 1"),
        ({"virtual_nodes": True}, NODES, "virtual_nodes must be >= 1"),
        ({"degree": 0}, NODES, "degree must be >= 1"),
        ({"chunking": "layer"}, NODES, "chunking must be one of contiguous, random"),
        ({"dynamic": 1}, NODES, "dynamic must be true or false"),
        ({"virtual_nodes": 2, "degree": 8}, 4, "degree must be < the number of virtual nodes"),
        ({"virtual_nodes": 1, "degree": 3}, 5, "degree must be such that degree"),
        ({"virtual_nodes": 20}, NODES, "virtual_nodes must be <= the model's 10 coordinates"),
    ],
)
def test_bad_inputs_refused(options, nodes, match):
    with pytest.raises(PrivlabError, match=match):
        shatter_on(dim=10, nodes=nodes, **options)


@pytest.mark.parametrize("chunking", ["contiguous", "random"])
@pytest.mark.parametrize("k", [1, 3, 4])
def test_chunks_partition_the_coordinates_evenly(chunking, k):
    dim = 103
    chunks = shatter_on(dim, virtual_nodes=k, chunking=chunking).chunk_indices
    real = chunks[chunks >= 0]
    assert torch.equal(real.sort().values, torch.arange(dim))  # a partition
    sizes = (chunks >= 0).sum(dim=1)
    assert int(sizes.max() - sizes.min()) <= 1
    if chunking == "contiguous":
        for c in range(k):
            row = chunks[c][chunks[c] >= 0]
            assert torch.equal(row, torch.arange(int(row[0]), int(row[0]) + len(row)))
    elif k > 1:
        assert not torch.equal(chunks[0][: sizes[0]], torch.arange(int(sizes[0])))


def test_random_chunks_are_drawn_per_layer_when_the_model_is_known():
    engine = make_engine("vectorized", Shatter(virtual_nodes=3), nodes=NODES)
    protocol = engine.protocol
    sizes = [p.numel() for p in engine.context.model.parameters()]
    assert protocol.layers == sizes and len(sizes) > 1
    label = torch.empty(engine.spec.dim, dtype=torch.int64)
    for c, row in enumerate(protocol.chunk_indices):
        label[row[row >= 0]] = c
    for layer in label.split(sizes):  # every chunk holds ~1/k of every layer
        counts = torch.bincount(layer, minlength=3)
        assert int(counts.max() - counts.min()) <= 1


@pytest.mark.parametrize(("k", "r"), [(1, 3), (2, 3), (4, 5)])
def test_each_real_node_receives_exactly_k_r_chunks(k, r):
    protocol = shatter_on(40, virtual_nodes=k, degree=r)
    n = NODES
    for round in range(3):
        plan = protocol.plan(round)
        assert len(plan.src) == n * k * r
        assert torch.equal(torch.bincount(plan.dst, minlength=n), torch.full((n,), k * r))
        assert torch.equal(torch.bincount(plan.src, minlength=n), torch.full((n,), k * r))
        # every virtual node sends its own chunk to r neighbours and receives r chunks
        sent = torch.bincount(plan.src * k + plan.chunk, minlength=n * k)
        assert torch.equal(sent, torch.full((n * k,), r))
        for labels in (plan.sender_label, plan.receiver_label):
            assert torch.equal(torch.unique(labels, return_counts=True)[1], torch.full((n * k,), r))
        messages = protocol.send(torch.randn(n, 40), plan, round, 0)
        assert torch.equal(messages.indices, protocol.chunk_indices[plan.chunk])
        assert torch.equal(messages.seen_receiver, plan.receiver_label)


def test_k1_graph_is_the_el_oracle_graph_of_the_same_seed():
    protocol = shatter_on(10, virtual_nodes=1, degree=3, seed=5)
    oracle = build_topology("el-oracle", NODES, seed=derive_seed(5, "topology"), fanout=3)
    for round in range(3):
        plan, el = protocol.plan(round), oracle.plan(round)
        assert sorted(zip(plan.src.tolist(), plan.dst.tolist())) == sorted(
            zip(el.src.tolist(), el.dst.tolist())
        )


def run_config(protocol: dict, topology: dict) -> torch.Tensor:
    """The final models of a 4-round run of digits on 10 nodes, seed 7."""
    config = parse_config(
        {
            "nodes": 10,
            "rounds": 4,
            "seed": 7,
            "model": {"name": "mlp", "hidden": [16]},
            "protocol": protocol,
            "topology": topology,
            "training": {"lr": 0.1, "momentum": 0.9, "batch_size": 8, "local_steps": 2},
            "observer": None,
        }
    )
    engine = build(config).engine
    for round in range(config.rounds):
        engine.run_round(round)
    return engine.params


def test_k1_equals_el_oracle_epidemic_learning_on_the_same_seed():
    shatter = run_config(
        {"name": "shatter", "virtual_nodes": 1, "degree": 3, "chunking": "random"},
        {"name": "regular", "degree": 4},  # ignored: Shatter draws its own graph
    )
    epidemic = run_config({"name": "epidemic"}, {"name": "el-oracle", "fanout": 3})
    assert (shatter - epidemic).abs().max() < 1e-6
    start = run_config({"name": "epidemic"}, {"name": "el-oracle", "fanout": 1})
    assert (shatter - start).abs().max() > 1e-3  # another graph gives other models


@pytest.mark.parametrize("chunking", ["contiguous", "random"])
def test_averaging_identical_models_is_a_no_op(chunking):
    protocol = shatter_on(50, virtual_nodes=3, degree=4, chunking=chunking)
    state = torch.randn(1, 50).expand(NODES, 50).clone()
    plan = protocol.plan(0)
    messages = protocol.send(state, plan, 0, 0)
    torch.testing.assert_close(protocol.receive(state, messages, plan, 0, 0), state)
    for node in range(NODES):
        out = protocol.receive_node(node, state[node], messages.inbox(node), plan, 0, 0)
        torch.testing.assert_close(out, state[node])


def test_per_coordinate_average_counts_every_received_value():
    protocol = shatter_on(12, virtual_nodes=3, degree=2, chunking="contiguous")
    state = torch.randn(NODES, 12)
    plan = protocol.plan(0)
    out = protocol.receive(state, protocol.send(state, plan, 0, 0), plan, 0, 0)
    for node in range(NODES):
        total, count = state[node].clone(), torch.ones(12)
        for sender, chunk in zip(plan.src[plan.dst == node], plan.chunk[plan.dst == node]):
            coords = torch.arange(4 * int(chunk), 4 * int(chunk) + 4)
            total[coords] += state[sender, coords]
            count[coords] += 1
        torch.testing.assert_close(out[node], total / count)


@pytest.mark.parametrize(("k", "r"), [(2, 3), (3, 4)])
def test_bytes_per_round(k, r):
    engine = make_engine("vectorized", Shatter(virtual_nodes=k, degree=r), nodes=NODES)
    dim = engine.spec.dim
    for round in range(2):
        report = engine.run_round(round)
        by_kind = {kind: int(b.sum()) for kind, b in report.bytes_by_kind.items()}
        # every chunk goes to r neighbours from every node: n r D values and indices
        assert by_kind["payload"] == NODES * r * dim * 4
        assert by_kind["indices"] == NODES * r * dim * INDEX_BYTES
        assert by_kind["metadata"] == NODES * k * r * METADATA_BYTES
        assert int(report.bytes_sent.sum()) == NODES * r * (8 * dim + k * METADATA_BYTES)


def test_pseudonyms_are_fresh_and_unlinkable_to_the_real_node():
    n, k, rounds = 10, 2, 400
    protocol = shatter_on(10, nodes=n, virtual_nodes=k, degree=3)
    same, other, mod_hits, seen = [], [], 0, set()
    for round in range(rounds):
        plan = protocol.plan(round)
        label = torch.zeros(n * k, dtype=torch.int64)
        label[plan.src * k + plan.chunk] = plan.sender_label
        assert bool((label > 0).all())  # 63-bit, non-negative, every virtual node labelled
        seen.update(label.tolist())
        by_node = label.view(n, k)
        same.append((by_node[:, 0] % 2 == by_node[:, 1] % 2).float())  # same real node
        other.append((by_node[:, 0] % 2 == by_node.roll(1, 0)[:, 1] % 2).float())  # others
        mod_hits += int((by_node % n == torch.arange(n).unsqueeze(1)).sum())
    assert len(seen) == rounds * n * k  # fresh every round, never repeated
    same, other = torch.cat(same).mean(), torch.cat(other).mean()
    # 4000 pairs each: the standard deviation of a fraction near 1/2 is 0.008
    assert abs(float(same) - 0.5) < 0.04 and abs(float(other) - 0.5) < 0.04
    assert abs(float(same - other)) < 0.05
    # label mod n names the real node (the authors' vid mod n = uid) no more than chance
    assert abs(mod_hits / (rounds * n * k) - 1 / n) < 0.03


def test_the_graph_is_fresh_each_round_and_static_fixes_it():
    dynamic = shatter_on(10, virtual_nodes=2)
    static = shatter_on(10, virtual_nodes=2, dynamic=False)
    edges_of = [
        set(zip(p.src.tolist(), p.chunk.tolist(), p.dst.tolist()))
        for p in map(dynamic.plan, (0, 1))
    ]
    assert edges_of[0] != edges_of[1]
    first, second = static.plan(0), static.plan(1)
    edges = {(int(s), int(c), int(d)) for s, c, d in zip(first.src, first.chunk, first.dst)}
    assert edges == {
        (int(s), int(c), int(d)) for s, c, d in zip(second.src, second.chunk, second.dst)
    }
    assert not set(first.sender_label.tolist()) & set(second.sender_label.tolist())


@pytest.mark.parametrize(
    "options",
    [
        {"virtual_nodes": 3, "degree": 3, "chunking": "random"},
        {"virtual_nodes": 2, "degree": 5, "chunking": "contiguous", "dynamic": False},
    ],
    ids=["random-k3", "contiguous-static"],
)
def test_both_engines_equal(options):
    engines = [
        make_engine(kind, Shatter(**options), nodes=NODES, training=TRAINING)
        for kind in ("vectorized", "loop")
    ]
    for round in range(2):
        reports = [engine.run_round(round) for engine in engines]
        assert torch.equal(reports[0].bytes_sent, reports[1].bytes_sent)
    vec, loop = (engine.params for engine in engines)
    assert (vec - loop).abs().max() < 1e-5
    assert (vec - engines[0].initial_state).abs().max() > 1e-3
