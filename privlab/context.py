"""What protocols and gradient mechanisms receive at setup, and what they emit each round.

``RoundContext`` is handed once to ``Protocol.setup`` and ``GradientMechanism.setup``: the
network's size, the state width, the topology, the training hyper-parameters, each node's
data and the per-node random streams keyed by (purpose, round, step, node). Through
it a component also emits, during a round, privacy events per node or per (observer,
source) pair and metrics per node; the engine collects them into the round's report and
the privacy ledger composes the events (``privlab.ledger``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from privlab.accounting.events import PrivacyEvent
from privlab.devices import MovedOnce
from privlab.errors import PrivlabError
from privlab.plan import CommPlan
from privlab.rng import NodeStreams
from privlab.topology import Topology
from privlab.training import LocalTraining


@dataclass
class Emissions:
    """Privacy events and metrics emitted during one round.

    ``node_events``: ``(event, nodes)`` pairs, ``nodes`` an int64 tensor of node ids or None
    for every node. ``pair_events``: ``(event, observers, sources)`` with two int64
    tensors of equal length, one event per (observer, source) pair. ``metrics``: name to
    a float tensor ``[n]``.
    """

    node_events: list[tuple[PrivacyEvent, torch.Tensor | None]] = field(default_factory=list)
    pair_events: list[tuple[PrivacyEvent, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class RoundContext:
    """The setting of a run, as protocols and gradient mechanisms see it.

    ``node_indices``, ``node_sizes``, ``features`` and the streams' draws are on the
    engine's device (``device``): a component creates its tensors there too. What it
    emits is moved to the CPU for the ledger and the metrics.
    """

    num_nodes: int
    dim: int
    topology: Topology
    training: LocalTraining
    node_indices: torch.Tensor
    """Each node's training samples as global indices, right-padded: int64 ``[n, m]``."""
    node_sizes: torch.Tensor
    """Training samples of each node (real entries of ``node_indices``), int64 ``[n]``."""
    streams: NodeStreams
    features: torch.Tensor | None = None
    """The dataset's inputs ``[N, ...]`` that ``node_indices`` index (for mechanisms whose
    sensitivity depends on the data, e.g. the relative Gaussian mechanism's)."""
    model: nn.Module | None = None
    """The model every node trains (its architecture; the parameters are the engine's)."""
    clip_norm: float | None = None
    """The per-sample clipping bound of the gradient mechanism (None: no clipping)."""
    emitted: Emissions = field(default_factory=Emissions)
    _plan_to_device: MovedOnce = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._plan_to_device = MovedOnce(self.device)

    @property
    def device(self) -> torch.device:
        """Where the run computes (``privlab.devices``)."""
        return self.streams.device

    def plan(self, round: int) -> CommPlan:
        """The topology's plan of ``round`` on ``device`` (a static topology's plan, the
        same object every round, is moved once)."""
        return self._plan_to_device(self.topology.plan(round))

    @property
    def lr(self) -> float:
        return self.training.sgd.lr

    @property
    def batch_size(self) -> int:
        return self.training.batch_size

    def emit_event(self, event: PrivacyEvent, nodes: torch.Tensor | None = None) -> None:
        """Record that ``nodes`` (default: every node) released ``event`` this round."""
        if not isinstance(event, PrivacyEvent):
            raise PrivlabError(f"emitted events must be PrivacyEvent, got {event!r}")
        self.emitted.node_events.append((event, _node_ids(nodes, self.num_nodes)))

    def emit_pair_event(
        self, event: PrivacyEvent, observers: torch.Tensor, sources: torch.Tensor
    ) -> None:
        """Record what each ``observers[k]`` learned about ``sources[k]`` this round."""
        observers, sources = (
            _node_ids(observers, self.num_nodes),
            _node_ids(sources, self.num_nodes),
        )
        if observers.shape != sources.shape:
            raise PrivlabError("emit_pair_event needs observers and sources of equal length")
        self.emitted.pair_events.append((event, observers, sources))

    def emit_metric(self, name: str, values: torch.Tensor) -> None:
        """A per-node metric ``[n]`` for this round (summed if emitted twice in a round)."""
        values = torch.as_tensor(values, dtype=torch.float32).cpu()
        if values.shape != (self.num_nodes,):
            raise PrivlabError(f"metric {name!r} must have shape [{self.num_nodes}]")
        previous = self.emitted.metrics.get(name)
        self.emitted.metrics[name] = values if previous is None else previous + values

    def drain(self) -> Emissions:
        """What was emitted since the last drain (the engine calls it once per round)."""
        emitted, self.emitted = self.emitted, Emissions()
        return emitted


def _node_ids(nodes: torch.Tensor | None, num_nodes: int) -> torch.Tensor | None:
    if nodes is None:
        return None
    ids = torch.as_tensor(nodes).reshape(-1).cpu()
    if len(ids) == 0:
        return torch.zeros(0, dtype=torch.int64)
    # a boolean mask or float ids cast to int64 would silently charge the wrong nodes
    if ids.dtype == torch.bool or ids.dtype.is_floating_point or ids.dtype.is_complex:
        raise PrivlabError(f"emitted node ids must be integer node ids, got dtype {ids.dtype}")
    ids = ids.to(torch.int64)
    if not (0 <= int(ids.min()) and int(ids.max()) < num_nodes):
        raise PrivlabError(f"emitted node ids must be in [0, {num_nodes})")
    return ids
