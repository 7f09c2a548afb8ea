"""Small protocols of each shape the contract must carry, written for the tests.

* ``PerReceiverNoise``: a different payload on each edge (Zip-DL's correlated noise);
* ``PseudonymousChunks``: coordinate chunks with indices under pseudonyms (Shatter);
* ``MaskedSum``: receivers learn only the sum of masked fixed-point messages (CESAR);
* ``Rumor``: dissemination, not training (muted gossip);
* ``RepeatedGossip``: several exchanges per round, per-message headers, emitted events;
* ``VirtualPushes``: its own plan, a real node receiving through two virtual nodes.

Each has a vectorized ``receive`` and a per-node ``receive_node``, so the engines can be
compared on every shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from privlab.accounting import GaussianEvent
from privlab.protocol import Messages, Protocol, mix_node, weighted_inbox_sum


class PerReceiverNoise(Protocol):
    """Each sender adds noise that differs per receiver and sums to zero over its edges."""

    name = "toy-noise"

    def __init__(self, sigma: float = 0.5):
        self.sigma = sigma

    def send(self, params, plan, round, exchange):
        streams = self.context.streams
        noise = streams.normal(self.name, round, exchange, plan.src, params.shape[1]) * self.sigma
        per_sender = torch.zeros_like(params).index_add_(0, plan.src, noise)
        noise -= (per_sender / plan.out_degree().clamp(min=1).unsqueeze(1))[plan.src]
        return Messages(plan.src, plan.dst, params[plan.src] + noise)

    def receive(self, params, messages, plan, round, exchange):
        out = params * plan.self_weight.unsqueeze(1)
        return out.index_add_(0, messages.dst, plan.weight.unsqueeze(1) * messages.payload)

    def receive_node(self, node, own, inbox, plan, round, exchange):
        return mix_node(node, own, inbox, plan)


class PseudonymousChunks(Protocol):
    """Virtual nodes: each edge carries one chunk of the sender's coordinates under a
    per-round pseudonym; receivers average each coordinate over what covered it."""

    name = "toy-chunks"

    def __init__(self, chunks: int = 3):
        self.chunks = chunks

    def _chunk_indices(self, dim: int, device: torch.device) -> torch.Tensor:
        width = -(-dim // self.chunks)
        idx = torch.arange(self.chunks * width, device=device).view(self.chunks, width)
        return torch.where(idx < dim, idx, torch.full_like(idx, -1))

    def send(self, params, plan, round, exchange):
        n, dim = params.shape
        rank = torch.zeros(plan.num_edges, dtype=torch.int64, device=params.device)
        for node in range(n):  # position of each edge among its sender's edges
            mine = (plan.src == node).nonzero().flatten()
            rank[mine] = torch.arange(len(mine), device=params.device)
        chunk = (rank + round) % self.chunks
        indices = self._chunk_indices(dim, params.device)[chunk]
        payload = torch.where(
            indices >= 0, params[plan.src.unsqueeze(1), indices.clamp(min=0)], 0.0
        )
        virtual = range(n * self.chunks)  # a random pseudonym per (node, chunk)
        seeds = self.context.streams.node_seeds(self.name, round, 0, virtual)
        pseudonyms = torch.tensor(seeds, device=params.device)
        return Messages(
            plan.src,
            plan.dst,
            payload,
            indices=indices,
            sender_label=pseudonyms[plan.src * self.chunks + chunk],
            metadata_bytes=4,
        )

    def receive(self, params, messages, plan, round, exchange):
        n, dim = params.shape
        valid = messages.indices >= 0
        flat = (messages.dst.unsqueeze(1) * dim + messages.indices.clamp(min=0))[valid]
        total = params.flatten().clone().index_add_(0, flat, messages.payload[valid])
        ones = torch.ones(n * dim + len(flat), device=params.device)
        count = ones[: n * dim].index_add_(0, flat, ones[n * dim :])
        return (total / count).view(n, dim)

    def receive_node(self, node, own, inbox, plan, round, exchange):
        total, count = own.clone(), torch.ones_like(own)
        for indices, payload in zip(inbox.indices, inbox.payload):
            for index, value in zip(indices.tolist(), payload.tolist()):
                if index >= 0:
                    total[index] += value
                    count[index] += 1
        return total / count


class MaskedSum(Protocol):
    """Pairwise-masked fixed-point sums: masks of consecutive senders to a receiver
    cancel in the ring Z_(2^64), so only the weighted sum of the inbox is revealed."""

    name = "toy-masked"
    frac_bits = 24

    def send(self, params, plan, round, exchange):  # host code: numpy on CPU copies
        encoded = torch.round(plan.weight.unsqueeze(1) * params[plan.src] * 2**self.frac_bits)
        encoded, dst = encoded.cpu(), plan.dst.cpu()
        masks = np.empty(encoded.shape, dtype=np.uint64)
        partner = torch.arange(plan.num_edges)
        seeds = self.context.streams.node_seeds(self.name, round, exchange, range(plan.num_nodes))
        for node, seed in enumerate(seeds):  # masks among the senders to each receiver
            mine = (dst == node).nonzero().flatten()
            partner[mine] = mine.roll(-1)  # next sender to the same receiver, cyclically
            masks[mine.numpy()] = np.random.default_rng(seed).integers(
                0, 2**64, size=(len(mine), encoded.shape[1]), dtype=np.uint64
            )
        wire = encoded.numpy().astype(np.int64).view(np.uint64) + masks - masks[partner.numpy()]
        payload = torch.from_numpy(wire.view(np.int64)).to(params.device)
        return Messages(plan.src, plan.dst, payload)

    def _decode(self, total: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(total.view(np.int64).astype(np.float64) / 2**self.frac_bits)

    def receive(self, params, messages, plan, round, exchange):
        wire = messages.payload.cpu().numpy().view(np.uint64)
        total = np.zeros((plan.num_nodes, wire.shape[1]), dtype=np.uint64)
        np.add.at(total, messages.dst.cpu().numpy(), wire)
        aggregate = self._decode(total).float().to(params.device)
        return aggregate + params * plan.self_weight.unsqueeze(1)

    def receive_node(self, node, own, inbox, plan, round, exchange):
        total = np.zeros(inbox.payload.shape[1], dtype=np.uint64)
        for row in inbox.payload.numpy().view(np.uint64):
            total += row
        return self._decode(total).float() + float(plan.self_weight[node]) * own


class Rumor(Protocol):
    """Push gossip of a rumour from ``source``: informed nodes tell all their neighbours."""

    name = "toy-rumor"
    trains = False

    def __init__(self, source: int = 0):
        self.source = source

    def initial_state(self, params):
        state = torch.zeros(params.shape[0], 1, device=params.device)
        state[self.source] = 1.0
        return state

    def send(self, params, plan, round, exchange):
        informed = params[plan.src, 0] > 0
        src, dst = plan.src[informed], plan.dst[informed]
        return Messages(src, dst, torch.ones(len(src), 1, device=params.device))

    def receive(self, params, messages, plan, round, exchange):
        heard = torch.zeros_like(params).index_add_(0, messages.dst, messages.payload)
        return torch.maximum(params, (heard > 0).float())

    def receive_node(self, node, own, inbox, plan, round, exchange):
        return torch.ones_like(own) if len(inbox) else own.clone()


class RepeatedGossip(Protocol):
    """``steps`` averaging exchanges per round (Muffliato's K gossip steps), with a header
    whose size differs per message, a per-node metric and one Gaussian event per round."""

    def __init__(self, steps: int = 2):
        self.exchanges = steps

    def send(self, params, plan, round, exchange):
        if exchange == 0:
            self.context.emit_metric("toy_norm", params.norm(dim=1))
            self.context.emit_event(GaussianEvent(4.0))
        header = 4 + plan.src % 3  # a header of 4 to 6 bytes
        return Messages.of_rows(params, plan.src, plan.dst, metadata_bytes=header)

    def receive(self, params, messages, plan, round, exchange):
        neighbours = weighted_inbox_sum(messages, plan.weight, plan.num_nodes)
        return neighbours.add_(params * plan.self_weight.unsqueeze(1))

    def receive_node(self, node, own, inbox, plan, round, exchange):
        return mix_node(node, own, inbox, plan)


@dataclass(frozen=True)
class VirtualPlan:
    """Random pushes to virtual nodes: ``src[E]`` real senders, ``dst[E]`` real
    receivers, ``virtual[E]`` the receiving virtual node (``dst * copies + c``)."""

    src: torch.Tensor
    dst: torch.Tensor
    virtual: torch.Tensor


class VirtualPushes(Protocol):
    """Each real node runs ``copies`` virtual nodes; every node pushes its model to
    ``pushes`` random virtual nodes of others, so a real node may receive the same
    sender twice (two of its virtual nodes). Receivers average uniformly over themselves
    and every message. The plan is the protocol's own, drawn from the nodes' streams."""

    def __init__(self, copies: int = 2, pushes: int = 3):
        self.copies, self.pushes = copies, pushes

    def plan(self, round):
        n, k = self.context.num_nodes, self.copies
        nodes = torch.arange(n, device=self.context.device)
        draws = self.context.streams.uniform("toy-virtual", round, 0, nodes, self.pushes)
        virtual = (draws * (n - 1) * k).long()  # among the (n - 1) * k others' virtual nodes
        virtual = virtual + k * (virtual // k >= nodes.unsqueeze(1))  # skip own virtual nodes
        src = nodes.repeat_interleave(self.pushes)
        virtual = virtual.reshape(-1)
        return VirtualPlan(src, virtual // k, virtual)

    def send(self, params, plan, round, exchange):
        return Messages.of_rows(params, plan.src, plan.dst, receiver_label=plan.virtual)

    def receive(self, params, messages, plan, round, exchange):
        n = params.shape[0]
        ones = torch.ones(len(messages), device=params.device)
        total = weighted_inbox_sum(messages, ones, n).add_(params)
        return total / (torch.bincount(messages.dst, minlength=n) + 1).unsqueeze(1)

    def receive_node(self, node, own, inbox, plan, round, exchange):
        total = own.clone()
        for payload in inbox.payload:
            total = total + payload
        return total / (len(inbox) + 1)
