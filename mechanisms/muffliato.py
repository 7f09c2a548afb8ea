"""Muffliato: local Gaussian noise, then K (optionally Chebyshev-accelerated) gossip steps.

Cyffers, Even, Bellet, Massoulié, "Muffliato: Peer-to-Peer Privacy Amplification for
Decentralized Optimization and Averaging", NeurIPS 2022 (arXiv 2206.05091); official code
``totilas/muffliato`` (``muffliato.py``, ``private.py``). See
privlab's reference notes on gossip privacy (``rgm-gossip-network-dp.md``), section 4.3.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from privlab.context import RoundContext
from privlab.errors import PrivlabError, check, is_integer, is_real
from privlab.plan import CommPlan, sparse_matmul
from privlab.protocol import PROTOCOLS, Messages, Protocol, mix_node

METADATA_BYTES = 8
"""Header of a model message: the round number and the sender's degree (int32 each), as
D-PSGD's, so one Muffliato exchange costs exactly one D-PSGD exchange."""

NOISE_PURPOSE = "muffliato"
"""Stream purpose of the local noise: ``streams.normal("muffliato", round, 0, nodes, D)``."""


def chebyshev_gamma(spectral_gap: float) -> float:
    """The constant Chebyshev (heavy-ball) weight of the official Muffliato code,
    ``gamma = 2 (1 - sqrt(lam (1 - lam / 4))) / (1 - lam / 2)^2`` for the spectral gap
    ``lam`` (second-smallest eigenvalue of I - W).

    With ``c = 1 - lam / 2`` this is ``2 / (1 + sqrt(1 - c^2))``, the optimal heavy-ball
    weight for a spectrum in ``[-c, c]`` (``lam = 1`` gives gamma ~ 1.07; gamma -> 2 as
    the gap closes).
    """
    lam = float(spectral_gap)
    return 2.0 * (1.0 - math.sqrt(lam * (1.0 - lam / 4.0))) / (1.0 - lam / 2.0) ** 2


def spectral_gap(mixing: np.ndarray) -> float:
    """Second-smallest eigenvalue of ``I - W`` for a symmetric mixing matrix ``W``."""
    eigenvalues = np.sort(np.linalg.eigvalsh(np.eye(len(mixing)) - mixing))
    return float(eigenvalues[1])


@PROTOCOLS.register("muffliato")
class Muffliato(Protocol):
    """Muffliato-SGD (Cyffers, Even, Bellet, Massoulié, NeurIPS 2022).

    Each round is the engine's block of local SGD steps, then (the "optimization
    variant": local steps alternate with gossip averaging, official ``private.py``):

    1. at exchange 0 every node privatizes its model once, ``y_v^0 = x_v + eta_v`` with
       ``eta_v ~ N(0, sigma^2 I_D)`` drawn from its own stream
       (``streams.normal("muffliato", round, 0, nodes, D)``);
    2. ``gossip_steps = K`` synchronous gossip exchanges with the plan's mixing matrix W
       (Metropolis-Hastings by default): ``y^{t+1} = W y^t``. Each exchange sends every
       node's current iterate on every edge of the plan (observed and counted by the
       engine like any exchange), so K exchanges cost K D-PSGD exchanges;
    3. with ``chebyshev=True`` the accelerated recursion of the paper,
       ``y^1 = W y^0`` then ``y^{t+1} = gamma W y^t + (1 - gamma) y^{t-1}``, with the
       constant ``gamma`` of the official code computed once from the spectral gap of W
       (``chebyshev_gamma``). W doubly stochastic keeps the network mean of every
       iterate equal to the mean of the noisy models in both variants.

    The new models are ``y^K``. **Noise scale:** ``sigma = noise_multiplier * C`` when a
    gradient mechanism set ``context.clip_norm = C`` (the noise in units of the clipping
    bound, as DP-SGD states it), else ``sigma = noise_multiplier`` in absolute model units.
    The noise is added to the model once per round (once per block of local steps; once
    per gradient step when ``local_steps = 1``, as in the paper's Muffliato-GD, which
    adds it to the step's gradient). Calibrating sigma to the sensitivity of a round's
    update (e.g. ``lr * C / batch`` per clipped step) is the caller's choice; this
    protocol emits no privacy events (the per-pair network RDP is the accountants' job,
    and the reference warns that the paper's per-pair sum is not an upper bound for a
    known fixed graph).

    The previous iterate of the Chebyshev recursion is kept by the protocol: ``send``,
    which both engines call once per exchange with every node's state, records the
    iterate it sends, so ``receive`` (vectorized) and ``receive_node`` (loop) read the same
    ``y^{t-1}``. The iterate ``y^t`` itself is read from the messages' shared rows, so the
    noisy ``y^0`` (not the engine's un-noised state) is what every node, itself
    included, averages.

    ``noise_multiplier`` >= 0 and finite (0: plain gossip, K = 1 is D-PSGD exactly);
    ``gossip_steps`` an integer >= 1; ``chebyshev`` a bool, which needs a static topology
    (one mixing matrix for every round) with a symmetric, connected W.
    """

    def __init__(
        self, noise_multiplier: float = 1.0, gossip_steps: int = 1, chebyshev: bool = False
    ) -> None:
        check(
            is_real(noise_multiplier) and math.isfinite(noise_multiplier) and noise_multiplier >= 0,
            "noise_multiplier",
            ">= 0 and finite",
            noise_multiplier,
        )
        check(
            is_integer(gossip_steps) and gossip_steps >= 1,
            "gossip_steps",
            ">= 1 (an integer)",
            gossip_steps,
        )
        check(isinstance(chebyshev, bool), "chebyshev", "true or false", chebyshev)
        self.noise_multiplier = float(noise_multiplier)
        self.gossip_steps = int(gossip_steps)
        self.chebyshev = chebyshev
        self.exchanges = self.gossip_steps
        self.gamma = 1.0
        self._sent: torch.Tensor | None = None  # y^t, sent at the current exchange
        self._previous: torch.Tensor | None = None  # y^{t-1}

    def setup(self, context: RoundContext) -> None:
        super().setup(context)
        if not self.chebyshev:
            return
        topology = context.topology
        if getattr(topology, "dynamic", False):
            raise PrivlabError(
                "chebyshev needs a static topology (one mixing matrix, whose spectral gap "
                f"sets the acceleration): topology {topology.name!r} is dynamic; use "
                "chebyshev: false or a static topology"
            )
        if context.num_nodes < 2:
            return
        mixing = topology.plan(0).mixing_matrix("dense", dtype=torch.float64).numpy()
        if not np.allclose(mixing, mixing.T, atol=1e-9):
            raise PrivlabError(
                "chebyshev needs a symmetric mixing matrix W (undirected graph, "
                f"Metropolis-Hastings weights); topology {topology.name!r} gives a "
                "non-symmetric one"
            )
        gap = spectral_gap(mixing)
        if gap <= 1e-12:
            raise PrivlabError(
                f"chebyshev needs a connected topology: the spectral gap of W on "
                f"{topology.name!r} is {gap:.3g}"
            )
        self.gamma = chebyshev_gamma(gap)

    @property
    def sigma(self) -> float:
        """Standard deviation of the local noise, in model units."""
        clip_norm = getattr(getattr(self, "context", None), "clip_norm", None)
        return self.noise_multiplier * (1.0 if clip_norm is None else float(clip_norm))

    def send(self, params: torch.Tensor, plan: CommPlan, round: int, exchange: int) -> Messages:
        if exchange == 0:
            iterate = params
            sigma = self.sigma
            if sigma > 0:
                n, dim = params.shape
                noise = self.context.streams.normal(
                    NOISE_PURPOSE, round, 0, range(n), dim, dtype=params.dtype
                )
                iterate = params + sigma * noise
            self._previous = None
        else:
            iterate = params
            self._previous = self._sent
        self._sent = iterate
        return Messages.of_rows(iterate, plan.src, plan.dst, metadata_bytes=METADATA_BYTES)

    def _accelerated(self, exchange: int) -> bool:
        return self.chebyshev and exchange > 0 and self.gamma != 1.0

    def receive(
        self, params: torch.Tensor, messages: Messages, plan: CommPlan, round: int, exchange: int
    ) -> torch.Tensor:
        iterate = self._sent if messages.rows is None else messages.rows
        mixed = sparse_matmul(plan.csr(), iterate)
        if self._accelerated(exchange):
            return mixed.mul_(self.gamma).add_(self._previous, alpha=1.0 - self.gamma)
        return mixed

    def receive_node(
        self,
        node: int,
        own: torch.Tensor,
        inbox: Messages,
        plan: CommPlan,
        round: int,
        exchange: int,
    ) -> torch.Tensor:
        rows = self._sent if inbox.rows is None else inbox.rows
        out = mix_node(node, rows[node], inbox, plan)
        if self._accelerated(exchange):
            out = self.gamma * out + (1.0 - self.gamma) * self._previous[node]
        return out

    def network_model(self) -> tuple[str, int, float] | None:
        """Plain gossip after one noise draw (Chebyshev's iterates are not modelled)."""
        if self.chebyshev:
            return None
        return ("muffliato", self.exchanges, self.noise_multiplier)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "noise_multiplier": self.noise_multiplier,
            "gossip_steps": self.gossip_steps,
            "chebyshev": self.chebyshev,
        }
