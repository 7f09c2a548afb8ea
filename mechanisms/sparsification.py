"""Sparsifiers, and sparsified D-PSGD (each message carries a subset of coordinates).

A sparsifier chooses, for every directed edge u -> v of a round's plan, the set of model
coordinates u would like to send to v: ``m = max(1, round(fraction * D))`` of the ``D``
coordinates.

* ``random``: coordinated per receiver. All senders to v use the same index set, drawn
  from v's stream for the round (the ``m`` largest of
  ``NodeStreams.uniform("sparsify-random", round, 0, [v])``, ties to the lower
  coordinate), as if v had published a seed; the sets of v's senders coincide.
* ``independent-random``: each (sender, receiver) pair draws its own set from the
  sender's stream (``"sparsify-independent"``), independently of every other pair.
* ``topk``: the ``m`` coordinates of largest ``|x_u - r_u|``, the change of the sender's
  model since its reference ``r_u`` (the model it had when it last sent, the initial
  model in round 1; zero when the protocol was never given an initial state, so
  ``|x_u|``). The same set goes to every receiver of u.

Both ``sparse-d-psgd`` and ``cesar`` draw from the same stream purposes, so on the same
seed they choose the same coordinates.
"""

from __future__ import annotations

import torch

from privlab.errors import check, is_real
from privlab.plan import CommPlan
from privlab.protocol import PROTOCOLS, Messages, Protocol

SPARSIFIERS = ("random", "independent-random", "topk")
METADATA_BYTES = 8
"""Header of a sparse model message: the round number and the sender's degree (int32 each)."""


def check_sparsifier(fraction: float, sparsifier: str) -> None:
    """Refuse a fraction outside (0, 1] or an unknown sparsifier."""
    check(is_real(fraction) and 0 < fraction <= 1, "fraction", "in (0, 1]", fraction)
    check(sparsifier in SPARSIFIERS, "sparsifier", f"one of {', '.join(SPARSIFIERS)}", sparsifier)


def sparse_count(fraction: float, dim: int) -> int:
    """Coordinates per message: ``max(1, round(fraction * dim))``."""
    return max(1, min(dim, round(fraction * dim)))


def _top_mask(scores: torch.Tensor, m: int) -> torch.Tensor:
    """Boolean mask of the ``m`` largest scores of each row."""
    mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    return mask.scatter_(1, torch.topk(scores, m, dim=1).indices, True)


def _drawn_mask(bits: torch.Tensor, m: int) -> torch.Tensor:
    """Boolean mask of the ``m`` largest draws of each row (``uniform_bits``), ties to the
    lower coordinate: exact integer keys, so every device picks the same set."""
    dim = bits.shape[1]
    lower_first = torch.arange(dim - 1, -1, -1, device=bits.device)
    return _top_mask(bits * dim + lower_first, m)


class Sparsifier:
    """Chooses the coordinates each edge would like to carry (``want[E, D]``)."""

    def __init__(self, kind: str, fraction: float):
        check_sparsifier(fraction, kind)
        self.kind, self.fraction = kind, float(fraction)
        self.reference: torch.Tensor | None = None
        """TopK's reference models ``[n, D]`` (the models at the last send)."""

    def want(self, state: torch.Tensor, plan: CommPlan, round: int, streams) -> torch.Tensor:
        """Boolean ``[E, D]``: the coordinates edge ``e`` (``src[e] -> dst[e]``) would send."""
        n, dim = state.shape
        m = sparse_count(self.fraction, dim)
        if self.kind == "random":
            draws = streams.uniform_bits("sparsify-random", round, 0, range(n), dim)
            return _drawn_mask(draws, m)[plan.dst]
        if self.kind == "independent-random":
            draws = streams.uniform_bits("sparsify-independent", round, 0, plan.src, dim)
            return _drawn_mask(draws, m)
        change = state if self.reference is None else state - self.reference
        return _top_mask(change.abs(), m)[plan.src]

    def sent(self, state: torch.Tensor) -> None:
        """Record the models just sent (TopK's reference for the next round)."""
        if self.kind == "topk":
            self.reference = state.detach().clone()


def pack(mask: torch.Tensor, values: torch.Tensor, pad=0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(indices, payload)`` ``[E, k]`` of the true entries of ``mask[E, D]`` in
    increasing coordinate order, ``indices`` padded with -1 and ``payload`` with ``pad``."""
    width = int(mask.sum(dim=1).max()) if mask.numel() else 0
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :width]
    real = mask.gather(1, order)
    indices = torch.where(real, order, -1)
    payload = values.gather(1, order).masked_fill(~real, pad)
    return indices, payload


def edge_weight(plan: CommPlan, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """The plan's weight ``W[dst, src]`` of each (src, dst) pair (edges of the plan)."""
    key = plan.dst * plan.num_nodes + plan.src
    return plan.weight[torch.searchsorted(key, dst * plan.num_nodes + src)]


def renormalised(
    own: torch.Tensor, self_weight: torch.Tensor, weighted: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """``(W_vv own + weighted) / (W_vv + weights)`` per coordinate, in float64; ``own``
    where the denominator is 0 (nobody sent and W_vv = 0)."""
    own64 = own.to(torch.float64)
    denominator = weights + self_weight
    total = own64 * self_weight + weighted
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return torch.where(denominator > 0, total / safe, own64).to(own.dtype)


@PROTOCOLS.register("sparse-d-psgd")
class SparseDPSGD(Protocol):
    """D-PSGD with sparsified messages (indices + values).

    Each node u sends to each neighbour v the coordinates the sparsifier chooses for the
    edge (``fraction`` of them; see this module's docstring). Receiver v averages each
    coordinate over itself and the neighbours that sent it, with the plan's
    (Metropolis-Hastings) weights renormalised per coordinate:

        x_v[c] <- (W_vv x_v[c] + sum_{u sent c} W_vu x_u[c]) / (W_vv + sum_{u sent c} W_vu)

    so a coordinate nobody sent keeps its value. Arithmetic is float64, the result is cast
    back to the state's dtype. Bytes: 4 per index, the payload's element size per value,
    an 8-byte header (for ``random``, v could send one seed instead of the indices; they
    are still counted).
    """

    def __init__(self, fraction: float = 0.1, sparsifier: str = "random"):
        self.sparsifier = Sparsifier(sparsifier, fraction)
        self.fraction, self.kind = float(fraction), sparsifier

    def initial_state(self, params: torch.Tensor) -> torch.Tensor:
        self.sparsifier.sent(params)
        return params

    def send(self, state: torch.Tensor, plan: CommPlan, round: int, exchange: int) -> Messages:
        want = self.sparsifier.want(state, plan, round, self.context.streams)
        indices, payload = pack(want, state[plan.src])
        self.sparsifier.sent(state)
        return Messages(plan.src, plan.dst, payload, indices=indices, metadata_bytes=METADATA_BYTES)

    def receive(
        self, state: torch.Tensor, messages: Messages, plan: CommPlan, round: int, exchange: int
    ) -> torch.Tensor:
        n, dim = state.shape
        valid, flat = messages.flat_positions(dim)
        weight = edge_weight(plan, messages.src, messages.dst).to(torch.float64)
        weight = weight.unsqueeze(1).expand_as(messages.indices)[valid]
        values = messages.payload.to(torch.float64)[valid] * weight
        zeros = torch.zeros(n * dim, dtype=torch.float64, device=state.device)
        weighted = zeros.clone().index_add_(0, flat, values)
        weights = zeros.index_add_(0, flat, weight)
        self_weight = plan.self_weight.to(torch.float64).unsqueeze(1)
        return renormalised(state, self_weight, weighted.view(n, dim), weights.view(n, dim))

    def receive_node(
        self,
        node: int,
        own: torch.Tensor,
        inbox: Messages,
        plan: CommPlan,
        round: int,
        exchange: int,
    ) -> torch.Tensor:
        weight_of = plan.weights_into(node)
        weighted = [0.0] * own.shape[0]
        weights = [0.0] * own.shape[0]
        for sender, indices, payload in zip(
            inbox.src.tolist(), inbox.indices.tolist(), inbox.payload.tolist()
        ):
            w = weight_of[sender]
            for index, value in zip(indices, payload):
                if index >= 0:
                    weighted[index] += w * value
                    weights[index] += w
        return renormalised(
            own,
            float(plan.self_weight[node]),
            torch.tensor(weighted, dtype=torch.float64),
            torch.tensor(weights, dtype=torch.float64),
        )

    def describe(self) -> dict:
        return {"name": self.name, "fraction": self.fraction, "sparsifier": self.kind}
