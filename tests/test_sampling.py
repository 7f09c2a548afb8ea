"""Batches drawn per node from the node's own stream: shuffled and Poisson-sampled."""

from __future__ import annotations

import torch

from privlab.rng import NodeStreams
from privlab.sampling import poisson_batches, shuffle_batches

PADDED = torch.tensor([[0, 1, 2, 3, 4, 5], [10, 11, -1, -1, -1, -1], [20, 21, 22, 23, -1, -1]])
SIZES = torch.tensor([6, 2, 4])
NODES = torch.arange(3)


def test_shuffled_batches_draw_from_each_nodes_own_data():
    streams = NodeStreams(0)
    batch = shuffle_batches(PADDED, SIZES, 4, streams, 1, 0, NODES)
    assert batch.indices.shape == batch.weights.shape == (3, 4)
    assert len(set(batch.indices[0].tolist())) == 4 and set(batch.indices[0].tolist()) <= set(
        range(6)
    )
    assert sorted(batch.indices[1, :2].tolist()) == [10, 11]  # fewer samples than the batch
    assert batch.weights[1].tolist() == [0.5, 0.5, 0.0, 0.0]  # padding has weight 0
    assert sorted(batch.indices[2].tolist()) == [20, 21, 22, 23]
    assert torch.allclose(batch.weights[[0, 2]], torch.full((2, 4), 0.25))
    counts = torch.zeros(6)
    for round in range(3000):
        draw = shuffle_batches(PADDED, SIZES, 2, streams, round, 0, NODES)
        assert draw.weights is None  # every node has at least 2 samples: no mask
        counts += torch.bincount(draw.indices[0], minlength=6)
    assert torch.allclose(counts / counts.sum(), torch.full((6,), 1 / 6), atol=0.01)


def test_a_batch_larger_than_the_data_is_the_whole_data_once():
    padded, sizes = torch.tensor([[10, 11, 12, -1, -1], [20, 21, 22, 23, 24]]), torch.tensor([3, 5])
    for batch_size in (4, 5, 10**12):
        batch = shuffle_batches(padded, sizes, batch_size, NodeStreams(2), 1, 0, torch.arange(2))
        assert batch.indices.shape == (2, min(batch_size, 5))  # never wider than the data
        real = batch.weights > 0
        assert sorted(batch.indices[0][real[0]].tolist()) == [10, 11, 12]  # each sample once
        assert real.sum(dim=1).tolist() == [3, min(batch_size, 5)]
        assert torch.allclose(batch.weights.sum(dim=1), torch.ones(2))
        assert set(batch.indices[0].tolist()) <= {10, 11, 12}  # padding reads a real sample


def test_poisson_batches_keep_each_sample_with_the_nodes_rate():
    streams, rates = NodeStreams(3), torch.tensor([0.25, 1.0, 0.5], dtype=torch.float64)
    kept = torch.zeros(3, 24)
    sizes = []
    for round in range(2000):
        batch = poisson_batches(PADDED, SIZES, rates, streams, round, 0, NODES)
        assert set(batch.weights.unique().tolist()) <= {0.0, 1.0}
        real = batch.weights.bool()
        assert (batch.weights[:, 1:] <= batch.weights[:, :-1]).all()  # kept samples first
        for node in range(3):
            chosen = batch.indices[node][real[node]]
            assert len(set(chosen.tolist())) == len(chosen)  # no sample twice, no refill
            kept[node].index_add_(0, chosen % 24, torch.ones(len(chosen)))
        sizes.append(real.sum(dim=1))
    frequency = kept / 2000
    assert torch.allclose(frequency[0, :6], torch.full((6,), 0.25), atol=0.03)
    assert frequency[1, 10:12].tolist() == [1.0, 1.0]  # rate 1: the whole data every time
    assert torch.allclose(frequency[2, 20 % 24 : 24], torch.full((4,), 0.5), atol=0.04)
    sizes = torch.stack(sizes).float()
    assert abs(sizes[:, 0].mean() - 1.5) < 0.05 and sizes[:, 0].var() > 0.5  # sizes vary


def test_any_block_of_nodes_draws_its_own_batches_alone():
    streams, rates = NodeStreams(7), torch.full((3,), 0.5, dtype=torch.float64)
    everyone = poisson_batches(PADDED, SIZES, rates, streams, 4, 2, NODES)
    alone = poisson_batches(PADDED, SIZES, rates, streams, 4, 2, torch.tensor([2]))
    real = alone.weights[0].bool()
    assert torch.equal(everyone.indices[2][everyone.weights[2].bool()], alone.indices[0][real])
    shuffled = shuffle_batches(PADDED, SIZES, 3, streams, 4, 2, NODES)
    block = shuffle_batches(PADDED, SIZES, 3, streams, 4, 2, torch.tensor([0, 2]))
    assert torch.equal(shuffled.indices[[0, 2]], block.indices)
