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

Devices (``--device LIST``, comma-separated, default ``auto``): the CPU is always timed
(the columns and keys above). ``auto`` adds ``cuda`` when torch sees a GPU (otherwise it
prints "no GPU visible: CPU only"); ``cuda`` or ``cuda:K`` adds that GPU, and exits with
status 2 and one line when it is not there; ``cpu`` adds nothing. On each added device
the vectorized engine (the LoopEngine is CPU only) runs from the same config with
``device: <d>``, interleaved rep by rep with the CPU engines: the round table gains
``vectorized <d> ms``, ``<d> speedup`` (CPU vectorized median / device median) and ``<d>
|diff|`` (max |param difference| to the CPU vectorized engine after the same rounds), in
``results[n]["devices"][d]`` (``vectorized_s``, ``vectorized_p25_p75``,
``speedup_vs_cpu_vectorized``, ``max_abs_param_diff_vs_cpu``, ``reps``); the evaluation
table gains the device's round, eval, ratio and eval-all columns, in
``results[n]["evaluation"]["devices"][d]`` (the CPU keys, plus ``round_speedup_vs_cpu``
and ``eval_speedup_vs_cpu``). A GPU is synchronized (``torch.cuda.synchronize``) before
each reading of the clock, so its times cover the queued kernels. When a GPU is timed the
JSON's ``machine`` gains ``devices`` (those timed) and ``gpus`` (``{d: name}``, from
``torch.cuda.get_device_name``); a CPU-only run writes the same keys as before.

Prints two tables and, with ``--json FILE``, writes the medians. ``--threads N|auto`` sets
torch's threads as ``privlab --threads`` does (default: ``PRIVLAB_THREADS``, else auto);
the count used heads the tables and is in the JSON.

    python benchmarks/bench_engine.py --json benchmarks/results/engine.json
    python benchmarks/bench_engine.py --device cpu  # CPU only even where a GPU is seen
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from pathlib import Path
from typing import TYPE_CHECKING

from gpu_timing import clock, extra_devices, gpu_names

from privlab.errors import PrivlabError
from privlab.threads import configure_threads, prepare_environment, thread_report

if TYPE_CHECKING:
    pass

# privlab.config, privlab.devices and privlab.experiment import torch: they are imported
# inside the functions, after prepare_environment() has set OMP_WAIT_POLICY.


def config(nodes: int, engine: str, device: str = "cpu") -> dict:
    return {
        "name": f"bench-{engine}-{nodes}",
        "nodes": nodes,
        "engine": engine,
        "device": device,
        "data": {"dataset": "digits", "test_fraction": 0.1, "nonmember_fraction": 0.0},
        "model": {"name": "mlp", "hidden": [32]},  # 64-32-10: D = 2410
        "topology": {"name": "regular", "degree": 4},
        "protocol": {"name": "d-psgd"},
        "training": {"lr": 0.05, "batch_size": 16},
    }


EVAL_EVERY = 5
EVAL_RATIO_TARGET = (4096, 0.5)
"""At n = 4096, evaluating every 5 rounds may add at most half to the run time."""


def eval_config(nodes: int, evaluation: dict | None = None, device: str = "cpu") -> dict:
    return {
        "name": f"bench-eval-{nodes}",
        "nodes": nodes,
        "device": device,
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


def measure_evaluation(
    nodes: int, reps: int, warmup: int, all_reps: int, devices: list[str]
) -> dict:
    """The CPU's figures, and under ``"devices"`` each of ``devices``'s (module docstring);
    one round and one evaluation per engine per rep, the engines interleaved."""
    from privlab.config import parse_config
    from privlab.experiment import build

    engines = {
        device: build(parse_config(eval_config(nodes, device=device))).engine
        for device in ("cpu", *devices)
    }
    rounds, evals = _time_evaluation(engines, reps, warmup)
    summaries = {
        device: _evaluation_summary(engine, rounds[device], evals[device], reps)
        for device, engine in engines.items()
    }
    del engines  # free their memory before the all-nodes engines are built
    if all_reps > 0:
        for device, summary in summaries.items():
            summary["eval_all_nodes_s"] = _eval_all_nodes(nodes, all_reps, device)
            summary["eval_all_nodes_reps"] = all_reps
    result = summaries.pop("cpu")
    for device, summary in summaries.items():
        summary["round_speedup_vs_cpu"] = result["round_s"] / summary["round_s"]
        summary["eval_speedup_vs_cpu"] = result["eval_s"] / summary["eval_s"]
        result.setdefault("devices", {})[device] = summary
    return result


def _time_evaluation(
    engines: dict, reps: int, warmup: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Seconds of each engine's rounds and evaluations after ``warmup``, alternating."""
    rounds: dict[str, list[float]] = {device: [] for device in engines}
    evals: dict[str, list[float]] = {device: [] for device in engines}
    for rep in range(warmup + reps):
        for device, engine in engines.items():
            start = clock(engine.device)
            engine.run_round(rep + 1)
            middle = clock(engine.device)
            engine.evaluate()
            end = clock(engine.device)
            if rep >= warmup:
                rounds[device].append(middle - start)
                evals[device].append(end - middle)
    return rounds, evals


def _evaluation_summary(engine, rounds: list[float], evals: list[float], reps: int) -> dict:
    round_s, eval_s = statistics.median(rounds), statistics.median(evals)
    return {
        "round_s": round_s,
        "eval_s": eval_s,
        "eval_ratio": eval_s / (EVAL_EVERY * round_s),
        "round_p25_p75": _quartiles(rounds),
        "eval_p25_p75": _quartiles(evals),
        "evaluated_nodes": len(engine.eval_nodes),
        "test_samples": len(engine.test_indices),
        "reps": reps,
    }


def _eval_all_nodes(nodes: int, reps: int, device: str) -> float:
    """Median seconds of one evaluation of every node (``evaluation.nodes: null``)."""
    from privlab.config import parse_config
    from privlab.experiment import build

    whole = build(parse_config(eval_config(nodes, {"nodes": None}, device))).engine
    whole.run_round(1)
    times = []
    for _ in range(reps):
        start = clock(whole.device)
        whole.evaluate()
        times.append(clock(whole.device) - start)
    return statistics.median(times)


def measure(nodes: int, reps: int, warmup: int, devices: list[str]) -> dict:
    """Vectorized vs loop on the CPU, and under ``"devices"`` the vectorized engine on each
    of ``devices`` (module docstring); all engines interleaved rep by rep."""
    from privlab.config import parse_config
    from privlab.experiment import build

    specs = {"vectorized": ("vectorized", "cpu"), "loop": ("loop", "cpu")}
    specs |= {f"vectorized {device}": ("vectorized", device) for device in devices}
    engines = {
        name: build(parse_config(config(nodes, engine, device))).engine
        for name, (engine, device) in specs.items()
    }
    times: dict[str, list[float]] = {name: [] for name in engines}
    for rep in range(warmup + reps):
        for name, engine in engines.items():
            start = clock(engine.device)
            engine.run_round(rep)
            elapsed = clock(engine.device) - start
            if rep >= warmup:
                times[name].append(elapsed)
    cpu_params = engines["vectorized"].params
    diff = (cpu_params - engines["loop"].params).abs().max().item()
    vec, loop = statistics.median(times["vectorized"]), statistics.median(times["loop"])
    result = {
        "vectorized_s": vec,
        "loop_s": loop,
        "speedup": loop / vec,
        "vectorized_p25_p75": _quartiles(times["vectorized"]),
        "loop_p25_p75": _quartiles(times["loop"]),
        "max_abs_param_diff": diff,
        "reps": reps,
    }
    for device in devices:
        name = f"vectorized {device}"
        median = statistics.median(times[name])
        params = engines[name].params.cpu()
        result.setdefault("devices", {})[device] = {
            "vectorized_s": median,
            "vectorized_p25_p75": _quartiles(times[name]),
            "speedup_vs_cpu_vectorized": vec / median,
            "max_abs_param_diff_vs_cpu": (params - cpu_params).abs().max().item(),
            "reps": reps,
        }
    return result


def _quartiles(values: list[float]) -> list[float]:
    if len(values) < 2:
        return [values[0], values[0]]
    q = statistics.quantiles(values, n=4)
    return [q[0], q[2]]


def print_round_header(devices: list[str]) -> None:
    extra = "".join(
        f" {'vectorized ' + d + ' ms':>20} {d + ' speedup':>14} {d + ' |diff|':>12}"
        for d in devices
    )
    print(
        f"{'n':>6} {'loop ms':>10} {'vectorized ms':>14} {'speedup':>8} {'max |diff|':>11}{extra}"
    )
    for d in devices:
        print(f"  {d} speedup = CPU vectorized / {d} vectorized; {d} |diff|: to the CPU params")


def print_round_row(n: int, r: dict) -> None:
    extra = "".join(
        f" {g['vectorized_s'] * 1e3:>20.2f} {g['speedup_vs_cpu_vectorized']:>14.1f} "
        f"{g['max_abs_param_diff_vs_cpu']:>12.2e}"
        for g in r.get("devices", {}).values()
    )
    print(
        f"{n:>6} {r['loop_s'] * 1e3:>10.2f} {r['vectorized_s'] * 1e3:>14.2f} "
        f"{r['speedup']:>8.1f} {r['max_abs_param_diff']:>11.2e}{extra}"
    )


def print_eval_header(devices: list[str]) -> None:
    print(
        "\nevaluation every 5 rounds, vectorized, MLP 64-64-32-10, 4,000 test samples, "
        "default evaluation settings"
    )
    extra = "".join(
        f" {d + ' round ms':>14} {d + ' eval ms':>13} {d + ' eval/(5 round)':>19} "
        f"{d + ' eval all ms':>16}"
        for d in devices
    )
    print(
        f"{'n':>6} {'evaluated':>9} {'round ms':>10} {'eval ms':>10} "
        f"{'eval/(5 round)':>14} {'target':>7} {'eval all ms':>12}{extra}"
    )


def print_eval_row(n: int, r: dict) -> None:
    target = f"<= {EVAL_RATIO_TARGET[1]}" if n == EVAL_RATIO_TARGET[0] else ""
    extra = "".join(
        f" {g['round_s'] * 1e3:>14.2f} {g['eval_s'] * 1e3:>13.2f} {g['eval_ratio']:>19.3f} "
        f"{_every(g, 16)}"
        for g in r.get("devices", {}).values()
    )
    line = (
        f"{n:>6} {r['evaluated_nodes']:>9} {r['round_s'] * 1e3:>10.2f} "
        f"{r['eval_s'] * 1e3:>10.2f} {r['eval_ratio']:>14.3f} {target:>7} {_every(r, 12)}{extra}"
    )
    print(line.rstrip())


def _every(r: dict, width: int) -> str:
    """The all-nodes evaluation in ms, or blanks when it was skipped."""
    return f"{r['eval_all_nodes_s'] * 1e3:>{width}.1f}" if "eval_all_nodes_s" in r else " " * width


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
    parser.add_argument(
        "--device",
        default="auto",
        help="devices, comma-separated: auto (cpu, plus cuda when torch sees a GPU), cpu, "
        "cuda, cuda:K; the CPU is always timed (default: auto)",
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    prepare_environment()
    specs = [part.strip() for part in args.device.split(",") if part.strip()]
    try:
        devices = extra_devices(specs)
    except PrivlabError as error:
        parser.exit(2, f"{parser.prog}: --device: {error}\n")
    configure_threads(args.threads)
    threads = thread_report()
    results = {}
    print(f"torch threads: {threads['threads']} ({threads['chosen_by']})")
    if "auto" in specs and not devices:
        print("no GPU visible: CPU only")
    gpus = gpu_names(devices)
    for device, name in gpus.items():
        print(f"{device}: {name}")
    print_round_header(devices)
    for n in args.sizes:
        r = measure(n, _reps(n, args.reps), args.warmup, devices)
        results[str(n)] = r
        print_round_row(n, r)
    if args.eval_sizes:
        print_eval_header(devices)
    for n in args.eval_sizes:
        r = measure_evaluation(n, _reps(n, args.reps), args.warmup, args.all_reps, devices)
        results.setdefault(str(n), {})["evaluation"] = r
        print_eval_row(n, r)
    if args.json:
        write_json(args.json, results, threads, devices, gpus)


def write_json(
    path: Path, results: dict, threads: dict, devices: list[str], gpus: dict[str, str]
) -> None:
    from privlab.results import versions

    path.parent.mkdir(parents=True, exist_ok=True)
    machine = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "threads": threads,
        "load_average": os.getloadavg(),
    }
    if devices:
        machine |= {"devices": ["cpu", *devices], "gpus": gpus}
    payload = {
        "benchmark": "one D-PSGD round, MLP 64-32-10, digits, batch 16, 4-regular",
        "evaluation_benchmark": (
            "vectorized round and evaluate(), MLP 64-64-32-10, synthetic 64 features "
            "x 10 classes with 4,000 test samples, batch 16, 4-regular, default "
            "evaluation settings; eval_ratio = eval_s / (5 round_s)"
        ),
        "machine": machine,
        "versions": versions(),
        "results": results,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")


def _reps(n: int, reps: int) -> int:
    return reps if n < 1024 else max(5, reps // 3)


if __name__ == "__main__":
    main()
