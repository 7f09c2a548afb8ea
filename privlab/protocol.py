"""The plug-in contract: protocols exchange ``Messages``; an ``Observer`` records what is seen.

A round of any decentralized protocol is ``send`` (what goes on each directed edge)
then ``receive`` (how each node folds its inbox into its state). The contract is
shaped for every mechanism privlab carries, not only plain averaging:

* payloads may differ per receiver (Zip-DL's correlated noise): one row per edge;
* payloads may cover a subset of coordinates (Shatter's chunks, CESAR's
  sparsification): ``indices`` names them, ``-1`` pads rows of unequal length;
* receivers may not learn who sent a message (Shatter's virtual nodes):
  ``sender_label`` is what the receiver is told, ``src`` stays the ground truth;
* receivers may learn only an aggregate (CESAR's masks): the payload is whatever is on
  the wire (masked integers), and only ``receive`` can combine it;
* the state need not be a model (muted gossip): ``Protocol.trains = False`` tells the
  engine to skip local training.

The ``Observer`` is the attack boundary (``privlab.observe``, re-exported here). It keeps
exactly what the curious parties of a ``ThreatModel`` receive, at the rounds asked for, in
an ``ObservationLog`` that can be saved, reloaded and attacked later.
"""

from __future__ import annotations

import abc
import warnings
from typing import ClassVar

import scipy.sparse
import torch

from privlab.errors import PrivlabError
from privlab.observe import (  # noqa: F401 (re-exported: the observer's historical home)
    Observation,
    ObservationLog,
    Observer,
    ThreatModel,
    threat_model_from,
)
from privlab.registry import Registry
from privlab.topology import CommPlan

INDEX_BYTES = 4
"""Bytes counted per coordinate index on the wire (int32: models have < 2**31 entries)."""


class Messages:
    """One message per directed edge: who sent what to whom, and what it costs.

    ``payload[e, j]`` is the value of model coordinate ``indices[e, j]`` (or of
    coordinate ``j`` when ``indices`` is None); an index of ``-1`` marks padding that is
    neither sent nor counted. ``sender_label[e]`` is what the receiver learns about the
    sender (a pseudonym); by default the true sender ``src[e]``.

    When every message is its sender's whole state, build them with ``Messages.of_rows``:
    the payload is then read from the senders' rows on demand, so broadcast protocols
    never copy ``[E, D]`` and observers copy only what they record.
    """

    def __init__(
        self,
        src: torch.Tensor,
        dst: torch.Tensor,
        payload: torch.Tensor | None = None,
        *,
        indices: torch.Tensor | None = None,
        sender_label: torch.Tensor | None = None,
        metadata_bytes: int = 0,
        rows: torch.Tensor | None = None,
    ):
        e = src.shape[0]
        if (payload is None) == (rows is None):
            raise PrivlabError("messages need exactly one of payload[E, k] or sender rows[n, D]")
        if dst.shape != (e,) or src.ndim != 1:
            raise PrivlabError(
                f"messages need src[E], dst[E]; got {tuple(src.shape)}, {tuple(dst.shape)}"
            )
        if payload is not None and (payload.ndim != 2 or payload.shape[0] != e):
            raise PrivlabError(
                f"messages.payload must have shape [E={e}, k], got {tuple(payload.shape)}"
            )
        if rows is not None and (rows.ndim != 2 or indices is not None):
            raise PrivlabError("messages.rows must be [n, D] and carry no indices")
        if indices is not None and indices.shape != payload.shape:
            raise PrivlabError("messages.indices must have the payload's shape [E, k]")
        if sender_label is not None and sender_label.shape != (e,):
            raise PrivlabError("messages.sender_label must have shape [E]")
        self.src, self.dst = src, dst
        self.indices, self.sender_label = indices, sender_label
        self.metadata_bytes = metadata_bytes
        self.rows = rows
        self._payload = payload

    @classmethod
    def of_rows(
        cls, rows: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, **kwargs
    ) -> Messages:
        """Messages whose payload is the sender's whole row ``rows[src[e]]``."""
        return cls(src, dst, rows=rows, **kwargs)

    def __len__(self) -> int:
        return int(self.src.shape[0])

    @property
    def payload(self) -> torch.Tensor:
        """The payload ``[E, k]`` (gathered from the senders' rows when shared)."""
        if self._payload is None:
            return self.rows.index_select(0, self.src)
        return self._payload

    @property
    def width(self) -> int:
        """Entries per message row, padding included."""
        return (self.rows if self._payload is None else self._payload).shape[1]

    @property
    def element_size(self) -> int:
        return (self.rows if self._payload is None else self._payload).element_size()

    @property
    def seen_sender(self) -> torch.Tensor:
        """What each receiver is told about the sender of each message."""
        return self.src if self.sender_label is None else self.sender_label

    def entries(self) -> torch.Tensor:
        """Number of coordinates each message carries ``[E]`` (padding excluded)."""
        if self.indices is None:
            return torch.full((len(self),), self.width, dtype=torch.int64)
        return (self.indices >= 0).sum(dim=1)

    def bytes_per_message(self) -> dict[str, torch.Tensor]:
        """Bytes of each message ``[E]``, split into payload, indices and metadata."""
        entries = self.entries()
        index_bytes = torch.zeros_like(entries) if self.indices is None else entries * INDEX_BYTES
        return {
            "payload": entries * self.element_size,
            "indices": index_bytes,
            "metadata": torch.full_like(entries, self.metadata_bytes),
        }

    def bytes_by_sender(self, num_nodes: int) -> dict[str, torch.Tensor]:
        """Bytes each node sent ``[n]``, by kind: payload, indices, metadata."""
        return {
            kind: torch.zeros(num_nodes, dtype=torch.int64).index_add_(0, self.src, size)
            for kind, size in self.bytes_per_message().items()
        }

    def bytes_sent(self, num_nodes: int) -> torch.Tensor:
        """Total bytes each node sent ``[n]`` (payload + indices + metadata)."""
        return sum(self.bytes_by_sender(num_nodes).values())

    def select(self, mask: torch.Tensor) -> Messages:
        """The messages where ``mask[E]`` is true (rows stay shared, nothing is copied)."""

        def pick(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[mask]

        return Messages(
            self.src[mask],
            self.dst[mask],
            pick(self._payload),
            indices=pick(self.indices),
            sender_label=pick(self.sender_label),
            metadata_bytes=self.metadata_bytes,
            rows=self.rows,
        )

    def inbox(self, node: int) -> Messages:
        """The messages addressed to ``node``."""
        return self.select(self.dst == node)


class Protocol(abc.ABC):
    """A decentralized protocol: what each node sends each round and how it aggregates.

    ``send`` and ``receive`` are vectorized over all nodes (``params[n, D]``);
    ``receive_node`` is the slow per-node reference the ``LoopEngine`` uses, so every
    protocol's fast path is tested against an obviously correct one.
    """

    name: ClassVar[str] = "protocol"
    trains: ClassVar[bool] = True
    """False for dissemination protocols whose state is not a model (muted gossip)."""

    def setup(self, num_nodes: int, dim: int, seed: int) -> None:  # noqa: B027 (optional hook)
        """Called once before the first round (key agreement, buffers). Default: nothing."""

    def initial_state(self, params: torch.Tensor) -> torch.Tensor:
        """Every node's state before round 0, given the initial models ``[n, D]``.

        Training protocols keep the models (the default); a dissemination protocol
        returns its own state (who knows the rumour), of any width.
        """
        return params

    @abc.abstractmethod
    def send(
        self, params: torch.Tensor, plan: CommPlan, round: int, rng: torch.Generator
    ) -> Messages:
        """The messages of this round, given every node's state ``params[n, D]``."""

    @abc.abstractmethod
    def receive(self, params: torch.Tensor, messages: Messages, plan: CommPlan) -> torch.Tensor:
        """Every node's new state ``[n, D]`` after reading its inbox."""

    @abc.abstractmethod
    def receive_node(
        self, node: int, own: torch.Tensor, inbox: Messages, plan: CommPlan
    ) -> torch.Tensor:
        """Node ``node``'s new state ``[D]`` from its own ``own[D]`` and its ``inbox``."""

    def describe(self) -> dict:
        """JSON-able parameters of this protocol."""
        return {"name": self.name}


PROTOCOLS: Registry[type[Protocol]] = Registry("protocol")


def weighted_inbox_sum(messages: Messages, weight: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """``out[v] = sum over messages e to v of weight[e] * payload[e]``, shape ``[n, D]``.

    Whole-model messages (``indices`` None) only. Row-shared messages are summed as one
    sparse product ``A @ rows`` with ``A[dst, src] = weight``; others with ``index_add``.
    """
    if messages.indices is not None:
        raise PrivlabError("weighted_inbox_sum needs whole-model messages (no indices)")
    rows = messages.rows
    if rows is None:
        out = torch.zeros(num_nodes, messages.width, dtype=messages.payload.dtype)
        return out.index_add_(0, messages.dst, weight.unsqueeze(1) * messages.payload)
    return sparse_matmul(_inbox_matrix(messages.dst, messages.src, weight, num_nodes, rows), rows)


def sparse_matmul(matrix: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """``matrix @ dense`` for a torch CSR ``matrix``: SciPy's CSR kernel on CPU (4x faster
    than ``torch.sparse.mm`` there for gossip-sized products, measured at n = 1024),
    torch's on other devices or when gradients must flow."""
    if dense.device.type != "cpu" or dense.requires_grad:
        return torch.sparse.mm(matrix, dense)
    arrays = (matrix.values(), matrix.col_indices(), matrix.crow_indices())
    scipy_matrix = scipy.sparse.csr_matrix(tuple(a.numpy() for a in arrays), shape=matrix.shape)
    return torch.from_numpy(scipy_matrix @ dense.numpy())


def _inbox_matrix(
    dst: torch.Tensor, src: torch.Tensor, weight: torch.Tensor, num_nodes: int, rows: torch.Tensor
) -> torch.Tensor:
    """CSR matrix ``A[dst, src] = weight`` (duplicates add up); no sort is needed when the
    messages come ordered by receiver, as ``CommPlan`` edges do."""
    if len(dst) > 1 and not bool((dst[1:] >= dst[:-1]).all()):
        order = torch.argsort(dst, stable=True)
        dst, src, weight = dst[order], src[order], weight[order]
    crow = torch.searchsorted(dst, torch.arange(num_nodes + 1, dtype=dst.dtype))
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            crow, src, weight.to(rows.dtype), (num_nodes, rows.shape[0]), check_invariants=False
        )
