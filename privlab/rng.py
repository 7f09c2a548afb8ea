"""One tree of random streams derived from the experiment seed.

Every consumer asks for a stream by purpose and keys. A stream is a pure function of
``(seed, purpose, *keys)``, so both engines, and any call order, see the same numbers:

* ``derive_seed`` / ``torch_generator`` / ``numpy_generator``: one stream for the whole
  network (model initialisation, the data, the partition, random graphs);
* ``NodeStreams``: one stream per node, keyed by (purpose, round, step, node), for
  everything a node draws itself (its batches, its noise, its protocol's randomness).
  Node ``i``'s numbers do not depend on which other nodes are drawn with it, so any block
  of nodes can be reproduced alone (a distributed rank draws only its own block).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import torch

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def derive_seed(seed: int, name: str, *keys: int) -> int:
    """A 63-bit seed for stream ``name`` at ``keys`` (e.g. the round), from ``seed``."""
    entropy = [int(seed), zlib.crc32(name.encode()), *(int(k) for k in keys)]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> np.uint64(1))


def torch_generator(seed: int, name: str, *keys: int) -> torch.Generator:
    """A CPU ``torch.Generator`` for stream ``name`` at ``keys``."""
    return torch.Generator().manual_seed(derive_seed(seed, name, *keys))


def numpy_generator(seed: int, name: str, *keys: int) -> np.random.Generator:
    """A ``numpy.random.Generator`` for stream ``name`` at ``keys``."""
    return np.random.default_rng(derive_seed(seed, name, *keys))


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """The SplitMix64 output function (Steele, Lea & Flood, OOPSLA 2014), elementwise."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class NodeStreams:
    """Per-node random streams keyed by (purpose, round, step, node) from one seed.

    The stream's base seed comes from ``derive_seed(seed, purpose, round, step)``; node
    ``i``'s seed is the ``i``-th SplitMix64 output of that base, computed for all nodes in
    one vectorized step. Each node then draws from its own ``torch.Generator``.
    """

    def __init__(self, seed: int):
        self.seed = int(seed)
        self._generator = torch.Generator()

    def node_seeds(self, purpose: str, round: int, step: int, nodes: Sequence[int]) -> list[int]:
        """The 63-bit seed of each node's stream."""
        base = np.uint64(derive_seed(self.seed, purpose, round, step))
        ids = np.asarray(torch.as_tensor(nodes), dtype=np.uint64) + np.uint64(1)
        with np.errstate(over="ignore"):
            mixed = _splitmix64(base + ids * _GOLDEN)
        return (mixed >> np.uint64(1)).astype(np.int64).tolist()

    def generator(self, purpose: str, round: int, step: int, node: int) -> torch.Generator:
        """A fresh generator on node ``node``'s stream."""
        (seed,) = self.node_seeds(purpose, round, step, [node])
        return torch.Generator().manual_seed(seed)

    def uniform(
        self, purpose: str, round: int, step: int, nodes: Sequence[int], size: int
    ) -> torch.Tensor:
        """``[len(nodes), size]`` uniforms on [0, 1) (see ``_fill``)."""
        return self._fill(torch.empty(len(nodes), size), "uniform_", purpose, round, step, nodes)

    def normal(
        self,
        purpose: str,
        round: int,
        step: int,
        nodes: Sequence[int],
        size: int,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """``[len(nodes), size]`` standard normals (see ``_fill``)."""
        out = torch.empty(len(nodes), size, dtype=dtype)
        return self._fill(out, "normal_", purpose, round, step, nodes)

    def _fill(
        self,
        out: torch.Tensor,
        method: str,
        purpose: str,
        round: int,
        step: int,
        nodes: Sequence[int],
    ) -> torch.Tensor:
        """Fill row ``r`` of ``out`` from node ``nodes[r]``'s stream. A node listed several
        times (one row per edge it sends on) fills all its rows, in order, as one block of
        its stream."""
        ids = torch.as_tensor(nodes, dtype=torch.int64).reshape(-1)
        if len(ids) == 0:
            return out
        if len(ids) == 1 or bool((ids[1:] > ids[:-1]).all()):  # distinct, sorted: row by row
            for row, seed in zip(out, self.node_seeds(purpose, round, step, ids.tolist())):
                getattr(row, method)(generator=self._generator.manual_seed(seed))
            return out
        order = torch.argsort(ids, stable=True)
        owners, counts = torch.unique_consecutive(ids[order], return_counts=True)
        block = torch.empty_like(out)
        start = 0
        for count, seed in zip(counts.tolist(), self.node_seeds(purpose, round, step, owners)):
            rows = block[start : start + count]
            getattr(rows, method)(generator=self._generator.manual_seed(seed))
            start += count
        out[order] = block
        return out
