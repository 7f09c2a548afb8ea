"""Where a run computes: the config's ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:K``).

``cpu`` is the default. ``auto`` takes the first CUDA GPU when torch sees one and the CPU
otherwise; ``cuda`` asks for a GPU and is refused, with one line, when there is none.

What runs on the device: the stacked node parameters ``[n, D]``, the data, the batches,
the gradients, every protocol's messages, noise and masks, and the sparse gossip
products. What stays on the CPU: the random number generation of the per-node streams
(``privlab.rng``; the numbers are drawn there and copied once per draw, so one seed gives
the same numbers on every device, and a run on a GPU matches the CPU run up to
floating-point reassociation), the plans' construction, the ledger and the observers'
logs. Design decision: reproducibility across devices outweighs the cost of the copy.

What can still differ on a GPU, beyond reassociation: convolutions use TF32 on Ampere and
later GPUs unless ``torch.backends.cudnn.allow_tf32 = False``, and ``torch.topk`` breaks
ties in its own way (TopK sparsification of equal changes; the random sparsifiers use
exact integer keys and agree).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from privlab.errors import PrivlabError

if TYPE_CHECKING:  # torch loads on first use: the config parses before torch is imported
    import torch

CHOICES = "'auto', 'cpu', 'cuda' or 'cuda:K' (K a GPU index)"


def resolve_device(spec: str | torch.device) -> torch.device:
    """The ``torch.device`` that ``spec`` names on this machine (``PrivlabError`` when
    the form is not one of ``CHOICES`` or the GPU is not there)."""
    import torch

    spec = str(spec)
    try:
        check_device_name(spec)
    except ValueError as error:
        raise PrivlabError(str(error)) from None
    if spec == "cpu":
        return torch.device("cpu")
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if spec == "auto":
        return torch.device("cuda", 0) if visible else torch.device("cpu")
    if visible == 0:
        raise PrivlabError(
            f"device is {spec!r} but torch sees no CUDA GPU here (torch "
            f"{torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); "
            "use device: cpu or auto"
        )
    index = int(spec.partition(":")[2] or 0)
    if index >= visible:
        raise PrivlabError(
            f"device must name one of the {visible} visible GPUs (cuda:0 to "
            f"cuda:{visible - 1}), got {spec!r}"
        )
    return torch.device("cuda", index)


def check_device_name(spec: str) -> str:
    """``spec`` when it is one of the accepted forms (whether this machine has the GPU is
    checked when the run is built, so a config written for a GPU machine parses here)."""
    if spec in ("auto", "cpu", "cuda"):
        return spec
    prefix, _, index = spec.partition(":")
    if prefix == "cuda" and index.isdigit() and str(int(index)) == index:
        return spec
    raise ValueError(f"device must be {CHOICES}, got {spec!r}")


class MovedOnce:
    """``on_device(value, device)``, remembered for the last value: a static topology's
    plan, the same object every round, moves once per run instead of once per round."""

    def __init__(self, device: torch.device):
        self.device = device
        self._last: tuple[Any, Any] | None = None

    def __call__(self, value: Any) -> Any:
        if self._last is None or self._last[0] is not value:
            self._last = (value, on_device(value, self.device))
        return self._last[1]


def on_device(value: Any, device: torch.device) -> Any:
    """``value`` with its tensors on ``device``: a tensor or any object with a
    ``to(device)`` method (``CommPlan``) moved by it; a dataclass (a protocol's own plan
    type) rebuilt with each field moved, recursively; a tuple or list element by element;
    anything else as it is. What is already there comes back unchanged (same object)."""
    to = getattr(value, "to", None)
    if callable(to) and not isinstance(value, type):
        return to(device)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = [f.name for f in dataclasses.fields(value) if f.init]
        moved = {name: on_device(getattr(value, name), device) for name in fields}
        if all(moved[name] is getattr(value, name) for name in fields):
            return value
        return dataclasses.replace(value, **moved)
    if isinstance(value, (tuple, list)):
        items = [on_device(item, device) for item in value]
        if all(a is b for a, b in zip(items, value)):
            return value
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    return value
