"""R independent worlds of one experiment, side by side in one engine.

A multi-run audit needs R trainings that differ only in their randomness and in which
canaries they hold (Jagielski, Ullman, Oprea, NeurIPS 2020, Alg. 2). Stacking them as
``R * n`` nodes of one vectorized engine trains them in one batched call: world r is
nodes ``r*n .. r*n + n-1``, its data a copy of the dataset (so index sets stay
disjoint), its graph the same plan as every other world's with no edge between worlds.
Each node draws from its own random stream, so the worlds are independent.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from privlab.partition import FederatedData
from privlab.plan import CommPlan
from privlab.topology import Topology


class WorldsTopology(Topology):
    """``worlds`` disjoint copies of ``inner``: world r's plan is ``inner``'s with node ids
    shifted by ``r * n``. Static or dynamic like ``inner`` (every world draws the same
    graph in a round)."""

    def __init__(self, inner: Topology, worlds: int):
        self.inner, self.worlds = inner, worlds
        self.name = f"{inner.name} x{worlds}"
        self.num_nodes = inner.num_nodes * worlds
        self.dynamic = inner.dynamic
        self._cached: CommPlan | None = None

    def _plan(self, round: int) -> CommPlan:
        if not self.dynamic and self._cached is not None:
            return self._cached
        plan = self.inner.plan(round)
        n = self.inner.num_nodes
        shifts = [r * n for r in range(self.worlds)]
        out = CommPlan(
            self.num_nodes,
            torch.cat([plan.src + s for s in shifts]),
            torch.cat([plan.dst + s for s in shifts]),
            plan.weight.repeat(self.worlds),
            plan.self_weight.repeat(self.worlds),
        )
        if not self.dynamic:
            self._cached = out
        return out

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "worlds": self.worlds, "world": self.inner.describe()}


def stack_worlds(worlds: list[FederatedData]) -> FederatedData:
    """One ``FederatedData`` holding every world's nodes in order; world r's samples are
    its own dataset shifted by the sizes of the worlds before it. Test and non-member
    sets are world 0's."""
    offsets = np.cumsum([0] + [len(w.dataset) for w in worlds[:-1]])
    dataset = replace(
        worlds[0].dataset,
        X=torch.cat([w.dataset.X for w in worlds]),
        y=torch.cat([w.dataset.y for w in worlds]),
    )
    nodes = tuple(idx + off for w, off in zip(worlds, offsets) for idx in w.node_indices)
    return FederatedData(dataset, nodes, worlds[0].nonmember_indices, worlds[0].test_indices)
