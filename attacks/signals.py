"""Model outputs that membership inference scores: logits of many models at once, and
the per-example signals derived from them (loss, true-class probability, LiRA's scaled
logit), each ``[m, N]`` for ``m`` models and ``N`` examples.

Signals are computed in float64: LiRA's scaled logit of a confidently classified example
needs the precision (Carlini et al. 2022 compute it the same way).
"""

from __future__ import annotations

import torch
from torch import nn

from privlab.errors import check
from privlab.models import activation_sizes
from privlab.state import ParamSpec
from privlab.training import stacked_gradient

BLOCK_BYTES = 64 * 2**20
"""Default bound on the widest activation tensor of one block of models x examples."""


@torch.no_grad()
def model_logits(
    model: nn.Module, params: torch.Tensor, x: torch.Tensor, *, block_bytes: int = BLOCK_BYTES
) -> torch.Tensor:
    """Logits ``[m, N, C]`` of the models ``params[m, D]`` (rows laid out by
    ``ParamSpec.of(model)``) on the shared inputs ``x[N, ...]``.

    Models and examples go in blocks whose widest activation tensor (``models x examples x
    widest layer`` float32 values) stays within ``block_bytes``, so memory beyond the output
    does not grow with ``m`` or ``N``. The forward pass is privlab's batched one
    (``privlab.training.stacked_gradient``): batched matrix products for MLPs, ``vmap`` of
    ``functional_call`` otherwise.
    """
    spec = ParamSpec.of(model)
    check(
        params.ndim == 2 and params.shape[1] == spec.dim,
        "params",
        f"a [m, {spec.dim}] tensor (one flat model per row)",
        tuple(params.shape),
    )
    check(block_bytes >= 1, "block_bytes", ">= 1", block_bytes)
    forward = stacked_gradient(model, spec).forward_shared
    params = params.float()
    per_pair = 4 * max(activation_sizes(model, x[:1]))
    samples = max(1, min(len(x), block_bytes // per_pair))
    models = max(1, block_bytes // (samples * per_pair))
    blocks = []
    for first in range(0, len(params), models):
        rows = params[first : first + models]
        blocks.append(torch.cat([forward(rows, chunk) for chunk in x.split(samples)], dim=1))
    return torch.cat(blocks)


def _labels(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``y`` ([N] shared by every model, or [m, N]) as an index tensor ``[m, N, 1]``."""
    check(logits.ndim == 3, "logits", "a [m, N, C] tensor", tuple(logits.shape))
    check(
        tuple(y.shape) in (tuple(logits.shape[1:2]), tuple(logits.shape[:2])),
        "y",
        f"labels of shape [{logits.shape[1]}] or [{logits.shape[0]}, {logits.shape[1]}]",
        tuple(y.shape),
    )
    return y.to(torch.int64).expand(logits.shape[:2]).unsqueeze(-1)


def per_example_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy ``-log softmax(z)_y`` of every model on every example ``[m, N]``
    (the signal of LOSS, Yeom et al. 2018, and of Attack-P, Ye et al. 2022)."""
    target = _labels(logits, y)
    z = logits.double()
    return (torch.logsumexp(z, dim=-1, keepdim=True) - z.gather(-1, target)).squeeze(-1)


def true_class_probability(
    logits: torch.Tensor, y: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """``softmax(z / T)_y`` of every model on every example ``[m, N]`` (RMIA's signal,
    Zarifzadeh, Liu & Shokri 2024)."""
    check(temperature > 0, "temperature", "> 0", temperature)
    target = _labels(logits, y)
    z = logits.double() / temperature
    return torch.softmax(z, dim=-1).gather(-1, target).squeeze(-1)


def scaled_logit(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """LiRA's logit-scaled confidence ``log(p_y / (1 - p_y))`` ``[m, N]`` (Carlini et al.
    2022, §IV), computed stably as ``z_y - logsumexp_{j != y} z_j``."""
    target = _labels(logits, y)
    z = logits.double()
    others = z.scatter(-1, target, float("-inf"))
    return (z.gather(-1, target) - torch.logsumexp(others, dim=-1, keepdim=True)).squeeze(-1)
