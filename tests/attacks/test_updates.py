"""Update isolation against a hand-computed D-PSGD step and the engine; knowledge-matrix
least squares against exact linear systems and gossip on a path and a star."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from privlab.attacks.updates import isolate_update, least_squares_updates
from privlab.errors import PrivlabError
from privlab.mechanisms import DecentralizedSGD
from privlab.observe import Observer, threat_model_from
from privlab.training import LocalTraining, SGDConfig


def sgd_update(params: torch.Tensor, x: torch.Tensor, y: torch.Tensor, lr: float) -> torch.Tensor:
    """``-lr`` times the gradient of a logistic regression's mean loss at ``params[3 x 4 + 3]``."""
    w = params.detach().clone().requires_grad_()
    logits = x @ w[:12].view(3, 4).T + w[12:]
    (gradient,) = torch.autograd.grad(F.cross_entropy(logits, y), w)
    return -lr * gradient


def test_isolate_update_recovers_a_hand_computed_d_psgd_update():
    # path 0 - 1 - 2, Metropolis-Hastings weights: W[0] = (2/3, 1/3, 0), W[1] = (1/3, 1/3, 1/3)
    mixing = torch.tensor([[2, 1, 0], [1, 1, 1], [0, 1, 2]], dtype=torch.float64) / 3
    generator = torch.Generator().manual_seed(0)
    models = torch.randn(3, 15, generator=generator, dtype=torch.float64)
    x = torch.randn(3, 5, 4, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 3, (3, 5), generator=generator)
    sent = []
    for _ in range(2):  # train, send, then average (mechanisms/gossip.py)
        updates = torch.stack([sgd_update(models[v], x[v], y[v], 0.5) for v in range(3)])
        sent.append(models + updates)
        models = mixing @ sent[-1]
    true_update = updates[0]  # node 0's update of the second round
    assert true_update.abs().min() > 0
    # node 1 is node 0's only neighbour: it knows the one model node 0 averaged with its own
    isolated = isolate_update(sent[0][0], sent[1][0], sent[0][1:2], torch.tensor([1 / 3]), 2 / 3)
    assert torch.allclose(isolated, true_update, atol=1e-12)
    # node 1 itself is isolated by nodes 0 and 2 together
    both = torch.tensor([1 / 3, 1 / 3])
    isolated = isolate_update(sent[0][1], sent[1][1], sent[0][[0, 2]], both, 1 / 3)
    assert torch.allclose(isolated, updates[1], atol=1e-12)
    # missing one of the models node 1 averaged leaves a large error
    partial = isolate_update(sent[0][1], sent[1][1], sent[0][[0]], torch.tensor([1 / 3]), 1 / 3)
    assert (partial - updates[1]).norm() > 2 * updates[1].norm()


def test_isolate_update_matches_the_engine_on_a_ring(engine_factory):
    victim, neighbours = 0, (1, 5)
    links = [(u, victim) for u in neighbours] + [(victim, u) for u in neighbours]
    training = LocalTraining(batch_size=8, local_steps=2, sgd=SGDConfig(lr=0.1))
    engine = engine_factory(
        "vectorized",
        DecentralizedSGD(),
        nodes=6,
        topology="ring",
        topology_options={},
        training=training,
    )
    engine.observer = Observer(threat_model_from(eavesdropped_links=links), 6, engine.spec.dim)
    engine.run_round(0)
    start_of_round_1 = engine.params[victim].clone()
    engine.run_round(1)
    sent = {}
    for o in engine.observer.log.observations:
        for sender, receiver, payload in zip(o.true_sender, o.receiver, o.payload):
            sent[o.round, int(sender), int(receiver)] = payload
    plan = engine.protocol.plan(0)
    into_victim = plan.dst == victim
    weights = dict(zip(plan.src[into_victim].tolist(), plan.weight[into_victim].tolist()))
    isolated = isolate_update(
        sent[0, victim, 1],
        sent[1, victim, 1],
        torch.stack([sent[0, u, victim] for u in neighbours]),
        torch.tensor([weights[u] for u in neighbours]),
        float(plan.self_weight[victim]),
    )
    true_update = sent[1, victim, 1] - start_of_round_1  # two local SGD steps
    assert true_update.norm() > 1e-3
    assert torch.allclose(isolated, true_update, atol=1e-6)


def test_least_squares_is_exact_for_a_knowledge_matrix_of_full_column_rank():
    generator = torch.Generator().manual_seed(0)
    knowledge = torch.randn(8, 5, generator=generator, dtype=torch.float64)
    updates = torch.randn(5, 30, generator=generator, dtype=torch.float64)
    recovered, reconstructible = least_squares_updates(knowledge, knowledge @ updates)
    assert reconstructible.all()
    assert torch.allclose(recovered, updates, atol=1e-10)


def test_least_squares_flags_nodes_the_observations_cannot_separate():
    generator = torch.Generator().manual_seed(1)
    knowledge = torch.randn(6, 4, generator=generator, dtype=torch.float64)
    knowledge[:, 3] = 2 * knowledge[:, 2]  # nodes 2 and 3 only ever appear as z2 + 2 z3
    updates = torch.randn(4, 10, generator=generator, dtype=torch.float64)
    recovered, reconstructible = least_squares_updates(knowledge, knowledge @ updates)
    assert reconstructible.tolist() == [True, True, False, False]
    assert torch.allclose(recovered[:2], updates[:2], atol=1e-10)
    assert not torch.allclose(recovered[2:], updates[2:], atol=1e-3)
    combined = recovered[2] + 2 * recovered[3]  # what the observations do determine
    assert torch.allclose(combined, updates[2] + 2 * updates[3], atol=1e-10)


def metropolis_hastings(adjacency: torch.Tensor) -> torch.Tensor:
    degree = adjacency.sum(dim=1)
    weights = adjacency / (torch.maximum(degree[:, None], degree[None, :]) + 1)
    return weights + torch.diag(1 - weights.sum(dim=1))


def gossip_knowledge(mixing: torch.Tensor, attacker: int, iterations: int) -> torch.Tensor:
    """El Mrini et al. 2024's gossip attack: the attacker knows its own value and receives, at every
    iteration t, each neighbour j's current value ``(W^t x^0)_j``."""
    n = len(mixing)
    neighbours = [j for j in range(n) if j != attacker and mixing[attacker, j] > 0]
    rows, power = [torch.eye(n, dtype=mixing.dtype)[attacker]], torch.eye(n, dtype=mixing.dtype)
    for _ in range(iterations):
        rows += [power[j] for j in neighbours]
        power = mixing @ power
    return torch.stack(rows)


def test_gossip_attacker_at_the_end_of_a_path_recovers_every_value():
    n = 6
    adjacency = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n - 1):
        adjacency[i, i + 1] = adjacency[i + 1, i] = 1
    values = torch.randn(n, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    knowledge = gossip_knowledge(metropolis_hastings(adjacency), attacker=0, iterations=n)
    recovered, reconstructible = least_squares_updates(knowledge, knowledge @ values)
    assert reconstructible.all()
    assert torch.allclose(recovered, values, atol=1e-6)
    few = gossip_knowledge(metropolis_hastings(adjacency), attacker=0, iterations=2)
    assert least_squares_updates(few, few @ values)[1].tolist() == [True, True, True] + [False] * 3


def test_gossip_attacker_on_a_star_leaf_cannot_tell_the_other_leaves_apart():
    adjacency = torch.zeros(4, 4, dtype=torch.float64)
    adjacency[1, [0, 2, 3]] = adjacency[[0, 2, 3], 1] = 1  # centre 1, attacker leaf 0
    values = torch.randn(4, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    knowledge = gossip_knowledge(metropolis_hastings(adjacency), attacker=0, iterations=10)
    recovered, reconstructible = least_squares_updates(knowledge, knowledge @ values)
    assert reconstructible.tolist() == [True, True, False, False]
    assert torch.allclose(recovered[:2], values[:2], atol=1e-8)
    assert torch.allclose(recovered[2], (values[2] + values[3]) / 2, atol=1e-8)


def test_update_functions_refuse_mismatched_shapes():
    with pytest.raises(PrivlabError, match="inbox"):
        isolate_update(torch.zeros(4), torch.zeros(4), torch.zeros(2, 3), torch.zeros(2), 0.5)
    with pytest.raises(PrivlabError, match="inbox_weights"):
        isolate_update(torch.zeros(4), torch.zeros(4), torch.zeros(2, 4), torch.zeros(3), 0.5)
    with pytest.raises(PrivlabError, match="observations"):
        least_squares_updates(torch.ones(3, 2), torch.ones(4, 5))
    with pytest.raises(PrivlabError, match="knowledge"):
        least_squares_updates(torch.ones(3), torch.ones(3, 5))
