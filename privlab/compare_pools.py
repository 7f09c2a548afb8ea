"""Where the runs of a ``privlab compare`` sweep execute: in this process, in a pool of
spawned processes, or as tasks of a Ray cluster (``--backend ray``).

The pools take ``RunSpec``s (``submit``) and hand back each finished run with its
result (``next_done``); ``stop`` (on Ctrl-C) drops what has not started and collects
what was running.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from privlab.compare_run import base_record, execute, init_worker
from privlab.errors import PrivlabError
from privlab.sweep import RunSpec


class SerialPool:
    """Runs in this process, one at a time, with ``threads`` torch threads."""

    def __init__(self, root: Path, threads: int) -> None:
        self.root, self.threads = root, threads
        self.queue: deque[RunSpec] = deque()

    @property
    def busy(self) -> bool:
        return bool(self.queue)

    def submit(self, spec: RunSpec) -> None:
        self.queue.append(spec)

    def next_done(self) -> tuple[RunSpec, dict[str, Any]]:
        spec = self.queue.popleft()
        with _torch_threads(self.threads):
            return spec, execute(spec, self.root)

    def stop(self) -> list[tuple[RunSpec, dict[str, Any]]]:
        self.queue.clear()
        return []

    def close(self) -> None:
        self.queue.clear()


@contextmanager
def _torch_threads(threads: int):
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class ProcessPool:
    """``workers`` processes started with "spawn" (``compare_run.init_worker``: each
    with ``threads`` torch threads, Ctrl-C left to the runs). A worker that dies fails
    its run with an error that is not written, so the run is tried again next time."""

    def __init__(self, root: Path, workers: int, threads: int) -> None:
        self.root = root
        self.executor = ProcessPoolExecutor(
            workers, mp_context=get_context("spawn"), initializer=init_worker, initargs=(threads,)
        )
        self.futures: dict[Future, RunSpec] = {}

    @property
    def busy(self) -> bool:
        return bool(self.futures)

    def submit(self, spec: RunSpec) -> None:
        try:
            future = self.executor.submit(execute, spec, self.root)
        except BrokenProcessPool as error:
            future = Future()
            future.set_exception(error)
        self.futures[future] = spec

    def next_done(self) -> tuple[RunSpec, dict[str, Any]]:
        done, _ = wait(self.futures, return_when=FIRST_COMPLETED)
        future = next(iter(done))
        spec = self.futures.pop(future)
        return spec, _outcome(future, spec)

    def stop(self) -> list[tuple[RunSpec, dict[str, Any]]]:
        """Cancel what has not started; collect what was running (a second Ctrl-C gives
        up waiting: those runs still write their results for the next invocation)."""
        running = [(f, s) for f, s in self.futures.items() if not f.cancel()]
        self.futures.clear()
        out = []
        try:
            for future, spec in running:
                out.append((spec, _outcome(future, spec)))
        except KeyboardInterrupt:
            pass
        return out

    def close(self) -> None:
        self.executor.shutdown(wait=not self.futures, cancel_futures=True)


def _outcome(future: Future, spec: RunSpec) -> dict[str, Any]:
    """The record a worker returned, or a failure record when the worker itself died
    (not written: the run is tried again next time)."""
    error = future.exception()
    if error is None:
        return future.result()
    if isinstance(error, KeyboardInterrupt):
        return {**base_record(spec), "status": "interrupted"}
    message = " ".join(str(error).split()) or type(error).__name__
    return {**base_record(spec), "status": "failed", "error": f"worker failed: {message}"}


class RayPool:
    """Runs as tasks of a Ray cluster (``ray.init(address)``: the cluster at ``address``
    or ``RAY_ADDRESS``, else a local instance started here and stopped at the end), one
    CPU and ``threads`` torch threads each. The workers write the run folders and their
    ``result.json``, so on a cluster of several machines ``--out`` must be a folder they
    all see (a shared file system); the records also come back to this process, which
    writes the summary."""

    def __init__(self, root: Path, threads: int, address: str | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise PrivlabError("--backend ray needs Ray: pip install 'privlab[ray]'") from None
        self.ray, self.root = ray, root
        self.started = not ray.is_initialized()
        if self.started:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        self.task = ray.remote(num_cpus=1, max_retries=0)(_ray_execute)
        self.refs: dict[Any, RunSpec] = {}
        self.threads = threads

    @property
    def busy(self) -> bool:
        return bool(self.refs)

    def submit(self, spec: RunSpec) -> None:
        self.refs[self.task.remote(spec, str(self.root), self.threads)] = spec

    def next_done(self) -> tuple[RunSpec, dict[str, Any]]:
        (ref,), _ = self.ray.wait(list(self.refs), num_returns=1)
        spec = self.refs.pop(ref)
        try:
            return spec, self.ray.get(ref)
        except Exception as error:  # the task or its worker died
            message = " ".join(str(error).split())[:300] or type(error).__name__
            failure = {"status": "failed", "error": f"worker failed: {message}"}
            return spec, {**base_record(spec), **failure}

    def stop(self) -> list[tuple[RunSpec, dict[str, Any]]]:
        """Cancel every task; runs that finish anyway write their own folders, and are
        found again by the next invocation only through ``result.json``, so they rerun."""
        for ref in self.refs:
            self.ray.cancel(ref)
        self.refs.clear()
        return []

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


def _ray_execute(spec: RunSpec, root: str, threads: int) -> dict[str, Any]:
    """One run in a Ray worker: the sweep worker's set-up, then ``execute``."""
    init_worker(threads)
    return execute(spec, root)
