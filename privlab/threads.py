"""How many CPU threads torch uses: ``--threads`` > ``PRIVLAB_THREADS`` > an automatic choice.

privlab's workloads are many small tensor operations, each an OpenMP parallel region.
When a core is taken by another process, every region waits for a descheduled worker,
and with OpenMP's default wait policy the waiting threads spin, taking the CPU the
worker needs. ``benchmarks/bench_threads.py`` (``privlab run default``, 2 cores, median
``wall_time_s``) measured:

==================  =======  =================  ================
setting             idle     torch job running  one busy loop
==================  =======  =================  ================
1 thread            0.34 s   0.52 s             0.79 s
2 threads           6.2 s    1.6 s              10.2 s
2, PASSIVE wait     0.43 s   0.67 s             0.76 s
==================  =======  =================  ================

("idle" had other users' short jobs, as a shared machine has; a run with 2 threads on
a moment of a truly idle machine took 0.29 s.) So two threads gain nothing here even
when idle, and cost up to 30x under load; a passive wait policy bounds that cost to
about 1.3x. Hence the automatic choice: one thread per core that neither the recent
load nor the tasks runnable now occupy, rounded down, at most ``MAX_AUTO_THREADS``:
on a 2-core machine that is 1 unless the machine is completely idle. The CLI calls
``prepare_environment()`` before importing torch, so extra threads wait passively.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from privlab.errors import check, is_integer

ENV_VAR = "PRIVLAB_THREADS"
MAX_AUTO_THREADS = 4
_VALID = "an integer >= 1 or auto"

_chosen_by: str | None = None  # how the last configure_threads chose, for thread_report


def prepare_environment() -> None:
    """Make idle OpenMP threads sleep instead of spin (``OMP_WAIT_POLICY=PASSIVE``),
    unless the user set a policy. Acts only if called before ``import torch``."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


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
    """Cores left free by ``load``, rounded down, between 1 and ``MAX_AUTO_THREADS``."""
    return max(1, min(MAX_AUTO_THREADS, math.floor(cores - load)))


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
