"""Local training of all nodes at once: stacked gradients and a stacked SGD optimizer.

Two gradient paths compute the per-node gradient of each node's loss on its own batch,
for every node in one call. A node's loss is the mean over its batch or, given per-sample
``weights[n, B]``, the weighted sum ``sum_b w[i, b] loss[i, b]`` (a zero weight masks a
padding position out; see ``Batch``):

* ``BatchedSequentialGrad`` (fast path): models that are ``nn.Sequential`` of
  ``Flatten``/``Linear`` and ReLU/Tanh/Sigmoid run as batched matrix products over
  the node dimension, with the backward pass written out by hand.
* ``VmapGrad`` (any ``nn.Module`` without buffers): ``torch.func.vmap`` of
  ``grad(functional_call)`` over the node dimension.

Both are checked against per-node autograd (the ``LoopEngine``) in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from privlab.errors import check
from privlab.state import ParamSpec


@dataclass(frozen=True)
class SGDConfig:
    """Hyper-parameters of local SGD; the semantics are those of ``torch.optim.SGD``."""

    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False

    def __post_init__(self) -> None:
        check(self.lr > 0, "training.lr", "> 0", self.lr)
        check(0 <= self.momentum < 1, "training.momentum", "in [0, 1)", self.momentum)
        check(self.weight_decay >= 0, "training.weight_decay", ">= 0", self.weight_decay)
        check(0 <= self.dampening <= 1, "training.dampening", "in [0, 1]", self.dampening)
        check(
            not self.nesterov or (self.momentum > 0 and self.dampening == 0),
            "training.nesterov",
            "used with momentum > 0 and dampening 0",
            self.nesterov,
        )

    def torch_optimizer(self, params) -> torch.optim.SGD:
        """The equivalent per-node ``torch.optim.SGD`` (used by the reference engine)."""
        return torch.optim.SGD(
            params,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            dampening=self.dampening,
            nesterov=self.nesterov,
        )


class StackedSGD:
    """``torch.optim.SGD`` applied row-wise to a stacked ``[n, D]`` parameter matrix."""

    def __init__(self, config: SGDConfig):
        self.config = config
        self.momentum_buffer: torch.Tensor | None = None

    def step(self, params: torch.Tensor, grads: torch.Tensor) -> None:
        """Update ``params`` in place from ``grads`` (both ``[n, D]``)."""
        c = self.config
        d_p = grads if c.weight_decay == 0 else grads.add(params, alpha=c.weight_decay)
        if c.momentum != 0:
            if self.momentum_buffer is None:
                self.momentum_buffer = d_p.clone()
            else:
                self.momentum_buffer.mul_(c.momentum).add_(d_p, alpha=1 - c.dampening)
            d_p = (
                d_p.add(self.momentum_buffer, alpha=c.momentum)
                if c.nesterov
                else self.momentum_buffer
            )
        params.add_(d_p, alpha=-c.lr)


_BACKWARD = {
    nn.ReLU: lambda delta, out: delta.masked_fill_(out <= 0, 0.0),
    nn.Tanh: lambda delta, out: delta.mul_(1 - out * out),
    nn.Sigmoid: lambda delta, out: delta.mul_(out * (1 - out)),
    nn.Identity: lambda delta, out: delta,
}
"""Back-propagation through each supported activation, in place, from its output."""


def is_batchable_sequential(model: nn.Module) -> bool:
    """Whether ``model`` is a Sequential of Flatten (first only), Linear and ReLU/Tanh/Sigmoid."""
    if not isinstance(model, nn.Sequential) or len(model) == 0:
        return False
    layers = list(model)
    if isinstance(layers[0], nn.Flatten):
        layers = layers[1:]
    has_linear = any(isinstance(m, nn.Linear) for m in layers)
    return has_linear and all(type(m) in (nn.Linear, *_BACKWARD) for m in layers)


@dataclass(frozen=True)
class _Linear:
    weight: slice
    bias: slice | None
    out_features: int
    in_features: int


@dataclass(frozen=True)
class Batch:
    """Every node's batch: global sample indices ``[n, B]`` and per-sample loss weights.

    Node i's loss is ``sum_b weights[i, b] * loss(indices[i, b])``; padding positions have
    weight 0 (and a valid index, so the forward pass stays finite). ``weights`` is None
    when every position is a real sample of weight ``1 / B`` (the plain mean).
    """

    indices: torch.Tensor
    weights: torch.Tensor | None = None


def weighted_cross_entropy(
    logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy of one batch: ``sum_b weights[b] * loss_b``, or the mean without weights."""
    if weights is None:
        return F.cross_entropy(logits, y)
    return (F.cross_entropy(logits, y, reduction="none") * weights).sum()


class BatchedSequentialGrad:
    """Per-node gradients of an MLP-like ``nn.Sequential`` via batched matrix products.

    Forward and backward are written out by hand (``bmm`` over the node dimension): for
    a linear layer ``h' = h W^T + b``, ``dW = delta^T h``, ``db = sum delta``,
    ``dh = delta W``; the cross-entropy gradient is ``(softmax - onehot) / B``, or
    ``(softmax - onehot) * w`` with per-sample weights. Checked against autograd in the tests.
    """

    def __init__(self, model: nn.Sequential, spec: ParamSpec):
        self.spec = spec
        slots = {s.name: s for s in spec.slots}
        self.layers: list[_Linear | nn.Module] = []
        for name, module in model.named_children():
            if isinstance(module, nn.Linear):
                w, b = slots[f"{name}.weight"], slots.get(f"{name}.bias")
                self.layers.append(
                    _Linear(
                        slice(w.offset, w.stop),
                        None if b is None else slice(b.offset, b.stop),
                        module.out_features,
                        module.in_features,
                    )
                )
            elif not isinstance(module, nn.Flatten):
                self.layers.append(module)

    def _linear(self, params: torch.Tensor, layer: _Linear, h: torch.Tensor) -> torch.Tensor:
        n = params.shape[0]
        weight = params[:, layer.weight].view(n, layer.out_features, layer.in_features)
        out = torch.bmm(h, weight.transpose(1, 2))
        return out if layer.bias is None else out.add_(params[:, layer.bias].unsqueeze(1))

    def forward(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[n, B, C]`` of every node on its inputs ``x[n, B, ...]``."""
        h = x.reshape(params.shape[0], x.shape[1], -1)
        for layer in self.layers:
            h = self._linear(params, layer, h) if isinstance(layer, _Linear) else layer(h)
        return h

    def forward_shared(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[n, T, C]`` of every node on one shared input batch ``x[T, ...]``."""
        return self.forward(params, x.unsqueeze(0).expand(params.shape[0], *x.shape))

    @torch.no_grad()
    def __call__(
        self,
        params: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        weights: torch.Tensor | None = None,
        out: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradients ``[n, D]`` (written into ``out`` when given) and losses ``[n]`` of the
        loss weighted by ``weights[n, B]`` (see ``Batch``), or of the mean loss."""
        n, batch = params.shape[0], x.shape[1]
        h = x.reshape(n, batch, -1)
        saved = []  # the input of each linear layer, the output of each activation
        for layer in self.layers:
            if isinstance(layer, _Linear):
                saved.append(h)
                h = self._linear(params, layer, h)
            else:
                h = layer(h)
                saved.append(h)
        # softmax cross-entropy by hand: log_softmax on a last dimension of ~10 is slow on CPU
        shifted = h - h.amax(dim=-1, keepdim=True)
        exp = shifted.exp()
        total = exp.sum(dim=-1, keepdim=True)
        target = y.unsqueeze(-1)
        sample_losses = (total.log() - shifted.gather(-1, target)).squeeze(-1)
        delta = exp.div_(total).scatter_add_(-1, target, torch.full_like(target, -1, dtype=h.dtype))
        if weights is None:
            losses = sample_losses.mean(dim=1)
            delta.div_(batch)
        else:
            losses = (sample_losses * weights).sum(dim=1)
            delta.mul_(weights.unsqueeze(-1))
        pieces: dict[int, torch.Tensor] = {}  # gradient blocks by offset in the flat vector
        for position in range(len(self.layers) - 1, -1, -1):
            layer, h = self.layers[position], saved[position]
            if not isinstance(layer, _Linear):
                delta = _BACKWARD[type(layer)](delta, h)
                continue
            pieces[layer.weight.start] = torch.bmm(delta.transpose(1, 2), h).view(n, -1)
            if layer.bias is not None:
                pieces[layer.bias.start] = delta.sum(dim=1)
            if position > 0:
                weight = params[:, layer.weight].view(n, layer.out_features, layer.in_features)
                delta = torch.bmm(delta, weight)
        # one concatenation into a reused buffer: writing blocks into strided columns, or
        # concatenating into a fresh tensor, is several times slower on CPU
        out = torch.empty_like(params) if out is None else out
        return torch.cat([pieces[offset] for offset in sorted(pieces)], dim=1, out=out), losses


class VmapGrad:
    """Per-node gradients of any buffer-free module via ``vmap(grad(functional_call))``."""

    def __init__(self, model: nn.Module, spec: ParamSpec):
        self.model = model
        self.spec = spec

        def loss(
            row: torch.Tensor, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None
        ) -> torch.Tensor:
            logits = functional_call(model, spec.unflatten(row), (x,))
            return weighted_cross_entropy(logits, y, weights)

        self._grad = vmap(grad_and_value(loss), in_dims=(0, 0, 0, None))
        self._weighted_grad = vmap(grad_and_value(loss))
        self._logits = vmap(lambda row, x: functional_call(model, spec.unflatten(row), (x,)))
        self._logits_shared = vmap(
            lambda row, x: functional_call(model, spec.unflatten(row), (x,)), in_dims=(0, None)
        )

    def forward(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self._logits(params, x)

    def forward_shared(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self._logits_shared(params, x)

    def __call__(
        self,
        params: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        weights: torch.Tensor | None = None,
        out: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradients ``[n, D]`` (written into ``out`` when given) and losses ``[n]`` of the
        loss weighted by ``weights[n, B]`` (see ``Batch``), or of the mean loss."""
        path = self._grad if weights is None else self._weighted_grad
        grads, losses = path(params, x, y, weights)
        return (grads if out is None else out.copy_(grads)), losses


def stacked_gradient(model: nn.Module, spec: ParamSpec) -> BatchedSequentialGrad | VmapGrad:
    """The fastest exact per-node gradient path for ``model``."""
    if is_batchable_sequential(model):
        return BatchedSequentialGrad(model, spec)
    return VmapGrad(model, spec)


def sample_batches(
    padded_indices: torch.Tensor, sizes: torch.Tensor, batch_size: int, generator: torch.Generator
) -> Batch:
    """A uniform batch from each node's own data, drawn without replacement.

    ``padded_indices[n, m]`` holds each node's global sample indices (right-padded),
    ``sizes[n]`` how many are real. Node i draws ``min(batch_size, sizes[i])`` distinct
    samples: a batch larger than a node's data is the node's whole data, each sample once
    (never refilled by resampling, which would weigh some samples twice and cost memory
    in ``batch_size`` rather than in the data). The batch width is
    ``B = min(batch_size, m)``; positions past a node's draw are padding of weight 0, and
    the other weights are ``1 / min(batch_size, sizes[i])``, so the loss is the mean over
    the node's real samples. When every node has at least ``batch_size`` samples there is
    no padding and ``weights`` is None. Batches of different steps are independent draws.
    """
    n, m = padded_indices.shape
    width = min(batch_size, m)
    keys = torch.rand(n, m, generator=generator)
    keys[torch.arange(m).unsqueeze(0) >= sizes.unsqueeze(1)] = 2.0  # padding sorts last
    positions = keys.argsort(dim=1, stable=True)[:, :width]
    if int(sizes.min()) >= batch_size:
        return Batch(padded_indices.gather(1, positions))
    drawn = sizes.clamp(max=batch_size).unsqueeze(1)
    real = torch.arange(width).unsqueeze(0) < drawn
    positions = torch.where(real, positions, 0)  # padding reads the node's first sample
    weights = real / drawn.to(torch.float32)
    return Batch(padded_indices.gather(1, positions), weights)
