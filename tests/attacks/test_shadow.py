"""Reference models trained all at once, and the ``local`` protocol they train under."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import set_up

from privlab.attacks.shadow import (
    balanced_halves,
    independent_initialisations,
    train_reference_models,
)
from privlab.attacks.signals import model_logits, per_example_loss
from privlab.data import load_dataset, make_federated
from privlab.engine import ENGINES
from privlab.errors import PrivlabError
from privlab.mechanisms.local import LocalOnly
from privlab.models import build_model
from privlab.partition import FederatedData
from privlab.protocol import PROTOCOLS
from privlab.topology import build_topology
from privlab.training import LocalTraining, SGDConfig

# -- the local protocol ----------------------------------------------------------------


def _local_run(kind: str, data: FederatedData, rounds: int = 3):
    """Final models and per-round bytes of ``rounds`` rounds of ``local`` on ``data``."""
    torch.manual_seed(0)
    model = build_model("mlp", data.dataset.input_shape, 10, hidden=[16])
    topology = build_topology("ring", data.num_nodes)
    training = LocalTraining(batch_size=8, local_steps=2, sgd=SGDConfig(lr=0.1, momentum=0.9))
    engine = ENGINES[kind](model, data, topology, PROTOCOLS["local"](), training, seed=5)
    sent = [engine.run_round(t).bytes_sent for t in range(1, rounds + 1)]
    return engine.params, torch.stack(sent)


def test_local_protocol_sends_nothing_on_either_engine():
    data = make_federated("digits", 4, seed=0)
    vectorized, sent_v = _local_run("vectorized", data)
    loop, sent_l = _local_run("loop", data)
    assert sent_v.tolist() == sent_l.tolist() == [[0] * 4] * 3
    torch.testing.assert_close(vectorized, loop, rtol=0, atol=1e-5)
    protocol = set_up(LocalOnly(), build_topology("complete", 4), dim=3)
    plan = protocol.plan(1)
    assert plan.num_edges == 0 and plan.self_weight.tolist() == [1.0] * 4
    state = torch.randn(4, 3)
    messages = protocol.send(state, plan, 1, 0)
    assert len(messages) == 0
    assert torch.equal(protocol.receive(state, messages, plan, 1, 0), state)


def test_local_protocol_trains_each_node_as_if_alone():
    """Nodes 0 and 1 end where they end in a network of two: the others change nothing."""
    data = make_federated("digits", 4, seed=0)
    pair = FederatedData(
        data.dataset, data.node_indices[:2], data.nonmember_indices, data.test_indices
    )
    everyone, _ = _local_run("vectorized", data)
    alone, _ = _local_run("vectorized", pair)
    torch.testing.assert_close(everyone[:2], alone, rtol=0, atol=1e-6)
    assert (everyone[0] - everyone[1]).abs().max() > 1e-2  # different data, different models


# -- reference models ------------------------------------------------------------------


def test_balanced_halves_are_complementary_pairs():
    keep = balanced_halves(11, 6, seed=3)
    assert keep.shape == (6, 11) and keep.dtype == bool
    assert (keep.sum(axis=0) == 3).all()  # every example IN for exactly half of the models
    assert sorted(set(keep.sum(axis=1).tolist())) == [5, 6]  # ceil and floor of 11 / 2
    assert (keep[0::2] ^ keep[1::2]).all()
    assert not (keep[0] == keep[2]).all()  # pairs draw their own halves
    np.testing.assert_array_equal(keep, balanced_halves(11, 6, seed=3))
    assert not np.array_equal(keep, balanced_halves(11, 6, seed=4))
    with pytest.raises(PrivlabError, match="num_models"):
        balanced_halves(11, 5)


def test_independent_initialisations_differ_and_repeat():
    model = build_model("mlp", (1, 8, 8), 10, hidden=[16])
    rows = independent_initialisations(model, 3, seed=1)
    assert rows.shape == (3, 64 * 16 + 16 + 16 * 10 + 10)
    assert not torch.equal(rows[0], rows[1])
    torch.testing.assert_close(rows, independent_initialisations(model, 3, seed=1))
    bound = 1 / 8  # nn.Linear's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in 64
    assert float(rows[:, : 64 * 16].abs().max()) <= bound


@pytest.fixture(scope="module")
def tiny():
    data = load_dataset("digits")
    model = build_model("mlp", data.input_shape, 10, hidden=[16])
    return data, model, np.arange(100, 164)


def test_vectorized_reference_models_equal_loop_trained_ones(tiny):
    data, model, pool = tiny
    kw = {"num_models": 4, "epochs": 2, "batch_size": 16, "lr": 0.1, "seed": 7}
    fast = train_reference_models(model, data, pool, engine="vectorized", **kw)
    slow = train_reference_models(model, data, pool, engine="loop", **kw)
    torch.testing.assert_close(fast.params, slow.params, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(fast.keep, slow.keep)
    start = independent_initialisations(model, 4, seed=7)
    assert (fast.params - start).abs().max() > 1e-2  # they trained


@pytest.mark.parametrize("engine", ["vectorized", "loop"])
def test_each_reference_model_starts_from_its_own_initialisation(tiny, engine):
    data, model, pool = tiny
    refs = train_reference_models(
        model, data, pool, num_models=2, epochs=1, batch_size=64, lr=1e-9, engine=engine
    )
    torch.testing.assert_close(
        refs.params, independent_initialisations(model, 2), atol=1e-6, rtol=0
    )


def test_reference_models_fit_their_own_half(tiny):
    data, model, pool = tiny
    refs = train_reference_models(model, data, pool, num_models=4, epochs=30, lr=0.2, seed=0)
    assert refs.params.shape == (4, 64 * 16 + 16 + 16 * 10 + 10) and refs.num_models == 4
    np.testing.assert_array_equal(refs.pool, pool)
    np.testing.assert_array_equal(refs.keep, balanced_halves(64, 4, seed=0))
    loss = per_example_loss(model_logits(model, refs.params, data.X[pool]), data.y[pool]).numpy()
    for m in range(4):
        assert loss[m, refs.keep[m]].mean() < 0.5 * loss[m, ~refs.keep[m]].mean()


def test_train_reference_models_checks_its_arguments(tiny):
    data, model, pool = tiny
    with pytest.raises(PrivlabError, match="engine"):
        train_reference_models(model, data, pool, num_models=2, engine="distributed")
    with pytest.raises(PrivlabError, match="pool"):
        train_reference_models(model, data, np.array([1, 1, 2]), num_models=2)
    with pytest.raises(PrivlabError, match="pool"):
        train_reference_models(model, data, np.array([0, len(data)]), num_models=2)
    with pytest.raises(PrivlabError, match="epochs"):
        train_reference_models(model, data, pool, num_models=2, epochs=0)
