"""Source localization: who started a rumour, from what curious nodes saw of its spread.

Against muted gossip (Bellet, Guerraoui & Hendrikx, "Who started this rumor?", DISC
2020; ``privlab.mechanisms.muted_gossip``) the curious nodes record their first contact
(sender, time). This module turns either engine's output into one ``SourceObservation``
per run (``from_simulation``: the continuous-time simulator; ``from_run``: a round-based
``muted-gossip`` run folder), attacks it (``first_spy``, ``maximum_likelihood_by_simulation``,
and the graph estimators of ``source_estimators``: rumor centrality, Jordan center,
Pinto-Thiran-Vetterli), and scores the attacks (top-1 accuracy with its Clopper-Pearson
interval, rank of the true source, hop error). References:
``shared/reference/rgm-gossip-network-dp.md`` sections 2.6 and 3.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import numpy as np

from privlab.attacks.source_estimators import (
    evaluate_source,
    hop_error,
    infection_eccentricity,
    jordan_center,
    pinto_thiran_vetterli,
    rumor_centrality,
    source_rank,
    top1_accuracy,
)
from privlab.config import ExperimentConfig, parse_config
from privlab.errors import check, is_integer, is_real
from privlab.mechanisms.muted_gossip import GossipRuns, simulate
from privlab.results import Results, load_run
from privlab.rng import derive_seed
from privlab.topology import StaticTopology, build_topology

__all__ = [
    "SourceObservation",
    "evaluate_source",
    "first_spy",
    "from_run",
    "from_simulation",
    "hop_error",
    "infection_eccentricity",
    "jordan_center",
    "maximum_likelihood_by_simulation",
    "pinto_thiran_vetterli",
    "rumor_centrality",
    "source_rank",
    "top1_accuracy",
]

CLOCKS = ("continuous", "rounds")


@dataclass(frozen=True, eq=False)
class SourceObservation:
    """What the curious nodes of one run saw, the graph it ran on, and the ground truth.

    ``contact_receiver[C]``, ``contact_sender[C]``, ``contact_time[C]``: each curious
    node's first contact(s), a curious node never reached having none. In continuous time
    a node has one first contact; with ``clock == "rounds"`` it has one per message of the
    first round it received in (several senders can push in the same round), ``time`` is
    that round. ``infected``: a snapshot of who knows the rumour, when one is observable
    (an omniscient observer, not the curious nodes). ``source``: the true source, for
    scoring only, never an attack input.
    """

    graph: nx.Graph
    curious: np.ndarray
    contact_receiver: np.ndarray
    contact_sender: np.ndarray
    contact_time: np.ndarray
    clock: str = "continuous"
    infected: frozenset[int] | None = None
    source: int | None = None

    def __post_init__(self) -> None:
        for name, dtype in (
            ("curious", np.int64),
            ("contact_receiver", np.int64),
            ("contact_sender", np.int64),
            ("contact_time", float),
        ):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=dtype))
        check(self.clock in CLOCKS, "clock", "'continuous' or 'rounds'", self.clock)
        sizes = {len(self.contact_receiver), len(self.contact_sender), len(self.contact_time)}
        check(len(sizes) == 1, "contact_*", "arrays of one length", sorted(sizes))
        check(
            bool(np.isin(self.contact_receiver, self.curious).all()),
            "contact_receiver",
            "curious nodes",
            self.contact_receiver,
        )

    @property
    def num_nodes(self) -> int:
        return self.graph.number_of_nodes()

    @property
    def first_contacts(self) -> tuple[np.ndarray, np.ndarray]:
        """``(sender[C], time[C])``, the input of ``first_spy``."""
        return self.contact_sender, self.contact_time

    def earliest_contacts(self) -> tuple[np.ndarray, np.ndarray, float]:
        """``(receivers, senders, time)`` of the contacts at the earliest time (several only
        when tied, in rounds); empty arrays and ``inf`` when no curious node was reached."""
        if len(self.contact_time) == 0:
            return self.contact_receiver, self.contact_sender, math.inf
        first = float(self.contact_time.min())
        at = self.contact_time == first
        return self.contact_receiver[at], self.contact_sender[at], first


def from_simulation(
    result: GossipRuns, graph: nx.Graph | None = None, snapshot_time: float | None = None
) -> list[SourceObservation]:
    """One ``SourceObservation`` per run of ``privlab.mechanisms.muted_gossip.simulate``.

    ``graph`` must be the graph the runs used (the result does not keep it); None is the
    simulator's complete graph, built once here as a networkx graph (O(n^2) memory).
    ``snapshot_time``: when given, ``infected`` holds the nodes informed by that time.
    """
    check(isinstance(result, GossipRuns), "result", "GossipRuns", type(result).__name__)
    n = result.num_nodes
    graph = nx.complete_graph(n) if graph is None else graph
    check(
        isinstance(graph, nx.Graph) and set(graph.nodes) == set(range(n)),
        "graph",
        f"the networkx graph of the runs, on the nodes 0..{n - 1}",
        graph,
    )
    if snapshot_time is not None:
        check(is_real(snapshot_time) and snapshot_time >= 0, "snapshot_time", ">= 0", snapshot_time)
    return [_simulated_run(result, r, graph, snapshot_time) for r in range(result.runs)]


def _simulated_run(
    result: GossipRuns, run: int, graph: nx.Graph, snapshot_time: float | None
) -> SourceObservation:
    curious = np.flatnonzero(result.curious[run])
    times = result.informed_time[run]
    reached = curious[np.isfinite(times[curious])]
    infected = None
    if snapshot_time is not None:
        infected = frozenset(np.flatnonzero(times <= snapshot_time).tolist())
    return SourceObservation(
        graph=graph,
        curious=curious,
        contact_receiver=reached,
        contact_sender=result.parent[run, reached],
        contact_time=times[reached],
        clock="continuous",
        infected=infected,
        source=int(result.source[run]),
    )


def from_run(results: Results | str | Path) -> SourceObservation:
    """The ``SourceObservation`` of a round-based ``muted-gossip`` run (a run folder or its
    ``privlab.results.load_run`` result).

    The graph is the run's static topology rebuilt from its config (as
    ``privlab.experiment.build`` does); the curious nodes are the threat model's; each
    one's first contacts are every message it received in the first round it received any
    (the sender is what it was told); the true source is the protocol's ``source`` option
    (the summary's description of what ran). Rounds count from 1, the source knowing the
    rumour at round 0. ``infected``: who knows the rumour after the last completed round
    (the final state, column 0), when the run kept it. The observer must record every
    round (``observer.rounds: null``), otherwise a "first" contact may not be one.
    """
    results = load_run(results) if isinstance(results, (str, Path)) else results
    config = parse_config(results.config)
    check(config.protocol.name == "muted-gossip", "protocol", "muted-gossip", config.protocol.name)
    log = results.observations
    check(log is not None, "observations", "a run with an observer", None)
    threat = log.threat_model
    check(bool(threat.curious_nodes), "observer.curious_nodes", "non-empty", [])
    check(threat.rounds is None, "observer.rounds", "null (every round)", threat.rounds)
    curious = np.array(sorted(threat.curious_nodes), dtype=np.int64)
    receiver, sender, time = _first_round_contacts(log.observations, curious)
    infected = None
    if results.models is not None:
        informed = results.models["params"][:, 0] > 0
        infected = frozenset(informed.nonzero().flatten().tolist())
    return SourceObservation(
        graph=_run_graph(config),
        curious=curious,
        contact_receiver=receiver,
        contact_sender=sender,
        contact_time=time,
        clock="rounds",
        infected=infected,
        source=int(results.summary["protocol"]["source"]),
    )


def _run_graph(config: ExperimentConfig) -> nx.Graph:
    """The static graph the run's topology used, rebuilt from the same seed stream."""
    c = config.topology
    topology = build_topology(
        c.name,
        config.nodes,
        seed=derive_seed(config.seed, "topology"),
        weights=c.weights,
        **c.options,
    )
    check(isinstance(topology, StaticTopology), "topology", "a static graph", c.name)
    return nx.Graph(topology.graph)


def _first_round_contacts(
    observations: Iterable, curious: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every message each curious node received in its first round with any, as
    ``(receiver, sender, round)`` arrays, sorted by round then receiver then sender."""
    curious = set(curious.tolist())
    first_round: dict[int, int] = {}
    contacts: set[tuple[int, int, int]] = set()
    for o in observations:
        for receiver, sender in zip(o.receiver.tolist(), o.sender.tolist()):
            if receiver not in curious:
                continue  # an eavesdropped link's message
            if first_round.setdefault(receiver, o.round) == o.round:
                contacts.add((o.round, receiver, sender))
    rows = np.array(sorted(contacts), dtype=np.int64).reshape(-1, 3)
    return rows[:, 1], rows[:, 2], rows[:, 0].astype(float)


# -- first spy ---------------------------------------------------------------------------


def first_spy(
    first_contacts: tuple[np.ndarray, np.ndarray] | SourceObservation | Sequence[SourceObservation],
    *,
    seed: int = 0,
) -> np.ndarray | int:
    """The first-spy estimate: the sender of the earliest contact any curious node received
    (Fanti & Viswanath, "Deanonymization in the Bitcoin P2P network", NeurIPS 2017;
    Biryukov, Khovratovich & Pustogarov, CCS 2014; at s = 0 on the complete graph the MAP
    estimate, reference section 2.6).

    ``first_contacts`` is ``(sender[..., k], time[..., k])`` with ``-1`` / ``nan`` where
    there is no contact (``GossipRuns.first_contacts()`` as it is), one
    ``SourceObservation`` (gives an int), or a sequence of them (gives ``[R]``). Ties in
    time (round-based runs) go to one of the earliest contacts drawn uniformly (a
    generator seeded by ``seed``), so the success rate does not depend on node labels.
    ``-1`` where no curious node was reached.
    """
    if isinstance(first_contacts, SourceObservation):
        return int(first_spy(first_contacts.first_contacts, seed=seed))
    if _is_observations(first_contacts):
        first_contacts = _stack_contacts(first_contacts)
    check(
        len(first_contacts) == 2,
        "first_contacts",
        "(sender, time), a SourceObservation or a non-empty sequence of them",
        type(first_contacts).__name__,
    )
    sender, time = (np.asarray(a) for a in first_contacts)
    check(sender.shape == time.shape, "first_contacts", "(sender, time) of one shape", time.shape)
    check(sender.ndim >= 1, "first_contacts", "arrays [..., k] (k contacts)", sender.shape)
    if sender.shape[-1] == 0:
        return np.full(sender.shape[:-1], -1, dtype=np.int64)
    time = np.where((sender >= 0) & np.isfinite(time), time.astype(float), math.inf)
    tied = np.isfinite(time) & (time == time.min(axis=-1, keepdims=True))
    keys = np.where(tied, np.random.default_rng(seed).random(time.shape), -1.0)
    pick = keys.argmax(axis=-1)[..., None]
    guess = np.take_along_axis(sender, pick, axis=-1)[..., 0]
    return np.where(tied.any(axis=-1), guess, -1).astype(np.int64)


def _is_observations(value: object) -> bool:
    return (
        isinstance(value, Sequence)
        and len(value) > 0
        and all(isinstance(v, SourceObservation) for v in value)
    )


def _stack_contacts(observations: Sequence[SourceObservation]) -> tuple[np.ndarray, np.ndarray]:
    """``(sender[R, C], time[R, C])``, padded with ``-1`` and ``nan``."""
    width = max(len(o.contact_sender) for o in observations)
    sender = np.full((len(observations), width), -1, dtype=np.int64)
    time = np.full((len(observations), width), np.nan)
    for r, o in enumerate(observations):
        sender[r, : len(o.contact_sender)] = o.contact_sender
        time[r, : len(o.contact_time)] = o.contact_time
    return sender, time


# -- maximum likelihood by simulation ----------------------------------------------------


def maximum_likelihood_by_simulation(
    graph: nx.Graph,
    curious: Iterable[int],
    observation: SourceObservation | Sequence[SourceObservation],
    *,
    mute: float,
    runs: int,
    seed: int = 0,
    time_bandwidth: float | str | None = "silverman",
    reactivate: bool = True,
) -> dict[int, float] | list[dict[int, float]]:
    """Log-likelihood of each honest candidate source, estimated by simulating muted gossip
    from it with privlab's continuous-time simulator (reference section 2.6, "ML with
    timing"; the model of Bellet, Guerraoui & Hendrikx, DISC 2020).

    What it conditions on: the first-spy contact pattern, i.e. which curious node was
    reached first and by whom, and (unless ``time_bandwidth`` is None) when. A simulated
    run matches when its first (curious node, sender) pair is one of the observation's
    earliest contacts (several when tied in rounds); with timing it then weighs
    exp(-(t_sim - t_obs)^2 / 2h^2), a Gaussian kernel with peak 1 on the time of the first
    curious contact (the rumour starts at time 0, known to the curious nodes).
    ``"silverman"``: h = 1.06 sd(t_sim) runs^(-1/5). Timing is ignored for observations on
    the ``"rounds"`` clock under ``"silverman"`` (the simulator's clock is continuous); a
    number there is an error. An observation with no curious contact matches the runs
    that never reached one.

    Estimate: ``log((sum of match weights + 1) / (N_v + 2))`` over the N_v runs from
    candidate v: add-one (Laplace) smoothing, so a candidate no run explains keeps a
    finite score; with timing the weights' mean estimates the likelihood density times
    h sqrt(2 pi), a factor common to all candidates. Candidates are the honest nodes (the
    simulator draws sources uniformly among them): ``runs`` x (honest nodes) runs are
    simulated once, about ``runs`` per candidate, and shared by every observation (pass a
    sequence to score many runs at once; a list of dicts comes back).
    """
    check(isinstance(graph, nx.Graph), "graph", "a networkx graph", type(graph).__name__)
    many = not isinstance(observation, SourceObservation)
    observations = list(observation) if many else [observation]
    curious = np.array(sorted({int(c) for c in curious}), dtype=np.int64)
    n = graph.number_of_nodes()
    for o in observations:
        check(isinstance(o, SourceObservation), "observation", "SourceObservation", o)
        check(np.array_equal(o.curious, curious), "curious", "the observations' curious nodes", o)
        check(o.num_nodes == n, "graph", f"the observations' graph ({o.num_nodes} nodes)", n)
    check(is_integer(runs) and runs >= 1, "runs", ">= 1 (an integer)", runs)
    honest = np.setdiff1d(np.arange(n), curious)
    bank = simulate(
        n,
        mute,
        runs * len(honest),
        curious=curious.tolist(),
        graph=graph,
        reactivate=reactivate,
        seed=seed,
    )
    pattern, first_time = _first_pattern(bank, curious)
    bandwidth = _bandwidth(time_bandwidth, first_time, runs)
    per_candidate = np.bincount(bank.source, minlength=n)
    scores = []
    for o in observations:
        check(
            not (o.clock == "rounds" and is_real(time_bandwidth)),
            "time_bandwidth",
            "None or 'silverman' for round-based observations",
            time_bandwidth,
        )
        weight = _match_weight(o, pattern, first_time, n, bandwidth)
        matched = np.bincount(bank.source, weights=weight, minlength=n)
        log_l = np.log((matched + 1.0) / (per_candidate + 2.0))
        scores.append({int(v): float(log_l[v]) for v in honest})
    return scores if many else scores[0]


def _first_pattern(bank: GossipRuns, curious: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per simulated run: ``receiver * n + sender`` of the first curious contact (``-1``
    when none), and its time (``inf`` when none)."""
    times = bank.informed_time[:, curious]
    first = times.argmin(axis=1)
    first_time = times[np.arange(bank.runs), first]
    receiver = curious[first]
    sender = bank.parent[np.arange(bank.runs), receiver]
    code = np.where(np.isfinite(first_time), receiver * bank.num_nodes + sender, -1)
    return code, first_time


def _bandwidth(choice: float | str | None, first_time: np.ndarray, runs: int) -> float | None:
    if choice is None:
        return None
    if choice == "silverman":
        finite = first_time[np.isfinite(first_time)]
        spread = float(finite.std()) if len(finite) > 1 else 0.0
        return max(1.06 * spread * runs ** (-0.2), 1e-9)
    check(
        is_real(choice) and math.isfinite(choice) and choice > 0,
        "time_bandwidth",
        "> 0, 'silverman' or None",
        choice,
    )
    return float(choice)


def _match_weight(
    observation: SourceObservation,
    pattern: np.ndarray,
    first_time: np.ndarray,
    n: int,
    bandwidth: float | None,
) -> np.ndarray:
    """Each simulated run's weight for ``observation`` (0 when its pattern differs)."""
    receivers, senders, time = observation.earliest_contacts()
    if len(receivers) == 0:
        return (pattern < 0).astype(float)
    weight = np.isin(pattern, receivers * n + senders).astype(float)
    if bandwidth is not None and observation.clock == "continuous":
        gap = np.where(weight > 0, first_time - time, 0.0)
        weight *= np.exp(-0.5 * (gap / bandwidth) ** 2)
    return weight
