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


_MASK64 = 2**64 - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MIX = (0xBF58476D1CE4E5B9, 0x94D049BB133111EB)


def _int64(value: int) -> int:
    """An unsigned 64-bit value as the signed int64 with the same bits."""
    return value - 2**64 if value >= 2**63 else value


def _splitmix64_int(z: int) -> int:
    """The SplitMix64 output function (Steele, Lea & Flood, OOPSLA 2014) on a Python int."""
    z &= _MASK64
    z = ((z ^ (z >> 30)) * _MIX[0]) & _MASK64
    z = ((z ^ (z >> 27)) * _MIX[1]) & _MASK64
    return z ^ (z >> 31)


def splitmix64(z: torch.Tensor) -> torch.Tensor:
    """``_splitmix64_int`` on int64 tensors (two's complement wrap-around; logical shifts
    are arithmetic shifts masked to the shifted width). Works in place on a fresh copy."""
    z = z.clone()
    for shift, multiplier in ((30, _MIX[0]), (27, _MIX[1])):
        z ^= (z >> shift).bitwise_and_(2 ** (64 - shift) - 1)
        z *= _int64(multiplier)
    return z.bitwise_xor_((z >> 31).bitwise_and_(2**33 - 1))


def _occurrence(ids: torch.Tensor) -> torch.Tensor:
    """For each entry, how many equal entries come before it: ``[3, 1, 3] -> [0, 0, 1]``."""
    if len(ids) < 2 or bool((ids[1:] > ids[:-1]).all()):
        return torch.zeros_like(ids)
    order = torch.argsort(ids, stable=True)
    ordered = ids[order]
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[1:] = ordered[1:] != ordered[:-1]
    position = torch.arange(len(ids), device=ids.device)
    group_start = torch.cummax(torch.where(starts, position, 0), dim=0).values
    occurrence = torch.empty_like(ids)
    occurrence[order] = position - group_start
    return occurrence


class NodeStreams:
    """Per-node random streams keyed by (purpose, round, step, node) from one seed.

    The stream's base comes from ``derive_seed(seed, purpose)`` mixed with the round and
    the step by SplitMix64; node ``i``'s seed is the ``i``-th SplitMix64 output of that
    base, computed for all nodes in one vectorized step. Uniforms are that seed's
    SplitMix64 stream, computed for all nodes at once; normals come from a
    ``torch.Generator`` seeded per node.

    Draws are returned on ``device``. Uniforms are computed there (exact integer
    arithmetic: the same bits on every device); normals are drawn on the CPU and copied,
    so one seed gives the same numbers on every device (``privlab.devices``).
    """

    def __init__(self, seed: int, device: str | torch.device = "cpu"):
        self.seed = int(seed)
        self.device = torch.device(device)
        self.normal_block: tuple[int, int] | None = None
        """Nodes ``[lo, hi)`` whose normals this process draws (a distributed rank sets its
        block: the noise of other processes' nodes is theirs to draw); the rows of other
        nodes are zeros, never read. None: every node."""
        self._generator = torch.Generator()
        self._purposes: dict[str, int] = {}

    def _base(self, purpose: str, round: int, step: int) -> int:
        """The stream's 64-bit base for (purpose, round, step)."""
        key = self._purposes.get(purpose)
        if key is None:
            key = self._purposes[purpose] = derive_seed(self.seed, purpose)
        z = _splitmix64_int(key + (int(round) + 1) * _GOLDEN)
        return _splitmix64_int(z + (int(step) + 1) * _GOLDEN)

    def _seeds(self, purpose: str, round: int, step: int, ids: torch.Tensor) -> torch.Tensor:
        """The 63-bit seed of each node's stream, int64 ``[len(ids)]``."""
        base = _int64(self._base(purpose, round, step))
        mixed = splitmix64((ids + 1) * _int64(_GOLDEN) + base)
        return (mixed >> 1) & (2**63 - 1)

    def node_seeds(self, purpose: str, round: int, step: int, nodes: Sequence[int]) -> list[int]:
        """The 63-bit seed of each node's stream."""
        ids = torch.as_tensor(nodes, dtype=torch.int64).reshape(-1)
        return self._seeds(purpose, round, step, ids).tolist()

    def uniform(
        self, purpose: str, round: int, step: int, nodes: Sequence[int], size: int
    ) -> torch.Tensor:
        """``[len(nodes), size]`` float32 uniforms on [0, 1): row ``r`` from node
        ``nodes[r]``'s stream (a node listed k times gets the next ``size`` numbers of its
        stream in each of its rows).

        Counter-based: number ``j`` of a node's stream is the SplitMix64 output of
        ``seed + j * gamma`` (the SplitMix64 generator itself, Steele et al. 2014), computed
        for all rows at once, four times faster than seeding a generator per node.
        """
        return self.uniform_bits(purpose, round, step, nodes, size).to(torch.float32).mul_(2.0**-24)

    def uniform_bits(
        self, purpose: str, round: int, step: int, nodes: Sequence[int], size: int
    ) -> torch.Tensor:
        """The integers ``2^24 u`` in [0, 2^24) (int64) of ``uniform``'s numbers ``u``."""
        ids = torch.as_tensor(nodes, dtype=torch.int64).reshape(-1).to(self.device)
        seeds = self._seeds(purpose, round, step, ids)
        counters = _occurrence(ids).unsqueeze(1) * size + torch.arange(
            1, size + 1, device=self.device
        )
        bits = splitmix64(counters.mul_(_int64(_GOLDEN)).add_(seeds.unsqueeze(1)))
        return (bits >> 40).bitwise_and_(2**24 - 1)

    def normal(
        self,
        purpose: str,
        round: int,
        step: int,
        nodes: Sequence[int],
        size: int,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """``[len(nodes), size]`` standard normals on ``device``: row ``r`` from node
        ``nodes[r]``'s own generator (see ``_fill``); zeros for a node outside
        ``normal_block``."""
        if self.normal_block is None:
            out = torch.empty(len(nodes), size, dtype=dtype)
            return self._fill(out, purpose, round, step, nodes).to(self.device)
        ids = torch.as_tensor(nodes, dtype=torch.int64).reshape(-1).cpu()
        lo, hi = self.normal_block
        drawn = ((ids >= lo) & (ids < hi)).nonzero().flatten()
        out = torch.zeros(len(ids), size, dtype=dtype)
        if len(drawn):  # a node's rows are all in or all out: its blocks of draws keep
            own = torch.empty(len(drawn), size, dtype=dtype)
            out[drawn] = self._fill(own, purpose, round, step, ids[drawn])
        return out.to(self.device)

    def _fill(
        self,
        out: torch.Tensor,
        purpose: str,
        round: int,
        step: int,
        nodes: Sequence[int],
    ) -> torch.Tensor:
        """Fill row ``r`` of ``out`` from node ``nodes[r]``'s stream. A node listed several
        times (one row per edge it sends on) fills all its rows, in order, as one block of
        its stream."""
        ids = torch.as_tensor(nodes, dtype=torch.int64).reshape(-1).cpu()
        if len(ids) == 0:
            return out
        if len(ids) == 1 or bool((ids[1:] > ids[:-1]).all()):  # distinct, sorted: row by row
            for row, seed in zip(out, self.node_seeds(purpose, round, step, ids.tolist())):
                row.normal_(generator=self._generator.manual_seed(seed))
            return out
        order = torch.argsort(ids, stable=True)
        owners, counts = torch.unique_consecutive(ids[order], return_counts=True)
        block = torch.empty_like(out)
        start = 0
        for count, seed in zip(counts.tolist(), self.node_seeds(purpose, round, step, owners)):
            rows = block[start : start + count]
            rows.normal_(generator=self._generator.manual_seed(seed))
            start += count
        out[order] = block
        return out
