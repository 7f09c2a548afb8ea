"""A small model zoo for decentralized learning experiments; any ``torch.nn.Module`` works.

Models use GroupNorm rather than BatchNorm and no dropout, so a model is a pure function of
its parameters: per-sample gradients (``torch.func.vmap``) and DP-SGD apply unchanged.
Models are initialised from the global torch RNG; callers seed it (e.g. in ``fork_rng``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call

from privlab.errors import check, is_integer
from privlab.registry import Registry

ModelFactory = Callable[..., nn.Module]

models: Registry[ModelFactory] = Registry("model")

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
}


MAX_WIDTH = 2**24
"""Largest layer width or channel count: wider layers overflow torch's size arithmetic."""


def available_models() -> list[str]:
    """Names accepted by :func:`build_model`."""
    return models.names()


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, **options) -> nn.Module:
    """Build the registered model ``name`` for samples of ``input_shape`` and ``num_classes``.

    Keyword arguments are the model's options; an unknown one is an error listing valid ones.
    """
    factory = models.with_options(name, options, reserved=("input_shape", "num_classes"))
    shape = tuple(input_shape)
    ok = len(shape) >= 1 and all(_is_int(d, 1) for d in shape)
    check(ok, "input_shape", "a non-empty tuple of integers >= 1", input_shape)
    check(_is_int(num_classes, 2), "num_classes", "an integer >= 2", num_classes)
    return factory(tuple(int(d) for d in shape), int(num_classes), **options)


def resolve_model(
    spec: str | nn.Module, input_shape: tuple[int, ...], num_classes: int, **options
) -> nn.Module:
    """Return ``spec`` itself when it is a module, else :func:`build_model` of that name."""
    if isinstance(spec, nn.Module):
        check(
            not options,
            "model options",
            "empty when the model is a module instance",
            sorted(options),
        )
        return spec
    return build_model(spec, input_shape, num_classes, **options)


def count_parameters(model: nn.Module) -> int:
    """Total number of scalar parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def activation_sizes(model: nn.Module, sample: torch.Tensor) -> list[int]:
    """Elements per sample of the input ``sample[1, ...]`` and of every leaf module's output.

    A Sequential of Flatten, Linear and elementwise activations is read off its layers;
    any other model runs one forward pass on the device of ``sample`` (on the meta
    device nothing is computed or allocated, whatever the width of the layers).
    """
    sizes = [sample[0].numel()]
    if isinstance(model, nn.Sequential) and all(isinstance(m, _SIZED) for m in model):
        for layer in model:
            linear = isinstance(layer, nn.Linear)
            sizes.append(
                sizes[-1] // layer.in_features * layer.out_features if linear else sizes[-1]
            )
        return sizes

    def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        sizes.append(output[0].numel())

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    hooks = [m.register_forward_hook(record) for m in leaves]
    state = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    try:
        with torch.no_grad():
            functional_call(model, {k: v.to(sample.device) for k, v in state.items()}, (sample,))
    finally:
        for hook in hooks:
            hook.remove()
    return sizes


_SIZED = (nn.Linear, nn.Flatten, nn.Identity, *ACTIVATIONS.values())
"""Layers whose output size follows from their input size and attributes alone."""


def _is_int(value: object, minimum: int) -> bool:
    return is_integer(value) and value >= minimum


def _widths(value: object, field: str) -> tuple[int, ...]:
    ok = isinstance(value, Sequence) and not isinstance(value, str)
    ok = ok and all(_is_int(w, 1) and w <= MAX_WIDTH for w in value)
    check(ok, field, f"a sequence of integers in [1, {MAX_WIDTH}]", value)
    return tuple(int(w) for w in value)


@models.register("logreg")
def _logreg(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Multinomial logistic regression: Flatten -> Linear."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))


@models.register("mlp")
def _mlp(
    input_shape: tuple[int, ...],
    num_classes: int,
    hidden: Sequence[int] = (64, 32),
    activation: str = "relu",
) -> nn.Module:
    """Flatten -> (Linear -> activation) per hidden width -> Linear, as one flat Sequential."""
    widths = _widths(hidden, "model.hidden")
    ok = isinstance(activation, str) and activation in ACTIVATIONS
    check(ok, "model.activation", f"one of {sorted(ACTIVATIONS)}", activation)
    layers: list[nn.Module] = [nn.Flatten()]
    fan_in = math.prod(input_shape)
    for width in widths:
        layers += [nn.Linear(fan_in, width), ACTIVATIONS[activation]()]
        fan_in = width
    layers.append(nn.Linear(fan_in, num_classes))
    return nn.Sequential(*layers)


@models.register("cnn")
def _cnn(
    input_shape: tuple[int, ...],
    num_classes: int,
    channels: Sequence[int] = (16, 32),
    groups: int = 4,
) -> nn.Module:
    """Per width in ``channels``: Conv3x3 -> GroupNorm -> ReLU -> MaxPool2 (skipped once the
    feature map is under 2x2), then Flatten -> Linear. Input ``[C, H, W]``."""
    check(len(input_shape) == 3, "input_shape", "3-D [C, H, W] for model 'cnn'", input_shape)
    widths = _widths(channels, "model.channels")
    check(len(widths) >= 1, "model.channels", "a non-empty sequence of integers >= 1", channels)
    check(
        _is_int(groups, 1) and all(w % groups == 0 for w in widths),
        "model.groups",
        f"an integer >= 1 dividing every channel count {list(widths)}",
        groups,
    )
    in_channels, height, width = input_shape
    layers: list[nn.Module] = []
    for out_channels in widths:
        layers += [
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.GroupNorm(groups, out_channels),
            nn.ReLU(),
        ]
        if min(height, width) >= 2:
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
        in_channels = out_channels
    layers += [nn.Flatten(), nn.Linear(in_channels * height * width, num_classes)]
    return nn.Sequential(*layers)
