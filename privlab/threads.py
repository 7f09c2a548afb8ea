"""How many CPU threads torch uses: ``--threads`` > ``PRIVLAB_THREADS`` > an automatic choice.

privlab's workloads are many small tensor operations, each an OpenMP parallel region.
When another process takes a core, every region waits for a descheduled worker, and
under OpenMP's default wait policy the waiting threads spin on the CPU that worker
needs. ``benchmarks/bench_threads.py`` measured ``privlab run default`` (median
``wall_time_s``, 3 runs, 2 cores; the "idle" machine still ran other users' jobs, load
1.0 to 3.2, as a shared machine does):

===================  ==============  ==============  =============  =================
setting              "idle"          torch job       one busy loop  "idle", 256 nodes
===================  ==============  ==============  =============  =================
1 thread             0.29 - 0.33 s   0.82 s          0.27 s         2.3 s
2 threads            0.28 - 14.9 s   26.2 s          1.75 s         10.4 s
2, PASSIVE wait      0.33 - 0.41 s   0.89 s          0.43 s         2.8 s
auto (1, PASSIVE)    0.24 s          0.75 s          0.36 s         2.3 s
===================  ==============  ==============  =============  =================

Two threads never beat one here beyond noise (best runs 0.26 s against 0.21 s); at a
quiet moment (README, Speed) they made one vectorized round at most 1.5x faster. They
cost up to 50x whenever anything else ran; a passive wait policy bounds that cost to
1.1 - 1.6x. Hence the automatic choice leaves one core to the rest of the system and
takes the cores neither the recent load nor the tasks runnable now occupy, at most
``MAX_AUTO_THREADS`` (a bound, not a measurement: only 2 cores were available), so 1 on
a 2-core machine. The ``privlab`` command calls ``prepare_environment()`` before
anything imports torch, so any extra threads wait passively.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

from privlab.errors import check, is_integer

ENV_VAR = "PRIVLAB_THREADS"
MAX_AUTO_THREADS = 4
_VALID = "an integer >= 1 or auto"

_chosen_by: str | None = None  # how the last configure_threads chose, for thread_report


def prepare_environment() -> bool:
    """Make idle OpenMP threads sleep instead of spin (``OMP_WAIT_POLICY=PASSIVE``) unless
    the user chose a policy. OpenMP reads it once, as torch loads: after ``import torch``
    this does nothing. Returns whether the policy is now PASSIVE."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"


def parse_threads(value: int | str, field: str) -> int | None:
    """``value`` as a thread count, or ``None`` for ``auto``; ``field`` names it in errors."""
    if isinstance(value, str):
        text = value.strip()
        if text.lower() == "auto":
            return None
        check(text.isdecimal() and int(text) >= 1, field, _VALID, value)
        return int(text)
    check(is_integer(value) and value >= 1, field, _VALID, value)
    return int(value)


def usable_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _runnable_others() -> int:
    """Tasks runnable at this instant, other than this one (Linux ``/proc/loadavg``; else 0)."""
    try:
        return max(0, int(Path("/proc/loadavg").read_text().split()[3].split("/")[0]) - 1)
    except (OSError, IndexError, ValueError):
        return 0


def machine_load() -> float:
    """CPUs other work occupies: the 1-minute load average or the runnable tasks now,
    whichever is larger (the average lags a job that just started)."""
    try:
        average = os.getloadavg()[0]
    except OSError:  # unavailable
        average = 0.0
    return max(average, float(_runnable_others()))


def auto_threads(load: float, cores: int) -> int:
    """Cores neither ``load`` nor the rest of the system (one core) occupy, rounded down,
    between 1 and ``MAX_AUTO_THREADS``."""
    return max(1, min(MAX_AUTO_THREADS, math.floor(cores - 1 - load)))


def _resolve(requested: int | str | None) -> tuple[int, str]:
    if requested is not None:
        value, source = requested, "--threads"
    elif os.environ.get(ENV_VAR, "").strip():
        value, source = os.environ[ENV_VAR], ENV_VAR
    else:
        value, source = "auto", ""
    threads = parse_threads(value, source)
    if threads is not None:
        return threads, source
    load, cores = machine_load(), usable_cpus()
    return auto_threads(load, cores), f"auto (load {load:.2f} on {cores} cores)"


def resolve_threads(requested: int | str | None = None) -> int:
    """The thread count to use: ``requested`` (an integer >= 1 or ``"auto"``), else the
    ``PRIVLAB_THREADS`` environment variable, else the automatic choice."""
    return _resolve(requested)[0]


def configure_threads(requested: int | str | None = None) -> int:
    """Resolve the thread count, apply it to torch, and return it."""
    import torch

    global _chosen_by
    threads, _chosen_by = _resolve(requested)
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # settable once, before any inter-op work
        pass
    return threads


def thread_report() -> dict:
    """For summary.json: torch's thread count, how it was chosen, the OpenMP wait policy."""
    import torch

    return {
        "threads": torch.get_num_threads(),
        "chosen_by": _chosen_by or "torch default",
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
    }
