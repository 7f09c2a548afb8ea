"""The no-collaboration baseline: every node trains alone and sends nothing."""

from __future__ import annotations

import torch

from privlab.context import RoundContext
from privlab.plan import CommPlan
from privlab.protocol import PROTOCOLS, Messages, Protocol


@PROTOCOLS.register("local")
class LocalOnly(Protocol):
    """Local training only: the no-collaboration baseline.

    Each round has one exchange in which nobody may talk (an empty plan) and no message
    is sent, so every node's model is what plain local SGD on its own data makes of it
    and every byte count is 0. The configured topology is ignored. Reference models of
    membership inference (``privlab.attacks.shadow``) are trained through this protocol.
    """

    def setup(self, context: RoundContext) -> None:
        super().setup(context)
        n, none = context.num_nodes, torch.zeros(0, dtype=torch.int64)
        self._empty_plan = CommPlan.from_edges(n, none, none, torch.zeros(0), torch.ones(n))

    def plan(self, round: int) -> CommPlan:
        return self._empty_plan

    def send(self, params: torch.Tensor, plan: CommPlan, round: int, exchange: int) -> Messages:
        return Messages.of_rows(params, plan.src, plan.dst)

    def receive(
        self, params: torch.Tensor, messages: Messages, plan: CommPlan, round: int, exchange: int
    ) -> torch.Tensor:
        return params

    def receive_node(
        self,
        node: int,
        own: torch.Tensor,
        inbox: Messages,
        plan: CommPlan,
        round: int,
        exchange: int,
    ) -> torch.Tensor:
        return own
