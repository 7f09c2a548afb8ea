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

For DP-SGD (Abadi et al., CCS 2016) both also compute, with ``clipped_sum``, each node's
weighted sum of per-sample gradients clipped to L2 norm at most ``C``; the per-node
reference is ``clipped_grad_autograd``. The MLP path never forms per-sample gradients:
it gets their norms from the layers' inputs and output gradients ("ghost norms").
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

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


@dataclass(frozen=True)
class LocalTraining:
    """What each node does locally each round."""

    batch_size: int = 16
    local_steps: int = 1
    sgd: SGDConfig = field(default_factory=SGDConfig)

    def __post_init__(self) -> None:
        check(self.batch_size >= 1, "training.batch_size", ">= 1", self.batch_size)
        check(self.local_steps >= 1, "training.local_steps", ">= 1", self.local_steps)


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
    # out >= 0, so sign(out) is the 0/1 mask; a product is ~10x faster than masked_fill_
    nn.ReLU: lambda delta, out: delta.mul_(out.sign()),
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


def weighted_cross_entropy(
    logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy of one batch: ``sum_b weights[b] * loss_b``, or the mean without weights."""
    if weights is None:
        return F.cross_entropy(logits, y)
    return (F.cross_entropy(logits, y, reduction="none") * weights).sum()


CLIP_EPSILON = 1e-6
"""Added to each per-sample norm before dividing, as Opacus does."""


def clip_factors(norms: torch.Tensor, clip_norm: float) -> torch.Tensor:
    """Per-sample factors ``min(1, C / (norm + 1e-6))`` that scale gradients of L2 norm
    ``norms`` to at most ``C`` (DP-SGD's clipping, Abadi et al. 2016; Opacus's formula)."""
    return (clip_norm / (norms + CLIP_EPSILON)).clamp_(max=1.0)


def weighted_mean_loss(losses: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """``sum_b w_b losses_b / sum_b w_b`` over the last dimension (0 where all weights are 0),
    or the plain mean without weights."""
    if weights is None:
        return losses.mean(dim=-1)
    total = weights.sum(dim=-1).clamp(min=torch.finfo(losses.dtype).tiny)
    return (losses * weights).sum(dim=-1) / total


def clipped_grad_autograd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    weights: torch.Tensor | None,
    clip_norm: float,
) -> torch.Tensor:
    """Set each ``p.grad`` of ``model`` to ``sum_b w_b g_b min(1, C / (||g_b|| + 1e-6))``.

    The reference for ``clipped_sum``, one sample at a time with plain autograd: ``g_b`` is
    the gradient of sample ``b``'s cross-entropy on ``x[B, ...]``, ``y[B]``, and ``||g_b||``
    its L2 norm over all the parameters together (flat clipping, Abadi et al. 2016).
    ``weights[B]`` None means all ones. Returns the weighted mean loss (0 if all weights are 0).
    """
    params = list(model.parameters())
    sums = [torch.zeros_like(p) for p in params]
    losses = []
    for b in range(x.shape[0]):
        model.zero_grad()
        loss = F.cross_entropy(model(x[b : b + 1]), y[b : b + 1])
        loss.backward()
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        factor = clip_factors(torch.cat([g.reshape(-1) for g in grads]).norm(), clip_norm)
        if weights is not None:
            factor = factor * weights[b]
        for total, g in zip(sums, grads):
            total.add_(g * factor)
        losses.append(loss.detach())
    for p, total in zip(params, sums):
        p.grad = total
    if not losses:  # an empty (Poisson) batch: zero gradient, zero loss
        return x.new_zeros(())
    return weighted_mean_loss(torch.stack(losses), weights)


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

    @staticmethod
    def _weight(params: torch.Tensor, layer: _Linear) -> torch.Tensor:
        return params[:, layer.weight].view(params.shape[0], layer.out_features, layer.in_features)

    def _linear(self, params: torch.Tensor, layer: _Linear, h: torch.Tensor) -> torch.Tensor:
        out = torch.bmm(h, self._weight(params, layer).transpose(1, 2))
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

    def _forward_backward(
        self, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Per-sample losses ``[n, B]``, the unscaled output gradient ``softmax - onehot``
        ``[n, B, C]`` of each sample's loss, and the tensors the backward pass needs."""
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
        return sample_losses, delta, saved

    def _backward(
        self, params: torch.Tensor, delta: torch.Tensor, saved: list[torch.Tensor]
    ) -> Iterator[tuple[_Linear, torch.Tensor, torch.Tensor]]:
        """``(layer, delta, input)`` of each linear layer, last first, back-propagating the
        logits' gradient ``delta``: ``delta[n, B, out]`` is the gradient of the layer's output.
        Each yielded ``delta`` is a tensor of its own, never changed afterwards."""
        for position in range(len(self.layers) - 1, -1, -1):
            layer, h = self.layers[position], saved[position]
            if not isinstance(layer, _Linear):
                delta = _BACKWARD[type(layer)](delta, h)
                continue
            yield layer, delta, h
            if position > 0:
                delta = torch.bmm(delta, self._weight(params, layer))

    @staticmethod
    def _add_layer_grads(
        pieces: dict[int, torch.Tensor], layer: _Linear, delta: torch.Tensor, h: torch.Tensor
    ) -> None:
        """Store the summed-over-samples gradients ``delta^T h`` and ``sum_b delta`` of
        ``layer`` in ``pieces`` (gradient blocks by offset in the flat vector)."""
        pieces[layer.weight.start] = torch.bmm(delta.transpose(1, 2), h).view(h.shape[0], -1)
        if layer.bias is not None:
            pieces[layer.bias.start] = delta.sum(dim=1)

    @staticmethod
    def _concatenate(
        pieces: dict[int, torch.Tensor], params: torch.Tensor, out: torch.Tensor | None
    ) -> torch.Tensor:
        # one concatenation into a reused buffer: writing blocks into strided columns, or
        # concatenating into a fresh tensor, is several times slower on CPU
        out = torch.empty_like(params) if out is None else out
        return torch.cat([pieces[offset] for offset in sorted(pieces)], dim=1, out=out)

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
        sample_losses, delta, saved = self._forward_backward(params, x, y)
        if weights is None:
            losses = sample_losses.mean(dim=1)
            delta.div_(x.shape[1])
        else:
            losses = (sample_losses * weights).sum(dim=1)
            delta.mul_(weights.unsqueeze(-1))
        pieces: dict[int, torch.Tensor] = {}
        for layer, layer_delta, h in self._backward(params, delta, saved):
            self._add_layer_grads(pieces, layer, layer_delta, h)
        return self._concatenate(pieces, params, out), losses

    @torch.no_grad()
    def clipped_sum(
        self,
        params: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        weights: torch.Tensor | None,
        clip_norm: float,
        out: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-node sums ``[n, D]`` of clipped per-sample gradients, and losses ``[n]``.

        ``sums[i] = sum_b w[i, b] g_ib min(1, C / (||g_ib|| + 1e-6))`` (DP-SGD, Abadi et
        al. 2016; Opacus's formula) with ``g_ib`` the gradient of sample ``b``'s loss and
        ``||.||`` the L2 norm over all parameters (flat clipping); ``weights`` None means
        all ones. ``losses[i]`` is the weighted mean loss (0 for all-zero weights). Written
        into ``out`` when given.

        Per-sample gradients are never formed: a linear layer's is ``delta_b a_b^T`` (and
        ``delta_b`` for the bias), of squared norm ``||delta_b||^2 ||a_b||^2`` (plus
        ``||delta_b||^2``), the "ghost norm" of Goodfellow 2015 and Li et al. 2022. One
        forward and one backward pass keep every layer's per-sample ``delta``; each layer's
        clipped sum is then one ``bmm`` of the deltas scaled by ``w_b c_b`` with its inputs.
        """
        sample_losses, delta, saved = self._forward_backward(params, x, y)
        layers = list(self._backward(params, delta, saved))
        squared_norms = torch.zeros_like(sample_losses)
        for layer, layer_delta, h in layers:  # norms reduce without a temporary [n, B, width]
            delta_norms = torch.linalg.vector_norm(layer_delta, dim=-1).square_()
            input_norms = torch.linalg.vector_norm(h, dim=-1).square_()
            squared_norms.addcmul_(delta_norms, input_norms)
            if layer.bias is not None:
                squared_norms.add_(delta_norms)
        scale = clip_factors(squared_norms.sqrt_(), clip_norm)
        if weights is not None:
            scale.mul_(weights)
        pieces: dict[int, torch.Tensor] = {}
        for layer, layer_delta, h in layers:
            self._add_layer_grads(pieces, layer, layer_delta.mul_(scale.unsqueeze(-1)), h)
        return self._concatenate(pieces, params, out), weighted_mean_loss(sample_losses, weights)


PER_SAMPLE_GRAD_BUDGET = 64 * 2**20
"""Bytes of per-sample gradients ``VmapGrad.clipped_sum`` holds at once (64 MiB)."""


class VmapGrad:
    """Per-node gradients of any buffer-free module via ``vmap(grad(functional_call))``."""

    def __init__(self, model: nn.Module, spec: ParamSpec):
        self.model = model
        self.spec = spec

        # gradients are taken with respect to the named parameter tensors, not the flat
        # row: differentiating through the row's slices would add a full-size zero tensor
        # per parameter (and per sample) in the backward pass
        def loss(
            tensors: dict[str, torch.Tensor],
            x: torch.Tensor,
            y: torch.Tensor,
            weights: torch.Tensor | None,
        ) -> torch.Tensor:
            return weighted_cross_entropy(functional_call(model, tensors, (x,)), y, weights)

        def sample_loss(
            tensors: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
        ) -> torch.Tensor:
            logits = functional_call(model, tensors, (x.unsqueeze(0),))
            return F.cross_entropy(logits, y.unsqueeze(0))

        self._grad = vmap(grad_and_value(loss), in_dims=(0, 0, 0, None))
        self._weighted_grad = vmap(grad_and_value(loss))
        # per-sample gradients and losses [n, B]: over nodes, then over samples
        self._sample_grads = vmap(vmap(grad_and_value(sample_loss), in_dims=(None, 0, 0)))
        self._logits = vmap(lambda row, x: functional_call(model, spec.unflatten(row), (x,)))
        self._logits_shared = vmap(
            lambda row, x: functional_call(model, spec.unflatten(row), (x,)), in_dims=(0, None)
        )

    def _flat(
        self, grads: dict[str, torch.Tensor], lead: int, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Named gradients ``[*lead, *shape]`` as one flat ``[*lead, D]`` tensor."""
        pieces = [grads[s.name].flatten(start_dim=lead) for s in self.spec.slots]
        return torch.cat(pieces, dim=-1) if out is None else torch.cat(pieces, dim=-1, out=out)

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
        grads, losses = path(self.spec.unflatten(params), x, y, weights)
        return self._flat(grads, 1, out), losses

    def clipped_sum(
        self,
        params: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        weights: torch.Tensor | None,
        clip_norm: float,
        out: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """What ``BatchedSequentialGrad.clipped_sum`` computes, for any buffer-free module:
        per node, the ``w``-weighted sum ``[n, D]`` of per-sample gradients each clipped by
        ``min(1, C / (||g|| + 1e-6))``, the norm taken over all parameters at once (flat
        clipping, Abadi et al. 2016), and the weighted mean loss ``[n]``.

        Per-sample gradients come from ``vmap`` over nodes of ``vmap`` over samples of
        ``grad``, a block of nodes (or of one node's samples) at a time so that they take
        at most ``PER_SAMPLE_GRAD_BUDGET`` bytes (64 MiB) at once.
        """
        n, batch = x.shape[:2]
        sample_bytes = params.shape[1] * params.element_size()
        # all samples of as many nodes as fit, else as many samples of one node as fit
        samples = max(1, min(batch, PER_SAMPLE_GRAD_BUDGET // sample_bytes))
        nodes = max(1, PER_SAMPLE_GRAD_BUDGET // (sample_bytes * samples))
        out = torch.empty_like(params) if out is None else out
        sample_losses = params.new_empty(n, batch)
        for first in range(0, n, nodes):
            rows = slice(first, first + nodes)
            sums = out[rows].zero_()
            for start in range(0, batch, samples):
                cols = slice(start, start + samples)
                named, sample_losses[rows, cols] = self._sample_grads(
                    self.spec.unflatten(params[rows]), x[rows, cols], y[rows, cols]
                )
                grads = self._flat(named, 2)
                scale = clip_factors(grads.norm(dim=-1), clip_norm)
                if weights is not None:
                    scale.mul_(weights[rows, cols])
                sums.unsqueeze(1).baddbmm_(scale.unsqueeze(1), grads)
        return out, weighted_mean_loss(sample_losses, weights)


def stacked_gradient(model: nn.Module, spec: ParamSpec) -> BatchedSequentialGrad | VmapGrad:
    """The fastest exact per-node gradient path for ``model``."""
    if is_batchable_sequential(model):
        return BatchedSequentialGrad(model, spec)
    return VmapGrad(model, spec)
