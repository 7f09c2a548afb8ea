"""Zip-DL: decentralized learning with correlated per-receiver noise that cancels out.

Biswas, Frey, Gaudel, Kermarrec, Lerévérend, Pires, Sharma, Taïani, "Low-Cost
Privacy-Preserving Decentralized Learning", PoPETs 2025(3), arXiv 2403.11795.
"""

from __future__ import annotations

import math

import torch

from privlab.errors import check, is_real
from privlab.plan import CommPlan
from privlab.protocol import PROTOCOLS, Messages, Protocol, mix_node, weighted_inbox_sum

METADATA_BYTES = 8
"""Header of a model message: the round number and the sender's degree (int32 each)."""

PURPOSE = "zipdl"
"""The purpose key of the noise streams."""


@PROTOCOLS.register("zipdl")
class ZipDL(Protocol):
    """Zip-DL (Biswas et al., PoPETs 2025, Algorithm 1 "ZipDL-averaging" inside Algorithm 2).

    Train, then average, as D-PSGD (``mechanisms.gossip.DecentralizedSGD``). In the
    averaging, sender ``u`` draws, for every member ``v`` of its closed neighbourhood
    ``Gamma_u`` (its receivers and ``u`` itself), an independent
    ``Y_{u->v} ~ N(0, (gamma * varsigma)^2 I_D)`` from its own stream, correlates them as

        Z_{u->v} = Y_{u->v} - (1 / (d_u W[v, u])) * sum_{j in Gamma_u} W[j, u] Y_{u->j},

    ``d_u = |Gamma_u|``, and sends ``x_u + Z_{u->v}`` to each neighbour ``v``; the copy
    "sent to itself" is its self term. Receiver ``v``'s new model is
    ``W[v, v] (x_v + Z_{v->v}) + sum_u W[v, u] (x_u + Z_{u->v})``.

    **Weighted correction.** ``W[v, u]`` is the weight the *receiver* ``v`` puts on ``u``
    (the plan's edge weight; ``self_weight`` for ``v = u``), so
    ``sum_{v in Gamma_u} W[v, u] Z_{u->v} = 0`` for every sender (Lemma 3.1) on any graph,
    and one averaging step leaves the network mean unchanged whenever W is doubly
    stochastic, e.g. Metropolis-Hastings on an irregular graph (Corollary 3.2). On the
    paper's symmetric W this is its Algorithm 1 line 2. The authors' code
    (``ZeroSumSharing`` in dimiarbre/decentralizepy) subtracts the *unweighted* mean of the
    draws instead, which cancels only where the weights are uniform (regular graphs with
    Metropolis-Hastings weights), not on irregular ones. A receiver with weight 0 (a plan
    that mutes an edge or a self term) is left out of ``Gamma_u``: its message carries
    the uncorrected ``Y``, which no average uses.

    **Noise scale (a decision).** ``gamma`` is the learning rate ``context.lr`` and
    ``varsigma = noise_multiplier * Delta``, with the gradient sensitivity ``Delta`` the
    per-sample clipping bound ``context.clip_norm`` (the paper enforces Assumption 5.1
    by clipping, App. A.3) or 1 when no gradient mechanism clips (App. A.3's Delta = 1).
    Each message then carries noise of variance (Lemma 3.3)

        sigma^2_{u->v} = [(d_u - 1)^2 / d_u^2
                          + sum_{j in Gamma_u, j != v} W[j, u]^2 / (d_u W[v, u])^2]
                         * (gamma * varsigma)^2,

    ``(d - 1) / d * (gamma * varsigma)^2`` with uniform weights on a regular graph
    (Remark 3.4, ``d`` = degree + 1). The paper's experiments quote the per-message std
    (``k sigma``, not scaled by gamma): to reproduce one, set
    ``noise_multiplier = k sigma / (lr * Delta * sqrt((d - 1) / d))``.
    ``noise_multiplier = 0`` sends plain models (D-PSGD). The noise is added at every
    exchange; one exchange per round (the paper's 1-step variant). No privacy event is
    emitted: Zip-DL's guarantee is pairwise network DP (Theorems 5.9, 5.12), which the
    ledger does not compute.
    """

    def __init__(self, noise_multiplier: float = 1.0) -> None:
        check(
            is_real(noise_multiplier) and math.isfinite(noise_multiplier) and noise_multiplier >= 0,
            "noise_multiplier",
            ">= 0 and finite",
            noise_multiplier,
        )
        self.noise_multiplier = float(noise_multiplier)
        self._self_noise: tuple[tuple, torch.Tensor] | None = None

    def noise_std(self) -> float:
        """The std ``gamma * varsigma`` of the independent draws ``Y``."""
        clip = self.context.clip_norm
        sensitivity = 1.0 if clip is None else float(clip)
        return self.context.lr * self.noise_multiplier * sensitivity

    def noise(
        self, plan: CommPlan, round: int, exchange: int, dim: int, dtype=torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The correlated noises ``(Z on each plan edge [E, D], Z_{u->u} of each node [n, D])``.

        Each sender's draws are one block of its own stream: its edges in plan order,
        then its self term.
        """
        n = plan.num_nodes
        owners = torch.cat([plan.src, torch.arange(n, device=plan.src.device)])
        draws = self.context.streams.normal(PURPOSE, round, exchange, owners, dim, dtype)
        draws.mul_(self.noise_std())
        edge, own = draws[: plan.num_edges], draws[plan.num_edges :]
        w_edge, w_self = plan.weight.to(dtype), plan.self_weight.to(dtype)
        on_edge, on_self = w_edge > 0, w_self > 0
        size = torch.bincount(plan.src[on_edge], minlength=n).to(dtype) + on_self.to(dtype)
        weighted = (w_self.unsqueeze(1) * own).index_add_(
            0, plan.src, w_edge.unsqueeze(1) * edge
        )  # sum_j W[j, u] Y_{u->j}; muted receivers add 0
        mean = weighted / size.clamp(min=1).unsqueeze(1)
        ones = torch.ones_like(w_edge)
        edge_scale = torch.where(on_edge, 1 / torch.where(on_edge, w_edge, ones), 0 * ones)
        edge = edge - edge_scale.unsqueeze(1) * mean[plan.src]
        ones = torch.ones_like(w_self)
        self_scale = torch.where(on_self, 1 / torch.where(on_self, w_self, ones), 0 * ones)
        own = own - self_scale.unsqueeze(1) * mean
        return edge, own

    def node_noise(
        self, node: int, plan: CommPlan, round: int, exchange: int, dim: int, dtype=torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Node ``node``'s noises ``(Z on its out-edges in plan order [k, D], Z_{u->u} [D])``,
        computed alone, one receiver at a time (the reference for :meth:`noise`)."""
        out_edges = (plan.src == node).nonzero().flatten().tolist()
        owners = [node] * (len(out_edges) + 1)
        draws = self.context.streams.normal(PURPOSE, round, exchange, owners, dim, dtype)
        draws = draws * self.noise_std()
        weights = [float(plan.weight[e]) for e in out_edges] + [float(plan.self_weight[node])]
        active = [w > 0 for w in weights]
        size = sum(active)
        total = torch.zeros(dim, dtype=dtype)
        for weight, on, y in zip(weights, active, draws):
            if on:
                total = total + weight * y
        noises = [y - total / (size * w) if on else y for w, on, y in zip(weights, active, draws)]
        return torch.stack(noises[:-1]) if out_edges else draws[:0], noises[-1]

    def send(self, params: torch.Tensor, plan: CommPlan, round: int, exchange: int) -> Messages:
        if self.noise_multiplier == 0:
            self._self_noise = None
            return Messages.of_rows(params, plan.src, plan.dst, metadata_bytes=METADATA_BYTES)
        edge, own = self.noise(plan, round, exchange, params.shape[1], params.dtype)
        self._self_noise = ((plan, round, exchange), own)
        payload = edge.add_(params[plan.src])
        return Messages(plan.src, plan.dst, payload, metadata_bytes=METADATA_BYTES)

    def receive(
        self, params: torch.Tensor, messages: Messages, plan: CommPlan, round: int, exchange: int
    ) -> torch.Tensor:
        own = params
        if self.noise_multiplier != 0:
            cached = self._self_noise
            if cached is not None and cached[0] == (plan, round, exchange):
                self_noise = cached[1]
            else:  # receive without the matching send: draw the self terms again
                self_noise = self.noise(plan, round, exchange, params.shape[1], params.dtype)[1]
            own = params + self_noise
        neighbours = weighted_inbox_sum(messages, plan.weight, plan.num_nodes)
        return neighbours.add_(own * plan.self_weight.unsqueeze(1))

    def receive_node(
        self,
        node: int,
        own: torch.Tensor,
        inbox: Messages,
        plan: CommPlan,
        round: int,
        exchange: int,
    ) -> torch.Tensor:
        if self.noise_multiplier != 0:
            own = own + self.node_noise(node, plan, round, exchange, own.shape[0], own.dtype)[1]
        return mix_node(node, own, inbox, plan)

    def network_model(self) -> tuple[str, int, float] | None:
        """One exchange of per-edge correlated noise per round."""
        return ("zipdl", 1, self.noise_multiplier)

    def describe(self) -> dict:
        return {"name": self.name, "noise_multiplier": self.noise_multiplier}
