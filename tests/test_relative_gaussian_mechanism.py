"""Relative Gaussian mechanism (Hendrikx, Mangold, Bellet, AISTATS 2024) on full batches:
noise std per node, both engines equal, the ledger's epsilon, input validation, and
brute-force checks of the logistic-regression and ridge sensitivity bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import privlab.mechanisms.relative_gaussian  # noqa: F401 (registers the mechanism)
from privlab.accounting import RDPAccountant
from privlab.accounting.events import RelativeGaussianEvent
from privlab.context import RoundContext
from privlab.data import make_federated
from privlab.engine import ENGINES
from privlab.errors import PrivlabError
from privlab.gradient import GRADIENT_MECHANISMS
from privlab.ledger import PrivacyLedger
from privlab.mechanisms.gossip import DecentralizedSGD
from privlab.mechanisms.relative_gaussian import (
    RelativeGaussian,
    logreg_sensitivity,
    ridge_sensitivity,
)
from privlab.models import build_model
from privlab.rng import NodeStreams
from privlab.topology import build_topology
from privlab.training import LocalTraining, SGDConfig

NODES = 4


def logreg_engine(kind: str, gradient, *, rounds_steps: int = 2, seed: int = 0):
    """A ``logreg`` engine on breast_cancer over a ring (conftest's make_engine passes
    MLP options whenever model_options is empty, which logreg does not take)."""
    data = make_federated("breast_cancer", NODES, seed=seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = build_model("logreg", data.dataset.input_shape, data.dataset.num_classes)
    topo = build_topology("ring", NODES, seed=seed)
    training = LocalTraining(batch_size=8, local_steps=rounds_steps, sgd=SGDConfig(lr=0.5))
    return ENGINES[kind](
        net, data, topo, DecentralizedSGD(), training, seed=seed, gradient=gradient
    )


def node_sensitivities(relative: bool):
    data = make_federated("breast_cancer", NODES, seed=0)
    return logreg_sensitivity(data.dataset.X, *data.padded_node_indices(), relative=relative)


def test_registered():
    assert GRADIENT_MECHANISMS["relative-gaussian"] is RelativeGaussian
    assert RelativeGaussian.name == "relative-gaussian"


def test_noise_std_per_node_is_k_times_sensitivity():
    n, dim, steps, k = 6, 400, 10, 2.5
    deltas = [0.0, 0.1, 0.1, 0.3, 0.0, 0.5]
    radii = [1.0, 0.0, 2.0, 0.5, 1.0, 1.0]  # nodes 0 and 4 share (0, 1)
    mech = RelativeGaussian(k, deltas, radii)
    context = RoundContext(
        num_nodes=n,
        dim=dim,
        topology=build_topology("ring", n),
        training=LocalTraining(),
        node_indices=torch.arange(n).unsqueeze(1),
        node_sizes=torch.ones(n, dtype=torch.int64),
        streams=NodeStreams(3),
    )
    mech.setup(context)
    gen = torch.Generator().manual_seed(0)
    grads = torch.randn(n, dim, generator=gen) * torch.linspace(0.1, 2.0, n).unsqueeze(1)
    nodes = torch.arange(n)
    noise = torch.stack(
        [mech.privatize(grads.clone(), 0, s, nodes) - grads for s in range(steps)]
    )  # [steps, n, dim]
    measured = noise.permute(1, 0, 2).reshape(n, -1).std(dim=1)
    expected = k * (torch.tensor(deltas) * grads.norm(dim=1) + torch.tensor(radii))
    torch.testing.assert_close(measured, expected, rtol=0.05, atol=0.0)
    # a block of nodes alone draws the same noise as with the others
    block = torch.tensor([3, 1])
    alone = mech.privatize(grads[block].clone(), 0, 0, block) - grads[block]
    torch.testing.assert_close(alone, noise[0][block], rtol=0, atol=1e-6)
    # one event per distinct (Delta, R), with its nodes
    mech.account(0, 0)
    emitted = context.drain().node_events
    assert len(emitted) == 5
    for event, ids in emitted:
        for i in ids.tolist():
            assert event == RelativeGaussianEvent(k, deltas[i], radii[i], dim)
    assert sorted(i for _, ids in emitted for i in ids.tolist()) == list(range(n))


def test_batch_is_each_nodes_whole_data_with_mean_weights():
    engine = logreg_engine("vectorized", RelativeGaussian(4.0, 0.0, 1.0))
    batch = engine.gradient_mechanism.batch(0, 0, engine.nodes)
    for i in range(NODES):
        m = int(engine.node_sizes[i])
        assert sorted(batch.indices[i, :m].tolist()) == sorted(engine.node_indices[i, :m].tolist())
        assert bool((batch.indices[i] >= 0).all())
        torch.testing.assert_close(batch.weights[i, :m], torch.full((m,), 1.0 / m))
        assert float(batch.weights[i, m:].abs().sum()) == 0.0


@pytest.mark.parametrize("relative", [False, True], ids=["gaussian", "relative"])
def test_both_engines_equal_and_ledger_epsilon(relative):
    rounds, steps = 2, 2
    deltas, radii = node_sensitivities(relative)
    runs = []
    for kind in ("vectorized", "loop"):
        engine = logreg_engine(kind, RelativeGaussian(3.0, deltas, radii), rounds_steps=steps)
        runs.append((engine, [engine.run_round(t) for t in range(rounds)]))
    (vec, reports), (loop, _) = runs
    assert (vec.params - vec.initial_state).abs().max() > 1e-3
    assert bool(torch.isfinite(vec.params).all())
    assert (vec.params - loop.params).abs().max() < 1e-5
    ledger = PrivacyLedger(NODES)
    for report in reports:
        ledger.record(report.emitted)
    epsilon = ledger.epsilon()
    for i in range(NODES):
        event = RelativeGaussianEvent(3.0, float(deltas[i]), float(radii[i]), vec.spec.dim)
        expected = RDPAccountant().compose(event, rounds * steps).get_epsilon(ledger.delta)
        assert math.isclose(float(epsilon[i]), expected, rel_tol=1e-9)
    assert vec.gradient_mechanism.describe()["name"] == "relative-gaussian"


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"relative_sensitivity": 1.0}, "relative_sensitivity"),
        ({"relative_sensitivity": -0.1}, "relative_sensitivity"),
        ({"relative_sensitivity": [0.1, 1.5]}, r"relative_sensitivity\[1\]"),
        ({"noise_multiplier": 0}, "noise_multiplier"),
        ({"noise_multiplier": float("nan")}, "noise_multiplier"),
        ({"absolute_sensitivity": -1.0}, "absolute_sensitivity"),
        ({"absolute_sensitivity": float("inf")}, "absolute_sensitivity"),
        ({"absolute_sensitivity": None}, "absolute_sensitivity.*logreg_sensitivity"),
        ({"relative_sensitivity": None}, "relative_sensitivity.*logreg_sensitivity"),
    ],
)
def test_bad_inputs_are_refused_naming_the_field(options, field):
    kwargs = {"noise_multiplier": 4.0, "relative_sensitivity": 0.1, "absolute_sensitivity": 1.0}
    kwargs.update(options)
    with pytest.raises(PrivlabError, match=field):
        RelativeGaussian(**kwargs)


def test_delta_one_says_why():
    with pytest.raises(PrivlabError, match="silently stops updating"):
        RelativeGaussian(4.0, 1.0, 1.0)


def test_per_node_values_must_match_the_node_count():
    with pytest.raises(PrivlabError, match="absolute_sensitivity"):
        logreg_engine("vectorized", RelativeGaussian(4.0, 0.0, [1.0, 2.0]))


def _logreg_grad(W, b, X, y):
    """Mean cross-entropy gradient of logits ``X W^T + b``, flattened (W, b), closed form:
    ``mean_j (p_j - e_{y_j}) (x_j, 1)^T``."""
    residual = torch.softmax(X @ W.T + b, dim=1) - F.one_hot(y, W.shape[0]).to(X.dtype)
    return torch.cat([(residual.T @ X).reshape(-1), residual.sum(dim=0)]) / len(X)


def test_logreg_closed_form_gradient_is_autograds():
    gen = torch.Generator().manual_seed(0)
    X, y = torch.randn(7, 3, generator=gen), torch.randint(4, (7,), generator=gen)
    W = torch.randn(4, 3, generator=gen).requires_grad_(True)
    b = torch.randn(4, generator=gen).requires_grad_(True)
    F.cross_entropy(X @ W.T + b, y).backward()
    auto = torch.cat([W.grad.reshape(-1), b.grad])
    torch.testing.assert_close(_logreg_grad(W.detach(), b.detach(), X, y), auto)


def test_logreg_bound_brute_force():
    """Removing any one sample (m -> m - 1), or adding one of norm at most the node's
    largest (m -> m + 1), changes the full-batch mean gradient by at most R (Delta = 0),
    and by at most ||g_D|| / (m - 1) + G / (m - 1) in the relative form, at random
    parameter points, some of them with saturated softmax outputs."""
    gen = torch.Generator().manual_seed(1)
    f64 = torch.float64
    for m, d, c in ((3, 2, 2), (5, 4, 3), (9, 3, 4)):
        X = torch.randn(m, d, generator=gen, dtype=f64) * 2.0
        y = torch.randint(c, (m,), generator=gen)
        indices, sizes = torch.arange(m).unsqueeze(0), torch.tensor([m])
        (d0,), (r0,) = logreg_sensitivity(X, indices, sizes)
        (d1,), (r1,) = logreg_sensitivity(X, indices, sizes, relative=True)
        assert float(d0) == 0.0 and math.isclose(float(d1), 1 / (m - 1))
        biggest = X.norm(dim=1).max()
        worst = 0.0
        for scale in (0.1, 1.0, 10.0, 100.0):
            for _ in range(4):
                W = torch.randn(c, d, generator=gen, dtype=f64) * scale
                b = torch.randn(c, generator=gen, dtype=f64) * scale
                g = _logreg_grad(W, b, X, y)
                z = torch.randn(d, generator=gen, dtype=f64)
                z = z / z.norm() * biggest
                neighbours = [(X[torch.arange(m) != j], y[torch.arange(m) != j]) for j in range(m)]
                for label in range(c):
                    neighbours.append(
                        (torch.cat([X, z.unsqueeze(0)]), torch.cat([y, torch.tensor([label])]))
                    )
                for Xn, yn in neighbours:
                    change = float((g - _logreg_grad(W, b, Xn, yn)).norm())
                    assert change <= float(r0) * (1 + 1e-9)
                    assert change <= float(d1) * float(g.norm()) + float(r1) + 1e-12
                    worst = max(worst, change / float(r0))
        assert worst > 0.3  # the bound is not vacuous: it is approached


def test_logreg_sensitivity_per_node_ignores_padding():
    X = torch.tensor([[3.0, 4.0], [0.0, 0.0], [100.0, 0.0]])
    padded = torch.tensor([[0, 1], [1, -1]])
    deltas, radii = logreg_sensitivity(X, padded, torch.tensor([2, 1]))
    assert deltas.tolist() == [0.0, 0.0]
    assert radii.tolist() == pytest.approx([2 * math.sqrt(2) * math.sqrt(26) / 2, 2 * math.sqrt(2)])


@pytest.mark.parametrize("seed", range(4))
def test_ridge_sensitivity_brute_force(seed):
    """Zero-out adjacency (sample j removed, denominator kept at n): for every j and
    random parameter points x, ||g_D(x) - g_D'(x)|| <= Delta ||g_D(x)|| + R."""
    rng = np.random.default_rng(seed)
    n, d = int(rng.integers(3, 30)), int(rng.integers(1, 6))
    X = rng.normal(size=(n, d)) * rng.uniform(0.1, 3.0)
    y = rng.normal(size=n) * rng.uniform(0.1, 3.0)
    lam = float(10 ** rng.uniform(-3, 0))
    delta, r = ridge_sensitivity(X, y, lam)
    A = X.T @ X / n + lam * np.eye(d)
    b = X.T @ y / n
    Ainv_x = np.linalg.solve(A, X.T).T
    assert math.isclose(delta, max(np.linalg.norm(X, axis=1) * np.linalg.norm(Ainv_x, axis=1)) / n)
    theta_star = np.linalg.solve(A, b)
    worst = 0.0
    for scale in (1e-3, 1.0, 1e3):
        for _ in range(20):
            x = theta_star + rng.normal(size=d) * scale
            g = A @ x - b
            bound = delta * np.linalg.norm(g) + r
            for j in range(n):
                change = (X[j] * (X[j] @ x) - X[j] * y[j]) / n  # g_D - g_{D'}
                ratio = np.linalg.norm(change) / bound
                assert ratio <= 1 + 1e-9
                worst = max(worst, ratio)
        # sanity: the explicit neighbour gradient agrees with the closed form
        keep = np.arange(n) != 0
        g_prime = (X[keep].T @ X[keep] @ x - X[keep].T @ y[keep]) / n + lam * x
        np.testing.assert_allclose(g - g_prime, (X[0] * (X[0] @ x) - X[0] * y[0]) / n, atol=1e-8)
    assert worst > 0.05


def test_ridge_remove_mean_reproduces_the_code():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(10, 3)) + 2.0, rng.normal(size=10)
    delta, _ = ridge_sensitivity(X, y, 0.03, remove_mean=True)
    A = X.T @ X / 10 + 0.03 * np.eye(3)
    c = X - X.mean(axis=0)
    sq = np.linalg.inv(A) @ np.linalg.inv(A)
    expected = max(np.sqrt((v @ v) * (v @ sq @ v)) / 10 for v in c)
    assert math.isclose(delta, expected)
    with pytest.raises(PrivlabError, match="lam"):
        ridge_sensitivity(X, y, 0.0)


def test_without_options_the_sensitivity_is_computed_for_logreg_only():
    from conftest import make_engine

    from privlab.mechanisms import DecentralizedSGD, RelativeGaussian

    engine = make_engine(
        "vectorized",
        DecentralizedSGD(),
        nodes=6,
        model="logreg",
        model_options={},
        gradient=RelativeGaussian(noise_multiplier=2.0),
    )
    mechanism = engine.gradient_mechanism
    deltas, radii = logreg_sensitivity(engine.X, engine.node_indices, engine.node_sizes)
    assert torch.equal(mechanism.deltas, deltas.double()) and bool((mechanism.deltas == 0).all())
    assert torch.allclose(mechanism.radii, radii.double()) and bool((mechanism.radii > 0).all())
    assert mechanism.describe()["absolute_sensitivity"]["computed_for"] == "logreg"
    with pytest.raises(PrivlabError, match="for model 'logreg' only"):
        make_engine("vectorized", DecentralizedSGD(), gradient=RelativeGaussian())
