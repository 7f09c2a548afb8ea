"""The two baseline protocols: D-PSGD and Epidemic Learning (plain model averaging).

Both send each node's whole model on every edge of the round's ``CommPlan`` (after the
local steps: "train, then average") and differ in how a receiver weighs its inbox.
"""

from __future__ import annotations

import torch

from privlab.context import RoundContext
from privlab.errors import PrivlabError
from privlab.plan import CommPlan, sparse_matmul
from privlab.protocol import PROTOCOLS, Messages, Protocol, mix_node, weighted_inbox_sum

METADATA_BYTES = 8
"""Header of a model message: the round number and the sender's degree (int32 each)."""


@PROTOCOLS.register("d-psgd")
class DecentralizedSGD(Protocol):
    """D-PSGD, decentralized parallel SGD (Lian et al., NeurIPS 2017).

    Node v's new model is ``W[v, v] x_v + sum_u W[v, u] x_u`` over the plan's edges, with
    the plan's mixing weights (Metropolis-Hastings by default, so W is doubly
    stochastic on undirected graphs). The order is "train, then average",
    ``x <- W (x - lr g(x))`` as in decentralizepy, not Lian et al.'s Algorithm 1
    (``x <- W x - lr g(x)``); momentum buffers stay local to each node.
    """

    def send(self, params: torch.Tensor, plan: CommPlan, round: int, exchange: int) -> Messages:
        return Messages.of_rows(params, plan.src, plan.dst, metadata_bytes=METADATA_BYTES)

    def receive(
        self, params: torch.Tensor, messages: Messages, plan: CommPlan, round: int, exchange: int
    ) -> torch.Tensor:
        if messages.rows is params:  # the plain exchange: one product W @ params
            return sparse_matmul(plan.csr(), params)
        neighbours = weighted_inbox_sum(messages, plan.weight, plan.num_nodes)
        return neighbours.add_(params * plan.self_weight.unsqueeze(1))

    def receive_node(
        self,
        node: int,
        own: torch.Tensor,
        inbox: Messages,
        plan: CommPlan,
        round: int,
        exchange: int,
    ) -> torch.Tensor:
        return mix_node(node, own, inbox, plan)


PROTOCOLS.rename(
    "dpsgd", "d-psgd", "decentralized parallel SGD; 'dp-sgd' is the private gradient mechanism"
)


@PROTOCOLS.register("epidemic")
class EpidemicLearning(Protocol):
    """Epidemic Learning (de Vos, Farhadkhani, Guerraoui, Kermarrec, Pires, Sharma,
    NeurIPS 2023, Algorithm 1).

    Each node pushes its model to the peers the round's plan gives it (EL-Oracle: a fresh
    s-regular graph; EL-Local: s random peers of its own choosing); a receiver averages
    uniformly over itself and whatever arrived, ``(x_v + sum_{u in S_v} x_u) / (|S_v| + 1)``,
    independently of the plan's weights (EL does not use Metropolis-Hastings). Its plan
    is a fresh random graph every round, so it needs a dynamic topology (``el-oracle``,
    ``el-local``, or any topology whose ``dynamic`` is true).
    """

    def setup(self, context: RoundContext) -> None:
        super().setup(context)
        topology = context.topology
        if not getattr(topology, "dynamic", False):
            raise PrivlabError(
                "protocol 'epidemic' sends to fresh random peers every round: it needs a "
                f"dynamic topology ('el-oracle' or 'el-local'), got the static {topology.name!r}"
            )

    def send(self, params: torch.Tensor, plan: CommPlan, round: int, exchange: int) -> Messages:
        return Messages.of_rows(params, plan.src, plan.dst, metadata_bytes=METADATA_BYTES)

    def receive(
        self, params: torch.Tensor, messages: Messages, plan: CommPlan, round: int, exchange: int
    ) -> torch.Tensor:
        n = plan.num_nodes
        ones = torch.ones(len(messages), dtype=params.dtype, device=params.device)
        received = torch.bincount(messages.dst, minlength=n).to(params.dtype)
        total = weighted_inbox_sum(messages, ones, n).add_(params)
        return total.div_(received.add_(1).unsqueeze(1))

    def receive_node(
        self,
        node: int,
        own: torch.Tensor,
        inbox: Messages,
        plan: CommPlan,
        round: int,
        exchange: int,
    ) -> torch.Tensor:
        total = own.clone()
        for payload in inbox.payload:
            total = total + payload
        return total / (len(inbox) + 1)
