"""Two components with a planted privacy bug, each claiming a guarantee its code does not
deliver: `privlab audit` catches both (README "Auditing a protocol"; the audit tests)."""

from __future__ import annotations

from privlab.accounting import GaussianEvent
from privlab.mechanisms.dp_sgd import DPSGD
from privlab.mechanisms.gossip import DecentralizedSGD


class GossipClaimingNoise(DecentralizedSGD):
    """D-PSGD that says it adds N(0, sigma^2) to every message of sensitivity 1 (one
    Gaussian event per node and round) and adds nothing."""

    def __init__(self, noise_multiplier: float = 10.0):
        self.noise_multiplier = noise_multiplier

    def send(self, params, plan, round, exchange):
        self.context.emit_event(GaussianEvent(self.noise_multiplier))
        return super().send(params, plan, round, exchange)


class UnclippedDPSGD(DPSGD):
    """DP-SGD that forgets to clip: it asks the engine for the plain batch gradient (the
    sum over its Poisson batch), then adds the noise and claims the events of clipped
    DP-SGD."""

    def __init__(self, noise_multiplier: float = 1.0, max_grad_norm: float = 1.0):
        super().__init__(noise_multiplier, max_grad_norm)
        self.claimed_clip_norm = self.clip_norm
        self.clip_norm = None

    def privatize(self, grads, round, step, nodes):
        noise = self.context.streams.normal("dp-sgd", round, step, nodes.tolist(), grads.shape[1])
        grads.add_(noise, alpha=self.noise_multiplier * self.claimed_clip_norm)
        return grads.div_(self.expected_batch[nodes].unsqueeze(1))
