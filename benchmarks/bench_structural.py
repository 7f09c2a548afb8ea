"""Round time of the structural mechanisms against plain D-PSGD, in the same run.

One round (MLP 64-32-10 on digits, 64 nodes, batch 16, one local step, random 4-regular
graph) of ``d-psgd``, ``shatter`` (k = 1, 4, 16 virtual nodes, degree 3), ``cesar``
(random and topk sparsifiers, 10% of the coordinates, threshold 2) and ``sparse-d-psgd``
(random, 10%), timed interleaved rep by rep after warm-up rounds (CESAR's key agreement
happens in round 1, a warm-up round). Also: CESAR's mask generation throughput (ChaCha20
keystream, MB/s) and ``privlab gossip``'s time for 1000 runs at n = 1000, s = 0.5.

    python benchmarks/bench_structural.py --json benchmarks/results/structural.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

from privlab.config import parse_config
from privlab.threads import configure_threads, prepare_environment, thread_report

PROTOCOLS = {
    "d-psgd": {"name": "d-psgd"},
    "shatter k=1": {"name": "shatter", "virtual_nodes": 1, "degree": 3},
    "shatter k=4": {"name": "shatter", "virtual_nodes": 4, "degree": 3},
    "shatter k=16": {"name": "shatter", "virtual_nodes": 16, "degree": 3},
    "sparse-d-psgd random": {"name": "sparse-d-psgd", "fraction": 0.1, "sparsifier": "random"},
    "cesar random": {"name": "cesar", "fraction": 0.1, "sparsifier": "random", "threshold": 2},
    "cesar topk": {"name": "cesar", "fraction": 0.1, "sparsifier": "topk", "threshold": 2},
}


def config(nodes: int, protocol: dict) -> dict:
    return {
        "nodes": nodes,
        "data": {"dataset": "digits", "test_fraction": 0.1, "nonmember_fraction": 0.0},
        "model": {"name": "mlp", "hidden": [32]},
        "topology": {"name": "regular", "degree": 4},
        "protocol": protocol,
        "training": {"lr": 0.05, "batch_size": 16, "local_steps": 1},
    }


def round_times(nodes: int, reps: int, warmup: int) -> dict[str, float]:
    from privlab.experiment import build

    engines = {name: build(parse_config(config(nodes, p))).engine for name, p in PROTOCOLS.items()}
    times: dict[str, list[float]] = {name: [] for name in engines}
    for rep in range(1, warmup + reps + 1):
        for name, engine in engines.items():
            start = time.perf_counter()
            engine.run_round(rep)
            if rep > warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def mask_throughput(megabytes: int = 64) -> float:
    """MB/s of CESAR's mask stream (ChaCha20 keystream read as uint64 words)."""
    from privlab.mechanisms.cesar import mask_stream

    count = megabytes * 2**20 // 8
    start = time.perf_counter()
    mask_stream(bytes(32), 1, count)
    return megabytes / (time.perf_counter() - start)


def gossip_seconds(nodes: int = 1000, runs: int = 1000, mute: float = 0.5) -> float:
    from privlab.mechanisms.muted_gossip import simulate

    start = time.perf_counter()
    simulate(nodes, mute, runs, curious=0.1, seed=0)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=64)
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", default=None)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    prepare_environment()
    configure_threads(args.threads)
    rounds = round_times(args.nodes, args.reps, args.warmup)
    base = rounds["d-psgd"]
    print(f"threads: {thread_report()['threads']}; {args.nodes} nodes; median of {args.reps}")
    print(f"{'protocol':>22} {'round ms':>9} {'x d-psgd':>9}")
    for name, seconds in rounds.items():
        print(f"{name:>22} {1e3 * seconds:>9.2f} {seconds / base:>9.2f}")
    throughput = mask_throughput()
    gossip = gossip_seconds()
    print(f"CESAR mask stream: {throughput:.0f} MB/s")
    print(f"privlab gossip, 1000 runs at n = 1000, s = 0.5: {gossip:.2f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "machine": platform.processor() or platform.machine(),
            "threads": thread_report(),
            "nodes": args.nodes,
            "round_s": rounds,
            "ratio_vs_d_psgd": {name: s / base for name, s in rounds.items()},
            "mask_mb_per_s": throughput,
            "gossip_1000_runs_s": gossip,
        }
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
