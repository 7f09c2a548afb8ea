"""One D-PSGD round, vectorized engine vs the per-node LoopEngine, in the same run.

MLP 64-32-10 on digits, batch 16 per node, a random 4-regular graph with
Metropolis-Hastings weights; n in 16, 64, 256, 1024 nodes. The two engines start from
the same state and are timed interleaved, rep by rep, so machine drift hits both alike.
Prints a table and, with ``--json FILE``, writes the medians and
``results[n]["speedup"]`` (loop median / vectorized median). ``--threads N|auto`` sets
torch's threads as ``privlab --threads`` does (default: ``PRIVLAB_THREADS``, else auto);
the count used heads the table and is in the JSON.

    python benchmarks/bench_engine.py --json benchmarks/results/engine.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

from privlab.config import parse_config
from privlab.threads import configure_threads, prepare_environment, thread_report


def config(nodes: int, engine: str) -> dict:
    return {
        "name": f"bench-{engine}-{nodes}",
        "nodes": nodes,
        "engine": engine,
        "data": {"dataset": "digits", "test_fraction": 0.1, "nonmember_fraction": 0.0},
        "model": {"name": "mlp", "hidden": [32]},  # 64-32-10: D = 2410
        "topology": {"name": "regular", "degree": 4},
        "protocol": {"name": "d-psgd"},
        "training": {"lr": 0.05, "batch_size": 16},
    }


def measure(nodes: int, reps: int, warmup: int) -> dict:
    from privlab.experiment import build  # imports torch: after prepare_environment()

    engines = {
        name: build(parse_config(config(nodes, name))).engine for name in ("vectorized", "loop")
    }
    times: dict[str, list[float]] = {name: [] for name in engines}
    for rep in range(warmup + reps):
        for name, engine in engines.items():
            start = time.perf_counter()
            engine.run_round(rep)
            elapsed = time.perf_counter() - start
            if rep >= warmup:
                times[name].append(elapsed)
    diff = (engines["vectorized"].params - engines["loop"].params).abs().max().item()
    vec, loop = statistics.median(times["vectorized"]), statistics.median(times["loop"])
    return {
        "vectorized_s": vec,
        "loop_s": loop,
        "speedup": loop / vec,
        "vectorized_p25_p75": _quartiles(times["vectorized"]),
        "loop_p25_p75": _quartiles(times["loop"]),
        "max_abs_param_diff": diff,
        "reps": reps,
    }


def _quartiles(values: list[float]) -> list[float]:
    q = statistics.quantiles(values, n=4)
    return [q[0], q[2]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 64, 256, 1024])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", help="torch threads: N >= 1 or auto (default: as privlab)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    prepare_environment()
    configure_threads(args.threads)
    threads = thread_report()
    results = {}
    print(f"torch threads: {threads['threads']} ({threads['chosen_by']})")
    print(f"{'n':>6} {'loop ms':>10} {'vectorized ms':>14} {'speedup':>8} {'max |diff|':>11}")
    for n in args.sizes:
        reps = args.reps if n < 1024 else max(5, args.reps // 3)
        r = measure(n, reps, args.warmup)
        results[str(n)] = r
        print(
            f"{n:>6} {r['loop_s'] * 1e3:>10.2f} {r['vectorized_s'] * 1e3:>14.2f} "
            f"{r['speedup']:>8.1f} {r['max_abs_param_diff']:>11.2e}"
        )
    if args.json:
        from privlab.results import versions

        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "benchmark": "one D-PSGD round, MLP 64-32-10, digits, batch 16, 4-regular",
            "machine": {
                "platform": platform.platform(),
                "processor": platform.processor(),
                "cpus": os.cpu_count(),
                "threads": threads,
                "load_average": os.getloadavg(),
            },
            "versions": versions(),
            "results": results,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
