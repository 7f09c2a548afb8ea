"""The distributed engine: seconds per round and bytes between processes, against the
single-process vectorized engine in the same run; and decentralizepy's execution model,
one OS process per node, measured beside it.

D-PSGD on a random 4-regular graph, MLP 64-32-10 on a synthetic set of 80,000 samples
(64 features, 10 classes; D = 2410 parameters), batch
16, one local step, ``--rounds`` rounds (default 5), for n in ``--sizes`` (default 256,
1024, 4096) and P in ``--procs`` (default 1, 2) processes of ``privlab.launch`` (gloo
over localhost). Seconds per round are the run's wall time over its rounds
(rank 0's clock; one evaluation, on 64 nodes at the last round, is included for both
engines alike).

Bytes between processes: each exchange, a sender's whole model goes once to every other
process holding one of its receivers, so the expected count is the number of distinct
(sender, receiving process) pairs across blocks x D x 4 bytes x rounds; the cut edges x
payload (what per-edge messages would cost) is printed beside it.

decentralizepy runs one OS process per node; privlab runs n / P nodes per process in one
batched call, so adding processes splits the training, not the bookkeeping.

One process per node (``--per-node``, default 16; "" skips it): for each n, the same
config on the distributed engine at P = n, one node per process: a process, an
interpreter, a torch import, the data set and one model per node, and one message per
directed edge (every edge crosses processes, so the expected bytes equal the directed
cut edges x payload). This stands in for decentralizepy (torch.multiprocessing, pickled
NumPy over ZeroMQ), which is not installed here; gloo over loopback replaces ZeroMQ. Each
row gives seconds per round (as above), start-up (the launch's wall time minus rank 0's
training time, rounds x s/round: spawning, imports, joining the process group, building,
and also saving the run and exiting), peak resident memory per process (VmHWM of the
worker processes, polled from /proc every 0.2 s; Linux only) and the vectorized
engine's seconds per round for the same n, with the slowdown.

    python benchmarks/bench_distributed.py [--per-node 16,32] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import torch

from privlab.config import parse_config
from privlab.distributed import block_bounds
from privlab.experiment import build, train
from privlab.launch import run_processes
from privlab.results import Results, load_run

PARAMETERS = 2410
STARTUP_TIMEOUT_S = 900.0
"""Collective timeout of the per-node runs: n processes on a few cores start slowly."""


def config(nodes: int, rounds: int) -> dict:
    return {
        "name": f"bench-distributed-{nodes}",
        "nodes": nodes,
        "rounds": rounds,
        "eval_every": rounds,
        "data": {
            "dataset": "synthetic",
            "options": {"num_samples": 80000, "dimension": 64, "num_classes": 10},
            "test_fraction": 0.05,
            "nonmember_fraction": 0.0,
        },
        "model": {"name": "mlp", "hidden": [32]},
        "topology": {"name": "regular", "degree": 4},
        "protocol": {"name": "d-psgd"},
        "training": {"lr": 0.05, "batch_size": 16},
        "evaluation": {"nodes": 64, "test_samples": 500},
    }


def expected_bytes(raw: dict, procs: int) -> tuple[int, int]:
    """(distinct sender-process pairs, cut edges) x D x 4 bytes, per round."""
    experiment = build(parse_config(raw))
    plan = experiment.topology.plan(1)
    owner = torch.cat(
        [torch.full((hi - lo,), r) for r, (lo, hi) in enumerate(block_bounds(raw["nodes"], procs))]
    )
    cut = owner[plan.src] != owner[plan.dst]
    pairs = {(int(s), int(owner[d])) for s, d in zip(plan.src[cut], plan.dst[cut])}
    row = PARAMETERS * 4
    return len(pairs) * row, int(cut.sum()) * row


class WorkerMemory:
    """Peak resident memory (VmHWM, bytes) of this process's spawned workers, polled
    from /proc while the block runs; empty where /proc is missing."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.peaks = interval, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> WorkerMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            for pid in _spawned_children():
                peak = _peak_rss(pid)
                if peak is not None:
                    self.peaks[pid] = max(peak, self.peaks.get(pid, 0))


def _spawned_children() -> list[int]:
    """Children of this process started by multiprocessing's spawn (not its helpers)."""
    me = os.getpid()
    try:
        pids = Path(f"/proc/{me}/task/{me}/children").read_text().split()
        return [int(p) for p in pids if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
    except OSError:
        return []


def _peak_rss(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def vectorized(raw: dict) -> tuple[Results, float]:
    """The single-process vectorized run of ``raw`` and its seconds per round."""
    single = train(build(parse_config(raw)), progress=False)
    return single, single.summary["wall_time_s"] / raw["rounds"]


def process_rows(n: int, procs_list: list[int], rounds: int) -> list[dict]:
    """The main rows: n nodes on each P of ``procs_list``, against the vectorized engine."""
    raw = config(n, rounds)
    single, single_s = vectorized(raw)
    rows = []
    for procs in procs_list:
        with tempfile.TemporaryDirectory() as folder:
            run_processes(parse_config(raw), procs, folder)
            run = load_run(folder)
        seconds = run.summary["wall_time_s"] / rounds
        sent = run.summary["distributed"]["bytes_between_ranks"] / rounds
        pairs, cut = expected_bytes(raw, procs)
        same = float((run.models["params"] - single.models["params"]).abs().max())
        rows.append(
            {
                "nodes": n,
                "procs": procs,
                "seconds_per_round": seconds,
                "vectorized_seconds_per_round": single_s,
                "ratio": single_s / seconds,
                "bytes_between_processes_per_round": sent,
                "expected_bytes_per_round": pairs,
                "cut_edges_x_payload_per_round": cut,
                "max_model_difference": same,
            }
        )
        r = rows[-1]
        print(
            f"n={n:5d} P={procs}  {seconds:7.3f} s/round  (vectorized {single_s:.3f}, "
            f"x{r['ratio']:.2f})  {sent / 1e6:8.2f} MB/round between processes "
            f"(expected {pairs / 1e6:.2f}; cut edges x payload {cut / 1e6:.2f})  "
            f"max |diff| {same:.1e}",
            flush=True,
        )
    return rows


def per_node_row(n: int, rounds: int) -> dict:
    """n nodes on n processes, one node each (decentralizepy's execution model)."""
    raw = config(n, rounds)
    single, single_s = vectorized(raw)
    with tempfile.TemporaryDirectory() as folder:
        with WorkerMemory() as memory:
            started = time.perf_counter()
            run_processes(parse_config(raw), n, folder, timeout=STARTUP_TIMEOUT_S)
            launch = time.perf_counter() - started
        run = load_run(folder)
    seconds = run.summary["wall_time_s"] / rounds
    pairs, cut = expected_bytes(raw, n)
    peaks = list(memory.peaks.values())
    return {
        "nodes": n,
        "procs": n,
        "seconds_per_round": seconds,
        "vectorized_seconds_per_round": single_s,
        "slowdown_vs_vectorized": seconds / single_s,
        "launch_wall_s": launch,
        "startup_s": launch - run.summary["wall_time_s"],
        "startup_definition": "launch wall time - rounds x s/round (includes save and exit)",
        "peak_rss_per_process_mean_bytes": sum(peaks) / len(peaks) if peaks else None,
        "peak_rss_per_process_max_bytes": max(peaks, default=None),
        "processes_measured": len(peaks),
        "bytes_between_processes_per_round": (
            run.summary["distributed"]["bytes_between_ranks"] / rounds
        ),
        "expected_bytes_per_round": pairs,
        "cut_edges_x_payload_per_round": cut,
        "max_model_difference": float((run.models["params"] - single.models["params"]).abs().max()),
    }


def print_per_node(r: dict) -> None:
    mean, top = r["peak_rss_per_process_mean_bytes"], r["peak_rss_per_process_max_bytes"]
    memory = "n/a" if mean is None else f"{mean / 1e6:.0f} MB (max {top / 1e6:.0f})"
    print(
        f"n={r['nodes']:5d} P={r['procs']}  {r['seconds_per_round']:7.3f} s/round  "
        f"(vectorized {r['vectorized_seconds_per_round']:.4f}, "
        f"x{r['slowdown_vs_vectorized']:.0f} slower)  start-up {r['startup_s']:.1f} s "
        f"(launch {r['launch_wall_s']:.1f} s - rounds)  peak RSS/process {memory} "
        f"over {r['processes_measured']}  "
        f"{r['bytes_between_processes_per_round'] / 1e6:.3f} MB/round between processes "
        f"(expected {r['expected_bytes_per_round'] / 1e6:.3f}; cut edges x payload "
        f"{r['cut_edges_x_payload_per_round'] / 1e6:.3f})  "
        f"max |diff| {r['max_model_difference']:.1e}",
        flush=True,
    )


def integers(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="256,1024,4096")
    parser.add_argument("--procs", default="1,2")
    parser.add_argument("--per-node", default="16", help='node counts, one process each; ""')
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args()
    rows = [
        r for n in integers(args.sizes) for r in process_rows(n, integers(args.procs), args.rounds)
    ]
    per_node = []
    if integers(args.per_node):
        print("one process per node (decentralizepy's execution model):", flush=True)
    for n in integers(args.per_node):
        per_node.append(per_node_row(n, args.rounds))
        print_per_node(per_node[-1])
    if args.json:
        out = {
            "machine": platform.platform(),
            "cpus": torch.get_num_threads(),
            "rows": rows,
            "process_per_node": per_node,
        }
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
