"""Stacked gradients and SGD against per-node autograd and torch.optim.SGD."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from privlab.models import build_model
from privlab.state import ParamSpec
from privlab.training import (
    BatchedSequentialGrad,
    SGDConfig,
    StackedSGD,
    VmapGrad,
    is_batchable_sequential,
    stacked_gradient,
)


def per_node_autograd(model, spec, params, x, y):
    grads, losses = [], []
    for row, xb, yb in zip(params, x, y):
        spec.load(model, row)
        model.zero_grad()
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
        losses.append(loss.detach())
    return torch.stack(grads), torch.stack(losses)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("logreg", {}),
        ("mlp", {"hidden": [16, 8]}),
        ("mlp", {"hidden": [12], "activation": "tanh"}),
        ("mlp", {"hidden": [12], "activation": "sigmoid"}),
    ],
)
def test_batched_sequential_gradient_equals_autograd(name, options):
    torch.manual_seed(0)
    model = build_model(name, (1, 8, 8), 10, **options)
    spec = ParamSpec.of(model)
    assert is_batchable_sequential(model)
    params = torch.randn(5, spec.dim) * 0.3
    x, y = torch.rand(5, 7, 1, 8, 8), torch.randint(0, 10, (5, 7))
    expected_grads, expected_losses = per_node_autograd(model, spec, params, x, y)
    for path in (BatchedSequentialGrad(model, spec), VmapGrad(model, spec)):
        grads, losses = path(params, x, y)
        assert torch.allclose(grads, expected_grads, atol=1e-6)
        assert torch.allclose(losses, expected_losses, atol=1e-6)


def test_models_outside_the_fast_path_use_vmap():
    torch.manual_seed(0)
    cnn = build_model("cnn", (1, 8, 8), 10, channels=[4, 4], groups=2)
    gelu = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.GELU(), nn.Linear(8, 10))
    for model in (cnn, gelu):
        spec = ParamSpec.of(model)
        path = stacked_gradient(model, spec)
        assert isinstance(path, VmapGrad)
        params = spec.flatten(model).repeat(3, 1) + 0.01 * torch.randn(3, spec.dim)
        x, y = torch.rand(3, 4, 1, 8, 8), torch.randint(0, 10, (3, 4))
        grads, _ = path(params, x, y)
        assert torch.allclose(grads, per_node_autograd(model, spec, params, x, y)[0], atol=1e-5)


def test_forward_shared_matches_per_node_forward():
    torch.manual_seed(1)
    model = build_model("mlp", (64,), 10, hidden=[16])
    spec = ParamSpec.of(model)
    params = torch.randn(4, spec.dim)
    x = torch.randn(9, 64)
    logits = stacked_gradient(model, spec).forward_shared(params, x)
    for node in range(4):
        spec.load(model, params[node])
        assert torch.allclose(logits[node], model(x), atol=1e-5)


@pytest.mark.parametrize(
    "config",
    [
        SGDConfig(lr=0.1),
        SGDConfig(lr=0.05, momentum=0.9, weight_decay=0.01),
        SGDConfig(lr=0.05, momentum=0.5, dampening=0.3),
        SGDConfig(lr=0.05, momentum=0.9, nesterov=True),
    ],
)
def test_stacked_sgd_equals_torch_sgd(config):
    torch.manual_seed(0)
    params = torch.randn(3, 5)
    reference = [p.clone().requires_grad_(True) for p in params]
    optimizers = [config.torch_optimizer([p]) for p in reference]
    stacked = StackedSGD(config)
    for _ in range(4):
        grads = torch.randn(3, 5)
        stacked.step(params, grads)
        for p, g, opt in zip(reference, grads, optimizers):
            p.grad = g.clone()
            opt.step()
    assert torch.allclose(params, torch.stack(reference).detach(), atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"lr": 0}, "training.lr"),
        ({"momentum": 1.0}, "training.momentum"),
        ({"weight_decay": -1}, "training.weight_decay"),
        ({"nesterov": True}, "training.nesterov"),
    ],
)
def test_invalid_sgd_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SGDConfig(**kwargs)


@pytest.mark.parametrize("model_name", ["mlp", "cnn"])
def test_weighted_gradients_equal_autograd_on_the_real_samples_only(model_name):
    torch.manual_seed(0)
    options = {"hidden": [12]} if model_name == "mlp" else {"channels": [4], "groups": 2}
    model = build_model(model_name, (1, 8, 8), 10, **options)
    spec = ParamSpec.of(model)
    params = spec.flatten(model).repeat(3, 1) + 0.05 * torch.randn(3, spec.dim)
    x, y = torch.rand(3, 6, 1, 8, 8), torch.randint(0, 10, (3, 6))
    real = torch.tensor([[1] * 6, [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    weights = real / real.sum(dim=1, keepdim=True)
    x[~real] = 1e3  # padding content must not matter
    expected = [
        per_node_autograd(
            model, spec, params[i : i + 1], x[i : i + 1, real[i]], y[i : i + 1, real[i]]
        )
        for i in range(3)
    ]
    paths = [VmapGrad(model, spec)]
    if model_name == "mlp":
        paths.append(BatchedSequentialGrad(model, spec))
    for path in paths:
        grads, losses = path(params, x, y, weights)
        for i, (grad, loss) in enumerate(expected):
            assert torch.allclose(grads[i], grad[0], atol=1e-5)
            assert torch.allclose(losses[i], loss[0], atol=1e-5)
