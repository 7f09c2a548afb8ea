"""The model zoo: structure, shapes, options and vmap-friendliness."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from privlab.errors import PrivlabError, UnknownNameError
from privlab.models import available_models, build_model, count_parameters, resolve_model


def test_available_models():
    assert available_models() == ["cnn", "logreg", "mlp"]


@pytest.mark.parametrize("name", ["logreg", "mlp"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (30,)])
def test_flat_models_output_shape(name, shape):
    model = build_model(name, shape, 10)
    assert model(torch.randn(5, *shape)).shape == (5, 10)


def test_logreg_is_flatten_linear():
    model = build_model("logreg", (1, 8, 8), 10)
    assert [type(m) for m in model] == [nn.Flatten, nn.Linear]
    assert (model[1].in_features, model[1].out_features) == (64, 10)
    assert count_parameters(model) == 64 * 10 + 10


def test_mlp_layer_structure():
    model = build_model("mlp", (30,), 2)
    assert type(model) is nn.Sequential
    assert [type(m) for m in model] == [
        nn.Flatten,
        nn.Linear,
        nn.ReLU,
        nn.Linear,
        nn.ReLU,
        nn.Linear,
    ]
    assert [(m.in_features, m.out_features) for m in model if isinstance(m, nn.Linear)] == [
        (30, 64),
        (64, 32),
        (32, 2),
    ]
    tanh = build_model("mlp", (4,), 3, hidden=[5], activation="tanh")
    assert [type(m) for m in tanh] == [nn.Flatten, nn.Linear, nn.Tanh, nn.Linear]
    assert count_parameters(tanh) == 4 * 5 + 5 + 5 * 3 + 3
    gelu = build_model("mlp", (4,), 3, hidden=(), activation="gelu")
    assert [type(m) for m in gelu] == [nn.Flatten, nn.Linear]


@pytest.mark.parametrize(
    ("shape", "features"),
    [
        ((1, 8, 8), 32 * 2 * 2),
        ((1, 28, 28), 32 * 7 * 7),
        ((3, 32, 32), 32 * 8 * 8),
        ((2, 3, 1), 32 * 3 * 1),
    ],
)
def test_cnn_shapes(shape, features):
    model = build_model("cnn", shape, 10)
    assert model(torch.rand(3, *shape)).shape == (3, 10)
    assert model[-1].in_features == features
    pools = sum(isinstance(m, nn.MaxPool2d) for m in model)
    assert pools == (2 if min(shape[1:]) >= 4 else 1 if min(shape[1:]) >= 2 else 0)


def test_cnn_options_and_norms():
    model = build_model("cnn", (1, 8, 8), 4, channels=(8, 12, 16), groups=2)
    norms = [m for m in model if isinstance(m, nn.GroupNorm)]
    assert [(n.num_groups, n.num_channels) for n in norms] == [(2, 8), (2, 12), (2, 16)]
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 4)
    for name in available_models():
        shape = (1, 8, 8)
        modules = list(build_model(name, shape, 10).modules())
        assert not any(
            isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.Dropout)) for m in modules
        )
    assert any(isinstance(m, nn.GroupNorm) for m in build_model("cnn", (1, 8, 8), 10).modules())


def test_cnn_per_sample_gradients_with_vmap():
    model = build_model("cnn", (1, 8, 8), 10)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, x, y):
        out = functional_call(model, p, (x.unsqueeze(0),))
        return nn.functional.cross_entropy(out, y.unsqueeze(0))

    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    assert grads["0.weight"].shape == (4, 16, 1, 3, 3)
    single = grad(loss)(params, x[1], y[1])
    assert torch.allclose(grads["0.weight"][1], single["0.weight"], atol=1e-6)


def test_models_use_the_global_rng():
    torch.manual_seed(0)
    first = build_model("mlp", (4,), 2)
    torch.manual_seed(0)
    second = build_model("mlp", (4,), 2)
    pairs = zip(first.parameters(), second.parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_resolve_model():
    module = nn.Linear(3, 2)
    assert resolve_model(module, (3,), 2) is module
    assert isinstance(resolve_model("logreg", (3,), 2)[1], nn.Linear)
    with pytest.raises(PrivlabError, match="^model options must be empty"):
        resolve_model(module, (3,), 2, hidden=(4,))


def test_unknown_model_lists_names():
    with pytest.raises(UnknownNameError, match="unknown model 'resnet'; valid: cnn, logreg, mlp"):
        build_model("resnet", (3,), 2)


@pytest.mark.parametrize(
    ("name", "shape", "options", "message"),
    [
        ("cnn", (64,), {}, r"^input_shape must be 3-D \[C, H, W\]"),
        ("cnn", (1, 8, 8), {"groups": 3}, "^model.groups must be an integer >= 1 dividing"),
        ("cnn", (1, 8, 8), {"channels": ()}, "^model.channels must be a non-empty"),
        ("mlp", (4,), {"activation": "swish"}, "^model.activation must be one of"),
        ("mlp", (4,), {"activation": []}, "^model.activation must be one of"),
        ("mlp", (4,), {"hidden": [2**24 + 1]}, "^model.hidden must be a sequence of integers in"),
        (
            "mlp",
            (4,),
            {"hidden": (8, 0)},
            r"^model.hidden must be a sequence of integers in \[1, 16777216\]",
        ),
        ("mlp", (4,), {"hidden": "64"}, "^model.hidden must be a sequence"),
        ("mlp", (4,), {"width": 3}, "unknown option 'width' for model 'mlp'; valid: activation"),
        ("logreg", (0,), {}, "^input_shape must be"),
    ],
)
def test_bad_options_name_the_field(name, shape, options, message):
    with pytest.raises(PrivlabError, match=message):
        build_model(name, shape, 10, **options)


def test_num_classes_must_be_at_least_two():
    with pytest.raises(PrivlabError, match="^num_classes must be an integer >= 2"):
        build_model("logreg", (3,), 1)
