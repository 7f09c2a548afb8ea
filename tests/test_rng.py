"""One seed tree: per-node streams that any block of nodes reproduces alone."""

from __future__ import annotations

import numpy as np
import torch

from privlab.config import parse_config
from privlab.experiment import build
from privlab.rng import NodeStreams


def test_a_nodes_numbers_do_not_depend_on_the_other_nodes_drawn():
    streams = NodeStreams(11)
    everyone = streams.normal("noise", 3, 1, range(10), 50)
    for block in ([4], [7, 2], [0, 5, 9]):
        assert torch.equal(streams.normal("noise", 3, 1, block, 50), everyone[block])
    uniform = streams.uniform("batch", 3, 1, range(10), 20)
    assert torch.equal(streams.uniform("batch", 3, 1, [6], 20), uniform[[6]])
    assert 0 <= float(uniform.min()) and float(uniform.max()) < 1


def test_every_key_gives_a_different_stream():
    streams = NodeStreams(0)
    base = streams.normal("noise", 1, 0, [0], 100)
    for other in (
        streams.normal("noise", 2, 0, [0], 100),  # round
        streams.normal("noise", 1, 1, [0], 100),  # step
        streams.normal("noise", 1, 0, [1], 100),  # node
        streams.normal("batch", 1, 0, [0], 100),  # purpose
        NodeStreams(1).normal("noise", 1, 0, [0], 100),  # seed
    ):
        assert not torch.equal(base, other)
    assert torch.equal(base, NodeStreams(0).normal("noise", 1, 0, [0], 100))


def test_a_node_listed_on_several_edges_draws_one_block_of_its_stream():
    streams = NodeStreams(5)
    edges = streams.normal("protocol", 2, 0, [3, 1, 3, 0, 1, 3], 8)
    assert torch.equal(edges[[0, 2, 5]], streams.normal("protocol", 2, 0, [3, 3, 3], 8))
    assert torch.equal(edges[[1, 4]], streams.normal("protocol", 2, 0, [1, 1], 8))
    assert not torch.equal(edges[0], edges[2])  # two edges of one node: two draws
    flat = edges.flatten()
    assert abs(float(flat.mean())) < 0.3 and abs(float(flat.std()) - 1) < 0.3


def test_data_partition_and_graph_derive_from_the_one_seed():
    def parts(seed: int):
        config = parse_config(
            {
                "seed": seed,
                "nodes": 8,
                "data": {"dataset": "synthetic", "options": {"num_samples": 400}},
                "topology": {"name": "regular", "degree": 3},
            }
        )
        experiment = build(config)
        plan = experiment.topology.plan(1)
        return (
            experiment.data.dataset.X,
            [list(node) for node in experiment.data.node_indices],
            set(zip(plan.src.tolist(), plan.dst.tolist())),
        )

    first, again, other = parts(1), parts(1), parts(2)
    assert torch.equal(first[0], again[0]) and first[1:] == again[1:]
    assert not torch.equal(first[0], other[0])  # the synthetic data
    assert first[1] != other[1]  # the partition
    assert first[2] != other[2]  # the random graph


def test_uniforms_are_the_splitmix64_stream_of_each_nodes_seed():
    streams = NodeStreams(9)
    (seed,) = streams.node_seeds("batch", 2, 1, [4])
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + np.arange(1, 7, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    expected = (z >> np.uint64(40)).astype(np.float64) / 2**24
    drawn = streams.uniform("batch", 2, 1, [4], 6)[0].double().numpy()
    assert np.array_equal(drawn, expected)
    # a node listed twice continues its stream in its second row
    twice = streams.uniform("batch", 2, 1, [4, 0, 4], 3)
    assert torch.equal(twice[[0, 2]].flatten(), streams.uniform("batch", 2, 1, [4], 6)[0])
    many = streams.uniform("batch", 0, 0, range(2000), 50)
    assert abs(float(many.mean()) - 0.5) < 0.01 and abs(float(many.var()) - 1 / 12) < 0.005


def test_a_process_draws_the_normals_of_its_own_block_only():
    """A distributed rank's streams (``normal_block``): its nodes' rows are the numbers
    every process would draw for them, in the same per-node blocks; other nodes' rows are
    zeros, not drawn."""
    nodes = [5, 1, 3, 1, 5, 7, 2]  # nodes listed on several edges, in any order
    everyone = NodeStreams(11).normal("noise", 2, 0, nodes, 4)
    rank = NodeStreams(11)
    rank.normal_block = (2, 6)
    own = rank.normal("noise", 2, 0, nodes, 4)
    mine = torch.tensor([2 <= v < 6 for v in nodes])
    assert torch.equal(own[mine], everyone[mine])
    assert not bool(own[~mine].any())
    assert bool(own[mine].abs().gt(0).all())
    rank.normal_block = (8, 9)  # none of these nodes
    assert not bool(rank.normal("noise", 2, 0, nodes, 4).any())
