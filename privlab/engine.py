"""Engines run rounds of a protocol over many simulated nodes.

``VectorizedEngine`` (the default) keeps all node models in one flat ``[n, D]`` tensor,
trains them in one call and lets the protocol aggregate with tensor ops.
``LoopEngine`` keeps one ``nn.Module`` and one ``torch.optim.SGD`` per node and runs
every step node by node: the slow, obviously correct reference the tests compare the
vectorized engine against. Both draw batches, plans and protocol randomness from the
same seeded streams (``privlab.rng``), so on one seed they compute the same numbers.

One round (``run_round``): the protocol's plan of who talks to whom; local SGD steps
(unless the protocol is not training), each one a gradient, the gradient mechanism
(clipping and noise, with its privacy events) and the optimizer step; then, for each of
the protocol's exchanges, ``protocol.send``, the observer records what curious parties
receive, ``protocol.receive``. What the components emitted through the round context
(privacy events, metrics) comes back in the ``RoundReport``.

Evaluation (``evaluate``) measures test accuracy and train loss on ``eval_nodes`` (every
node, or a fixed sample of ``eval_nodes`` of them) and ``test_indices`` (the test set, or
a fixed subsample), both drawn once from the seed, so every evaluation of a run and both
engines cover the same nodes and samples; consensus distance covers every node.
"""

from __future__ import annotations

import abc
import copy
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from privlab.context import Emissions, RoundContext
from privlab.contract import all_finite, check_received, check_sent
from privlab.devices import MovedOnce, resolve_device
from privlab.errors import PrivlabError, check, is_integer
from privlab.gradient import GradientMechanism
from privlab.models import activation_sizes
from privlab.observe import Observer
from privlab.partition import FederatedData
from privlab.plan import CommPlan
from privlab.protocol import Messages, Protocol
from privlab.registry import Registry
from privlab.rng import NodeStreams, numpy_generator
from privlab.sampling import Batch, shuffle_batches
from privlab.state import ParamSpec
from privlab.topology import Topology
from privlab.training import (
    BatchedSequentialGrad,
    LocalTraining,
    StackedSGD,
    clipped_grad_autograd,
    stacked_gradient,
    weighted_cross_entropy,
)

EVAL_BUDGET = 8 * 2**20
"""Bytes of the widest activation tensor of one evaluation block (nodes x samples): small
enough to stay in cache, which made evaluation about 3x faster than 250 MiB blocks."""
EVAL_SAMPLES = 256
"""Training samples per node on which ``train_loss`` is evaluated, by default."""
EVAL_NODES = 256
"""Nodes evaluated for ``test_accuracy`` and ``train_loss``, by default: every node of a
network up to this size, a fixed sample of this many in a larger one (the config's
``evaluation.nodes``). One evaluation costs about nodes x test samples forwards."""
SAMPLED_METRICS = ("test_accuracy", "train_loss")
"""The metrics ``Engine.evaluate`` computes on ``Engine.eval_nodes`` only."""
_IN_PLACE = {nn.ReLU: torch.relu_, nn.Tanh: torch.tanh_, nn.Sigmoid: torch.sigmoid_}
"""In-place forms of the activations ``BatchedSequentialGrad`` handles."""


@dataclass(frozen=True)
class RoundReport:
    """What a round cost and produced, per node ``[n]``: bytes sent by kind (payload,
    indices, metadata, over all exchanges), the mean loss of the round's local batches
    (None without training), and what the components emitted (privacy events, metrics)."""

    round: int
    bytes_by_kind: dict[str, torch.Tensor]
    batch_loss: torch.Tensor | None
    emitted: Emissions = field(default_factory=Emissions)

    @property
    def bytes_sent(self) -> torch.Tensor:
        return sum(self.bytes_by_kind.values())

    def metrics(self) -> dict[str, torch.Tensor]:
        """The per-node values ``metrics.csv`` records for this round."""
        out = {"bytes_sent": self.bytes_sent}
        out |= {f"bytes_{kind}": size for kind, size in self.bytes_by_kind.items()}
        if self.batch_loss is not None:
            out["batch_loss"] = self.batch_loss
        return out | self.emitted.metrics


class Engine(abc.ABC):
    """Shared round logic; subclasses hold the node models and train/aggregate them."""

    def __init__(
        self,
        model: nn.Module,
        data: FederatedData,
        topology: Topology,
        protocol: Protocol,
        training: LocalTraining | None = None,
        *,
        seed: int = 0,
        observer: Observer | None = None,
        gradient: GradientMechanism | None = None,
        eval_samples: int = EVAL_SAMPLES,
        eval_nodes: int | None = EVAL_NODES,
        eval_test_samples: int | None = None,
        device: str | torch.device = "cpu",
    ):
        check(
            topology.num_nodes == data.num_nodes,
            "topology.num_nodes",
            f"equal to the data's {data.num_nodes} nodes",
            topology.num_nodes,
        )
        if gradient is not None and not protocol.trains:
            raise PrivlabError(
                f"gradient mechanism {gradient.name!r} needs a protocol that trains; "
                f"protocol {protocol.name!r} does not train (remove the gradient section)"
            )
        training = training or LocalTraining()
        self.model, self.data, self.topology, self.protocol = model, data, topology, protocol
        self.training, self.seed, self.observer = training, seed, observer
        self.gradient_mechanism = gradient
        self.spec = ParamSpec.of(model)
        self.device = self._device(device)
        self.num_nodes = data.num_nodes
        self.nodes = torch.arange(self.num_nodes)
        self.X, self.y = data.dataset.X.to(self.device), data.dataset.y.to(self.device)
        node_indices, node_sizes = data.padded_node_indices()
        self.node_indices, self.node_sizes = (
            node_indices.to(self.device),
            node_sizes.to(self.device),
        )
        # what an evaluation covers, drawn once from the seed: the same at every evaluation
        for name, value in (("eval_nodes", eval_nodes), ("eval_test_samples", eval_test_samples)):
            valid = value is None or (is_integer(value) and value >= 1)
            check(valid, name, "an integer >= 1 or None (all)", value)
        self.eval_nodes = _sample(self.num_nodes, eval_nodes, seed, "evaluation-nodes")
        test_indices = torch.tensor(data.test_indices, dtype=torch.int64)
        self.num_test = len(test_indices)
        self.test_indices = test_indices[
            _sample(self.num_test, eval_test_samples, seed, "evaluation-test-samples")
        ].to(self.device)
        self.eval_indices, self.eval_mask = _evaluation_subset(
            node_indices[self.eval_nodes], node_sizes[self.eval_nodes], eval_samples
        )
        self.eval_indices, self.eval_mask = (
            self.eval_indices.to(self.device),
            self.eval_mask.to(self.device),
        )
        self.context = RoundContext(
            num_nodes=self.num_nodes,
            dim=self.spec.dim,
            topology=topology,
            training=training,
            node_indices=self.node_indices,
            node_sizes=self.node_sizes,
            streams=NodeStreams(seed, device=self.device),
            features=self.X,
            model=model,
            clip_norm=None if gradient is None else gradient.clip_norm,
        )
        protocol.setup(self.context)
        if gradient is not None:
            gradient.setup(self.context)
        self._plan_to_device = MovedOnce(self.device)
        initial_models = self.spec.flatten(model).to(self.device).repeat(self.num_nodes, 1)
        # a protocol's own state (a rumour's flags) may come from the CPU: moved here
        self.initial_state = protocol.initial_state(initial_models).to(self.device)

    def _device(self, device: str | torch.device) -> torch.device:
        """Where this engine computes (``privlab.devices``)."""
        return resolve_device(device)

    # -- the round --------------------------------------------------------------------

    def run_round(self, round: int) -> RoundReport:
        """Run round ``round``: local steps, then each exchange's send, observe, receive."""
        plan = self._plan(round)
        batch_loss = None
        if self.protocol.trains:
            losses = [self._train(round, step) for step in range(self.training.local_steps)]
            batch_loss = torch.stack(losses).mean(dim=0).cpu()
        sent: dict[str, torch.Tensor] = {}
        for exchange in range(self.protocol.exchanges):
            params = self.params
            messages = self.protocol.send(params, plan, round, exchange)
            check_sent(self.protocol, messages, self.num_nodes, round, exchange)
            messages = self._deliver(messages, round, exchange)
            if self.observer is not None:
                self.observer.record(round, exchange, messages)
            self._receive(params, messages, plan, round, exchange)
            check_received(self.protocol, params, self.params, round, exchange)
            for kind, size in self._sent_bytes(messages).items():
                size = size.cpu()
                sent[kind] = sent[kind] + size if kind in sent else size
        return RoundReport(round, sent, batch_loss, self.context.drain())

    def _plan(self, round: int) -> object:
        """The protocol's plan of ``round`` on the engine's device (``on_device``); a plan
        object the protocol returns again (a static topology's) is moved once."""
        return self._plan_to_device(self.protocol.plan(round))

    def _deliver(self, messages: Messages, round: int, exchange: int) -> Messages:
        """The messages as their receivers get them: as sent, in one process (the
        distributed engine carries those that cross processes here)."""
        return messages

    def _sent_bytes(self, messages: Messages) -> dict[str, torch.Tensor]:
        """Bytes each node sent ``[n]`` in one exchange, by kind."""
        return messages.bytes_by_sender(self.num_nodes)

    def agree_to_stop(self, requested: bool) -> bool:
        """Whether the run stops after this round (Ctrl-C): this process's request, or in
        a distributed run any process's."""
        return requested

    def non_finite_nodes(self) -> int:
        """How many nodes' parameters hold a NaN or an infinity (one cheap sum when none)."""
        params = self.params
        if all_finite(params):
            return 0
        return int((~torch.isfinite(params).all(dim=1)).sum())

    def _train(self, round: int, step: int) -> torch.Tensor:
        """One local step of every node; returns the batch losses ``[n]``."""
        losses = self._local_step(self._batch(round, step), round, step)
        if self.gradient_mechanism is not None:
            self.gradient_mechanism.account(round, step)
        return losses

    @property
    def trained_nodes(self) -> torch.Tensor:
        """The nodes this engine trains: every node (a distributed rank: its block)."""
        return self.nodes

    def _batch(self, round: int, step: int) -> Batch:
        """The trained nodes' batches: the gradient mechanism's, or shuffled fixed-size ones."""
        mechanism, nodes = self.gradient_mechanism, self.trained_nodes
        batch = None if mechanism is None else mechanism.batch(round, step, nodes)
        if batch is not None:
            return batch
        return shuffle_batches(
            self.node_indices,
            self.node_sizes,
            self.training.batch_size,
            self.context.streams,
            round,
            step,
            nodes,
        )

    # -- evaluation -------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> dict[str, torch.Tensor]:
        """Per-node metrics on the CPU (see ``_evaluate``)."""
        return {name: values.cpu() for name, values in self._evaluate().items()}

    def _evaluate(self) -> dict[str, torch.Tensor]:
        """Per-node metrics: test_accuracy (with a test set) and train_loss ``[k]`` of the
        evaluated nodes ``eval_nodes``, consensus_distance ``[n]`` of every node
        (``metric_nodes`` says which nodes a metric's values belong to).

        ``test_accuracy`` is measured on ``test_indices`` (the whole test set, or a fixed
        subsample of it); ``train_loss`` is the mean loss on (up to ``eval_samples`` of)
        the node's own training data; ``consensus_distance`` is ``||x_v - mean_u x_u||^2``.
        """
        params = self.params
        metrics = {"consensus_distance": (params - params.mean(dim=0)).pow(2).sum(dim=1)}
        if self.protocol.trains:
            if len(self.test_indices):
                metrics["test_accuracy"] = self._test_accuracy()
            metrics["train_loss"] = self._train_loss()
        return metrics

    def metric_nodes(self, metric: str) -> torch.Tensor:
        """The ids of the nodes whose values ``metric`` holds, in order: ``eval_nodes``
        for the metrics of ``SAMPLED_METRICS``, every node for any other metric."""
        return self.eval_nodes if metric in SAMPLED_METRICS else self.nodes

    @property
    def evaluates_all_nodes(self) -> bool:
        """Whether ``eval_nodes`` is every node (``evaluation.nodes`` null or >= n)."""
        return len(self.eval_nodes) == self.num_nodes

    # -- what subclasses provide ---------------------------------------------------------

    @property
    @abc.abstractmethod
    def params(self) -> torch.Tensor:
        """Every node's parameters as one ``[n, D]`` tensor."""

    @abc.abstractmethod
    def _local_step(self, batch: Batch, round: int, step: int) -> torch.Tensor:
        """One SGD step of every node on its batch, through the gradient mechanism if
        any; returns the losses ``[n]``."""

    @abc.abstractmethod
    def _receive(
        self, params: torch.Tensor, messages: Messages, plan: CommPlan, round: int, exchange: int
    ) -> None:
        """Replace every node's state by what ``protocol.receive`` makes of its inbox."""

    @abc.abstractmethod
    def _test_accuracy(self) -> torch.Tensor:
        """Accuracy ``[k]`` of each of ``eval_nodes`` on ``test_indices``."""

    @abc.abstractmethod
    def _train_loss(self) -> torch.Tensor:
        """Loss ``[k]`` of each of ``eval_nodes`` on its ``eval_indices``."""


ENGINES: Registry[type[Engine]] = Registry("engine")


@ENGINES.register("vectorized")
class VectorizedEngine(Engine):
    """All nodes in one ``[n, D]`` tensor; one batched gradient call per local step.

    Evaluation runs in blocks of nodes x samples whose widest activation tensor stays
    within ``eval_budget`` bytes, so its memory does not grow with ``n`` (nor with the
    number of evaluated nodes or test samples).
    """

    def __init__(self, *args, eval_budget: int = EVAL_BUDGET, **kwargs):
        super().__init__(*args, **kwargs)
        self._params = self.initial_state.clone()
        self._gradient = stacked_gradient(self.model, self.spec)
        self._optimizer = StackedSGD(self.training.sgd)
        self._X_rows = self.X.reshape(len(self.X), -1)  # index_select on rows beats X[batch]
        self._eval_rows = self.eval_nodes.to(self.device)
        self._grads = torch.empty_like(self._params)
        self._eval_budget = eval_budget
        self._activation_bytes = 4 * max(activation_sizes(self.model, self.X[:1]))

    @property
    def params(self) -> torch.Tensor:
        return self._params

    def _local_step(self, batch: Batch, round: int, step: int) -> torch.Tensor:
        shape = batch.indices.shape
        flat = batch.indices.reshape(-1)
        x = self._X_rows.index_select(0, flat).view(*shape, *self.X.shape[1:])
        y = self.y.index_select(0, flat).view(shape)
        nodes = self.trained_nodes
        params = self._params[int(nodes[0]) : int(nodes[-1]) + 1]  # contiguous: a view
        out = self._grads[: len(nodes)]
        if self.context.clip_norm is None:
            grads, losses = self._gradient(params, x, y, batch.weights, out=out)
        else:
            grads, losses = self._gradient.clipped_sum(
                params, x, y, batch.weights, self.context.clip_norm, out=out
            )
        if self.gradient_mechanism is not None:
            grads = self.gradient_mechanism.privatize(grads, round, step, nodes)
        self._optimizer.step(params, grads)
        return self._every_node(losses)

    def _every_node(self, values: torch.Tensor) -> torch.Tensor:
        """Every node's value ``[n]`` from the trained nodes' (all of them here)."""
        return values

    def _receive(
        self, params: torch.Tensor, messages: Messages, plan: CommPlan, round: int, exchange: int
    ) -> None:
        self._params = self.protocol.receive(params, messages, plan, round, exchange)

    def _evaluated_params(self) -> torch.Tensor:
        """The parameters ``[k, D]`` of ``eval_nodes``: gathered once per evaluation (the
        ``[n, D]`` tensor itself when every node is evaluated)."""
        if self.evaluates_all_nodes:
            return self._params
        return self._params.index_select(0, self._eval_rows)

    def _node_block(self, samples: int) -> int:
        """Nodes per evaluation block on ``samples`` samples each, within the budget."""
        return max(1, self._eval_budget // (samples * self._activation_bytes))

    def _test_accuracy(self) -> torch.Tensor:
        params = self._evaluated_params()
        # as many samples per block as the budget allows: the parameters are read once
        chunk = max(1, min(len(self.test_indices), self._eval_budget // self._activation_bytes))
        block = self._node_block(chunk)
        # two activation buffers, reused by every layer of every block (fresh tensors of
        # this size made the MLP's evaluation about 1.5x slower)
        size = min(block, len(params)) * chunk * (self._activation_bytes // 4)
        buffers = (torch.empty(size, device=self.device), torch.empty(size, device=self.device))
        correct = torch.zeros(len(params), device=self.device)
        for samples in self.test_indices.split(chunk):
            x = self._X_rows.index_select(0, samples).view(len(samples), *self.X.shape[1:])
            y = self.y.index_select(0, samples)
            for start in range(0, len(params), block):
                logits = self._shared_logits(params[start : start + block], x, buffers)
                correct[start : start + block] += (logits.argmax(dim=-1) == y).sum(dim=1)
        return correct / len(self.test_indices)

    def _shared_logits(
        self, params: torch.Tensor, x: torch.Tensor, buffers: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        """Logits ``[b, T, C]`` of the nodes ``params[b, D]`` on the shared inputs
        ``x[T, ...]``: ``forward_shared``, the MLP path writing each layer's output into
        ``buffers`` alternately (same operations, same numbers) instead of fresh tensors."""
        gradient = self._gradient
        if not isinstance(gradient, BatchedSequentialGrad):
            return gradient.forward_shared(params, x)
        n, samples = params.shape[0], x.shape[0]
        h = x.reshape(samples, -1).unsqueeze(0).expand(n, samples, -1)
        free, owned = 0, False  # owned: h is a buffer (in-place activations may write it)
        for layer in gradient.layers:
            if isinstance(layer, nn.Module):  # an elementwise activation
                in_place = _IN_PLACE.get(type(layer)) if owned else None
                h = layer(h) if in_place is None else in_place(h)
                continue
            out = buffers[free][: n * samples * layer.out_features]
            out = out.view(n, samples, layer.out_features)
            weight = params[:, layer.weight].view(n, layer.out_features, layer.in_features)
            torch.bmm(h, weight.transpose(1, 2), out=out)
            if layer.bias is not None:
                out.add_(params[:, layer.bias].unsqueeze(1))
            h, free, owned = out, 1 - free, True
        return h

    def _train_loss(self) -> torch.Tensor:
        params = self._evaluated_params()
        block = self._node_block(self.eval_indices.shape[1])
        starts = range(0, len(params), block)
        return torch.cat([self._block_train_loss(params, slice(s, s + block)) for s in starts])

    def _block_train_loss(self, params: torch.Tensor, rows: slice) -> torch.Tensor:
        """Train loss of the evaluated nodes ``rows`` (positions in ``eval_nodes``);
        ``params`` holds the evaluated nodes' parameters ``[k, D]``."""
        indices, mask = self.eval_indices[rows], self.eval_mask[rows]
        logits = self._gradient.forward(params[rows], self.X[indices])
        n, b, c = logits.shape
        loss = F.cross_entropy(
            logits.reshape(n * b, c), self.y[indices].reshape(-1), reduction="none"
        ).view(n, b)
        return (loss * mask).sum(dim=1) / mask.sum(dim=1)


@ENGINES.register("loop")
class LoopEngine(Engine):
    """One ``nn.Module`` and one ``torch.optim.SGD`` per node: the slow reference.

    Under a protocol that does not train, each node holds its state row instead. It runs
    on the CPU (``device: auto`` means the CPU here; asking it for a GPU is an error).
    """

    def _device(self, device: str | torch.device) -> torch.device:
        if str(device) != "auto" and resolve_device(device).type != "cpu":
            raise PrivlabError(
                f"engine 'loop' (the per-node reference) runs on the CPU only, got device "
                f"{str(device)!r}; use engine: vectorized on a GPU"
            )
        return torch.device("cpu")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.models: list[nn.Module] = []
        self.rows: list[torch.Tensor] = []
        if self.protocol.trains:
            self.models = [copy.deepcopy(self.model) for _ in range(self.num_nodes)]
            self.optimizers = [
                self.training.sgd.torch_optimizer(m.parameters()) for m in self.models
            ]
        else:
            self.rows = [row.clone() for row in self.initial_state]

    @property
    def params(self) -> torch.Tensor:
        if not self.protocol.trains:
            return torch.stack(self.rows)
        return torch.stack([self.spec.flatten(m) for m in self.models])

    def _local_step(self, batch: Batch, round: int, step: int) -> torch.Tensor:
        mechanism, clip_norm = self.gradient_mechanism, self.context.clip_norm
        losses = []
        for node, (model, optimizer) in enumerate(zip(self.models, self.optimizers)):
            indices, weights = batch.indices[node], None
            if batch.weights is not None:  # only the real samples, with their weights
                real = batch.weights[node] > 0
                indices, weights = indices[real], batch.weights[node][real]
            optimizer.zero_grad()
            x, y = self.X[indices], self.y[indices]
            if clip_norm is None:
                loss = weighted_cross_entropy(model(x), y, weights)
                loss.backward()
            else:
                loss = clipped_grad_autograd(model, x, y, weights, clip_norm)
            if mechanism is not None:
                self._privatize_node(model, node, round, step)
            optimizer.step()
            losses.append(loss.detach())
        return torch.stack(losses)

    def _privatize_node(self, model: nn.Module, node: int, round: int, step: int) -> None:
        """Pass node ``node``'s gradient through the gradient mechanism, alone."""
        params = [p for _, p in model.named_parameters()]
        grad = torch.cat([p.grad.reshape(-1) for p in params]).unsqueeze(0)
        grad = self.gradient_mechanism.privatize(grad, round, step, torch.tensor([node]))[0]
        for p, value in zip(params, grad.split([p.numel() for p in params])):
            p.grad = value.view_as(p).clone()

    def _receive(
        self, params: torch.Tensor, messages: Messages, plan: CommPlan, round: int, exchange: int
    ) -> None:
        new_rows = [
            self.protocol.receive_node(
                node, params[node], messages.inbox(node), plan, round, exchange
            )
            for node in range(self.num_nodes)
        ]
        if not self.protocol.trains:
            self.rows = new_rows
        for model, row in zip(self.models, new_rows):
            self.spec.load(model, row)

    def _test_accuracy(self) -> torch.Tensor:
        x, y = self.X[self.test_indices], self.y[self.test_indices]
        models = [self.models[node] for node in self.eval_nodes.tolist()]
        return torch.stack([(m(x).argmax(dim=-1) == y).float().mean() for m in models])

    def _train_loss(self) -> torch.Tensor:
        losses = []
        for row, node in enumerate(self.eval_nodes.tolist()):
            idx = self.eval_indices[row][self.eval_mask[row].bool()]
            losses.append(F.cross_entropy(self.models[node](self.X[idx]), self.y[idx]))
        return torch.stack(losses)


def _sample(population: int, size: int | None, seed: int, stream: str) -> torch.Tensor:
    """``size`` distinct positions in ``range(population)``, sorted, drawn from stream
    ``stream`` of ``seed``'s tree (``privlab.rng``); all of them, in order, when ``size`` is
    None or at least ``population``. A pure function of its arguments, so every engine and
    every evaluation of a run sees the same positions."""
    if size is None or size >= population:
        return torch.arange(population)
    chosen = numpy_generator(seed, stream).choice(population, size, replace=False)
    return torch.from_numpy(np.sort(chosen)).to(torch.int64)


def _evaluation_subset(
    node_indices: torch.Tensor, sizes: torch.Tensor, limit: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``limit`` training samples of each node ``[k, s]`` and their mask
    ``[k, s]`` (one row per node of ``node_indices``, the evaluated nodes)."""
    k = min(limit, node_indices.shape[1])
    mask = (torch.arange(k).unsqueeze(0) < sizes.unsqueeze(1)).float()
    return node_indices[:, :k].clamp(min=0), mask
