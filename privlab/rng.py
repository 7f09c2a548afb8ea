"""One tree of random streams derived from the experiment seed.

Every consumer (batch sampling, dynamic topologies, protocol noise, model
initialisation) asks for a stream by name and round. A stream is a pure function of
``(seed, name, *keys)``, so both engines, and any call order, see the same numbers.
"""

from __future__ import annotations

import zlib

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
