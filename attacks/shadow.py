"""Reference (shadow) models for membership inference, trained all at once.

LiRA (Carlini et al., S&P 2022) and RMIA (Zarifzadeh, Liu & Shokri, ICML 2024) compare a
target model with many models trained on random halves of a data pool, some with and
some without each example. ``train_reference_models`` trains them as the nodes of one
privlab network under the ``local`` protocol (each node trains alone, nothing is sent),
so the ``VectorizedEngine`` trains all ``M`` models in one batched call per step.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from privlab.data import Dataset
from privlab.engine import ENGINES, Engine, LoopEngine
from privlab.errors import check, is_integer
from privlab.mechanisms.local import LocalOnly
from privlab.partition import FederatedData
from privlab.rng import derive_seed, numpy_generator
from privlab.state import ParamSpec
from privlab.topology import build_topology
from privlab.training import LocalTraining, SGDConfig

REFERENCE_ENGINES = ("vectorized", "loop")


@dataclass(frozen=True, eq=False)
class ReferenceModels:
    """``M`` trained models ``params[M, D]`` (rows laid out by ``ParamSpec.of(model)``),
    the data ``pool[P]`` (dataset indices) they were trained from, and ``keep[M, P]``:
    whether pool example ``p`` is in model ``m``'s training set."""

    params: torch.Tensor
    keep: np.ndarray
    pool: np.ndarray

    @property
    def num_models(self) -> int:
        return int(self.params.shape[0])


def balanced_halves(pool_size: int, num_models: int, seed: int = 0) -> np.ndarray:
    """Keep matrix ``[num_models, pool_size]`` of complementary pairs: models ``2k`` and
    ``2k + 1`` split a fresh random permutation of the pool into its first
    ``ceil(P / 2)`` and remaining examples (Privacy Meter v2's design). Every example is
    IN for exactly half of the models, and every model trains on half of the pool
    (within one example). Drawn from stream "reference-halves" of ``seed``."""
    check(
        is_integer(num_models) and num_models >= 2 and num_models % 2 == 0,
        "num_models",
        "an even integer >= 2",
        num_models,
    )
    check(is_integer(pool_size) and pool_size >= 2, "pool", "at least 2 examples", pool_size)
    rng = numpy_generator(seed, "reference-halves")
    keep = np.zeros((num_models, pool_size), dtype=bool)
    for pair in range(num_models // 2):
        first = rng.permutation(pool_size)[: math.ceil(pool_size / 2)]
        keep[2 * pair, first] = True
        keep[2 * pair + 1] = ~keep[2 * pair]
    return keep


def independent_initialisations(model: nn.Module, num_models: int, seed: int = 0) -> torch.Tensor:
    """``num_models`` fresh initialisations ``[M, D]`` of ``model``'s architecture: model
    ``i`` is ``model`` with every submodule's ``reset_parameters`` run under the torch seed
    of stream ("reference-init", i) of ``seed``. Parameters of modules without
    ``reset_parameters`` keep ``model``'s values."""
    spec, fresh = ParamSpec.of(model), copy.deepcopy(model)
    rows = []
    with torch.random.fork_rng(devices=[]):
        for i in range(num_models):
            torch.manual_seed(derive_seed(seed, "reference-init", i))
            for module in fresh.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
            rows.append(spec.flatten(fresh))
    return torch.stack(rows)


def _pool_indices(pool, dataset: Dataset) -> np.ndarray:
    pool = np.asarray(pool, dtype=np.int64).reshape(-1)
    check(len(np.unique(pool)) == len(pool), "pool", "distinct dataset indices", "duplicates")
    check(
        len(pool) >= 2 and pool.min() >= 0 and pool.max() < len(dataset),
        "pool",
        f"at least 2 indices in 0..{len(dataset) - 1}",
        (len(pool), int(pool.min(initial=0)), int(pool.max(initial=0))),
    )
    return pool


def _replicated_federation(dataset: Dataset, pool: np.ndarray, keep: np.ndarray) -> FederatedData:
    """Node ``m`` holds model ``m``'s half of the pool. ``FederatedData`` wants disjoint
    node sets, so each node's examples are copies in a dataset of their own
    (``M x P / 2`` examples in all)."""
    chosen = [pool[row] for row in keep]
    sizes = np.array([len(c) for c in chosen])
    rows = torch.from_numpy(np.concatenate(chosen))
    copies = Dataset(
        f"{dataset.name}-references", dataset.X[rows], dataset.y[rows], dataset.num_classes
    )
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    nodes = tuple(np.arange(s, s + n) for s, n in zip(starts, sizes))
    none = np.zeros(0, dtype=np.int64)
    return FederatedData(copies, nodes, none, none)


def _start_from(engine: Engine, initial: torch.Tensor) -> None:
    """Replace the engine's (shared) initial models by ``initial[M, D]``."""
    if isinstance(engine, LoopEngine):
        for module, row in zip(engine.models, initial):
            engine.spec.load(module, row)
    else:  # VectorizedEngine.params is its live state tensor
        engine.params.copy_(initial)


def train_reference_models(
    model: nn.Module,
    dataset: Dataset,
    pool,
    *,
    num_models: int = 64,
    epochs: int = 30,
    batch_size: int = 32,
    lr: float = 0.1,
    momentum: float = 0.9,
    seed: int = 0,
    engine: str = "vectorized",
    progress: bool = False,
) -> ReferenceModels:
    """Train ``num_models`` models of ``model``'s architecture, each on its half of
    ``pool`` (``balanced_halves``: every example IN for exactly half of them), as LiRA
    and RMIA need (Carlini et al. 2022 §IV; Zarifzadeh et al. 2024).

    Each model starts from its own initialisation (``independent_initialisations``), as
    in LiRA, so the references vary as independently trained target models do. Training
    is privlab's local SGD (``torch.optim.SGD`` semantics, ``lr``, ``momentum``) under the
    ``local`` protocol: one round is one epoch of ``ceil(ceil(P / 2) / batch_size)`` steps,
    each on a uniform batch of ``batch_size`` distinct examples of the model's half,
    drawn from the seed's per-node streams. ``engine="vectorized"`` trains all models in
    one batched call per step; ``"loop"`` trains them one by one (the reference: same
    seed, same models up to float rounding).
    """
    check(engine in REFERENCE_ENGINES, "engine", f"one of {list(REFERENCE_ENGINES)}", engine)
    check(is_integer(epochs) and epochs >= 1, "epochs", "an integer >= 1", epochs)
    pool = _pool_indices(pool, dataset)
    keep = balanced_halves(len(pool), num_models, seed)
    data = _replicated_federation(dataset, pool, keep)
    steps = math.ceil(math.ceil(len(pool) / 2) / batch_size)
    training = LocalTraining(batch_size, steps, SGDConfig(lr=lr, momentum=momentum))
    topology = build_topology("ring", num_models)  # unused: ``local`` plans no edge
    trainer = ENGINES[engine](model, data, topology, LocalOnly(), training, seed=seed)
    _start_from(trainer, independent_initialisations(model, num_models, seed))
    for round in tqdm(range(1, epochs + 1), desc="reference models", disable=not progress):
        trainer.run_round(round)
    return ReferenceModels(trainer.params.clone(), keep, pool)
