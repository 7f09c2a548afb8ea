"""Communication graphs and mixing weights: one ``CommPlan`` per round for the engine.

Static graphs (ring, torus, complete, random regular, Erdos-Renyi, small world, or any
networkx graph) mix with the Metropolis-Hastings weights used by D-PSGD (Lian et al.,
NeurIPS 2017; Xiao & Boyd, "Fast linear iterations for distributed averaging", 2004) or
with uniform neighbour averaging. The Epidemic Learning topologies (de Vos et al.,
"Epidemic Learning", NeurIPS 2023) draw a fresh graph every round from (seed, round)
alone, so ``plan(t)`` does not depend on which rounds were asked for before.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Mapping

import networkx as nx
import numpy as np

from privlab.errors import PrivlabError, UnknownNameError, check, is_integer, is_real
from privlab.plan import CommPlan
from privlab.registry import Registry
from privlab.rng import derive_seed

__all__ = [
    "TOPOLOGIES",
    "CommPlan",
    "EpidemicLocal",
    "EpidemicOracle",
    "StaticTopology",
    "Topology",
    "available_topologies",
    "build_topology",
    "from_networkx",
    "metropolis_hastings_weights",
    "mixing_plan",
    "uniform_weights",
]

# Random static builders retry at most this many seeds to find a connected graph.
_MAX_CONNECT_TRIES = 32


class Topology(abc.ABC):
    """A communication graph for every round; ``plan(t)`` depends on (seed, t) only."""

    name: str
    num_nodes: int
    dynamic: bool

    def plan(self, round: int) -> CommPlan:
        """The communication plan of round ``round`` (an integer >= 0)."""
        check(is_integer(round) and round >= 0, "round", ">= 0 (an integer)", round)
        return self._plan(int(round))

    @abc.abstractmethod
    def _plan(self, round: int) -> CommPlan:
        """The plan of a validated round."""

    @abc.abstractmethod
    def describe(self) -> dict[str, object]:
        """JSON-able parameters; for registered topologies ``build_topology(**describe())``
        rebuilds the same topology."""

    def __repr__(self) -> str:
        args = ", ".join(f"{key}={value!r}" for key, value in self.describe().items())
        return f"{type(self).__name__}({args})"


class StaticTopology(Topology):
    """The same undirected, connected graph every round (D-PSGD; Lian et al., 2017).

    Nodes are relabelled 0..n-1 in sorted order of the original labels (they must be
    mutually comparable), self-loops are dropped and parallel edges merged. ``options``
    are the builder parameters reported by :meth:`describe`.
    """

    dynamic = False

    def __init__(
        self,
        graph: nx.Graph,
        weights: str = "metropolis",
        name: str = "graph",
        *,
        options: Mapping[str, object] | None = None,
    ):
        canonical = _canonical(graph)
        n = canonical.number_of_nodes()
        _check_num_nodes(n)
        components = nx.number_connected_components(canonical)
        if components > 1:
            raise PrivlabError(
                f"topology is disconnected: the {name} graph on {n} nodes has {components} "
                "components; gossip needs every node reachable"
            )
        self.name, self.num_nodes, self.weights = name, n, weights
        self._graph = nx.freeze(canonical)
        self._options = dict(options or {})
        self._cached = mixing_plan(canonical, weights)

    @property
    def graph(self) -> nx.Graph:
        """The relabelled graph (frozen: nodes 0..n-1, no self-loops)."""
        return self._graph

    def _plan(self, round: int) -> CommPlan:
        return self._cached

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "num_nodes": self.num_nodes,
            "weights": self.weights,
            **self._options,
        }


class _Epidemic(Topology):
    """Shared parts of the two Epidemic Learning topologies (de Vos et al., 2023)."""

    dynamic = True

    def __init__(self, num_nodes: int, fanout: int, seed: int = 0):
        _check_num_nodes(num_nodes)
        _check_seed(seed)
        self.num_nodes = int(num_nodes)
        self.fanout = _int_option(fanout, "fanout", 1, self.num_nodes)
        self.seed = int(seed)
        self._last: tuple[int, CommPlan] | None = None

    def _plan(self, round: int) -> CommPlan:
        if self._last is None or self._last[0] != round:
            self._last = (round, self._draw(derive_seed(self.seed, self.name, round)))
        return self._last[1]

    @abc.abstractmethod
    def _draw(self, seed: int) -> CommPlan:
        """A fresh plan from the round's derived seed."""

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "num_nodes": self.num_nodes,
            "fanout": self.fanout,
            "seed": self.seed,
        }


class EpidemicOracle(_Epidemic):
    """EL-Oracle (de Vos et al., NeurIPS 2023): a fresh random s-regular graph each round.

    Every node sends to and receives from exactly s = ``fanout`` peers and averages
    uniformly over them and itself (weight 1/(s+1) each); the graph of round t is
    ``nx.random_regular_graph(s, n, seed)`` with a seed derived from (seed, t). A round's
    graph may be disconnected; mixing comes from the sequence of graphs.
    """

    name = "el-oracle"

    def __init__(self, num_nodes: int, fanout: int, seed: int = 0):
        super().__init__(num_nodes, fanout, seed)
        _check_even(self.num_nodes, self.fanout, "fanout")

    def _draw(self, seed: int) -> CommPlan:
        return uniform_weights(nx.random_regular_graph(self.fanout, self.num_nodes, seed=seed))


class EpidemicLocal(_Epidemic):
    """EL-Local (de Vos et al., NeurIPS 2023): each node pushes to s distinct random peers.

    Every node picks s = ``fanout`` peers uniformly among the n - 1 others; node i then
    averages uniformly over itself and the set S_i of nodes that picked it (weight
    1/(|S_i|+1) each, self included), so a node nobody picked keeps self_weight 1. W is
    row- but not column-stochastic.
    """

    name = "el-local"

    def _draw(self, seed: int) -> CommPlan:
        n, s = self.num_nodes, self.fanout
        peers = _distinct_peers(np.random.default_rng(seed), n, s)
        src, dst = np.repeat(np.arange(n), s), peers.reshape(-1)
        share = 1.0 / (np.bincount(dst, minlength=n) + 1.0)
        return CommPlan.from_edges(n, src, dst, share[dst], share)


def metropolis_hastings_weights(graph: nx.Graph) -> CommPlan:
    """Metropolis-Hastings mixing (Xiao & Boyd, 2004; Boyd et al., "Randomized gossip
    algorithms", 2006): W_ij = 1/(max(d_i, d_j) + 1) for each neighbour j and
    W_ii = 1 - sum_j W_ij; W is symmetric and doubly stochastic.

    Nodes are relabelled 0..n-1 in sorted order; self-loops are dropped.
    """
    return mixing_plan(graph, "metropolis")


def uniform_weights(graph: nx.Graph) -> CommPlan:
    """Uniform neighbour averaging: W_ij = 1/(d_i + 1) for each neighbour j and for i itself.

    Row-stochastic; doubly stochastic only on regular graphs (the weights of EL-Oracle,
    de Vos et al., 2023). Nodes are relabelled 0..n-1 in sorted order; self-loops dropped.
    """
    return mixing_plan(graph, "uniform")


def mixing_plan(graph: nx.Graph, weights: str = "metropolis") -> CommPlan:
    """The CommPlan of an undirected graph with ``weights`` "metropolis" or "uniform"."""
    _check_weights(weights)
    canonical = _canonical(graph)
    n = canonical.number_of_nodes()
    pairs = np.array(list(canonical.edges()), dtype=np.int64).reshape(-1, 2)
    src = np.concatenate([pairs[:, 0], pairs[:, 1]])
    dst = np.concatenate([pairs[:, 1], pairs[:, 0]])
    degree = np.bincount(src, minlength=n).astype(np.float64)
    if weights == "metropolis":
        weight = 1.0 / (np.maximum(degree[src], degree[dst]) + 1.0)
        self_weight = 1.0 - np.bincount(dst, weights=weight, minlength=n)
    else:
        self_weight = 1.0 / (degree + 1.0)
        weight = self_weight[dst]
    return CommPlan.from_edges(n, src, dst, weight, self_weight)


def from_networkx(graph: nx.Graph, weights: str = "metropolis") -> StaticTopology:
    """A static topology from any undirected networkx graph.

    Nodes are relabelled 0..n-1 in sorted order of their labels; self-loops are dropped.
    A disconnected graph is an error.
    """
    return StaticTopology(graph, weights)


TOPOLOGIES: Registry[Callable[..., Topology]] = Registry("topology")
"""Factories ``(num_nodes, *, seed, weights, **options) -> Topology`` by name."""


def available_topologies() -> list[str]:
    """Names accepted by :func:`build_topology`."""
    return TOPOLOGIES.names()


def build_topology(
    name: str,
    num_nodes: int,
    *,
    seed: int = 0,
    weights: str = "metropolis",
    **options: object,
) -> Topology:
    """The registered topology ``name`` on ``num_nodes`` nodes.

    ``weights`` ("metropolis" or "uniform") applies to static graphs; the Epidemic
    Learning topologies fix their own uniform weights and ignore it. An option set to
    None takes its default; an unknown option is an error listing the valid ones.
    """
    factory = TOPOLOGIES.with_options(name, options, reserved=("num_nodes", "seed", "weights"))
    _check_num_nodes(num_nodes)
    _check_seed(seed)
    _check_weights(weights)
    return factory(int(num_nodes), seed=int(seed), weights=weights, **options)


@TOPOLOGIES.register("ring")
def _ring(num_nodes: int, *, seed: int, weights: str) -> Topology:
    """The cycle C_n (a single edge when n = 2)."""
    return StaticTopology(nx.cycle_graph(num_nodes), weights, "ring")


@TOPOLOGIES.register("torus")
def _torus(
    num_nodes: int, *, seed: int, weights: str, rows: int | None = None, cols: int | None = None
) -> Topology:
    """The periodic rows x cols grid; by default the most square shape with both >= 3."""
    if rows is None and cols is None:
        shapes = [
            (r, num_nodes // r)
            for r in range(math.isqrt(num_nodes), 2, -1)
            if num_nodes % r == 0 and num_nodes // r >= 3
        ]
        check(bool(shapes), "num_nodes", "rows * cols with rows, cols >= 3 for a torus", num_nodes)
        rows, cols = shapes[0]
    else:
        rows = None if rows is None else _int_option(rows, "rows", 3)
        cols = None if cols is None else _int_option(cols, "cols", 3)
        rows = num_nodes // cols if rows is None else rows
        cols = num_nodes // rows if cols is None else cols
        check(
            rows * cols == num_nodes, "rows * cols", f"num_nodes = {num_nodes}", f"{rows} * {cols}"
        )
        check(min(rows, cols) >= 3, "rows and cols", ">= 3", (rows, cols))
    graph = nx.grid_2d_graph(rows, cols, periodic=True)
    return StaticTopology(graph, weights, "torus", options={"rows": rows, "cols": cols})


@TOPOLOGIES.register("complete")
def _complete(num_nodes: int, *, seed: int, weights: str) -> Topology:
    """Every pair of nodes is connected."""
    return StaticTopology(nx.complete_graph(num_nodes), weights, "complete")


@TOPOLOGIES.register("regular")
def _regular(num_nodes: int, *, seed: int, weights: str, degree: int | None = None) -> Topology:
    """A connected random k-regular graph, ``nx.random_regular_graph(k, n, seed)``.

    The default k = floor(log2 n) matches the D-PSGD baseline of the Epidemic Learning
    experiments (de Vos et al., 2023).
    """
    k = _int_option(_log2(num_nodes) if degree is None else degree, "degree", 1, num_nodes)
    _check_even(num_nodes, k, "degree")
    graph = _connected_sample(
        "regular",
        lambda s: nx.random_regular_graph(k, num_nodes, seed=s),
        seed,
        "degree >= 3 is connected with high probability",
    )
    return StaticTopology(graph, weights, "regular", options={"degree": k, "seed": seed})


@TOPOLOGIES.register("erdos_renyi")
def _erdos_renyi(num_nodes: int, *, seed: int, weights: str, p: float | None = None) -> Topology:
    """A connected G(n, p) graph; the default p = min(1, 2 ln(n) / n) is twice the
    connectivity threshold (Erdos & Renyi, 1960)."""
    threshold = math.log(num_nodes) / num_nodes
    p = min(1.0, 2 * threshold) if p is None else p
    check(is_real(p) and 0 < p <= 1, "p", "in (0, 1]", p)
    graph = _connected_sample(
        "erdos_renyi",
        lambda s: nx.fast_gnp_random_graph(num_nodes, p, seed=s),
        seed,
        f"increase p (connected with high probability above ln(n)/n = {threshold:.3g})",
    )
    return StaticTopology(graph, weights, "erdos_renyi", options={"p": float(p), "seed": seed})


@TOPOLOGIES.register("small_world")
def _small_world(
    num_nodes: int, *, seed: int, weights: str, k: int | None = None, p: float | None = None
) -> Topology:
    """A connected Watts-Strogatz graph (Watts & Strogatz, 1998): ring lattice of even
    degree k (default 4), each edge rewired with probability p (default 0.1)."""
    k = _int_option(4 if k is None else k, "k", 2, num_nodes)
    check(k % 2 == 0, "k", "even", k)
    p = 0.1 if p is None else p
    check(is_real(p) and 0 <= p <= 1, "p", "in [0, 1]", p)
    graph = _connected_sample(
        "small_world",
        lambda s: nx.watts_strogatz_graph(num_nodes, k, p, seed=s),
        seed,
        "lower p or raise k",
    )
    options = {"k": k, "p": float(p), "seed": seed}
    return StaticTopology(graph, weights, "small_world", options=options)


@TOPOLOGIES.register("el-oracle")
def _el_oracle(num_nodes: int, *, seed: int, weights: str, fanout: int | None = None) -> Topology:
    """EL-Oracle with fanout s (default floor(log2 n)); ``weights`` is ignored."""
    return EpidemicOracle(num_nodes, _log2(num_nodes) if fanout is None else fanout, seed)


@TOPOLOGIES.register("el-local")
def _el_local(num_nodes: int, *, seed: int, weights: str, fanout: int | None = None) -> Topology:
    """EL-Local with fanout s (default floor(log2 n)); ``weights`` is ignored."""
    return EpidemicLocal(num_nodes, _log2(num_nodes) if fanout is None else fanout, seed)


def _canonical(graph: nx.Graph) -> nx.Graph:
    """A simple undirected copy with nodes 0..n-1 in sorted label order, no self-loops."""
    check(isinstance(graph, nx.Graph), "graph", "a networkx graph", type(graph).__name__)
    check(not graph.is_directed(), "graph", "undirected", type(graph).__name__)
    try:
        nodes = sorted(graph.nodes)
    except TypeError:
        raise PrivlabError(
            "graph node labels must be mutually comparable: nodes are "
            "relabelled 0..n-1 in sorted order"
        ) from None
    index = {node: i for i, node in enumerate(nodes)}
    canonical = nx.Graph()
    canonical.add_nodes_from(range(len(nodes)))
    canonical.add_edges_from((index[u], index[v]) for u, v in graph.edges() if u != v)
    return canonical


def _connected_sample(name: str, make: Callable[[int], nx.Graph], seed: int, hint: str) -> nx.Graph:
    """The first connected ``make(s)`` for s = seed, then s = derive_seed(seed, name, attempt)."""
    for attempt in range(_MAX_CONNECT_TRIES):
        graph = make(seed if attempt == 0 else derive_seed(seed, name, attempt))
        if nx.is_connected(graph):
            return graph
    raise PrivlabError(
        f"topology is disconnected: {name} drew graphs with "
        f"{nx.number_connected_components(graph)} components (the last of "
        f"{_MAX_CONNECT_TRIES} seeds derived from seed={seed}); {hint}"
    )


def _distinct_peers(rng: np.random.Generator, n: int, s: int) -> np.ndarray:
    """[n, s] peers: row i is a uniform s-subset of the nodes other than i."""
    others = n - 1
    if s * s <= 8 * others:  # Floyd's subset sampling (Bentley & Floyd, 1987), O(n s^2)
        picks = np.empty((n, s), dtype=np.int64)
        for k, j in enumerate(range(others - s, others)):
            t = rng.integers(0, j + 1, size=n)
            taken = (picks[:, :k] == t[:, None]).any(axis=1)
            picks[:, k] = np.where(taken, j, t)
    else:  # the s smallest of n - 1 random keys, in row chunks of bounded memory
        chunk = max(1, (1 << 22) // others)
        picks = np.concatenate(
            [
                np.argpartition(rng.random((min(chunk, n - i), others)), s - 1, axis=1)[:, :s]
                for i in range(0, n, chunk)
            ]
        )
    return picks + (picks >= np.arange(n)[:, None])  # skip the node itself


def _log2(n: int) -> int:
    """floor(log2 n), at least 1: the default fanout of Epidemic Learning."""
    return max(1, n.bit_length() - 1)


def _int_option(value: object, field: str, low: int, high: int | None = None) -> int:
    """``value`` as an int in [low, high) (high = num_nodes), else a PrivlabError."""
    valid = f">= {low}" if high is None else f"in [{low}, num_nodes) = [{low}, {high})"
    check(
        is_integer(value) and low <= value and (high is None or value < high),
        field,
        f"{valid} (an integer)",
        value,
    )
    return int(value)


def _check_num_nodes(num_nodes: object) -> None:
    check(is_integer(num_nodes) and num_nodes >= 2, "num_nodes", ">= 2 (an integer)", num_nodes)


def _check_seed(seed: object) -> None:
    check(is_integer(seed) and seed >= 0, "seed", ">= 0 (an integer)", seed)


def _check_even(num_nodes: int, degree: int, field: str) -> None:
    if num_nodes * degree % 2:
        raise PrivlabError(
            f"num_nodes * {field} must be even for a regular graph, got {num_nodes} * {degree}"
        )


def _check_weights(weights: str) -> None:
    if weights not in ("metropolis", "uniform"):
        raise UnknownNameError("weights", weights, ("metropolis", "uniform"))
