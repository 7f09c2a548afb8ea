"""What the engine benchmarks share to time a GPU beside the CPU: which GPUs to time
(``--device``), a clock that waits for the GPU's queued work, and the GPUs' names.

torch is imported on first use, so that a benchmark can set the threads' environment
(``privlab.threads.prepare_environment``) before torch loads.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def extra_devices(specs: list[str]) -> list[str]:
    """The devices to time besides the CPU, in order, each GPU once (``cuda`` and
    ``cuda:0`` are one): ``auto`` is ``cuda`` when torch sees a GPU and nothing otherwise,
    ``cpu`` is nothing. ``PrivlabError`` (one line) for a form privlab does not accept or
    a GPU that is not there."""
    from privlab.devices import resolve_device

    extras: dict[torch.device, str] = {}
    for spec in specs:
        device = resolve_device(spec)  # raises for a bad form or a GPU that is not there
        if device.type != "cpu":
            extras.setdefault(device, "cuda" if spec == "auto" else spec)
    return list(extras.values())


def clock(device: torch.device | None) -> float:
    """``time.perf_counter()`` once the work queued on ``device`` (a GPU) has finished;
    ``None`` is the CPU (Opacus)."""
    if device is not None and device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)
    return time.perf_counter()


def gpu_names(devices: list[str]) -> dict[str, str]:
    """``{device: GPU name}`` for the GPUs among ``devices``."""
    if not devices:
        return {}
    import torch

    from privlab.devices import resolve_device

    return {d: torch.cuda.get_device_name(resolve_device(d)) for d in devices}
