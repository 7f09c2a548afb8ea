"""Partitions of a dataset among nodes.

:func:`partition` splits a :class:`~privlab.data.Dataset` into a test set, a non-member pool
(never trained on, for membership inference) and a training pool shared among nodes:
``iid``, ``dirichlet`` (Hsu et al., 2019) or ``shards`` (McMahan et al., 2017); the result is a
:class:`FederatedData`. All randomness comes from ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from numbers import Real
from typing import TYPE_CHECKING

import numpy as np
import torch

from privlab.errors import check, is_integer
from privlab.registry import Registry

if TYPE_CHECKING:
    from privlab.data import Dataset

Partitioner = Callable[[np.ndarray, int, np.random.Generator, "PartitionOptions"], list]

partitions: Registry[Partitioner] = Registry("partition")


@dataclass(frozen=True, eq=False)
class FederatedData:
    """A dataset split into per-node training sets, a non-member pool and a test set.

    ``node_indices[i]`` are the indices of node i's training samples (the membership
    ground truth); the non-member pool is never trained on. All index sets are disjoint.
    Index arrays are int64, sorted and read-only.
    """

    dataset: Dataset
    node_indices: tuple[np.ndarray, ...]
    nonmember_indices: np.ndarray
    test_indices: np.ndarray

    def __post_init__(self) -> None:
        nodes = tuple(_frozen_indices(idx) for idx in self.node_indices)
        object.__setattr__(self, "node_indices", nodes)
        object.__setattr__(self, "nonmember_indices", _frozen_indices(self.nonmember_indices))
        object.__setattr__(self, "test_indices", _frozen_indices(self.test_indices))
        check(len(nodes) >= 1, "node_indices", "a non-empty tuple", len(nodes))
        check(
            all(len(idx) for idx in nodes),
            "node_indices",
            "non-empty for every node",
            [len(idx) for idx in nodes],
        )
        every = np.concatenate([*nodes, self.nonmember_indices, self.test_indices])
        check(
            len(np.unique(every)) == len(every),
            "node_indices",
            "disjoint from each other and from the non-member and test sets",
            "overlap",
        )
        check(
            every.min() >= 0 and every.max() < len(self.dataset),
            "node_indices",
            f"indices in 0..{len(self.dataset) - 1}",
            (int(every.min()), int(every.max())),
        )

    @property
    def num_nodes(self) -> int:
        """Number of nodes."""
        return len(self.node_indices)

    def node_sizes(self) -> np.ndarray:
        """Number of training samples of each node, int64 ``[n]``."""
        return np.array([len(idx) for idx in self.node_indices], dtype=np.int64)

    def padded_node_indices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """([n, m] int64 indices, right-padded with -1, m = max node size; [n] int64 sizes)."""
        sizes = self.node_sizes()
        padded = np.full((self.num_nodes, int(sizes.max())), -1, dtype=np.int64)
        for row, idx in zip(padded, self.node_indices, strict=True):
            row[: len(idx)] = idx
        return torch.from_numpy(padded), torch.from_numpy(sizes)

    def summary(self) -> dict:
        """JSON-able description: sizes of every split and each node's label histogram."""
        sizes = self.node_sizes()
        labels = self.dataset.y.numpy()
        return {
            "dataset": self.dataset.name,
            "num_samples": len(self.dataset),
            "input_shape": list(self.dataset.input_shape),
            "num_classes": self.dataset.num_classes,
            "num_nodes": self.num_nodes,
            "node_size_min": int(sizes.min()),
            "node_size_mean": float(sizes.mean()),
            "node_size_max": int(sizes.max()),
            "n_train": int(sizes.sum()),
            "n_nonmember": len(self.nonmember_indices),
            "n_test": len(self.test_indices),
            "node_label_histogram": [
                np.bincount(labels[idx], minlength=self.dataset.num_classes).tolist()
                for idx in self.node_indices
            ],
        }


def _frozen_indices(indices: np.ndarray) -> np.ndarray:
    array = np.sort(np.asarray(indices, dtype=np.int64).reshape(-1))
    array.setflags(write=False)
    return array


@dataclass(frozen=True)
class PartitionOptions:
    """Scheme parameters: Dirichlet concentration and shards per node."""

    alpha: float
    shards_per_node: int


def available_partitions() -> list[str]:
    """Names accepted by :func:`partition`."""
    return partitions.names()


def partition(
    dataset: Dataset,
    num_nodes: int,
    scheme: str = "iid",
    *,
    alpha: float = 0.5,
    shards_per_node: int = 2,
    test_fraction: float = 0.2,
    nonmember_fraction: float = 0.2,
    seed: int = 0,
) -> FederatedData:
    """Split ``dataset`` into test, non-member and training sets, then share training among nodes.

    The three-way split is stratified by label. Schemes: ``iid`` (random, near-equal),
    ``dirichlet`` (per-class proportions ~ Dir(alpha), Hsu et al., 2019, "Measuring the
    effects of non-identical data distribution"), ``shards`` (label-sorted shards,
    McMahan et al., 2017, "Communication-efficient learning ... from decentralized data").
    Every node gets at least one sample; the same seed gives the same result.
    """
    partitioner = partitions[scheme]
    for field, value in (
        ("test_fraction", test_fraction),
        ("nonmember_fraction", nonmember_fraction),
    ):
        check(isinstance(value, Real) and 0 <= value < 1, field, "in [0, 1)", value)
    check(
        test_fraction + nonmember_fraction < 1,
        "test_fraction + nonmember_fraction",
        "< 1",
        test_fraction + nonmember_fraction,
    )
    num_nodes = _integer(num_nodes, "num_nodes", 2)
    rng = np.random.default_rng(seed)
    labels = dataset.y.numpy()
    train, nonmember, test = _stratified_split(labels, test_fraction, nonmember_fraction, rng)
    check(
        num_nodes <= len(train), "num_nodes", f"<= the training pool size ({len(train)})", num_nodes
    )
    options = PartitionOptions(alpha, shards_per_node)
    parts = partitioner(labels[train], num_nodes, rng, options)
    return FederatedData(dataset, tuple(train[p] for p in parts), nonmember, test)


def _stratified_split(
    labels: np.ndarray,
    test_fraction: float,
    nonmember_fraction: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, nonmember, test) indices; every prefix of a class-interleaved order is stratified."""
    key = np.empty(len(labels))
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        key[members] = (rng.permutation(len(members)) + rng.random(len(members))) / len(members)
    order = np.argsort(key, kind="stable")
    n_test = round(test_fraction * len(labels))
    n_out = n_test + round(nonmember_fraction * len(labels))
    return np.sort(order[n_out:]), np.sort(order[n_test:n_out]), np.sort(order[:n_test])


def _integer(value: object, field: str, minimum: int) -> int:
    check(is_integer(value) and value >= minimum, field, f"an integer >= {minimum}", value)
    return int(value)


@partitions.register("iid")
def _iid(
    labels: np.ndarray, num_nodes: int, rng: np.random.Generator, options: PartitionOptions
) -> list[np.ndarray]:
    """Random permutation cut into near-equal parts."""
    return np.array_split(rng.permutation(len(labels)), num_nodes)


@partitions.register("dirichlet")
def _dirichlet(
    labels: np.ndarray, num_nodes: int, rng: np.random.Generator, options: PartitionOptions
) -> list[np.ndarray]:
    """Each class is shared among nodes in proportions ~ Dir(alpha 1); empty nodes are refilled
    with one sample taken from the largest node."""
    alpha = options.alpha
    check(isinstance(alpha, Real) and np.isfinite(alpha) and alpha > 0, "alpha", "> 0", alpha)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_nodes)]
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        shares = rng.dirichlet(np.full(num_nodes, float(alpha)))
        cuts = np.floor(np.cumsum(shares)[:-1] * len(members)).astype(np.int64)
        for node, chunk in enumerate(np.split(members, cuts)):
            parts[node].append(chunk)
    nodes = [np.concatenate(chunks) for chunks in parts]
    for empty in [i for i, idx in enumerate(nodes) if len(idx) == 0]:
        largest = int(np.argmax([len(idx) for idx in nodes]))
        take = rng.integers(len(nodes[largest]))
        nodes[empty] = nodes[largest][take : take + 1]
        nodes[largest] = np.delete(nodes[largest], take)
    return nodes


@partitions.register("shards")
def _shards(
    labels: np.ndarray, num_nodes: int, rng: np.random.Generator, options: PartitionOptions
) -> list[np.ndarray]:
    """Label-sorted samples cut into ``num_nodes * shards_per_node`` shards, dealt at random.

    A node sees at most ``2 * shards_per_node`` labels when no shard outsizes a class.
    """
    per_node = _integer(options.shards_per_node, "shards_per_node", 1)
    num_shards = num_nodes * per_node
    check(
        num_shards <= len(labels),
        "shards_per_node",
        f"<= training pool size / num_nodes ({len(labels) // num_nodes})",
        per_node,
    )
    shards = np.array_split(np.lexsort((rng.random(len(labels)), labels)), num_shards)
    deal = rng.permutation(num_shards).reshape(num_nodes, per_node)
    return [np.concatenate([shards[s] for s in row]) for row in deal]
