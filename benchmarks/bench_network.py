"""Time to compute every pairwise mu of one observer: exact network accounting at scale.

For Muffliato (the projector fast path) and Zip-DL (the general formula on the dense
view) with K = 10 gossip steps, on a ring and on a random 6-regular graph with
Metropolis-Hastings weights, n in 64, 256, 1024 nodes: the median time to compute mu for
every source against observer 0 (``privlab.accounting.network.pairwise_network_mu``),
and how it grows with n (the exponent of a power law fitted between consecutive sizes).
Zip-DL's view has K x (edges + n) noise columns, so it stops at the sizes given by
``--zipdl-max``.

    python benchmarks/bench_network.py --json benchmarks/results/network.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

from privlab.threads import configure_threads, prepare_environment, thread_report

STEPS = 10


def weights(topology: str, nodes: int):
    from privlab.topology import build_topology

    options = {"degree": 6} if topology == "regular" else {}
    plan = build_topology(topology, nodes, seed=0, **options).plan(1)
    return plan.mixing_matrix("dense").double().numpy()


def timed(mechanism: str, W, reps: int) -> float:
    """Median seconds of every source's mu against observer 0."""
    from privlab.accounting.network import pairwise_network_mu

    times = []
    for _ in range(reps):
        start = time.perf_counter()
        pairwise_network_mu(mechanism, W, [0], STEPS, 1.0)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="64,256,1024")
    parser.add_argument("--zipdl-max", type=int, default=256)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", default=None)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    prepare_environment()
    configure_threads(args.threads)

    sizes = [int(n) for n in args.nodes.split(",")]
    results: dict[str, dict[str, dict]] = {}
    print(f"threads: {thread_report()['threads']}; K = {STEPS}; median s over {args.reps} reps")
    print(f"{'mechanism':>10} {'topology':>8} {'n':>6} {'seconds':>9} {'growth':>7}")
    for mechanism in ("muffliato", "zipdl"):
        for topology in ("ring", "regular"):
            key = f"{mechanism}-{topology}"
            results[key] = {}
            previous = None
            for n in sizes:
                if mechanism == "zipdl" and n > args.zipdl_max:
                    continue
                W = weights(topology, n)
                seconds = timed(mechanism, W, args.reps)
                growth = None
                if previous is not None:
                    growth = math.log(seconds / previous[1]) / math.log(n / previous[0])
                results[key][str(n)] = {"seconds": seconds, "growth_exponent": growth}
                shown = "" if growth is None else f"{growth:.2f}"
                print(f"{mechanism:>10} {topology:>8} {n:>6} {seconds:>9.4f} {shown:>7}")
                previous = (n, seconds)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "machine": platform.processor() or platform.machine(),
            "threads": thread_report(),
            "gossip_steps": STEPS,
            "results": results,
        }
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
