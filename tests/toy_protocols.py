"""Small protocols of each shape the contract must carry, written for the tests.

* ``PerReceiverNoise``: a different payload on each edge (Zip-DL's correlated noise);
* ``PseudonymousChunks``: coordinate chunks with indices under pseudonyms (Shatter);
* ``MaskedSum``: receivers learn only the sum of masked fixed-point messages (CESAR);
* ``Rumor``: dissemination, not training (muted gossip).

Each has a vectorized ``receive`` and a per-node ``receive_node``, so the engines can be
compared on every shape.
"""

from __future__ import annotations

import numpy as np
import torch

from privlab.protocol import Messages, Protocol
from privlab.topology import CommPlan


def _plan_weight(plan: CommPlan, node: int) -> dict[int, float]:
    to_node = plan.dst == node
    return dict(zip(plan.src[to_node].tolist(), plan.weight[to_node].tolist()))


class PerReceiverNoise(Protocol):
    """Each sender adds noise that differs per receiver and sums to zero over its edges."""

    name = "toy-noise"

    def __init__(self, sigma: float = 0.5):
        self.sigma = sigma

    def send(self, params, plan, round, rng):
        noise = torch.randn(plan.num_edges, params.shape[1], generator=rng) * self.sigma
        per_sender = torch.zeros_like(params).index_add_(0, plan.src, noise)
        noise -= (per_sender / plan.out_degree().clamp(min=1).unsqueeze(1))[plan.src]
        return Messages(plan.src, plan.dst, params[plan.src] + noise)

    def receive(self, params, messages, plan):
        out = params * plan.self_weight.unsqueeze(1)
        return out.index_add_(0, messages.dst, plan.weight.unsqueeze(1) * messages.payload)

    def receive_node(self, node, own, inbox, plan):
        weight = _plan_weight(plan, node)
        out = float(plan.self_weight[node]) * own
        for sender, payload in zip(inbox.src.tolist(), inbox.payload):
            out = out + weight[sender] * payload
        return out


class PseudonymousChunks(Protocol):
    """Virtual nodes: each edge carries one chunk of the sender's coordinates under a
    per-round pseudonym; receivers average each coordinate over what covered it."""

    name = "toy-chunks"

    def __init__(self, chunks: int = 3):
        self.chunks = chunks

    def _chunk_indices(self, dim: int) -> torch.Tensor:
        width = -(-dim // self.chunks)
        idx = torch.arange(self.chunks * width).view(self.chunks, width)
        return torch.where(idx < dim, idx, torch.full_like(idx, -1))

    def send(self, params, plan, round, rng):
        n, dim = params.shape
        rank = torch.zeros(plan.num_edges, dtype=torch.int64)
        for node in range(n):  # position of each edge among its sender's edges
            mine = (plan.src == node).nonzero().flatten()
            rank[mine] = torch.arange(len(mine))
        chunk = (rank + round) % self.chunks
        indices = self._chunk_indices(dim)[chunk]
        payload = torch.where(
            indices >= 0, params[plan.src.unsqueeze(1), indices.clamp(min=0)], 0.0
        )
        pseudonyms = torch.randperm(n * self.chunks, generator=rng)
        return Messages(
            plan.src,
            plan.dst,
            payload,
            indices=indices,
            sender_label=pseudonyms[plan.src * self.chunks + chunk],
            metadata_bytes=4,
        )

    def receive(self, params, messages, plan):
        n, dim = params.shape
        valid = messages.indices >= 0
        flat = (messages.dst.unsqueeze(1) * dim + messages.indices.clamp(min=0))[valid]
        total = params.flatten().clone().index_add_(0, flat, messages.payload[valid])
        count = torch.ones(n * dim).index_add_(0, flat, torch.ones(len(flat)))
        return (total / count).view(n, dim)

    def receive_node(self, node, own, inbox, plan):
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

    def send(self, params, plan, round, rng):
        encoded = torch.round(plan.weight.unsqueeze(1) * params[plan.src] * 2**self.frac_bits)
        numpy_rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=rng)))
        masks = numpy_rng.integers(0, 2**64, size=encoded.shape, dtype=np.uint64, endpoint=False)
        partner = torch.arange(plan.num_edges)
        for node in range(plan.num_nodes):  # next sender to the same receiver, cyclically
            mine = (plan.dst == node).nonzero().flatten()
            partner[mine] = mine.roll(-1)
        wire = encoded.numpy().astype(np.int64).view(np.uint64) + masks - masks[partner.numpy()]
        return Messages(plan.src, plan.dst, torch.from_numpy(wire.view(np.int64)))

    def _decode(self, total: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(total.view(np.int64).astype(np.float64) / 2**self.frac_bits)

    def receive(self, params, messages, plan):
        wire = messages.payload.numpy().view(np.uint64)
        total = np.zeros((plan.num_nodes, wire.shape[1]), dtype=np.uint64)
        np.add.at(total, messages.dst.numpy(), wire)
        return self._decode(total).float() + params * plan.self_weight.unsqueeze(1)

    def receive_node(self, node, own, inbox, plan):
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
        state = torch.zeros(params.shape[0], 1)
        state[self.source] = 1.0
        return state

    def send(self, params, plan, round, rng):
        informed = params[plan.src, 0] > 0
        src, dst = plan.src[informed], plan.dst[informed]
        return Messages(src, dst, torch.ones(len(src), 1))

    def receive(self, params, messages, plan):
        heard = torch.zeros_like(params).index_add_(0, messages.dst, messages.payload)
        return torch.maximum(params, (heard > 0).float())

    def receive_node(self, node, own, inbox, plan):
        return torch.ones_like(own) if len(inbox) else own.clone()
