"""The audit's canary statistics on hand-made observations."""

from __future__ import annotations

import numpy as np
import torch

from privlab.attacks.audit_scores import TargetView, dirac_scores, updates
from privlab.plan import CommPlan


def line_plan() -> CommPlan:
    """Node 0 averages with node 1: weights 1/2 each."""
    return CommPlan.from_edges(
        2,
        torch.tensor([0, 1]),
        torch.tensor([1, 0]),
        torch.tensor([0.5, 0.5]),
        torch.tensor([0.5, 0.5]),
    )


def view_of(updates_by_round, inbox_by_round, initial):
    """The target's messages when it starts each round from the average of its last
    message and its neighbour's, then adds the round's update."""
    sent, previous = {}, initial
    for t, update in enumerate(updates_by_round, start=1):
        start = initial if t == 1 else 0.5 * previous + 0.5 * inbox_by_round[t - 2]
        sent[t] = start + update
        previous = sent[t]
    inbox = {t: {1: neighbour} for t, neighbour in enumerate(inbox_by_round, start=1)}
    return TargetView(0, sent, inbox)


def test_isolation_recovers_every_update_exactly():
    rng = np.random.default_rng(0)
    initial = torch.zeros(5, dtype=torch.float64)
    true = [torch.from_numpy(rng.normal(size=5)) for _ in range(4)]
    neighbour = [torch.from_numpy(rng.normal(size=5)) for _ in range(4)]
    view = view_of(true, neighbour, initial)
    plans = {t: line_plan() for t in range(5)}
    starts, messages = updates(view, initial, "isolated", plans)
    for start, sent, u in zip(starts, messages, true, strict=True):
        torch.testing.assert_close(sent - start, u)
    crude_starts, _ = updates(view, initial, "difference", None)
    assert not torch.allclose(messages[2] - crude_starts[2], true[2])


def test_variation_sees_canaries_through_noise_reused_every_round():
    """Noise drawn once and reused hides a canary from the sum of updates but not from
    their round-to-round variation."""
    rng = np.random.default_rng(1)
    rounds, canaries = 8, 40
    planted = rng.random(canaries) < 0.5
    noise = torch.from_numpy(rng.normal(scale=30.0, size=canaries))  # the same each round
    present = torch.from_numpy(planted & (rng.random((rounds, canaries)) < 0.5))
    steps = [-0.1 * present[t].double() + noise for t in range(rounds)]
    initial = torch.zeros(canaries, dtype=torch.float64)
    view = view_of(steps, [initial] * rounds, initial)
    plans = {t: line_plan() for t in range(rounds + 1)}
    coordinates = np.arange(canaries)
    variation = dirac_scores(view, initial, coordinates, "variation", plans)
    total = dirac_scores(view, initial, coordinates, "isolated", plans)
    assert variation[planted].min() > variation[~planted].max()  # absent: exactly 0
    np.testing.assert_allclose(variation[~planted], 0.0, atol=1e-9)
    gap = total[planted].mean() - total[~planted].mean()
    assert abs(gap) < 2 * total.std()  # the sum is lost in the reused noise
