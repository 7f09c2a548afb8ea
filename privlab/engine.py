"""Engines run rounds of a protocol over many simulated nodes.

``VectorizedEngine`` (the default) keeps all node models in one flat ``[n, D]`` tensor,
trains them in one call and lets the protocol aggregate with tensor ops.
``LoopEngine`` keeps one ``nn.Module`` and one ``torch.optim.SGD`` per node and runs
every step node by node: the slow, obviously correct reference the tests compare the
vectorized engine against. Both draw batches, plans and protocol randomness from the
same seeded streams (``privlab.rng``), so on one seed they compute the same numbers.

One round (``run_round``): the plan of who talks to whom; local SGD steps (unless the
protocol is not training); ``protocol.send``; the observer records what curious parties
receive; ``protocol.receive``.
"""

from __future__ import annotations

import abc
import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from privlab.errors import check
from privlab.models import activation_sizes
from privlab.partition import FederatedData
from privlab.protocol import Messages, Observer, Protocol
from privlab.rng import torch_generator
from privlab.state import ParamSpec
from privlab.topology import CommPlan, Topology
from privlab.training import (
    Batch,
    SGDConfig,
    StackedSGD,
    sample_batches,
    stacked_gradient,
    weighted_cross_entropy,
)

EVAL_BUDGET = 8 * 2**20
"""Bytes of the widest activation tensor of one evaluation block (nodes x samples): small
enough to stay in cache, which made evaluation about 3x faster than 250 MiB blocks."""
EVAL_SAMPLES = 256
"""Training samples per node on which ``train_loss`` is evaluated, by default."""


@dataclass(frozen=True)
class LocalTraining:
    """What each node does locally each round."""

    batch_size: int = 16
    local_steps: int = 1
    sgd: SGDConfig = field(default_factory=SGDConfig)

    def __post_init__(self) -> None:
        check(self.batch_size >= 1, "training.batch_size", ">= 1", self.batch_size)
        check(self.local_steps >= 1, "training.local_steps", ">= 1", self.local_steps)


@dataclass(frozen=True)
class RoundReport:
    """What a round cost, per node ``[n]``: bytes sent by kind (payload, indices,
    metadata) and the mean loss of the round's local batches (None without training)."""

    round: int
    bytes_by_kind: dict[str, torch.Tensor]
    batch_loss: torch.Tensor | None

    @property
    def bytes_sent(self) -> torch.Tensor:
        return sum(self.bytes_by_kind.values())

    def metrics(self) -> dict[str, torch.Tensor]:
        """The per-node values ``metrics.csv`` records for this round."""
        out = {"bytes_sent": self.bytes_sent}
        out |= {f"bytes_{kind}": size for kind, size in self.bytes_by_kind.items()}
        if self.batch_loss is not None:
            out["batch_loss"] = self.batch_loss
        return out


class Engine(abc.ABC):
    """Shared round logic; subclasses hold the node models and train/aggregate them."""

    def __init__(
        self,
        model: nn.Module,
        data: FederatedData,
        topology: Topology,
        protocol: Protocol,
        training: LocalTraining = LocalTraining(),
        *,
        seed: int = 0,
        observer: Observer | None = None,
        eval_samples: int = EVAL_SAMPLES,
    ):
        check(
            topology.num_nodes == data.num_nodes,
            "topology.num_nodes",
            f"equal to the data's {data.num_nodes} nodes",
            topology.num_nodes,
        )
        self.model, self.data, self.topology, self.protocol = model, data, topology, protocol
        self.training, self.seed, self.observer = training, seed, observer
        self.spec = ParamSpec.of(model)
        self.num_nodes = data.num_nodes
        self.X, self.y = data.dataset.X, data.dataset.y
        self.node_indices, self.node_sizes = data.padded_node_indices()
        self.test_indices = torch.tensor(data.test_indices, dtype=torch.int64)
        self.eval_indices, self.eval_mask = _evaluation_subset(
            self.node_indices, self.node_sizes, eval_samples
        )
        protocol.setup(self.num_nodes, self.spec.dim, seed)
        initial_models = self.spec.flatten(model).repeat(self.num_nodes, 1)
        self.initial_state = protocol.initial_state(initial_models)

    # -- the round --------------------------------------------------------------------

    def run_round(self, round: int) -> RoundReport:
        """Run round ``round``: local steps, send, observe, receive."""
        plan = self.topology.plan(round)
        batch_loss = None
        if self.protocol.trains:
            losses = [
                self._local_step(self._batch(round, step))
                for step in range(self.training.local_steps)
            ]
            batch_loss = torch.stack(losses).mean(dim=0)
        params = self.params
        messages = self.protocol.send(
            params, plan, round, torch_generator(self.seed, "protocol", round)
        )
        if self.observer is not None:
            self.observer.record(round, messages)
        self._receive(params, messages, plan)
        return RoundReport(round, messages.bytes_by_sender(self.num_nodes), batch_loss)

    def _batch(self, round: int, step: int) -> Batch:
        generator = torch_generator(self.seed, "batch", round, step)
        return sample_batches(
            self.node_indices, self.node_sizes, self.training.batch_size, generator
        )

    # -- evaluation -------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> dict[str, torch.Tensor]:
        """Per-node metrics ``[n]``: test_accuracy (with a test set), train_loss,
        consensus_distance.

        ``train_loss`` is the mean loss on (up to ``eval_samples`` of) the node's own
        training data; ``consensus_distance`` is ``||x_v - mean_u x_u||^2``.
        """
        params = self.params
        metrics = {"consensus_distance": (params - params.mean(dim=0)).pow(2).sum(dim=1)}
        if self.protocol.trains:
            if len(self.test_indices):
                metrics["test_accuracy"] = self._test_accuracy()
            metrics["train_loss"] = self._train_loss()
        return metrics

    # -- what subclasses provide ---------------------------------------------------------

    @property
    @abc.abstractmethod
    def params(self) -> torch.Tensor:
        """Every node's parameters as one ``[n, D]`` tensor."""

    @abc.abstractmethod
    def _local_step(self, batch: Batch) -> torch.Tensor:
        """One SGD step of every node on its batch; returns the losses ``[n]``."""

    @abc.abstractmethod
    def _receive(self, params: torch.Tensor, messages: Messages, plan: CommPlan) -> None:
        """Replace every node's state by what ``protocol.receive`` makes of its inbox."""

    @abc.abstractmethod
    def _test_accuracy(self) -> torch.Tensor: ...

    @abc.abstractmethod
    def _train_loss(self) -> torch.Tensor: ...


class VectorizedEngine(Engine):
    """All nodes in one ``[n, D]`` tensor; one batched gradient call per local step.

    Evaluation runs in blocks of nodes x samples whose widest activation tensor stays
    within ``eval_budget`` bytes, so its memory does not grow with ``n``.
    """

    def __init__(self, *args, eval_budget: int = EVAL_BUDGET, **kwargs):
        super().__init__(*args, **kwargs)
        self._params = self.initial_state.clone()
        self._gradient = stacked_gradient(self.model, self.spec)
        self._optimizer = StackedSGD(self.training.sgd)
        self._X_rows = self.X.reshape(len(self.X), -1)  # index_select on rows beats X[batch]
        self._grads = torch.empty_like(self._params)
        self._eval_budget = eval_budget
        self._activation_bytes = 4 * max(activation_sizes(self.model, self.X[:1]))

    @property
    def params(self) -> torch.Tensor:
        return self._params

    def _local_step(self, batch: Batch) -> torch.Tensor:
        shape = batch.indices.shape
        flat = batch.indices.reshape(-1)
        x = self._X_rows.index_select(0, flat).view(*shape, *self.X.shape[1:])
        y = self.y.index_select(0, flat).view(shape)
        grads, losses = self._gradient(self._params, x, y, batch.weights, out=self._grads)
        self._optimizer.step(self._params, grads)
        return losses

    def _receive(self, params: torch.Tensor, messages: Messages, plan: CommPlan) -> None:
        self._params = self.protocol.receive(params, messages, plan)

    def _node_block(self, samples: int) -> int:
        """Nodes per evaluation block on ``samples`` samples each, within the budget."""
        return max(1, self._eval_budget // (samples * self._activation_bytes))

    def _test_accuracy(self) -> torch.Tensor:
        # as many samples per block as the budget allows: the parameters are read once
        chunk = max(1, min(len(self.test_indices), self._eval_budget // self._activation_bytes))
        block = self._node_block(chunk)
        correct = torch.zeros(self.num_nodes)
        for samples in self.test_indices.split(chunk):
            x, y = self.X[samples], self.y[samples]
            for start in range(0, self.num_nodes, block):
                logits = self._gradient.forward_shared(self._params[start : start + block], x)
                correct[start : start + block] += (logits.argmax(dim=-1) == y).sum(dim=1)
        return correct / len(self.test_indices)

    def _train_loss(self) -> torch.Tensor:
        block = self._node_block(self.eval_indices.shape[1])
        starts = range(0, self.num_nodes, block)
        return torch.cat([self._block_train_loss(slice(s, s + block)) for s in starts])

    def _block_train_loss(self, nodes: slice) -> torch.Tensor:
        indices, mask = self.eval_indices[nodes], self.eval_mask[nodes]
        logits = self._gradient.forward(self._params[nodes], self.X[indices])
        n, b, c = logits.shape
        loss = F.cross_entropy(
            logits.reshape(n * b, c), self.y[indices].reshape(-1), reduction="none"
        ).view(n, b)
        return (loss * mask).sum(dim=1) / mask.sum(dim=1)


class LoopEngine(Engine):
    """One ``nn.Module`` and one ``torch.optim.SGD`` per node: the slow reference.

    Under a protocol that does not train, each node holds its state row instead.
    """

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

    def _local_step(self, batch: Batch) -> torch.Tensor:
        losses = []
        for node, (model, optimizer) in enumerate(zip(self.models, self.optimizers)):
            indices, weights = batch.indices[node], None
            if batch.weights is not None:  # only the real samples, with their weights
                real = batch.weights[node] > 0
                indices, weights = indices[real], batch.weights[node][real]
            optimizer.zero_grad()
            loss = weighted_cross_entropy(model(self.X[indices]), self.y[indices], weights)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
        return torch.stack(losses)

    def _receive(self, params: torch.Tensor, messages: Messages, plan: CommPlan) -> None:
        new_rows = [
            self.protocol.receive_node(node, params[node], messages.inbox(node), plan)
            for node in range(self.num_nodes)
        ]
        if not self.protocol.trains:
            self.rows = new_rows
        for model, row in zip(self.models, new_rows):
            self.spec.load(model, row)

    def _test_accuracy(self) -> torch.Tensor:
        x, y = self.X[self.test_indices], self.y[self.test_indices]
        return torch.stack([(m(x).argmax(dim=-1) == y).float().mean() for m in self.models])

    def _train_loss(self) -> torch.Tensor:
        losses = []
        for node, model in enumerate(self.models):
            idx = self.eval_indices[node][self.eval_mask[node].bool()]
            losses.append(F.cross_entropy(model(self.X[idx]), self.y[idx]))
        return torch.stack(losses)


ENGINES: dict[str, type[Engine]] = {"vectorized": VectorizedEngine, "loop": LoopEngine}


def _evaluation_subset(
    node_indices: torch.Tensor, sizes: torch.Tensor, limit: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``limit`` training samples of each node ``[n, k]`` and their mask ``[n, k]``."""
    k = min(limit, node_indices.shape[1])
    mask = (torch.arange(k).unsqueeze(0) < sizes.unsqueeze(1)).float()
    return node_indices[:, :k].clamp(min=0), mask
