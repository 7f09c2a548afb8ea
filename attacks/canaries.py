"""Canaries for privacy audits: records planted in a target node's data, each present with
probability 1/2, whose presence an attacker then tries to tell.

Three kinds (Jagielski, Ullman, Oprea, NeurIPS 2020; Nasr et al., S&P 2021 and USENIX
Security 2023; Steinke, Nasr, Jagielski, NeurIPS 2023, Sec. 6):

* ``natural``: held-out examples of the population, with their true labels (the weakest);
* ``mislabelled``: held-out examples given a uniformly drawn wrong label (much stronger,
  because the model has to memorise them);
* ``dirac``: gradient-space canaries. Canary i is the per-sample gradient ``M e_j`` on one
  coordinate j of the model, fed to the target's gradient mechanism as one more record:
  sampled at each local step with the target's sampling probability, clipped when the
  mechanism clips, weighted like a record of the batch. ``M`` (``norm``) defaults to
  100, far above any sensible clip norm, so a mechanism that forgets to clip shows it.

Decision (the reference leaves it open): Dirac coordinates are the m coordinates whose
mean absolute gradient over held-out data at the initial model is smallest (ties broken
by the seed), so the canaries hardly meet the data's own gradients: on digits these are
first-layer weights of always-blank pixels, which no real gradient ever moves.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from privlab.context import RoundContext
from privlab.errors import check
from privlab.gradient import GradientMechanism
from privlab.partition import FederatedData
from privlab.rng import derive_seed
from privlab.sampling import Batch
from privlab.state import ParamSpec
from privlab.training import stacked_gradient

KINDS = ("dirac", "mislabelled", "natural")
DIRAC_NORM = 100.0


@dataclass(frozen=True)
class Canaries:
    """m canaries of one kind and which of them are planted (``included``, each 1/2).

    ``samples`` are the canaries' dataset indices (input-space kinds) and ``coordinates``
    their model coordinates (Dirac), the other one None.
    """

    kind: str
    included: np.ndarray
    samples: np.ndarray | None = None
    coordinates: np.ndarray | None = None
    norm: float | None = None

    @property
    def count(self) -> int:
        return len(self.included)


def draw_inclusion(count: int, seed: int) -> np.ndarray:
    """Each of ``count`` canaries present independently with probability 1/2 (the
    inclusion the one-run analysis of Steinke et al. 2023 requires)."""
    rng = np.random.default_rng(derive_seed(seed, "audit-inclusion"))
    return rng.random(count) < 0.5


def capacity(kind: str, data: FederatedData, target: int, dim: int) -> int:
    """How many canaries of ``kind`` the target can hold: input-space canaries come from
    the non-member pool and may at most double the target's own data; Dirac canaries
    need one model coordinate each."""
    if kind == "dirac":
        return dim
    return min(len(data.nonmember_indices), len(data.node_indices[target]))


def check_count(kind: str, count: int, data: FederatedData, target: int, dim: int) -> None:
    """One clear message when ``count`` canaries do not fit."""
    most = capacity(kind, data, target, dim)
    where = (
        f"the model's {dim} coordinates"
        if kind == "dirac"
        else f"min(target node {target}'s {len(data.node_indices[target])} records, the "
        f"non-member pool's {len(data.nonmember_indices)} examples)"
    )
    check(2 <= count <= most, "--canaries", f"in [2, {most}] ({kind} canaries: {where})", count)


def plant_input_canaries(
    data: FederatedData, target: int, kind: str, included: np.ndarray, seed: int
) -> tuple[FederatedData, Canaries]:
    """Take ``len(included)`` examples of the non-member pool (chosen by ``seed``) as
    canaries of ``kind`` (``natural`` or ``mislabelled``); the ``included`` ones join the
    target's data.

    Mislabelled canaries are appended to the dataset as copies with a wrong label drawn
    uniformly from the other classes; their originals leave the pool, so no example is
    both a canary and a non-member.
    """
    check(kind in ("natural", "mislabelled"), "kind", "'natural' or 'mislabelled'", kind)
    count = len(included)
    rng = np.random.default_rng(derive_seed(seed, "audit-canaries"))
    pool = data.nonmember_indices
    chosen = np.sort(rng.choice(pool, size=count, replace=False))
    dataset, samples = data.dataset, chosen
    if kind == "mislabelled":
        k = dataset.num_classes
        check(k >= 2, "data", "at least 2 classes for mislabelled canaries", k)
        true = dataset.y[torch.from_numpy(chosen)].numpy()
        wrong = (true + rng.integers(1, k, size=count)) % k
        samples = np.arange(len(dataset), len(dataset) + count)
        dataset = replace(
            dataset,
            X=torch.cat([dataset.X, dataset.X[torch.from_numpy(chosen)]]),
            y=torch.cat([dataset.y, torch.from_numpy(wrong).to(torch.int64)]),
        )
    nodes = list(data.node_indices)
    nodes[target] = np.sort(np.concatenate([nodes[target], samples[included]]))
    rest = np.setdiff1d(pool, chosen)
    planted = FederatedData(dataset, tuple(nodes), rest, data.test_indices)
    return planted, Canaries(kind, np.asarray(included, dtype=bool), samples=samples)


def dirac_coordinates(
    model: torch.nn.Module, data: FederatedData, count: int, seed: int, probe: int = 256
) -> np.ndarray:
    """The ``count`` coordinates with the smallest mean |per-sample gradient| over up to
    ``probe`` held-out examples at the initial model (ties in random order from ``seed``)."""
    spec = ParamSpec.of(model)
    pool = data.nonmember_indices if len(data.nonmember_indices) else data.test_indices
    rng = np.random.default_rng(derive_seed(seed, "audit-dirac"))
    probe = max(1, min(probe, 2**26 // max(1, spec.dim)))  # [probe, D] floats: <= 256 MiB
    chosen = torch.from_numpy(rng.permutation(pool)[:probe])
    activity = np.zeros(spec.dim)
    if len(chosen):
        params = spec.flatten(model).unsqueeze(0).repeat(len(chosen), 1)
        x = data.dataset.X[chosen].unsqueeze(1)  # one "node" per example: per-sample grads
        y = data.dataset.y[chosen].unsqueeze(1)
        grads, _ = stacked_gradient(model, spec)(params, x, y, None)
        activity = grads.abs().mean(dim=0).numpy()
    order = np.lexsort((rng.random(spec.dim), activity))
    return np.sort(order[:count])


class DiracCanaryGradients(GradientMechanism):
    """Wraps a node's gradient mechanism (or none) and adds the target's Dirac canaries
    to its gradient as extra records (see the module docstring).

    At each local step, included canary i joins node ``target``'s batch with the node's
    sampling probability (the mechanism's Poisson rate, else ``batch_size / records``),
    from its own stream; its gradient ``norm * e_j`` is clipped to the mechanism's
    ``clip_norm`` when it has one and weighted as a record of that batch (1 in a clipped
    or weighted sum, ``1 / B`` in a batch mean). The wrapped mechanism then privatises
    the sum as usual, so its noise and its events are exactly the configured ones.
    """

    def __init__(
        self,
        inner: GradientMechanism | None,
        targets: list[int],
        coordinates: np.ndarray,
        included: list[np.ndarray],
        norm: float = DIRAC_NORM,
    ):
        check(norm > 0, "canary norm", "> 0", norm)
        self.inner = inner
        self.name = inner.name if inner is not None else "none"
        self.clip_norm = None if inner is None else inner.clip_norm
        self.targets = targets
        self.coordinates = torch.from_numpy(np.asarray(coordinates, dtype=np.int64))
        self.included = [torch.from_numpy(np.asarray(i, dtype=bool)) for i in included]
        self.norm = float(norm)
        self._weights: dict[int, float] = {}

    def setup(self, context: RoundContext) -> None:
        super().setup(context)
        if self.inner is not None:
            self.inner.setup(context)
        self.coordinates = self.coordinates.to(context.device)
        self.included = [included.to(context.device) for included in self.included]
        sizes = context.node_sizes.to(torch.float64)
        rates = getattr(self.inner, "rates", None)
        if isinstance(rates, torch.Tensor) and rates.shape == sizes.shape:
            self.rates = rates.to(torch.float64)
        else:
            self.rates = (context.batch_size / sizes).clamp(max=1.0)

    def batch(self, round: int, step: int, nodes: torch.Tensor) -> Batch | None:
        batch = None if self.inner is None else self.inner.batch(round, step, nodes)
        self._weights = {}
        for target in self.targets:
            row = int((nodes == target).nonzero()[0]) if bool((nodes == target).any()) else None
            if row is None:
                continue
            if batch is None or batch.weights is None:
                width = min(self.context.batch_size, int(self.context.node_sizes[target]))
                self._weights[target] = 1.0 / width
            else:
                self._weights[target] = float(batch.weights[row].max().clamp(min=1e-12))
        return batch

    def privatize(
        self, grads: torch.Tensor, round: int, step: int, nodes: torch.Tensor
    ) -> torch.Tensor:
        value = self.norm if self.clip_norm is None else min(self.norm, self.clip_norm)
        for world, target in enumerate(self.targets):
            hit = (nodes == target).nonzero()
            if len(hit) == 0 or target not in self._weights:
                continue
            draws = self.context.streams.uniform(
                "audit-dirac", round, step, [target], len(self.coordinates)
            )[0]
            present = self.included[world] & (draws.double() < float(self.rates[target]))
            grads[int(hit[0]), self.coordinates[present]] += value * self._weights[target]
        if self.inner is None:
            return grads
        return self.inner.privatize(grads, round, step, nodes)

    def account(self, round: int, step: int) -> None:
        if self.inner is not None:
            self.inner.account(round, step)

    def describe(self) -> dict:
        inner = {"name": "none"} if self.inner is None else self.inner.describe()
        return inner | {"audit_dirac_canaries": len(self.coordinates), "canary_norm": self.norm}
