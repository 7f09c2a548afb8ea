"""The cost of per-node random streams: batches and noise drawn node by node, keyed by
(purpose, round, step, node), against one shared generator drawing for all nodes at once
(what privlab did before its streams became per node), in the same run.

Per n: the time to draw one step's shuffled batches (digits-sized nodes: 112 samples,
batch 16) and one step's Gaussian noise ``[n, D]`` (D = 2410, the MLP 64-32-10), both
ways, and the per-node overhead in absolute and relative terms. A D-PSGD round of the
same size takes about what ``bench_engine`` reports; the overhead is per local step.

    python benchmarks/bench_streams.py --json benchmarks/results/streams.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

from privlab.threads import configure_threads, prepare_environment, thread_report

SAMPLES, BATCH, DIM = 112, 16, 2410


def timed(function, reps: int) -> float:
    function()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(nodes: int, reps: int) -> dict:
    import torch

    from privlab.rng import NodeStreams, torch_generator
    from privlab.sampling import shuffle_batches

    padded = torch.arange(nodes * SAMPLES).view(nodes, SAMPLES)
    sizes = torch.full((nodes,), SAMPLES)
    ids = torch.arange(nodes)
    streams = NodeStreams(0)

    def shared_batches():  # one generator for every node: the previous design
        keys = torch.rand(nodes, SAMPLES, generator=torch_generator(0, "batch", 1, 0))
        return padded.gather(1, keys.argsort(dim=1)[:, :BATCH])

    def shared_noise():
        return torch.randn(nodes, DIM, generator=torch_generator(0, "noise", 1, 0))

    out = {
        "batches_shared_s": timed(shared_batches, reps),
        "batches_per_node_s": timed(
            lambda: shuffle_batches(padded, sizes, BATCH, streams, 1, 0, ids), reps
        ),
        "noise_shared_s": timed(shared_noise, reps),
        "noise_per_node_s": timed(lambda: streams.normal("noise", 1, 0, ids, DIM), reps),
    }
    for part in ("batches", "noise"):
        out[f"{part}_ratio"] = out[f"{part}_per_node_s"] / out[f"{part}_shared_s"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="256,1024,4096")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--threads", default=None)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    prepare_environment()
    configure_threads(args.threads)
    results = {n: measure(n, args.reps) for n in map(int, args.nodes.split(","))}
    print(f"threads: {thread_report()['threads']}  (medians of {args.reps} reps, ms per step)")
    print(
        f"{'n':>6} {'batch 1-gen':>12} {'batch/node':>11} {'x':>6} "
        f"{'noise 1-gen':>12} {'noise/node':>11} {'x':>6}"
    )
    for n, r in results.items():
        print(
            f"{n:>6} {1e3 * r['batches_shared_s']:>12.2f} {1e3 * r['batches_per_node_s']:>11.2f} "
            f"{r['batches_ratio']:>6.2f} {1e3 * r['noise_shared_s']:>12.2f} "
            f"{1e3 * r['noise_per_node_s']:>11.2f} {r['noise_ratio']:>6.2f}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "machine": platform.processor() or platform.machine(),
            "threads": thread_report(),
            "results": {str(n): r for n, r in results.items()},
        }
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
