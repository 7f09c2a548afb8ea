"""The plug-in contract: protocols exchange ``Messages`` over a round's plan.

A round of any decentralized protocol is one or more exchanges (``Protocol.exchanges``:
1 for D-PSGD, K gossip steps for Muffliato, an index exchange then the masked payload for
CESAR); each exchange is ``send`` (what goes on each directed edge) then ``receive``
(how each node folds its inbox into its state). The contract is shaped for every
mechanism privlab carries, not only plain averaging:

* payloads may differ per receiver (Zip-DL's correlated noise): one row per edge;
* payloads may cover a subset of coordinates (Shatter's chunks, CESAR's
  sparsification): ``indices`` names them, ``-1`` pads rows of unequal length;
* receivers may not learn who sent a message (Shatter's virtual nodes):
  ``sender_label`` is what the receiver is told, ``src`` stays the ground truth;
  ``receiver_label`` names the virtual receiver when a real node receives a message more
  than once in an exchange (two of its virtual nodes);
* receivers may learn only an aggregate (CESAR's masks): the payload is whatever is on
  the wire (masked integers), and only ``receive`` can combine it;
* a protocol may bring its own plan (``Protocol.plan``), derived from the configured
  topology (Shatter's virtual-node graph, muted gossip's random pushes);
* the state need not be a model (muted gossip): ``Protocol.trains = False`` tells the
  engine to skip local training.

At setup a protocol receives the ``RoundContext`` (topology, sizes, hyper-parameters,
per-node random streams) through which it also emits privacy events and metrics.
What curious parties see is recorded by the ``Observer`` (``privlab.observe``).
"""

from __future__ import annotations

import abc
from typing import ClassVar

import torch

from privlab.context import RoundContext
from privlab.errors import PrivlabError
from privlab.plan import CommPlan, csr_matrix, sparse_matmul
from privlab.registry import Registry

INDEX_BYTES = 4
"""Bytes counted per coordinate index on the wire (int32: models have < 2**31 entries)."""


class Messages:
    """One message per directed edge: who sent what to whom, and what it costs.

    ``payload[e, j]`` is the value of model coordinate ``indices[e, j]`` (or of
    coordinate ``j`` when ``indices`` is None); an index of ``-1`` marks padding that is
    neither sent nor counted. ``sender_label[e]`` is what the receiver learns about the
    sender (a pseudonym); by default the true sender ``src[e]``. ``receiver_label[e]``
    names the virtual receiver of a message (by default the real receiver ``dst[e]``).
    ``metadata_bytes`` is the header size of every message (an int) or of each one
    (an int64 tensor ``[E]``). A message of indices only (an index set announced, as in
    CESAR's TopK) has ``indices[E, k]`` and an empty ``payload[E, 0]``.

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
        receiver_label: torch.Tensor | None = None,
        metadata_bytes: int | torch.Tensor = 0,
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
        if indices is not None and indices.shape != payload.shape and payload.shape[1] != 0:
            raise PrivlabError(
                "messages.indices must have the payload's shape [E, k] (or payload [E, 0]: "
                "messages of indices only)"
            )
        for label, tensor in (("sender_label", sender_label), ("receiver_label", receiver_label)):
            if tensor is not None and tensor.shape != (e,):
                raise PrivlabError(f"messages.{label} must have shape [E]")
        if isinstance(metadata_bytes, torch.Tensor) and metadata_bytes.shape != (e,):
            raise PrivlabError("messages.metadata_bytes must be an int or a tensor of shape [E]")
        self.src, self.dst = src, dst
        self.indices, self.sender_label, self.receiver_label = indices, sender_label, receiver_label
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

    @property
    def seen_receiver(self) -> torch.Tensor:
        """The (virtual) receiver of each message."""
        return self.dst if self.receiver_label is None else self.receiver_label

    def entries(self) -> torch.Tensor:
        """Number of coordinates each message carries ``[E]`` (padding excluded)."""
        if self.indices is None:
            return torch.full((len(self),), self.width, dtype=torch.int64, device=self.src.device)
        return (self.indices >= 0).sum(dim=1)

    def flat_positions(self, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(valid[E, k], flat[V])`` of messages with ``indices``: which entries are real
        (not padding), and each real entry's position ``dst * dim + index`` in the
        receivers' flattened ``[n, D]`` state, in row-major order of ``valid``."""
        valid = self.indices >= 0
        return valid, (self.dst.unsqueeze(1) * dim + self.indices.clamp(min=0))[valid]

    def bytes_per_message(self) -> dict[str, torch.Tensor]:
        """Bytes of each message ``[E]``, split into payload, indices and metadata."""
        entries = self.entries()
        index_bytes = torch.zeros_like(entries) if self.indices is None else entries * INDEX_BYTES
        metadata = self.metadata_bytes
        if not isinstance(metadata, torch.Tensor):
            metadata = torch.full_like(entries, metadata)
        value_bytes = self.element_size if self.width else 0
        return {
            "payload": entries * value_bytes,
            "indices": index_bytes,
            "metadata": metadata,
        }

    def bytes_by_sender(self, num_nodes: int) -> dict[str, torch.Tensor]:
        """Bytes each node sent ``[n]``, by kind: payload, indices, metadata."""
        return {
            kind: torch.zeros(num_nodes, dtype=torch.int64, device=self.src.device).index_add_(
                0, self.src, size
            )
            for kind, size in self.bytes_per_message().items()
        }

    def bytes_sent(self, num_nodes: int) -> torch.Tensor:
        """Total bytes each node sent ``[n]`` (payload + indices + metadata)."""
        return sum(self.bytes_by_sender(num_nodes).values())

    def select(self, mask: torch.Tensor) -> Messages:
        """The messages where ``mask[E]`` is true (rows stay shared, nothing is copied)."""

        def pick(t):
            return t[mask] if isinstance(t, torch.Tensor) else t

        return Messages(
            self.src[mask],
            self.dst[mask],
            pick(self._payload),
            indices=pick(self.indices),
            sender_label=pick(self.sender_label),
            receiver_label=pick(self.receiver_label),
            metadata_bytes=pick(self.metadata_bytes),
            rows=self.rows,
        )

    def inbox(self, node: int) -> Messages:
        """The messages addressed to ``node``."""
        return self.select(self.dst == node)


class Protocol(abc.ABC):
    """A decentralized protocol: what each node sends in each exchange and how it aggregates.

    ``send`` and ``receive`` are vectorized over all nodes (``state[n, D]``);
    ``receive_node`` is the slow per-node reference the ``LoopEngine`` uses, so every
    protocol's fast path is tested against an obviously correct one. ``exchanges`` says
    how many send -> observe -> receive exchanges a round has (an instance may set it
    from its options). Random draws come from ``self.context.streams``, keyed by
    (purpose, round, exchange, node), never from a shared generator.
    """

    name: ClassVar[str] = "protocol"
    trains: ClassVar[bool] = True
    """False for dissemination protocols whose state is not a model (muted gossip)."""
    exchanges: int = 1

    def setup(self, context: RoundContext) -> None:
        """Called once before the first round with the run's context; keeps it as
        ``self.context``. Override to check the topology, agree on keys, size buffers."""
        self.context = context

    def initial_state(self, params: torch.Tensor) -> torch.Tensor:
        """Every node's state before round 1, given the initial models ``[n, D]``.

        Training protocols keep the models (the default); a dissemination protocol
        returns its own state (who knows the rumour), of any width.
        """
        return params

    def plan(self, round: int) -> CommPlan:
        """Who may send to whom in ``round``: by default the topology's plan. A protocol
        may derive its own from ``self.context.topology`` (any object its ``send`` and
        ``receive`` understand)."""
        return self.context.plan(round)

    @abc.abstractmethod
    def send(self, state: torch.Tensor, plan: CommPlan, round: int, exchange: int) -> Messages:
        """The messages of exchange ``exchange`` of ``round``, given every node's state."""

    @abc.abstractmethod
    def receive(
        self, state: torch.Tensor, messages: Messages, plan: CommPlan, round: int, exchange: int
    ) -> torch.Tensor:
        """Every node's new state ``[n, D]`` after reading its inbox."""

    @abc.abstractmethod
    def receive_node(
        self,
        node: int,
        own: torch.Tensor,
        inbox: Messages,
        plan: CommPlan,
        round: int,
        exchange: int,
    ) -> torch.Tensor:
        """Node ``node``'s new state ``[D]`` from its own ``own[D]`` and its ``inbox``."""

    def network_model(self) -> tuple[str, int, float] | None:
        """The linear Gaussian view this protocol gives an observer each round, as
        ``(mechanism, gossip steps, noise per unit of sensitivity)`` for
        ``privlab.accounting.network`` (``"muffliato"`` or ``"zipdl"``); None if it has none."""
        return None

    def describe(self) -> dict:
        """JSON-able parameters of this protocol."""
        return {"name": self.name}


PROTOCOLS: Registry[type[Protocol]] = Registry("protocol", base=Protocol)


def weighted_inbox_sum(messages: Messages, weight: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """``out[v] = sum over messages e to v of weight[e] * payload[e]``, shape ``[n, D]``.

    Whole-model messages (``indices`` None) only. Row-shared messages are summed as one
    sparse product ``A @ rows`` with ``A[dst, src] = weight``; others with ``index_add``.
    """
    if messages.indices is not None:
        raise PrivlabError("weighted_inbox_sum needs whole-model messages (no indices)")
    rows = messages.rows
    if rows is None:
        payload = messages.payload
        out = torch.zeros(num_nodes, messages.width, dtype=payload.dtype, device=payload.device)
        return out.index_add_(0, messages.dst, weight.unsqueeze(1) * messages.payload)
    return sparse_matmul(_inbox_matrix(messages.dst, messages.src, weight, num_nodes, rows), rows)


def mix_node(node: int, own: torch.Tensor, inbox: Messages, plan: CommPlan) -> torch.Tensor:
    """``W[v, v] own + sum_u W[v, u] payload_u`` for node ``v``, one message at a time: the
    obviously correct per-node gossip step the reference ``receive_node`` methods use."""
    weight_of = plan.weights_into(node)
    out = float(plan.self_weight[node]) * own
    for sender, payload in zip(inbox.src.tolist(), inbox.payload):
        out = out + weight_of[sender] * payload
    return out


def _inbox_matrix(
    dst: torch.Tensor, src: torch.Tensor, weight: torch.Tensor, num_nodes: int, rows: torch.Tensor
) -> torch.Tensor:
    """CSR matrix ``A[dst, src] = weight`` (duplicates add up)."""
    return csr_matrix(dst, src, weight.to(rows.dtype), (num_nodes, rows.shape[0]))
