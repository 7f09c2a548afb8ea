"""One D-PSGD round, vectorized engine vs the per-node LoopEngine; and what evaluation adds.

Round (``--sizes``, default n in 16, 64, 256, 1024): MLP 64-32-10 on digits, batch 16 per
node, a random 4-regular graph with Metropolis-Hastings weights. The two engines start
from the same state and are timed interleaved, rep by rep, so machine drift hits both
alike; ``results[n]["speedup"]`` is loop median / vectorized median.

Evaluation (``--eval-sizes``, default n in 16, 64, 256, 1024, 4096; vectorized engine):
MLP 64-64-32-10 on a synthetic set (64 features, 10 classes, 80,000 samples of which
4,000 are the test set), the same graph and batch, the default ``evaluation`` settings
(256 nodes, the whole test set). A round and an evaluation are timed alternately;
``results[n]["evaluation"]`` holds their medians and ``eval_ratio`` = eval / (5 x round),
what evaluating every 5 rounds (``eval_every: 5``) adds to the run time (target: <= 0.5
at n = 4096), and ``eval_all_nodes_s``, one evaluation of every node (``evaluation.nodes:
null``), for comparison (``--all-reps 0`` skips it).

Prints two tables and, with ``--json FILE``, writes the medians. ``--threads N|auto`` sets
torch's threads as ``privlab --threads`` does (default: ``PRIVLAB_THREADS``, else auto);
the count used heads the tables and is in the JSON.

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


EVAL_EVERY = 5
EVAL_RATIO_TARGET = (4096, 0.5)
"""At n = 4096, evaluating every 5 rounds may add at most half to the run time."""


def eval_config(nodes: int, evaluation: dict | None = None) -> dict:
    return {
        "name": f"bench-eval-{nodes}",
        "nodes": nodes,
        "data": {
            "dataset": "synthetic",
            "options": {"num_samples": 80000, "dimension": 64, "num_classes": 10},
            "test_fraction": 0.05,  # 4,000 test samples
            "nonmember_fraction": 0.0,
        },
        "model": {"name": "mlp", "hidden": [64, 32]},  # 64-64-32-10: D = 6570
        "topology": {"name": "regular", "degree": 4},
        "protocol": {"name": "d-psgd"},
        "training": {"lr": 0.05, "batch_size": 16},
        "evaluation": evaluation or {},
    }


def measure_evaluation(nodes: int, reps: int, warmup: int, all_reps: int) -> dict:
    from privlab.experiment import build

    engine = build(parse_config(eval_config(nodes))).engine
    rounds, evals = [], []
    for rep in range(warmup + reps):
        start = time.perf_counter()
        engine.run_round(rep + 1)
        middle = time.perf_counter()
        engine.evaluate()
        end = time.perf_counter()
        if rep >= warmup:
            rounds.append(middle - start)
            evals.append(end - middle)
    round_s, eval_s = statistics.median(rounds), statistics.median(evals)
    result = {
        "round_s": round_s,
        "eval_s": eval_s,
        "eval_ratio": eval_s / (EVAL_EVERY * round_s),
        "round_p25_p75": _quartiles(rounds),
        "eval_p25_p75": _quartiles(evals),
        "evaluated_nodes": len(engine.eval_nodes),
        "test_samples": len(engine.test_indices),
        "reps": reps,
    }
    del engine
    if all_reps > 0:
        whole = build(parse_config(eval_config(nodes, {"nodes": None}))).engine
        whole.run_round(1)
        times = []
        for _ in range(all_reps):
            start = time.perf_counter()
            whole.evaluate()
            times.append(time.perf_counter() - start)
        result["eval_all_nodes_s"] = statistics.median(times)
        result["eval_all_nodes_reps"] = all_reps
    return result


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
    if len(values) < 2:
        return [values[0], values[0]]
    q = statistics.quantiles(values, n=4)
    return [q[0], q[2]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[16, 64, 256, 1024])
    parser.add_argument("--eval-sizes", type=int, nargs="*", default=[16, 64, 256, 1024, 4096])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument(
        "--all-reps", type=int, default=2, help="evaluations of every node per n (0: none)"
    )
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
        r = measure(n, _reps(n, args.reps), args.warmup)
        results[str(n)] = r
        print(
            f"{n:>6} {r['loop_s'] * 1e3:>10.2f} {r['vectorized_s'] * 1e3:>14.2f} "
            f"{r['speedup']:>8.1f} {r['max_abs_param_diff']:>11.2e}"
        )
    if args.eval_sizes:
        print(
            "\nevaluation every 5 rounds, vectorized, MLP 64-64-32-10, 4,000 test samples, "
            "default evaluation settings"
        )
        print(
            f"{'n':>6} {'evaluated':>9} {'round ms':>10} {'eval ms':>10} "
            f"{'eval/(5 round)':>14} {'target':>7} {'eval all ms':>12}"
        )
    for n in args.eval_sizes:
        r = measure_evaluation(n, _reps(n, args.reps), args.warmup, args.all_reps)
        results.setdefault(str(n), {})["evaluation"] = r
        target = f"<= {EVAL_RATIO_TARGET[1]}" if n == EVAL_RATIO_TARGET[0] else ""
        every = f"{r['eval_all_nodes_s'] * 1e3:>12.1f}" if "eval_all_nodes_s" in r else ""
        print(
            f"{n:>6} {r['evaluated_nodes']:>9} {r['round_s'] * 1e3:>10.2f} "
            f"{r['eval_s'] * 1e3:>10.2f} {r['eval_ratio']:>14.3f} {target:>7} {every}"
        )
    if args.json:
        from privlab.results import versions

        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "benchmark": "one D-PSGD round, MLP 64-32-10, digits, batch 16, 4-regular",
            "evaluation_benchmark": (
                "vectorized round and evaluate(), MLP 64-64-32-10, synthetic 64 features "
                "x 10 classes with 4,000 test samples, batch 16, 4-regular, default "
                "evaluation settings; eval_ratio = eval_s / (5 round_s)"
            ),
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


def _reps(n: int, reps: int) -> int:
    return reps if n < 1024 else max(5, reps // 3)


if __name__ == "__main__":
    main()
