"""The vectorized engine computes what the per-node loop engine computes."""

from __future__ import annotations

import copy

import pytest
import torch
from toy_protocols import MaskedSum, PerReceiverNoise, PseudonymousChunks, Rumor

from privlab.data import make_federated
from privlab.engine import ENGINES, LocalTraining
from privlab.mechanisms import DecentralizedSGD, EpidemicLearning
from privlab.models import build_model
from privlab.topology import build_topology
from privlab.training import SGDConfig

TOLERANCE = 1e-5


def run_both(engine_factory, protocol, rounds: int, **kwargs):
    engines = [
        engine_factory(kind, copy.deepcopy(protocol), **kwargs) for kind in ("vectorized", "loop")
    ]
    reports = [[e.run_round(t) for t in range(rounds)] for e in engines]
    return engines, reports


@pytest.mark.parametrize(
    ("protocol", "topology", "options"),
    [
        (DecentralizedSGD(), "regular", {"degree": 4}),
        (DecentralizedSGD(), "ring", {}),
        (EpidemicLearning(), "el-oracle", {"fanout": 3}),
        (EpidemicLearning(), "el-local", {"fanout": 3}),
    ],
    ids=["d-psgd-regular", "d-psgd-ring", "el-oracle", "el-local"],
)
def test_vectorized_equals_loop_on_baselines(engine_factory, protocol, topology, options):
    training = LocalTraining(
        batch_size=8, local_steps=2, sgd=SGDConfig(lr=0.1, momentum=0.9, weight_decay=1e-3)
    )
    (vec, loop), (vec_reports, loop_reports) = run_both(
        engine_factory,
        protocol,
        rounds=8,
        nodes=12,
        topology=topology,
        topology_options=options,
        training=training,
    )
    start = vec.initial_state
    assert (vec.params - start).abs().max() > 0.01  # training moved the models
    assert (vec.params - loop.params).abs().max() < TOLERANCE
    for a, b in zip(vec_reports, loop_reports):
        assert torch.equal(a.bytes_sent, b.bytes_sent)
        assert torch.allclose(a.batch_loss, b.batch_loss, atol=1e-5)
    vec_metrics, loop_metrics = vec.evaluate(), loop.evaluate()
    assert torch.equal(vec_metrics["test_accuracy"], loop_metrics["test_accuracy"])
    for name in ("train_loss", "consensus_distance"):
        assert torch.allclose(vec_metrics[name], loop_metrics[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("scheme", "batch_size", "model", "options"),
    [
        ("dirichlet", 24, "mlp", {"hidden": [16]}),
        ("iid", 1000, "mlp", {"hidden": [16]}),
        ("dirichlet", 24, "cnn", {"channels": [4], "groups": 2}),
    ],
    ids=["dirichlet-mlp", "batch-over-data", "dirichlet-cnn"],
)
def test_nodes_smaller_than_the_batch_agree_on_both_engines(scheme, batch_size, model, options):
    data = make_federated("digits", 16, scheme, alpha=0.1, seed=1)
    sizes = data.node_sizes()
    assert sizes.min() < batch_size  # some nodes train on their whole data
    training = LocalTraining(
        batch_size=batch_size, local_steps=2, sgd=SGDConfig(lr=0.1, momentum=0.9)
    )
    engines = []
    for kind in ("vectorized", "loop"):
        torch.manual_seed(0)
        net = build_model(model, data.dataset.input_shape, 10, **options)
        topology = build_topology("regular", 16, seed=0, degree=4)
        engines.append(ENGINES[kind](net, data, topology, DecentralizedSGD(), training, seed=0))
    vec, loop = engines
    batch = vec._batch(0, 0)
    assert batch.weights is not None and batch.indices.shape[1] == min(batch_size, sizes.max())
    reports = [[e.run_round(t) for t in range(3)] for e in engines]
    assert (vec.params - vec.initial_state).abs().max() > 0.01
    assert (vec.params - loop.params).abs().max() < TOLERANCE
    for a, b in zip(*reports):
        assert torch.allclose(a.batch_loss, b.batch_loss, atol=1e-5)


def test_evaluation_in_small_blocks_equals_one_block(engine_factory):
    engine = engine_factory("vectorized", DecentralizedSGD())
    engine.run_round(0)
    whole = engine.evaluate()
    engine._eval_budget = 1  # one node on one sample per block
    blocks = engine.evaluate()
    assert torch.equal(whole["test_accuracy"], blocks["test_accuracy"])
    assert torch.allclose(whole["train_loss"], blocks["train_loss"], atol=1e-6)


def test_vmap_path_for_cnn_equals_loop(engine_factory):
    (vec, loop), _ = run_both(
        engine_factory,
        DecentralizedSGD(),
        rounds=3,
        nodes=6,
        model="cnn",
        model_options={"channels": [4, 8], "groups": 2},
        topology="ring",
        topology_options={},
    )
    assert (vec.params - loop.params).abs().max() < TOLERANCE


@pytest.mark.parametrize(
    "protocol",
    [PerReceiverNoise(), PseudonymousChunks(), MaskedSum(), Rumor()],
    ids=["per-receiver", "chunks", "masked", "rumor"],
)
def test_contract_shapes_run_on_both_engines(engine_factory, protocol):
    (vec, loop), (vec_reports, loop_reports) = run_both(engine_factory, protocol, rounds=4)
    assert (vec.params - loop.params).abs().max() < TOLERANCE
    assert torch.equal(vec_reports[-1].bytes_sent, loop_reports[-1].bytes_sent)


def test_d_psgd_round_is_w_times_trained_models(engine_factory):
    engine = engine_factory("vectorized", DecentralizedSGD())
    before = engine.params.clone()
    batch = engine._batch(0, 0)
    assert batch.weights is None  # every node has more samples than the batch
    grads, _ = engine._gradient(before, engine.X[batch.indices], engine.y[batch.indices])
    engine.run_round(0)
    mixing = engine.topology.plan(0).mixing_matrix("dense")
    expected = mixing @ (before - 0.1 * grads)
    assert torch.allclose(engine.params, expected, atol=1e-6)


def test_d_psgd_on_doubly_stochastic_weights_preserves_the_mean(engine_factory):
    engine = engine_factory("vectorized", DecentralizedSGD())
    engine.run_round(0)
    trained = engine.params.clone()
    plan = engine.topology.plan(1)
    mixed = engine.protocol.receive(trained, engine.protocol.send(trained, plan, 1, 0), plan, 1, 0)
    assert torch.allclose(mixed.mean(dim=0), trained.mean(dim=0), atol=1e-6)
    spread = lambda p: (p - p.mean(dim=0)).pow(2).sum()  # noqa: E731
    assert spread(mixed) < 0.9 * spread(trained)


def test_same_seed_same_numbers_different_seed_different(engine_factory):
    runs = []
    for seed in (3, 3, 4):
        engine = engine_factory(
            "vectorized",
            EpidemicLearning(),
            topology="el-local",
            topology_options={"fanout": 2},
            seed=seed,
        )
        for t in range(3):
            engine.run_round(t)
        runs.append(engine.params)
    assert torch.equal(runs[0], runs[1])
    assert not torch.allclose(runs[0], runs[2])


def test_training_reduces_loss_and_reaches_useful_accuracy(engine_factory):
    training = LocalTraining(batch_size=16, local_steps=4, sgd=SGDConfig(lr=0.1, momentum=0.9))
    engine = engine_factory(
        "vectorized", DecentralizedSGD(), nodes=8, model_options={"hidden": [32]}, training=training
    )
    first = engine.evaluate()
    for t in range(30):
        engine.run_round(t)
    last = engine.evaluate()
    assert last["train_loss"].mean() < 0.5 * first["train_loss"].mean()
    assert last["test_accuracy"].mean() > 0.8


def test_rumor_reaches_everyone_without_training(engine_factory):
    engine = engine_factory(
        "vectorized", Rumor(source=0), nodes=8, topology="ring", topology_options={}
    )
    model_before = engine.model.state_dict()
    for t in range(4):
        engine.run_round(t)
    assert engine.params.squeeze(1).tolist() == [1.0] * 8
    assert set(engine.evaluate()) == {"consensus_distance"}
    assert all(torch.equal(v, engine.model.state_dict()[k]) for k, v in model_before.items())


def test_seeds_are_not_truncated():
    from privlab.rng import derive_seed

    assert derive_seed(0, "model") != derive_seed(2**32, "model")
    assert derive_seed(5, "batch", 1) != derive_seed(5, "batch", 2)
    assert derive_seed(5, "batch", 1) == derive_seed(5, "batch", 1)
