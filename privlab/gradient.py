"""The hook between a node's gradient and its optimizer step: ``GradientMechanism``.

A gradient mechanism may choose each node's batch (DP-SGD's Poisson sampling), asks the
engine for per-sample clipped gradient sums by setting ``clip_norm``, transforms the
gradients before the optimizer step (noise) and emits the privacy events of each step
through the round context. Both engines call it the same way, on blocks of nodes whose
random draws come from the nodes' own streams, so they compute the same numbers.
"""

from __future__ import annotations

import abc

import torch

from privlab.context import RoundContext
from privlab.registry import Registry
from privlab.sampling import Batch


class GradientMechanism(abc.ABC):
    """Transforms every node's gradient between the backward pass and the optimizer step.

    With ``clip_norm`` None, ``privatize`` receives each node's batch gradient (the loss
    weighted as ``Batch`` says). With ``clip_norm = C``, it receives each node's sum of
    per-sample gradients, each clipped to L2 norm at most C and weighted by the batch's
    0/1 weights (``sum_b w_b g_b min(1, C / (||g_b|| + 1e-6))``, Opacus's clipping).
    """

    name: str = "gradient mechanism"
    clip_norm: float | None = None

    def setup(self, context: RoundContext) -> None:
        """Called once before the first round; keeps the context."""
        self.context = context

    def batch(self, round: int, step: int, nodes: torch.Tensor) -> Batch | None:
        """The batches of ``nodes`` at (round, step), or None for the engine's own sampling
        (fixed-size batches drawn without replacement)."""
        return None

    @abc.abstractmethod
    def privatize(
        self, grads: torch.Tensor, round: int, step: int, nodes: torch.Tensor
    ) -> torch.Tensor:
        """The gradients ``[k, D]`` the optimizer uses, from ``grads[k, D]`` of ``nodes[k]``.

        May work in place. Random draws come from each node's own stream, so calling it on
        any block of nodes gives each node the same result.
        """

    def account(self, round: int, step: int) -> None:  # noqa: B027 (optional hook)
        """Emit the privacy events of step (round, step) through ``self.context``."""

    def describe(self) -> dict:
        """JSON-able parameters of this mechanism."""
        return {"name": self.name}


GRADIENT_MECHANISMS: Registry[type[GradientMechanism]] = Registry(
    "gradient mechanism", base=GradientMechanism
)
