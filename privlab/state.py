"""Stacked node parameters: one flat ``[n, D]`` tensor and the spec that unflattens a row.

Mechanisms act on flat vectors (noise, chunks, masks are plain tensor ops) and gossip
is one sparse product, so the engine never stores per-node modules. ``ParamSpec``
turns a row (or a batch of rows) back into the model's named parameters for
``torch.func.functional_call``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from privlab.errors import PrivlabError


@dataclass(frozen=True)
class ParamSlot:
    """Where one named parameter lives inside the flat vector."""

    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def stop(self) -> int:
        return self.offset + self.numel


@dataclass(frozen=True)
class ParamSpec:
    """Layout of a model's trainable parameters in a flat vector of length ``dim``."""

    slots: tuple[ParamSlot, ...]

    @classmethod
    def of(cls, model: nn.Module) -> ParamSpec:
        """The layout of ``model``'s parameters, in ``named_parameters`` order.

        Models with buffers (BatchNorm running statistics) are refused: their in-place
        updates cannot be stacked over nodes, and DP training needs GroupNorm anyway.
        """
        buffers = [name for name, _ in model.named_buffers()]
        if buffers:
            raise PrivlabError(
                f"model has buffers {buffers}; use buffer-free layers (GroupNorm, not BatchNorm)"
            )
        slots, offset = [], 0
        for name, p in model.named_parameters():
            slot = ParamSlot(name, tuple(p.shape), offset)
            slots.append(slot)
            offset = slot.stop
        return cls(tuple(slots))

    @property
    def dim(self) -> int:
        return self.slots[-1].stop if self.slots else 0

    def flatten(self, model: nn.Module) -> torch.Tensor:
        """The model's parameters as one detached float32 vector ``[D]``."""
        params = dict(model.named_parameters())
        return torch.cat([params[s.name].detach().reshape(-1) for s in self.slots]).float()

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of ``flat[..., D]`` as named parameters ``[..., *shape]``."""
        lead = flat.shape[:-1]
        return {s.name: flat[..., s.offset : s.stop].view(*lead, *s.shape) for s in self.slots}

    def load(self, model: nn.Module, flat: torch.Tensor) -> None:
        """Copy the vector ``flat[D]`` into ``model``'s parameters in place."""
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in self.unflatten(flat).items():
                params[name].copy_(value)
