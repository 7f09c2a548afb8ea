"""Canary scores from what the observers saw: the audit's attack.

The observers (by default the target's neighbours, colluding) see the model the target
sends each round. The attack estimates the target's local update of every round and asks
how much of it points at each canary (Nasr et al., USENIX Security 2023: with access to
every intermediate model, the per-step statistic of a gradient canary is what makes an
audit tight):

* update ``u_t = m_t - x_t``, where ``m_t`` is the target's message of round t and ``x_t``
  the model it started the round from. ``x_1`` is the common initial model;
  ``x_t = W_vv m_{t-1} + sum_u W_vu m_u^{t-1}`` when the observers know the target's whole
  inbox (static graph, one exchange per round, the topology's weights: the observers'
  own messages to the target are their knowledge) -- the exact isolation of Pasquini,
  Raynal, Troncoso (S&P 2023); messages they do not know are replaced by ``m_{t-1}``.
  The ``difference`` statistic uses ``x_t = m_{t-1}`` alone and needs no weights.
* Dirac canary on coordinate j: ``score = -sum_t u_t[j]`` (the canary gradient pushes the
  coordinate down once per step it is sampled in), or, ``variation``,
  ``sum_t |u_t[j] - u_{t-1}[j]|``: the canary is sampled in some rounds and not in
  others, so its coordinate's update moves from round to round, while noise that does
  not change between rounds (a stream keyed wrongly) cancels;
* input canary (x, y): ``score = sum_t loss(x_t; x, y) - loss(m_t; x, y)``, how much the
  target's own training lowered the canary's loss; or, ``calibrated``, ``sum_t mean_u
  loss(m_u^t) - loss(m_t)``: the target's model against the observers' own models of the
  same round, which cancels what everyone's training does to the canary (the
  reference-model idea of Carlini et al., S&P 2022, with the peers as references).

Which statistic to use is chosen on the audit's held-out canaries (``attacks.audit_run``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from privlab.observe import ObservationLog
from privlab.plan import CommPlan
from privlab.state import ParamSpec
from privlab.training import stacked_gradient

STATISTICS = ("isolated", "difference")
DIRAC_STATISTICS = (*STATISTICS, "variation")
INPUT_STATISTICS = (*STATISTICS, "calibrated")


@dataclass
class TargetView:
    """What the observers know of one target: its message of every observed round
    (``sent[t]``, the mean of the copies they received at the round's first exchange)
    and the messages they themselves sent it (``inbox[t][u]``)."""

    target: int
    sent: dict[int, torch.Tensor]
    inbox: dict[int, dict[int, torch.Tensor]]


def target_views(log: ObservationLog, targets: list[int]) -> list[TargetView]:
    """Each target's view from the log: messages from the target seen by a curious party
    (by the sender the receiver was told), and the coalition's own messages to it
    (recorded on the eavesdropped links into the target)."""
    wanted = set(targets)
    sums: dict[int, dict[int, torch.Tensor]] = defaultdict(dict)
    counts: dict[int, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    inbox: dict[int, dict[int, dict[int, torch.Tensor]]] = defaultdict(lambda: defaultdict(dict))
    eavesdropper = len(log.parties) - 1 if "eavesdropper" in log.parties else None
    for observation in log.observations:
        whole = observation.payload.dim() == 2 and observation.payload.shape[1] == log.dim
        if observation.exchange != 0 or observation.indices is not None or not whole:
            continue
        for row in range(len(observation)):
            party = int(observation.party[row])
            sender, receiver = int(observation.sender[row]), int(observation.receiver[row])
            payload = observation.payload[row].double()
            if party == eavesdropper:
                if receiver in wanted:
                    inbox[receiver][observation.round][sender] = payload
            elif sender in wanted:
                t = observation.round
                sums[sender][t] = sums[sender][t] + payload if t in sums[sender] else payload
                counts[sender][t] += 1
    return [
        TargetView(
            v,
            {t: total / counts[v][t] for t, total in sorted(sums[v].items())},
            {t: dict(messages) for t, messages in inbox[v].items()},
        )
        for v in targets
    ]


def updates(
    view: TargetView,
    initial: torch.Tensor,
    statistic: str,
    plans: dict[int, CommPlan] | None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``(starts, messages)``: the estimated start ``x_t`` and the message ``m_t`` of
    every consecutive observed round from round 1 (see the module docstring)."""
    starts, messages = [], []
    previous, previous_round = initial.double(), 0
    for t, sent in view.sent.items():
        if t != previous_round + 1:  # a gap: the start is unknown, restart from here
            previous, previous_round = sent, t
            continue
        start = previous
        if statistic == "isolated" and t > 1 and plans is not None:
            start = _averaged(view, previous, t - 1, plans[t - 1])
        starts.append(start)
        messages.append(sent)
        previous, previous_round = sent, t
    return starts, messages


def _averaged(view: TargetView, previous: torch.Tensor, round: int, plan: CommPlan) -> torch.Tensor:
    """``W_vv m_{t-1} + sum_u W_vu m_u^{t-1}``, unknown inbox messages taken as ``m_{t-1}``."""
    v = view.target
    into = (plan.dst == v).nonzero().flatten()
    known = view.inbox.get(round, {})
    out = float(plan.self_weight[v]) * previous
    for edge in into.tolist():
        u = int(plan.src[edge])
        out = out + float(plan.weight[edge]) * known.get(u, previous)
    return out


def dirac_scores(
    view: TargetView,
    initial: torch.Tensor,
    coordinates: np.ndarray,
    statistic: str,
    plans: dict[int, CommPlan] | None,
) -> np.ndarray:
    """``-sum_t u_t[j]``, or its ``variation``, for every canary coordinate j (zeros when
    nothing was seen). Without ``plans`` the start of a round is the previous message."""
    start_rule = "difference" if statistic == "difference" or plans is None else "isolated"
    starts, messages = updates(view, initial, start_rule, plans)
    index = torch.from_numpy(np.asarray(coordinates, dtype=np.int64))
    steps = [sent[index] - start[index] for start, sent in zip(starts, messages, strict=True)]
    if not steps:
        return np.zeros(len(index))
    stacked = torch.stack(steps)
    if statistic == "variation":
        return stacked.diff(dim=0).abs().sum(dim=0).numpy()
    return (-stacked.sum(dim=0)).numpy()


@torch.no_grad()
def input_scores(
    view: TargetView,
    initial: torch.Tensor,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    statistic: str,
    plans: dict[int, CommPlan] | None,
) -> np.ndarray:
    """``sum_t loss(x_t) - loss(m_t)`` of every canary example ``(x[m], y[m])``, or the
    ``calibrated`` score against the observers' own models of each round."""
    forward = stacked_gradient(model, ParamSpec.of(model)).forward_shared

    def losses(params: list[torch.Tensor]) -> torch.Tensor:
        logits = forward(torch.stack(params).float(), x)  # [k, m, C]
        flat = nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), y.repeat(len(params)), reduction="none"
        )
        return flat.view(len(params), -1).double()

    total = torch.zeros(len(y), dtype=torch.float64)
    if statistic == "calibrated":
        for t, sent in view.sent.items():
            references = list(view.inbox.get(t, {}).values())
            if references:
                total += losses(references).mean(dim=0) - losses([sent])[0]
        return total.numpy()
    starts, messages = updates(view, initial, statistic, plans)
    if starts:
        both = losses(starts + messages)
        total = (both[: len(starts)] - both[len(starts) :]).sum(dim=0)
    return total.numpy()
