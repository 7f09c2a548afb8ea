"""DP-SGD on every node: Poisson sampling, per-sample clipping, Gaussian noise.

Abadi, Chu, Goodfellow, McMahan, Mironov, Talwar, Zhang, "Deep Learning with Differential
Privacy", CCS 2016, Algorithm 1, as Opacus implements it (Yousefpour et al., 2021): each
node samples each of its records independently with probability q, clips every
per-sample gradient to L2 norm C, adds N(0, sigma^2 C^2) to the sum and divides by the
expected batch size q * m. Each step is one ``PoissonSampledEvent(q, GaussianEvent(sigma))``
in the node's ledger: a node's epsilon protects the records of its own data.
"""

from __future__ import annotations

import torch

from privlab.accounting.events import GaussianEvent, PoissonSampledEvent, PrivacyEvent
from privlab.context import RoundContext
from privlab.errors import PrivlabError, check, check_positive_finite, is_real
from privlab.gradient import GRADIENT_MECHANISMS, GradientMechanism
from privlab.sampling import Batch, poisson_batches, shuffle_batches

SAMPLINGS = ("poisson", "shuffle")
SHUFFLE_NOTE = (
    "sampling is 'shuffle' (fixed-size batches drawn without replacement): the reported "
    "epsilon is computed as if each batch were Poisson-sampled at rate batch_size / node "
    "size, which these batches only approximate"
)


@GRADIENT_MECHANISMS.register("dp-sgd")
class DPSGD(GradientMechanism):
    """DP-SGD (Abadi et al., CCS 2016, Algorithm 1) with per-node sampling rates.

    ``sample_rate`` q defaults to ``batch_size / m_i`` for a node with m_i records (at
    most 1), so nodes of different sizes have different rates and epsilons. With
    ``sampling: poisson`` batch sizes vary (carried as 0/1 masks, never refilled); with
    ``sampling: shuffle`` each batch is ``min(batch_size, m_i)`` distinct records and
    the gradient is divided by that size, while the epsilon still assumes Poisson
    sampling (``describe`` says so).
    """

    def __init__(
        self,
        noise_multiplier: float = 1.0,
        max_grad_norm: float = 1.0,
        sampling: str = "poisson",
        sample_rate: float | None = None,
    ):
        check_positive_finite(noise_multiplier, "noise_multiplier")
        check_positive_finite(max_grad_norm, "max_grad_norm")
        check(sampling in SAMPLINGS, "sampling", "one of 'poisson', 'shuffle'", sampling)
        if sample_rate is not None:
            check(
                is_real(sample_rate) and 0 < sample_rate <= 1,
                "sample_rate",
                "in (0, 1]",
                sample_rate,
            )
            if sampling == "shuffle":
                raise PrivlabError(
                    "sample_rate applies to sampling 'poisson'; shuffled batches have "
                    "training.batch_size records"
                )
        self.noise_multiplier = float(noise_multiplier)
        self.clip_norm = float(max_grad_norm)
        self.sampling = sampling
        self.sample_rate = None if sample_rate is None else float(sample_rate)

    def setup(self, context: RoundContext) -> None:
        super().setup(context)
        sizes = context.node_sizes.to(torch.float64)
        if self.sample_rate is None:
            self.rates = (context.batch_size / sizes).clamp(max=1.0)
        else:
            self.rates = torch.full_like(sizes, self.sample_rate)
        if self.sampling == "poisson":
            self.expected_batch = (self.rates * sizes).to(torch.float32)
        else:
            self.expected_batch = sizes.clamp(max=context.batch_size).to(torch.float32)
        self.events = self._events_by_rate()

    def _events_by_rate(self) -> list[tuple[PrivacyEvent, torch.Tensor | None]]:
        """One event per distinct rate, with the nodes that have it (None: all nodes)."""
        rates, group = torch.unique(self.rates, return_inverse=True)
        gaussian = GaussianEvent(self.noise_multiplier)
        events = []
        for k, rate in enumerate(rates.tolist()):
            event = gaussian if rate >= 1.0 else PoissonSampledEvent(rate, gaussian)
            nodes = None if len(rates) == 1 else (group == k).nonzero().flatten()
            events.append((event, nodes))
        return events

    def batch(self, round: int, step: int, nodes: torch.Tensor) -> Batch:
        c = self.context
        padded, sizes = c.node_indices, c.node_sizes
        if self.sampling == "poisson":
            return poisson_batches(padded, sizes, self.rates, c.streams, round, step, nodes)
        drawn = shuffle_batches(padded, sizes, c.batch_size, c.streams, round, step, nodes)
        return Batch(drawn.indices, None if drawn.weights is None else (drawn.weights > 0).float())

    def privatize(
        self, grads: torch.Tensor, round: int, step: int, nodes: torch.Tensor
    ) -> torch.Tensor:
        """Add N(0, sigma^2 C^2) to each node's clipped sum, from the node's own stream,
        and divide by its expected batch size."""
        noise = self.context.streams.normal("dp-sgd", round, step, nodes.tolist(), grads.shape[1])
        grads.add_(noise, alpha=self.noise_multiplier * self.clip_norm)
        return grads.div_(self.expected_batch[nodes].unsqueeze(1))

    def account(self, round: int, step: int) -> None:
        for event, nodes in self.events:
            self.context.emit_event(event, nodes)

    def describe(self) -> dict:
        out = {
            "name": self.name,
            "noise_multiplier": self.noise_multiplier,
            "max_grad_norm": self.clip_norm,
            "sampling": self.sampling,
            "sample_rate": self.sample_rate
            if self.sample_rate is not None
            else "batch_size / node size",
        }
        if self.sampling == "shuffle":
            out["epsilon_note"] = SHUFFLE_NOTE
        return out


GRADIENT_MECHANISMS.rename(
    "dpsgd", "dp-sgd", "differentially private SGD; 'd-psgd' is the decentralized protocol"
)
