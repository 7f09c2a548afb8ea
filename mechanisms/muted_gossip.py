"""Muted gossip (Bellet, Guerraoui & Hendrikx, "Who started this rumor?", DISC 2020).

The rumour spreads by push; after each push the pusher stays active with probability
``s`` (the *muting parameter*) and is muted otherwise, so ``s = 1`` is the standard push
protocol and ``s = 0`` forwards once (a single random-walk token). We follow the working
model of ``shared/reference/rgm-gossip-network-dp.md`` section 2.3 (a reconstruction: the
paper's full text was not available to the reference's author):

* continuous time: every *active* node has a rate-1 Poisson clock; when it rings it pushes
  the rumour to a uniformly random other node (on a general graph: a uniformly random
  neighbour); then, **with probability 1 - s, the pusher is muted** (it stays active with
  probability s; the abstract: "nodes stop emitting after each communication with a
  fixed probability 1 - s");
* the receiver becomes informed and **active**, even when it was informed or muted before
  (reactivation on receipt; a flag, ``reactivate``, since the exact rule is unverified);
* curious nodes follow the protocol and record their first contact (sender, time);
  ``m = round(f n)`` of them are drawn uniformly among the ``n - 1`` non-source nodes.

Two engines of this model:

* ``simulate``: many independent runs of the continuous-time model together, event by
  event, vectorised over the runs with numpy (each loop step advances every live run by
  one push); ``first_spy_success`` is the first-spy attack on its output;
* ``MutedGossip``: a round-based protocol for privlab's engines (``trains = False``):
  in each round every active node pushes once, then stays active with probability s.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from privlab.context import RoundContext
from privlab.errors import check, is_integer, is_real
from privlab.protocol import PROTOCOLS, Messages, Protocol
from privlab.rng import numpy_generator

__all__ = [
    "GossipRuns",
    "MutedGossip",
    "MutedPlan",
    "first_spy_guess",
    "first_spy_success",
    "simulate",
]


@dataclass(frozen=True)
class GossipRuns:
    """Independent runs of muted gossip (``R`` runs on ``n`` nodes).

    ``source[R]``: the true source of each run. ``curious[R, n]``: the curious nodes.
    ``parent[R, n]``: who first told each node (``-1`` for the source and for nodes never
    informed). ``informed_time[R, n]``: when each node first heard (``inf`` if never).
    ``spread_time[R]``: when the last node was informed (``inf`` if the rumour died, only
    possible without reactivation). ``events[R]``: pushes made until then. A curious
    node's observation is its first contact ``(parent, informed_time)``.
    """

    num_nodes: int
    mute: float
    reactivate: bool
    source: np.ndarray
    curious: np.ndarray
    parent: np.ndarray
    informed_time: np.ndarray
    spread_time: np.ndarray
    events: np.ndarray

    @property
    def runs(self) -> int:
        return int(self.source.shape[0])

    @property
    def num_curious(self) -> np.ndarray:
        """Curious nodes in each run ``[R]``."""
        return self.curious.sum(axis=1)

    def first_contacts(self) -> tuple[np.ndarray, np.ndarray]:
        """What the curious nodes saw: ``(sender[R, n], time[R, n])``, with ``-1`` and
        ``nan`` for honest nodes (and for curious nodes never reached)."""
        reached = self.curious & np.isfinite(self.informed_time)
        sender = np.where(reached, self.parent, -1)
        time = np.where(reached, self.informed_time, np.nan)
        return sender, time


def _check_mute(mute: object) -> float:
    check(
        is_real(mute) and math.isfinite(mute) and 0.0 <= mute <= 1.0,
        "mute",
        "in [0, 1] (the probability that a pusher stays active)",
        mute,
    )
    return float(mute)


def _neighbours(graph, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """CSR ``(indptr, indices)`` of ``graph``'s out-neighbours (self-loops dropped), or
    None for the complete graph."""
    if graph is None:
        return None
    import networkx as nx

    check(
        graph.number_of_nodes() == n and set(graph.nodes) == set(range(n)),
        "graph",
        f"a networkx graph on the nodes 0..{n - 1}",
        f"{graph.number_of_nodes()} nodes",
    )
    adjacency = nx.to_scipy_sparse_array(graph, nodelist=range(n), format="lil")
    adjacency.setdiag(0)
    adjacency = adjacency.tocsr()
    adjacency.eliminate_zeros()
    degree = np.diff(adjacency.indptr)
    check(bool((degree > 0).all()), "graph", "a graph where every node has a neighbour", graph)
    return adjacency.indptr.astype(np.int64), adjacency.indices.astype(np.int64)


def _draw_curious(
    curious, n: int, runs: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``(source[R], curious[R, n])``.

    A fraction ``f``: ``m = round(f n)`` curious nodes drawn per run uniformly among the
    ``n - 1`` nodes other than the source (reference section 2.3), the source uniform.
    An explicit set of ids: the same curious nodes in every run, the source uniform among
    the honest nodes (source hiding is defined between honest nodes).
    """
    rows = np.arange(runs)
    if is_real(curious) and not is_integer(curious):
        check(
            math.isfinite(curious) and 0.0 <= curious < 1.0,
            "curious",
            "a fraction in [0, 1) or a set of node ids",
            curious,
        )
        m = int(round(curious * n))
        check(m <= n - 1, "curious", f"a fraction leaving an honest node (n = {n})", curious)
        source = rng.integers(0, n, size=runs)
        mask = np.zeros((runs, n), dtype=bool)
        if m:
            keys = rng.random((runs, n))
            keys[rows, source] = 2.0  # never among the m smallest
            chosen = np.argpartition(keys, m - 1, axis=1)[:, :m]
            mask[rows[:, None], chosen] = True
        return source, mask
    check(
        isinstance(curious, Iterable) and not isinstance(curious, (str, bytes)),
        "curious",
        "a fraction in [0, 1) or a set of node ids",
        curious,
    )
    ids = list(curious)
    check(
        all(is_integer(i) and 0 <= i < n for i in ids) and len(set(ids)) == len(ids),
        "curious",
        f"distinct node ids in [0, {n})",
        ids,
    )
    honest = np.setdiff1d(np.arange(n), np.asarray(ids, dtype=np.int64))
    check(len(honest) >= 1, "curious", "a set leaving an honest node", ids)
    source = honest[rng.integers(0, len(honest), size=runs)]
    mask = np.zeros((runs, n), dtype=bool)
    mask[:, ids] = True
    return source, mask


def simulate(
    num_nodes: int,
    mute: float,
    runs: int,
    curious: float | Iterable[int] = 0.1,
    graph=None,
    reactivate: bool = True,
    seed: int = 0,
    progress: bool = False,
) -> GossipRuns:
    """``runs`` independent runs of muted gossip with muting parameter ``mute`` (= s).

    Event-driven continuous-time simulation: with ``a`` active nodes the next push comes
    after an Exp(a) wait, from a uniformly chosen active node, to a uniformly random other
    node (complete graph, ``graph=None``) or a uniformly random neighbour in ``graph``
    (networkx, nodes ``0..n-1``). The pusher is then muted with probability ``1 - mute``;
    the receiver becomes informed and active (when already informed: only if
    ``reactivate``). Each loop step advances every live run by one push (arrays
    ``[runs, n]``; the active nodes of each run are kept in a swap-remove list, so a step
    costs O(live runs)). A run stops when everybody is informed or nobody is active.
    Sources are uniform per run; ``curious`` is a fraction or a set (see ``_draw_curious``).
    ``progress`` shows a bar of finished runs on a terminal.
    """
    check(is_integer(num_nodes) and num_nodes >= 2, "num_nodes", ">= 2 (an integer)", num_nodes)
    check(is_integer(runs) and runs >= 1, "runs", ">= 1 (an integer)", runs)
    check(isinstance(reactivate, bool), "reactivate", "true or false", reactivate)
    check(is_integer(seed), "seed", "an integer", seed)
    s = _check_mute(mute)
    n, R = int(num_nodes), int(runs)
    csr = _neighbours(graph, n)
    rng = numpy_generator(seed, "muted-gossip-simulate")
    source, curious_mask = _draw_curious(curious, n, R, rng)

    rows = np.arange(R)
    informed = np.zeros(R * n, dtype=bool)  # flat [R, n] views: index run * n + node
    informed_time = np.full(R * n, np.inf)
    parent = np.full(R * n, -1, dtype=np.int64)
    active_list = np.zeros(R * n, dtype=np.int64)  # run r's active nodes at [r*n, r*n+count)
    position = np.full(R * n, -1, dtype=np.int64)  # where a node sits in its list (-1: muted)
    start = rows * n + source
    informed[start] = True
    informed_time[start] = 0.0
    active_list[rows * n] = source
    position[start] = 0
    count = np.ones(R, dtype=np.int64)
    num_informed = np.ones(R, dtype=np.int64)
    clock = np.zeros(R)
    spread_time = np.full(R, np.inf)
    events = np.zeros(R, dtype=np.int64)

    live = rows.copy()
    bar = tqdm(total=R, desc="runs", disable=not (progress and sys.stderr.isatty()), leave=False)
    while live.size:
        size = live.size
        base = live * n
        active = count[live]
        now = clock[live] + rng.standard_exponential(size) / active
        clock[live] = now
        slot = np.minimum((rng.random(size) * active).astype(np.int64), active - 1)
        pusher = active_list[base + slot]
        if csr is None:
            target = rng.integers(0, n - 1, size=size)
            target += target >= pusher  # uniform among the n - 1 others
        else:
            indptr, indices = csr
            degree = indptr[pusher + 1] - indptr[pusher]
            pick = np.minimum((rng.random(size) * degree).astype(np.int64), degree - 1)
            target = indices[indptr[pusher] + pick]
        events[live] += 1

        muted = rng.random(size) >= s  # muted with probability 1 - s
        if muted.any():  # swap-remove the pusher from its run's active list
            mb, mslot, mpusher = base[muted], slot[muted], pusher[muted]
            last_slot = count[live[muted]] - 1
            last = active_list[mb + last_slot]
            active_list[mb + mslot] = last
            position[mb + last] = mslot
            position[mb + mpusher] = -1
            count[live[muted]] -= 1

        cell = base + target
        new = ~informed[cell]
        if new.any():
            fresh = cell[new]
            informed[fresh] = True
            informed_time[fresh] = now[new]
            parent[fresh] = pusher[new]
            num_informed[live[new]] += 1
        wake = (new | reactivate) & (position[cell] < 0)
        if wake.any():
            runs_woken = live[wake]
            at = count[runs_woken]
            active_list[base[wake] + at] = target[wake]
            position[cell[wake]] = at
            count[runs_woken] += 1

        done = num_informed[live] == n
        spread_time[live[done]] = now[done]
        finished = live.size
        live = live[~done & (count[live] > 0)]
        bar.update(finished - live.size)
    bar.close()

    return GossipRuns(
        num_nodes=n,
        mute=s,
        reactivate=reactivate,
        source=source,
        curious=curious_mask,
        parent=parent.reshape(R, n),
        informed_time=informed_time.reshape(R, n),
        spread_time=spread_time,
        events=events,
    )


def first_spy_guess(runs: GossipRuns) -> np.ndarray:
    """The first-spy estimate of each run's source ``[R]``: the sender of the first
    message any curious node received (reference sections 2.6 and 3; in the s = 0 model
    it is the MAP estimate under a uniform prior). ``-1`` where no curious node was
    reached (the guess then fails)."""
    check(
        bool(runs.curious.any(axis=1).all()),
        "curious",
        "at least one curious node in every run",
        int(runs.num_curious.min()),
    )
    seen = np.where(runs.curious, runs.informed_time, np.inf)
    first = seen.argmin(axis=1)
    rows = np.arange(runs.runs)
    reached = np.isfinite(seen[rows, first])
    return np.where(reached, runs.parent[rows, first], -1)


def first_spy_success(runs: GossipRuns) -> float:
    """The first-spy attack's success rate: the fraction of runs where the guess is the
    true source (at s = 0 on the complete graph, exactly (m + 1) / n, reference 2.4)."""
    return float(np.mean(first_spy_guess(runs) == runs.source))


# -- the round-based protocol --------------------------------------------------------


@dataclass(frozen=True)
class MutedPlan:
    """One round of muted gossip: ``target[n]`` the neighbour each node would push to
    (``-1``: no neighbour), ``stay[n]`` whether it stays active after pushing. Both come
    from the nodes' own streams, so the plan is the same in every engine."""

    num_nodes: int
    target: torch.Tensor
    stay: torch.Tensor


@PROTOCOLS.register("muted-gossip")
class MutedGossip(Protocol):
    """Round-based muted gossip of a rumour from ``source`` (muting parameter ``mute`` = s).

    The state ``[n, 2]`` is not a model: column 0 is 1 for nodes that know the rumour,
    column 1 is 1 for the active ones (the source starts informed and active). Each
    round, every active node pushes a 1-entry message to one uniformly random neighbour
    in the topology's plan (its draw: ``streams.uniform("muted-gossip", round, 0, node)``)
    and then stays active with probability ``mute`` (its draw from the stream
    ``"muted-gossip-mute"``), i.e. is muted with probability ``1 - mute``, as in the
    reference's working model. A node that receives becomes informed and active
    (reactivation on receipt), even if it was muted in the same round.
    ``mute = 1`` is push gossip (one push per informed node per round); ``mute = 0``
    forwards once (a random walk).
    """

    trains = False

    def __init__(self, source: int = 0, mute: float = 0.5) -> None:
        check(is_integer(source) and source >= 0, "source", ">= 0 (a node id)", source)
        self.mute = _check_mute(mute)
        self.source = int(source)

    def setup(self, context: RoundContext) -> None:
        super().setup(context)
        n = context.num_nodes
        check(self.source < n, "source", f"a node id in [0, {n})", self.source)

    def initial_state(self, params: torch.Tensor) -> torch.Tensor:
        state = torch.zeros(params.shape[0], 2, device=params.device)
        state[self.source] = 1.0
        return state

    def plan(self, round: int) -> MutedPlan:
        base = self.context.plan(round)
        n = base.num_nodes
        keep = base.src != base.dst
        src, dst = base.src[keep], base.dst[keep]
        order = torch.argsort(src, stable=True)
        dst = dst[order]
        degree = torch.bincount(src, minlength=n)
        first = torch.cumsum(degree, 0) - degree
        nodes = torch.arange(n, device=base.device)
        streams = self.context.streams
        draw = streams.uniform("muted-gossip", round, 0, nodes, 1)[:, 0].double()
        pick = torch.minimum((draw * degree).long(), (degree - 1).clamp(min=0))
        target = torch.full((n,), -1, dtype=torch.int64, device=base.device)
        has = degree > 0
        target[has] = dst[first[has] + pick[has]]
        stay = streams.uniform("muted-gossip-mute", round, 0, nodes, 1)[:, 0] < self.mute
        return MutedPlan(n, target, stay)

    @staticmethod
    def _pushers(state: torch.Tensor, plan: MutedPlan) -> torch.Tensor:
        return (state[:, 1] > 0) & (plan.target >= 0)

    def send(self, state: torch.Tensor, plan: MutedPlan, round: int, exchange: int) -> Messages:
        src = self._pushers(state, plan).nonzero().flatten()
        return Messages(src, plan.target[src], torch.ones(len(src), 1, device=state.device))

    def receive(
        self, state: torch.Tensor, messages: Messages, plan: MutedPlan, round: int, exchange: int
    ) -> torch.Tensor:
        heard = torch.bincount(messages.dst, minlength=plan.num_nodes) > 0
        muted = self._pushers(state, plan) & ~plan.stay
        informed = (state[:, 0] > 0) | heard
        active = ((state[:, 1] > 0) & ~muted) | heard
        return torch.stack([informed, active], dim=1).to(state.dtype)

    def receive_node(
        self,
        node: int,
        own: torch.Tensor,
        inbox: Messages,
        plan: MutedPlan,
        round: int,
        exchange: int,
    ) -> torch.Tensor:
        heard = len(inbox) > 0
        was_active = bool(own[1] > 0)
        pushed = was_active and int(plan.target[node]) >= 0
        active = (was_active and not (pushed and not bool(plan.stay[node]))) or heard
        informed = bool(own[0] > 0) or heard
        return torch.tensor([float(informed), float(active)], dtype=own.dtype)

    def describe(self) -> dict:
        return {"name": self.name, "source": self.source, "mute": self.mute}
