"""Shatter: virtual nodes that each share one chunk of the model under a pseudonym.

Biswas, Even, Kermarrec, Massoulie, Pires, Sharma, de Vos, "Noiseless Privacy-Preserving
Decentralized Learning", PoPETs 2025(1):824-844 (arXiv 2404.09536), as its authors
implemented it in ``sacs-epfl/shatter`` (``VNodeSharingRandom``, ``VNodePeerSampler``).
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np
import torch

from privlab.context import RoundContext
from privlab.errors import check, is_integer
from privlab.protocol import PROTOCOLS, Messages, Protocol
from privlab.rng import derive_seed, numpy_generator
from privlab.topology import EpidemicOracle

CHUNKINGS = ("contiguous", "random")

METADATA_BYTES = 20
"""Header of a chunk message: the round (int32), the sender's and the receiver's 63-bit
pseudonyms (int64 each). The chunk's coordinates are counted apart, 4 bytes each."""


def graph_seed(seed: int, key: int) -> int:
    """The seed of the virtual-node graph of round ``key``: the seed EL-Oracle's graph of
    that round has in a run with the same experiment seed (``privlab.experiment`` seeds
    the topology with ``derive_seed(seed, "topology")``), so that with one virtual node per
    real node Shatter's graph is EL-Oracle's graph."""
    return derive_seed(derive_seed(seed, "topology"), EpidemicOracle.name, key)


@dataclass(frozen=True)
class ShatterPlan:
    """One round of Shatter: one message per directed edge of the virtual-node graph.

    ``src[E]`` / ``dst[E]`` are the real sender and receiver (ground truth), ``chunk[E]``
    the chunk the sending virtual node holds, ``sender_label[E]`` / ``receiver_label[E]``
    the round's fresh pseudonyms of the sending and receiving virtual nodes.
    """

    num_nodes: int
    src: torch.Tensor
    dst: torch.Tensor
    chunk: torch.Tensor
    sender_label: torch.Tensor
    receiver_label: torch.Tensor


@PROTOCOLS.register("shatter")
class Shatter(Protocol):
    """Shatter (Biswas et al., PoPETs 2025): each real node runs ``virtual_nodes`` = k
    virtual nodes, virtual node c carrying chunk c of the model.

    As in the authors' code (``sacs-epfl/shatter``):

    * the model's D coordinates are split once, identically for all nodes, into k chunks
      of nearly equal size: ``contiguous`` slices, or ``random`` (the authors' default):
      per layer (per parameter tensor of ``context.model``, when its sizes add up to D;
      otherwise over the flat vector) a random partition into k parts, chunk c being the
      union over layers of part c, drawn from the seed tree (``"shatter-chunks"``);
    * each round (or once, ``dynamic=False``) a random ``degree``-regular graph is drawn
      over all n k virtual nodes (``nx.random_regular_graph(r, n k, seed)`` with EL-Oracle's
      seed, ``graph_seed``), not one graph per chunk index; graph node ``i k + c`` is
      real node i's virtual node for chunk c. A virtual node may receive any chunk index
      from any real node, including its own real node (the authors do not prevent that
      either), so every real node receives exactly k r chunks per round;
    * each virtual node sends its chunk to its r neighbours; a real node averages each
      coordinate over its own value and every received value of that coordinate, over the
      inboxes of all its virtual nodes: ``(x_i + sum of received values) / (1 + count)``.

    With k = 1 this is Epidemic Learning with EL-Oracle, fanout r, on the same seed: the
    same graph each round, and the same average over self and r received models.

    Two flaws of the authors' code are avoided. (1) Their virtual node ids are
    ``uid + j * n`` and travel in the messages, so ``vid mod n`` reveals the real node:
    here messages carry only fresh random 63-bit pseudonyms (each node draws its virtual
    nodes' labels from its own secret stream, keyed by round), never anything computed
    from an id. Graph positions stay simulator ground truth; the graph's law does not
    depend on how its nodes are numbered, so numbering them ``i k + c`` tells a receiver
    nothing (``tests/test_shatter.py`` checks the labels' joint distribution).
    (2) Their sparsification seeds ``random_seed * uid * 100 + round`` travel in the
    messages and name the sender: here no seed or id is sent, and every random draw comes
    from the experiment's secret seed tree.

    ``dynamic=False`` fixes the graph (that of round 0); the
    pseudonyms stay fresh each round, though a fixed graph lets neighbours link them.
    Bytes of a round: ``n r sum_c |S_c| (4 + 4) + n k r * 20`` = ``8 n r D + 20 n k r``
    (value and index per entry; a 20-byte header per message), messages a real node sends
    to itself (two of its virtual nodes adjacent) included.
    """

    name = "shatter"

    def __init__(
        self,
        virtual_nodes: int = 2,
        degree: int = 3,
        chunking: str = "random",
        dynamic: bool = True,
    ):
        check(
            is_integer(virtual_nodes) and virtual_nodes >= 1,
            "virtual_nodes",
            ">= 1 (an integer)",
            virtual_nodes,
        )
        check(is_integer(degree) and degree >= 1, "degree", ">= 1 (an integer)", degree)
        check(chunking in CHUNKINGS, "chunking", f"one of {', '.join(CHUNKINGS)}", chunking)
        check(isinstance(dynamic, bool), "dynamic", "true or false", dynamic)
        self.virtual_nodes, self.degree = int(virtual_nodes), int(degree)
        self.chunking, self.dynamic = chunking, dynamic

    def setup(self, context: RoundContext) -> None:
        super().setup(context)
        n, k, r, dim = context.num_nodes, self.virtual_nodes, self.degree, context.dim
        total = n * k
        check(
            r < total,
            "degree",
            f"< the number of virtual nodes n * virtual_nodes = {total}",
            r,
        )
        check(
            r * total % 2 == 0,
            "degree",
            f"such that degree * n * virtual_nodes is even (n * virtual_nodes = {total})",
            r,
        )
        check(k <= dim, "virtual_nodes", f"<= the model's {dim} coordinates", k)
        self.layers = self._layer_sizes(context)
        self.chunk_indices = self._chunks(dim).to(context.device)
        self._cache: tuple[int, ShatterPlan] | None = None

    def _layer_sizes(self, context: RoundContext) -> list[int]:
        """Per-parameter sizes when the model's layout is known, else one flat layer."""
        if context.model is not None:
            sizes = [p.numel() for p in context.model.parameters()]
            if sum(sizes) == context.dim:
                return sizes
        return [context.dim]

    def _chunks(self, dim: int) -> torch.Tensor:
        """Chunk c's coordinates, sorted, in row c of an int64 ``[k, ceil(D / k)]`` (-1 pads)."""
        k = self.virtual_nodes
        if self.chunking == "contiguous":
            label = np.repeat(np.arange(k), [len(a) for a in np.array_split(np.arange(dim), k)])
        else:
            rng = numpy_generator(self.context.streams.seed, "shatter-chunks")
            label, start = np.empty(dim, dtype=np.int64), 0
            for size in self.layers:  # cyclic labels, shuffled within the layer: balanced
                label[start : start + size] = rng.permutation((start + np.arange(size)) % k)
                start += size
        width = -(-dim // k)
        out = torch.full((k, width), -1, dtype=torch.int64)
        for c in range(k):
            coords = torch.from_numpy(np.flatnonzero(label == c))
            out[c, : len(coords)] = coords
        return out

    def plan(self, round: int) -> ShatterPlan:
        if self._cache is None or self._cache[0] != round:
            self._cache = (round, self._draw(round))
        return self._cache[1]

    def _draw(self, round: int) -> ShatterPlan:
        n, k, r = self.context.num_nodes, self.virtual_nodes, self.degree
        total, seed = n * k, self.context.streams.seed
        key = round if self.dynamic else 0
        graph = nx.random_regular_graph(r, total, seed=graph_seed(seed, key))
        edges = np.asarray(list(graph.edges()), dtype=np.int64).reshape(-1, 2)
        sender = np.concatenate([edges[:, 0], edges[:, 1]])
        receiver = np.concatenate([edges[:, 1], edges[:, 0]])
        labels = torch.tensor(  # labels[i * k + c]: node i's fresh pseudonym for chunk c
            [
                self.context.streams.node_seeds("shatter-pseudonyms", round, c, range(n))
                for c in range(k)
            ],
            dtype=torch.int64,
        ).T.reshape(-1)
        sender_label, receiver_label = labels[sender].numpy(), labels[receiver].numpy()
        # an inbox's order says nothing about ids: by receiver, then by pseudonyms
        order = np.lexsort((sender_label, receiver_label, receiver // k))
        sender, receiver = torch.from_numpy(sender[order]), torch.from_numpy(receiver[order])
        return ShatterPlan(
            num_nodes=n,
            src=sender // k,
            dst=receiver // k,
            chunk=sender % k,
            sender_label=torch.from_numpy(sender_label[order]),
            receiver_label=torch.from_numpy(receiver_label[order]),
        )

    def send(self, state: torch.Tensor, plan: ShatterPlan, round: int, exchange: int) -> Messages:
        indices = self.chunk_indices[plan.chunk]
        values = state[plan.src.unsqueeze(1), indices.clamp(min=0)]
        payload = torch.where(indices >= 0, values, torch.zeros((), dtype=state.dtype))
        return Messages(
            plan.src,
            plan.dst,
            payload,
            indices=indices,
            sender_label=plan.sender_label,
            receiver_label=plan.receiver_label,
            metadata_bytes=METADATA_BYTES,
        )

    def receive(
        self, state: torch.Tensor, messages: Messages, plan: ShatterPlan, round: int, exchange: int
    ) -> torch.Tensor:
        n, dim = state.shape
        valid, flat = messages.flat_positions(dim)
        total = state.flatten().clone().index_add_(0, flat, messages.payload[valid])
        count = torch.ones(n * dim, dtype=state.dtype, device=state.device).index_add_(
            0, flat, torch.ones(len(flat), dtype=state.dtype, device=state.device)
        )
        return (total / count).view(n, dim)

    def receive_node(
        self,
        node: int,
        own: torch.Tensor,
        inbox: Messages,
        plan: ShatterPlan,
        round: int,
        exchange: int,
    ) -> torch.Tensor:
        total, count = own.clone(), torch.ones_like(own)
        for indices, payload in zip(inbox.indices, inbox.payload):
            valid = indices >= 0  # a chunk names each coordinate once
            total[indices[valid]] += payload[valid]
            count[indices[valid]] += 1
        return total / count

    def describe(self) -> dict:
        return {
            "name": self.name,
            "virtual_nodes": self.virtual_nodes,
            "degree": self.degree,
            "chunking": self.chunking,
            "dynamic": self.dynamic,
        }
