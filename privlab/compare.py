"""``privlab compare``: privacy mechanisms side by side, over parameters and seeds.

``compare(sweep, out)`` expands a sweep (``privlab.sweep``: its YAML is documented
there) into runs, executes them in parallel local processes and writes into ``out``:

* ``runs/<run_id>/``: each evaluation run's folder (``privlab run``'s files plus
  ``result.json``), ``tuning/<run_id>/``: the tuning runs; ``run_id`` is a readable slug
  of mechanism, parameters and seed (``dp-sgd--noise_multiplier=0.5--seed0``);
* ``summary.csv``: one row per evaluation run, first the columns ``SUMMARY_COLUMNS``
  (``epsilon``: the largest per-node DP epsilon a mechanism claims, ``network_epsilon``:
  the curious party's worst network epsilon where it is accounted, ``bytes_sent``:
  total bytes on the wire, ``wall_time``: training seconds), then ``lr``, the tuned
  values, the attack's method and target, its AUC interval, ``run_id``, ``status`` and
  ``error`` (a failed run is a row with its error, and the sweep goes on);
* ``accuracy_vs_auc.png``, ``accuracy_vs_epsilon.png``, ``accuracy_vs_bytes.png``
  (``privlab.compare_plots``) and ``compare.json`` (the resolved sweep, the tuning
  choices, counts).

Runs go to a ``ProcessPoolExecutor`` ("spawn") of ``workers`` processes, each with its
own torch thread count so that the workers share the cores; ``workers=1`` runs in this
process (in a script, call ``compare`` with ``workers > 1`` under ``if __name__ ==
"__main__":``, since "spawn" imports the main module again). Each point's tuning runs
come first, then its evaluation runs with the chosen values (``privlab.sweep``).

The sweep is resumable: a run whose ``result.json`` holds the same config (and attack)
is not run again, so a second invocation only runs what is missing (a failed run
included: delete its folder to run it again). Ctrl-C stops: runs in flight stop after
their round and are dropped, every finished run is kept and the summary is written.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from privlab.threads import prepare_environment

prepare_environment()  # before anything loads torch

import pandas as pd  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from privlab.compare_pools import ProcessPool, RayPool, SerialPool  # noqa: E402
from privlab.compare_run import RESULT, base_record, read_result  # noqa: E402
from privlab.errors import check, is_integer  # noqa: E402
from privlab.jsonio import dumps  # noqa: E402
from privlab.sweep import Point, RunSpec, Sweep, load_sweep  # noqa: E402
from privlab.threads import (  # noqa: E402
    ENV_VAR,
    MAX_AUTO_THREADS,
    machine_load,
    parse_threads,
    usable_cpus,
)

SUMMARY_COLUMNS = [
    "mechanism",
    "parameters",
    "seed",
    "test_accuracy",
    "mia_auc",
    "mia_tpr_at_1pct_fpr",
    "epsilon",
    "network_epsilon",
    "bytes_sent",
    "wall_time",
]
EXTRA_COLUMNS = [
    "lr",
    "tuned",
    "attack_method",
    "attack_target",
    "mia_auc_low",
    "mia_auc_high",
    "attack_time",
    "completed_rounds",
    "run_id",
    "status",
    "error",
]


BACKENDS = ("local", "ray")


def compare(
    sweep: str | Path | Mapping[str, Any] | Sweep,
    out: str | Path,
    workers: int = 1,
    progress: bool | str = True,
    *,
    overrides: Sequence[str] = (),
    threads: int | str | None = None,
    backend: str = "local",
    address: str | None = None,
) -> pd.DataFrame:
    """Run the sweep (a YAML path, a mapping or a ``Sweep``) into ``out`` and return
    ``summary.csv`` as a DataFrame.

    ``overrides`` (``key=value``) apply to the base config of every run (e.g.
    ``["rounds=2"]``); ``threads`` is the torch threads per worker (default:
    ``PRIVLAB_THREADS``, else the free cores less one, shared among the workers);
    ``progress`` shows a bar on a terminal or in a notebook, ``"always"`` everywhere.
    The frame's ``attrs`` hold ``executed`` (the run ids run now, tuning included),
    ``kept`` (how many runs have a result, tuning included) and ``interrupted`` (Ctrl-C
    stopped the sweep; the summary covers the evaluation runs that finished).
    ``backend="ray"`` runs the sweep as tasks of the Ray cluster at ``address`` (or
    ``RAY_ADDRESS``; else a local instance), ``workers`` then being ignored.
    """
    check(backend in BACKENDS, "--backend", "one of " + ", ".join(BACKENDS), backend)
    check(is_integer(workers) and workers >= 1, "--workers", "an integer >= 1", workers)
    if not isinstance(sweep, Sweep):
        sweep = load_sweep(sweep, overrides)
    root = Path(out)
    check(not root.exists() or root.is_dir(), "--out", "a folder", str(root))
    root.mkdir(parents=True, exist_ok=True)
    per_worker = worker_threads(threads, workers)
    started = time.perf_counter()
    if backend == "ray":
        pool = RayPool(root, per_worker, address)
    elif workers == 1:
        pool = SerialPool(root, per_worker)
    else:
        pool = ProcessPool(root, workers, per_worker)
    scheduler = _Scheduler(sweep, root, pool)
    show = progress == "always" or (bool(progress) and _interactive())
    with tqdm(
        total=scheduler.total, desc=f"compare {sweep.name}", unit="run", disable=not show
    ) as bar:
        try:
            interrupted = scheduler.run(bar)
        finally:
            pool.close()
    frame = summary_frame(scheduler.evaluation_records())
    _write_csv(frame, root / "summary.csv")
    from privlab.compare_plots import write_plots

    write_plots(frame, root)
    report = scheduler.report(interrupted, time.perf_counter() - started, workers, per_worker)
    (root / "compare.json").write_text(dumps(report, indent=2) + "\n")
    frame.attrs.update(
        executed=list(scheduler.executed), kept=len(scheduler.records), interrupted=interrupted
    )
    return frame


def worker_threads(requested: int | str | None, workers: int) -> int:
    """Torch threads of each worker: ``requested`` (an integer or ``auto``), else
    ``PRIVLAB_THREADS``, else the cores that neither the machine's load nor one core
    kept for the system occupy, divided among ``workers`` (at least 1, at most
    ``MAX_AUTO_THREADS``)."""
    if requested is None and os.environ.get(ENV_VAR, "").strip():
        requested = os.environ[ENV_VAR]
    chosen = None if requested is None else parse_threads(requested, "--threads")
    if chosen is not None:
        return chosen
    spare = usable_cpus() - 1 - machine_load()
    return max(1, min(MAX_AUTO_THREADS, math.floor(spare / workers)))


def summary_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """``summary.csv`` as a DataFrame: ``SUMMARY_COLUMNS``, then ``EXTRA_COLUMNS``."""
    columns = SUMMARY_COLUMNS + EXTRA_COLUMNS
    rows = [{c: _cell(record.get(c)) for c in columns} for record in records]
    frame = pd.DataFrame(rows, columns=columns)
    numeric = SUMMARY_COLUMNS[3:] + ["lr", "mia_auc_low", "mia_auc_high", "attack_time"]
    for column in numeric:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    return frame


def _cell(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dumps(value, sort_keys=True)
    return value


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    frame.to_csv(temporary, index=False)
    os.replace(temporary, path)


def _interactive() -> bool:
    return sys.stderr.isatty() or "ipykernel" in sys.modules


# ------------------------------------------------------------------------------ schedule


class _Scheduler:
    """Submits each point's tuning runs, then, once they are done, its evaluation runs
    with the chosen values; finished results on disk are reused."""

    def __init__(self, sweep: Sweep, root: Path, pool: SerialPool | ProcessPool | RayPool) -> None:
        self.sweep, self.root, self.pool = sweep, root, pool
        self.points = sweep.points()
        self.tuning = [sweep.tuning_runs(p) for p in self.points]
        self.evaluations: list[list[RunSpec] | None] = [None] * len(self.points)
        self.chosen: list[dict[str, Any] | None] = [None] * len(self.points)
        self.records: dict[str, dict[str, Any]] = {}
        self.executed: list[str] = []
        self.total = sum(map(len, self.tuning)) + len(self.points) * len(sweep.seeds)
        self.bar = None

    def run(self, bar) -> bool:
        """Run everything; True when Ctrl-C stopped it."""
        self.bar = bar
        try:
            for specs in self.tuning:
                for spec in specs:
                    self._submit(spec)
            self._advance()
            while self.pool.busy:
                self._store(*self.pool.next_done())
                self._advance()
        except KeyboardInterrupt:
            for spec, record in self.pool.stop():
                if record["status"] != "interrupted":
                    self.records[spec.run_id] = record
            return True
        return False

    def _submit(self, spec: RunSpec) -> None:
        found = read_result(self.root / spec.folder / spec.run_id / RESULT)
        attack = None if spec.attack is None else spec.attack.to_dict()
        if found and found.get("config") == spec.config and found.get("attack") == attack:
            self.records[spec.run_id] = found
            self.bar.update()
        else:
            self.pool.submit(spec)

    def _store(self, spec: RunSpec, record: dict[str, Any]) -> None:
        if record["status"] == "interrupted":
            raise KeyboardInterrupt
        self.records[spec.run_id] = record
        self.executed.append(spec.run_id)
        self.bar.update()
        failed = sum(r["status"] == "failed" for r in self.records.values())
        if failed:
            self.bar.set_postfix(failed=failed)

    def _advance(self) -> None:
        """Start the evaluation runs of every point whose tuning runs are all done."""
        for i, point in enumerate(self.points):
            if self.evaluations[i] is not None:
                continue
            tuning = [self.records.get(s.run_id) for s in self.tuning[i]]
            if any(r is None for r in tuning):
                continue
            self.chosen[i] = choose(tuning) if tuning else {}
            if self.chosen[i] is None:
                self._fail_untuned(i, point)
                continue
            self.evaluations[i] = self.sweep.evaluation_runs(point, self.chosen[i])
            for spec in self.evaluations[i]:
                self._submit(spec)

    def _fail_untuned(self, i: int, point: Point) -> None:
        """Every tuning run of the point failed: its evaluation runs fail, unrun."""
        first = self.tuning[i][0].tuned
        self.evaluations[i] = self.sweep.evaluation_runs(point, first)
        for spec in self.evaluations[i]:
            error = "every tuning run failed (see compare.json); nothing to evaluate"
            self.records[spec.run_id] = {**base_record(spec), "status": "failed", "error": error}
            self.bar.update()

    def evaluation_records(self) -> list[dict[str, Any]]:
        """The evaluation runs that have a result, in the sweep's order."""
        specs = [s for group in self.evaluations if group for s in group]
        return [self.records[s.run_id] for s in specs if s.run_id in self.records]

    def report(
        self, interrupted: bool, seconds: float, workers: int, threads: int
    ) -> dict[str, Any]:
        """What ``compare.json`` holds."""
        evaluated = self.evaluation_records()
        tuning, chosen_lr = [], {}
        for i, point in enumerate(self.points):
            name = point.mechanism.name
            runs = [self.records.get(s.run_id) for s in self.tuning[i]]
            chosen = self.chosen[i]
            if chosen is not None and "training.lr" in chosen:
                chosen_lr.setdefault(name, {})[point.label] = chosen["training.lr"]
            tuning.append(
                {
                    "mechanism": name,
                    "parameters": point.label,
                    "chosen": chosen,
                    "runs": [
                        {k: r.get(k) for k in ("tuned", "test_accuracy", "status", "error")}
                        for r in runs
                        if r is not None
                    ],
                }
            )
        return {
            "sweep": self.sweep.to_dict(),
            "chosen_lr": chosen_lr,
            "tuning": tuning,
            "runs": {
                "evaluation": len(self.points) * len(self.sweep.seeds),
                "finished": sum(r["status"] == "finished" for r in evaluated),
                "failed": sum(r["status"] == "failed" for r in evaluated),
                "tuning": sum(map(len, self.tuning)),
                "executed_now": len(self.executed),
            },
            "interrupted": interrupted,
            "wall_time_s": round(seconds, 3),
            "workers": workers,
            "threads_per_worker": threads,
        }


def choose(tuning: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The tuned values of the finished tuning run of highest test accuracy (the first
    on ties), or None when none finished with an accuracy."""
    finished = [
        r
        for r in tuning
        if r["status"] == "finished" and math.isfinite(float(r.get("test_accuracy", "nan")))
    ]
    if not finished:
        return None
    return dict(max(finished, key=lambda r: float(r["test_accuracy"]))["tuned"])
