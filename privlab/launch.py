"""Start an experiment on the distributed engine: P local processes, or under torchrun.

``run_processes(config, procs, out)`` spawns P processes on this machine (gloo over
localhost), each one rank of ``torch.distributed``; rank 0 writes the run folder. Under
``torchrun`` (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` set),
``run_rank`` joins the process group torchrun describes, on one machine or several.

A rank that dies stops the others: their collectives fail within the timeout
(``PeerFailure``), rank 0 keeps the rounds evaluated so far in the run folder, and the
launcher reports the rank that failed first.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from datetime import timedelta
from multiprocessing.connection import wait
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from privlab.config import ExperimentConfig, parse_config
from privlab.errors import PrivlabError, check

TIMEOUT_S = 60.0
"""Seconds a collective waits for a peer before the run fails (``--timeout``)."""
SAVE_S = 30.0
"""Seconds, beyond the timeout, that the other ranks get to save and exit once one rank
has failed, before the launcher ends those still running."""
AFTER_WRITER_S = 5.0
"""Seconds the other ranks get to report their own errors once rank 0 (the writer) has
ended after a failure."""


class RankFailed(PrivlabError):
    """A process of a distributed run failed; the message names its rank."""


def distributed_config(config: ExperimentConfig) -> ExperimentConfig:
    """``config`` on the distributed engine."""
    return parse_config({**config.to_dict(), "engine": "distributed"})


def backend() -> str:
    """gloo for CPU tensors, and NCCL for CUDA tensors where torch has both a GPU and NCCL
    (one process group: each collective takes the backend of its tensors' device)."""
    if torch.cuda.is_available() and dist.is_nccl_available():
        # a dead peer then raises in the collective (PeerFailure), not in NCCL's watchdog
        os.environ.setdefault("TORCH_NCCL_BLOCKING_WAIT", "1")
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def join(timeout: float = TIMEOUT_S, init_method: str = "env://", rank=None, world=None) -> None:
    """Join the process group (torchrun's environment by default) on ``backend()``."""
    dist.init_process_group(
        backend(),
        init_method=init_method,
        rank=int(os.environ["RANK"]) if rank is None else rank,
        world_size=int(os.environ["WORLD_SIZE"]) if world is None else world,
        timeout=timedelta(seconds=timeout),
    )
    share = max(1, (os.cpu_count() or 1) // dist.get_world_size())
    limit = os.environ.get("OMP_NUM_THREADS", "")  # the user's cap, when set, holds
    torch.set_num_threads(min(share, int(limit)) if limit.isdigit() and int(limit) else share)


def run_rank(config: ExperimentConfig, out: str | Path | None, *, progress: bool = False):
    """This process's rank of ``config`` (the process group must exist); rank 0 writes
    the run into ``out`` and returns its ``Results``, the other ranks None. Raises
    ``PeerFailure`` after saving what finished when another rank failed."""
    from privlab.distributed import PeerFailure
    from privlab.experiment import build, train

    rank = dist.get_rank()
    experiment = build(distributed_config(config), run_dir=out if rank == 0 else None)
    results = train(experiment, progress=progress and rank == 0)
    if "failed" not in results.summary:
        results.summary["distributed"] = experiment.engine.report()
    if rank == 0 and out is not None:
        results.save(out)
    if "failed" in results.summary:
        raise PeerFailure(results.summary["failed"])
    return results if rank == 0 else None


def _worker(rank, world, port, jobs, progress, timeout, errors):
    try:
        join(timeout, f"tcp://127.0.0.1:{port}", rank, world)
        for config, out in jobs:
            run_rank(parse_config(config), out, progress=progress)
        dist.destroy_process_group()
    except BaseException as error:  # reported by the launcher, with the rank
        errors.put((rank, f"{type(error).__name__}: {error}"))
        raise SystemExit(1) from None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(
    config: ExperimentConfig | Sequence[tuple[ExperimentConfig, str | Path]],
    procs: int,
    out: str | Path | None = None,
    *,
    progress: bool = False,
    timeout: float = TIMEOUT_S,
) -> None:
    """Run ``config`` into ``out`` (or each ``(config, out)`` of a list, one after the
    other in the same processes) on ``procs`` local processes. Raises ``RankFailed``
    naming the rank that failed first."""
    check(isinstance(procs, int) and procs >= 1, "--procs", "an integer >= 1", procs)
    check(timeout > 0, "--timeout", "> 0 seconds", timeout)
    jobs = [(config, out)] if isinstance(config, ExperimentConfig) else list(config)
    jobs = [(c.to_dict(), None if o is None else str(o)) for c, o in jobs]
    context = mp.get_context("spawn")
    errors = context.SimpleQueue()
    port = _free_port()
    processes = [
        context.Process(target=_worker, args=(r, procs, port, jobs, progress, timeout, errors))
        for r in range(procs)
    ]
    for process in processes:
        process.start()
    silent = _join(processes, grace=timeout + SAVE_S)
    failed = [(r, p.exitcode) for r, p in enumerate(processes) if p.exitcode != 0]
    if failed:
        reports = {}
        while not errors.empty():
            rank, message = errors.get()
            reports[rank] = message
        raise RankFailed(_first_failure(failed, reports, silent, timeout))


def _join(processes: list, grace: float) -> list[int]:
    """Wait for every process. Once one has failed, the others have ``grace`` seconds to
    end (a peer that still answers fails within the collectives' timeout, and rank 0
    saves the run), or ``AFTER_WRITER_S`` once rank 0 has ended (nobody else writes);
    those still
    running then are terminated, so a rank that hangs cannot hold the launcher. Returns
    the ranks terminated."""
    running = dict(enumerate(processes))
    deadline = None
    while running:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            wait([p.sentinel for p in running.values()], timeout=left)
        except KeyboardInterrupt:  # the ranks got it too: they stop after the round
            continue
        for rank, process in list(running.items()):
            if not process.is_alive():
                process.join()
                del running[rank]
                if process.exitcode != 0 and deadline is None:
                    deadline = time.monotonic() + grace
        if deadline is not None and 0 not in running:  # nobody left to write the run
            deadline = min(deadline, time.monotonic() + AFTER_WRITER_S)
        if running and deadline is not None and time.monotonic() >= deadline:
            for process in running.values():
                process.terminate()
                process.join(AFTER_WRITER_S)
                if process.is_alive():
                    process.kill()
                    process.join()
            return sorted(running)
    return []


def _first_failure(
    failed: list[tuple[int, int]], reports: dict[int, str], silent: list[int], timeout: float
) -> str:
    """A rank that died without a word (killed), else the first whose error is its own
    (not a peer's failure), else one that stopped answering (ended by the launcher)."""
    for rank, code in failed:
        if rank not in reports and rank not in silent:
            return f"rank {rank} died (exit code {code}); the other ranks stopped"
    own = {r: m for r, m in reports.items() if not m.startswith("PeerFailure")}
    if own:
        return f"rank {min(own)} failed: {own[min(own)]}"
    if silent:
        return (
            f"rank {silent[0]} stopped answering (silent for over --timeout {timeout:g} s, "
            "then ended); the other ranks stopped"
        )
    return f"rank {min(reports)} failed: {reports[min(reports)]}"
