"""Graph estimators of a diffusion's source, and the metrics that score any source estimate.

The estimators (rumor centrality, Jordan center, Pinto-Thiran-Vetterli) read a graph and
what was observed of the spread (the infected set, or a few observers' arrival times)
and score each candidate source; the metrics (top-1 accuracy, rank of the true source,
hop error) compare scores or guesses with the truth. ``privlab.attacks.source``
re-exports both next to the gossip attacks (``shared/reference/rgm-gossip-network-dp.md``
section 3).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence

import networkx as nx
import numpy as np
from scipy.linalg import cho_factor, cho_solve

from privlab.errors import check, is_real
from privlab.intervals import clopper_pearson

__all__ = [
    "evaluate_source",
    "hop_error",
    "infection_eccentricity",
    "jordan_center",
    "pinto_thiran_vetterli",
    "rumor_centrality",
    "source_rank",
    "top1_accuracy",
]

Node = Hashable


def _infected_nodes(graph: nx.Graph, infected: Iterable[Node]) -> list[Node]:
    """The distinct infected nodes in first-seen order, all nodes of an undirected ``graph``."""
    check(isinstance(graph, nx.Graph), "graph", "a networkx graph", type(graph).__name__)
    check(not graph.is_directed(), "graph", "an undirected graph", "a directed graph")
    nodes = list(dict.fromkeys(infected))
    check(len(nodes) >= 1, "infected", "a non-empty set of nodes", nodes)
    missing = [v for v in nodes if v not in graph]
    check(not missing, "infected", "nodes of the graph", missing[:5])
    return nodes


def _bfs_tree(graph: nx.Graph, root: Node) -> tuple[list[Node], dict[Node, Node]]:
    """``(order, parent)`` of the breadth-first tree of ``graph`` from ``root``."""
    parent = dict(nx.bfs_predecessors(graph, root))
    return [root, *parent], parent


def _subtree_sizes(order: list[Node], parent: dict[Node, Node]) -> dict[Node, int]:
    """Size of each node's subtree in the tree given by a BFS ``order`` and ``parent``."""
    size = dict.fromkeys(order, 1)
    for v in reversed(order[1:]):
        size[parent[v]] += size[v]
    return size


def _log_rumor_centrality_at_root(order: list[Node], parent: dict[Node, Node]) -> float:
    """``log(N! / prod_u T_u)`` for the tree rooted at ``order[0]`` (Shah & Zaman, eq. 8)."""
    sizes = _subtree_sizes(order, parent)
    return math.lgamma(len(order) + 1) - sum(math.log(t) for t in sizes.values())


def rumor_centrality(graph: nx.Graph, infected: Iterable[Node]) -> dict[Node, float]:
    """Natural log of the rumor centrality of every infected node (Shah & Zaman, "Rumors in a
    network: who's the culprit?", IEEE Trans. Inf. Theory 57(8), 2011).

    On a tree of N infected nodes, R(v) = N! / prod_u T_u^v counts the orders in which the
    rumour could have reached them from v (T_u^v: size of u's subtree when the tree hangs
    from v); its argmax is the ML source under SI spreading on regular trees. When the
    infected subgraph is a tree: subtree sizes from one root, then the paper's message
    passing R(child) = R(parent) T_child / (N - T_child), in log space (N! overflows at
    N = 171), O(N). Otherwise each candidate v is scored on the BFS tree of the infected
    subgraph rooted at v (the paper's BFS heuristic, section IV): one BFS per candidate,
    O(N (N + E_I)), fine for a few thousand infected nodes. The infected subgraph must be
    connected (an SI spread always is).
    """
    nodes = _infected_nodes(graph, infected)
    sub = graph.subgraph(nodes)
    check(nx.is_connected(sub), "infected", "nodes inducing a connected subgraph", len(nodes))
    if sub.number_of_edges() == len(nodes) - 1:
        return _tree_rumor_centrality(sub)
    return {v: _log_rumor_centrality_at_root(*_bfs_tree(sub, v)) for v in nodes}


def _tree_rumor_centrality(tree: nx.Graph) -> dict[Node, float]:
    """Log rumor centrality of every node of a tree by message passing from one root."""
    order, parent = _bfs_tree(tree, next(iter(tree)))
    size, n = _subtree_sizes(order, parent), len(order)
    log_r = {order[0]: _log_rumor_centrality_at_root(order, parent)}
    for v in order[1:]:
        log_r[v] = log_r[parent[v]] + math.log(size[v]) - math.log(n - size[v])
    return log_r


def infection_eccentricity(graph: nx.Graph, infected: Iterable[Node]) -> dict[Node, float]:
    """For each infected node, the largest distance from it to an infected node, measured in
    the full ``graph`` (paths may cross uninfected nodes); ``inf`` when one is unreachable.
    One BFS per infected node: O(|I| (N + E)). The Jordan center minimises it."""
    nodes = _infected_nodes(graph, infected)
    eccentricity = dict.fromkeys(nodes, 0.0)
    for u in nodes:
        distance = nx.single_source_shortest_path_length(graph, u)
        for v in nodes:
            eccentricity[v] = max(eccentricity[v], distance.get(v, math.inf))
    return eccentricity


def jordan_center(graph: nx.Graph, infected: Iterable[Node]) -> Node:
    """The Jordan center of the infected set (Zhu & Ying, "Information source detection in
    the SIR model: a sample-path-based approach", IEEE/ACM Trans. Netw. 24(1), 2016): the
    infected node whose largest distance to the infected nodes, in the full graph, is
    smallest (``infection_eccentricity``). Ties go to the smallest node id (the reference
    suggests the sum of distances; we keep the rule simple and label-ordered)."""
    eccentricity = infection_eccentricity(graph, infected)
    return min(eccentricity, key=lambda v: (eccentricity[v], v))


def pinto_thiran_vetterli(
    graph: nx.Graph,
    observers: Sequence[Node],
    arrival_times: Sequence[float],
    *,
    mean_delay: float | None,
    delay_std: float | None,
    candidates: Iterable[Node] | None = None,
) -> dict[Node, float]:
    """Gaussian source estimator of Pinto, Thiran & Vetterli ("Locating the source of
    diffusion in large-scale networks", Phys. Rev. Lett. 109, 068702, 2012, eq. 2-4).

    Edge delays are i.i.d. N(mean_delay, delay_std^2). With o_1 the earliest observer,
    d_k = t_{k+1} - t_1; for a candidate s on its BFS tree T_s, d ~ N(mu_s, Lambda_s) with
    mu_s[k] = mean_delay (|P(s, o_{k+1})| - |P(s, o_1)|) and Lambda_s[k, i] = delay_std^2
    |P(o_1, o_{k+1}) & P(o_1, o_{i+1})| (shared edges of tree paths). The score is the full
    Gaussian log-likelihood log N(d; mu_s, Lambda_s); on a tree Lambda_s is the same for
    every s, so it is the paper's mu_s^T Lambda^-1 (d - mu_s / 2) minus a constant common
    to all candidates (same argmax). On other graphs each candidate uses its own BFS tree
    (the paper's approximation), hence the full likelihood, whose log-determinant now
    depends on s. The start time is not needed (differences only); the choice of
    reference observer does not change the likelihood.

    Unknown delay parameters: ``None`` profiles them out per candidate (maximum
    likelihood): mean_delay by generalised least squares, clipped at 0; delay_std^2 as the
    mean squared whitened residual (floored at 1e-12 of the squared arrival spread).
    Observers with a non-finite arrival time (never reached) are dropped; at least two
    must remain. ``candidates`` defaults to every non-observer node. Cost per candidate:
    one BFS, O(K^2 depth) path intersections, one K x K Cholesky.
    """
    check(isinstance(graph, nx.Graph), "graph", "a networkx graph", type(graph).__name__)
    observers, times = _reached_observers(graph, observers, arrival_times)
    for name, value in (("mean_delay", mean_delay), ("delay_std", delay_std)):
        valid = value is None or (is_real(value) and math.isfinite(value) and value > 0)
        check(valid, name, "> 0 and finite, or None (profiled)", value)
    watched = set(observers)
    pool = [v for v in graph if v not in watched] if candidates is None else candidates
    pool = list(dict.fromkeys(pool))
    valid = bool(pool) and all(v in graph for v in pool)
    check(valid, "candidates", "a non-empty set of nodes of the graph", pool[:5])
    reference = int(np.argmin(times))
    order = [reference, *(k for k in range(len(observers)) if k != reference)]
    observers, times = [observers[k] for k in order], times[order]
    delays = times[1:] - times[0]
    return {
        s: _gaussian_log_likelihood(graph, s, observers, delays, mean_delay, delay_std)
        for s in pool
    }


def _reached_observers(
    graph: nx.Graph, observers: Sequence[Node], arrival_times: Sequence[float]
) -> tuple[list[Node], np.ndarray]:
    """The observers with a finite arrival time, and those times."""
    observers = list(observers)
    times = np.asarray(arrival_times, dtype=float)
    check(times.shape == (len(observers),), "arrival_times", "one time per observer", times.shape)
    check(len(set(observers)) == len(observers), "observers", "distinct nodes", observers)
    check(all(o in graph for o in observers), "observers", "nodes of the graph", observers)
    reached = np.isfinite(times)
    check(int(reached.sum()) >= 2, "arrival_times", "finite for at least two observers", times)
    return [o for o, r in zip(observers, reached) if r], times[reached]


def _gaussian_log_likelihood(
    graph: nx.Graph,
    source: Node,
    observers: list[Node],
    delays: np.ndarray,
    mean_delay: float | None,
    delay_std: float | None,
) -> float:
    """log N(delays; mu_s, Lambda_s) on the BFS tree from ``source`` (observers[0] is the
    reference), with unknown parameters profiled out."""
    hops, shared = _tree_paths(graph, source, observers)
    slope = hops[1:] - hops[0]  # mu_s = mean_delay * slope
    factor = cho_factor(shared)
    log_det = 2.0 * float(np.log(np.diag(factor[0])).sum())
    mu = mean_delay
    if mu is None:
        weight = float(slope @ cho_solve(factor, slope))
        mu = max(0.0, float(slope @ cho_solve(factor, delays)) / weight) if weight > 0 else 0.0
    residual = delays - mu * slope
    quadratic = float(residual @ cho_solve(factor, residual))
    k = len(delays)
    if delay_std is None:
        floor = 1e-12 * max(float(np.mean(delays**2)), 1e-300)
        variance = max(quadratic / k, floor)
    else:
        variance = float(delay_std) ** 2
    return -0.5 * (quadratic / variance + k * math.log(2 * math.pi * variance) + log_det)


def _tree_paths(
    graph: nx.Graph, source: Node, observers: list[Node]
) -> tuple[np.ndarray, np.ndarray]:
    """In the BFS tree from ``source``: the hop count from the source to each observer, and
    the matrix of shared edges between the paths o_1 -> o_{k+1} (edges named by their
    child node; a tree path o_1 -> o is the symmetric difference of the two root paths)."""
    parent = dict(nx.bfs_predecessors(graph, source))
    unreachable = [o for o in observers if o != source and o not in parent]
    check(not unreachable, "graph", f"connected from candidate {source!r}", unreachable[:5])
    up = []
    for o in observers:
        path, v = set(), o
        while v != source:
            path.add(v)
            v = parent[v]
        up.append(path)
    hops = np.array([len(p) for p in up], dtype=float)
    paths = [up[0] ^ p for p in up[1:]]
    shared = np.array([[len(a & b) for b in paths] for a in paths], dtype=float)
    return hops, shared


# -- metrics -------------------------------------------------------------------------------


def top1_accuracy(predicted: Sequence[int] | np.ndarray, true: Sequence[int] | np.ndarray) -> float:
    """Fraction of runs whose predicted source is the true one (a prediction of ``-1``,
    no guess, is a miss); the detection probability of Shah & Zaman (2011)."""
    predicted, true = np.asarray(predicted), np.asarray(true)
    check(predicted.shape == true.shape, "predicted", f"shaped like true {true.shape}", predicted)
    check(predicted.size >= 1, "predicted", "at least one run", predicted.size)
    return float(np.mean(predicted == true))


def source_rank(scores: Mapping[Node, float] | Sequence[float] | np.ndarray, true: Node) -> int:
    """Rank of the true source among the candidates by score, 1 being the best (the error
    rank of Pinto, Thiran & Vetterli, 2012). Ties count pessimistically: every other
    candidate scoring at least as high as the true source ranks before it. An array is
    indexed by node id; a node absent from a dict, and a NaN score, score ``-inf``."""
    clean = _score_dict(scores)
    own = clean.get(true, -math.inf)
    return 1 + sum(1 for v, s in clean.items() if v != true and s >= own)


def hop_error(
    graph: nx.Graph, predicted: int | np.ndarray, true: int | np.ndarray
) -> float | np.ndarray:
    """Shortest-path distance in ``graph`` between the predicted and the true source
    (Shah & Zaman 2011; Pinto, Thiran & Vetterli 2012); ``inf`` when not connected.
    Scalars give a number, arrays an array (one BFS per distinct true source)."""
    predicted_array, true_array = np.asarray(predicted), np.asarray(true)
    check(
        predicted_array.shape == true_array.shape,
        "predicted",
        f"shaped like true {true_array.shape}",
        predicted_array.shape,
    )
    for name, nodes in (("predicted", predicted_array), ("true", true_array)):
        outside = [v for v in nodes.ravel().tolist() if v not in graph]
        check(not outside, name, "nodes of the graph", outside[:5])
    distances = {
        t: nx.single_source_shortest_path_length(graph, t) for t in set(true_array.ravel().tolist())
    }
    errors = np.array(
        [
            distances[t].get(p, math.inf)
            for p, t in zip(predicted_array.ravel().tolist(), true_array.ravel().tolist())
        ],
        dtype=float,
    ).reshape(true_array.shape)
    return float(errors) if errors.ndim == 0 else errors


def evaluate_source(
    scores_per_run: Sequence[Mapping[int, float] | Sequence[float] | np.ndarray],
    true_sources: Sequence[int] | np.ndarray,
    graph: nx.Graph,
    level: float = 0.95,
) -> dict:
    """Top-1 accuracy with its Clopper-Pearson interval, mean rank and mean hop error of a
    source-localization attack over runs (the metrics of Shah & Zaman 2011 and Pinto,
    Thiran & Vetterli 2012).

    Each run's scores rank every node of ``graph`` (an absent node scores ``-inf``). Ties
    are pessimistic throughout: a run counts as a top-1 hit only when the true source is
    the unique best (rank 1), the rank counts ties before the true source
    (``source_rank``), and the hop error is the distance to the farthest of the tied
    best-scoring nodes. Returns ``runs``, ``top1_accuracy``, ``top1_ci`` (level ``level``),
    ``mean_rank``, ``mean_hop_error``.
    """
    true_sources = np.asarray(true_sources)
    check(
        len(scores_per_run) == len(true_sources) >= 1,
        "scores_per_run",
        f"one score set per true source ({len(true_sources)})",
        len(scores_per_run),
    )
    ranks, hops = [], []
    for scores, true in zip(scores_per_run, true_sources.tolist()):
        check(true in graph, "true_sources", "nodes of the graph", true)
        full = _scores_over(graph, scores)
        ranks.append(source_rank(full, true))
        best = max(full.values())
        distance = nx.single_source_shortest_path_length(graph, true)
        hops.append(max(distance.get(v, math.inf) for v, s in full.items() if s == best))
    hits = sum(rank == 1 for rank in ranks)
    return {
        "runs": len(ranks),
        "top1_accuracy": hits / len(ranks),
        "top1_ci": clopper_pearson(hits, len(ranks), level),
        "mean_rank": float(np.mean(ranks)),
        "mean_hop_error": float(np.mean(hops)),
    }


def _score_dict(scores: Mapping[Node, float] | Sequence[float] | np.ndarray) -> dict:
    """``scores`` as a dict of floats (an array is indexed by node id; NaN becomes ``-inf``)."""
    values = dict(scores) if isinstance(scores, Mapping) else dict(enumerate(np.asarray(scores)))
    return {v: -math.inf if math.isnan(s) else float(s) for v, s in values.items()}


def _scores_over(graph: nx.Graph, scores: Mapping[Node, float] | Sequence[float]) -> dict:
    """``scores`` as a dict over every node of ``graph`` (an absent node: ``-inf``)."""
    values = _score_dict(scores)
    outside = [v for v in values if v not in graph]
    check(not outside, "scores_per_run", "scores of nodes of the graph", outside[:5])
    return dict.fromkeys(graph.nodes, -math.inf) | values
