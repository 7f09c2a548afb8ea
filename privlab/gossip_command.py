"""``privlab gossip``: muted gossip simulated over many runs, against its theory.

Simulates ``--runs`` independent runs of muted gossip (Bellet, Guerraoui, Hendrikx, DISC
2020; ``privlab.mechanisms.muted_gossip.simulate``; a progress bar on a terminal) and
prints the spreading time (mean and 95% interval of the mean), the first-spy attack's
success rate with its Clopper-Pearson interval, the s = 0 theory on the complete graph
((m+1)/n and (n-1) H(n-1)), and the empirical (epsilon, delta) of the first-spy event
(``privlab.accounting.gossip.empirical_delta``).
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np

from privlab.errors import check


def add_gossip_parser(sub) -> None:
    parser = sub.add_parser(
        "gossip",
        help="simulate muted gossip: spreading time and source hiding",
        description=__doc__.splitlines()[2].strip() + " " + " ".join(__doc__.splitlines()[3:8]),
    )
    parser.add_argument("--nodes", type=int, required=True, help="number of nodes n (>= 2)")
    parser.add_argument("--mute", type=float, required=True, help="muting parameter s in [0, 1]")
    parser.add_argument("--topology", default="complete", help="graph (default: complete)")
    parser.add_argument("--degree", type=int, help="degree of a regular topology")
    parser.add_argument(
        "--curious-fraction", type=float, default=0.1, help="fraction f of curious nodes, [0, 1)"
    )
    parser.add_argument("--runs", type=int, default=1000, help="independent runs (>= 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epsilon", type=float, default=0.0, help="epsilon of the delta estimate")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run_gossip)


def run_gossip(args: argparse.Namespace) -> int:
    from privlab.accounting.gossip import empirical_delta
    from privlab.intervals import clopper_pearson
    from privlab.mechanisms.muted_gossip import first_spy_success, simulate
    from privlab.topology import build_topology

    f = args.curious_fraction
    check(0 <= f < 1, "--curious-fraction", "in [0, 1)", f)
    check(args.runs >= 1, "--runs", ">= 1", args.runs)
    check(args.nodes >= 2, "--nodes", ">= 2", args.nodes)
    graph = None
    if args.topology != "complete":
        options = {} if args.degree is None else {"degree": args.degree}
        graph = build_topology(args.topology, args.nodes, seed=args.seed, **options).graph
    runs = simulate(
        args.nodes, args.mute, args.runs, curious=f, graph=graph, seed=args.seed, progress=True
    )
    spread = runs.spread_time[np.isfinite(runs.spread_time)]
    half = 1.96 * spread.std(ddof=1) / math.sqrt(len(spread)) if len(spread) > 1 else 0.0
    success = first_spy_success(runs)
    hits = round(success * runs.runs)
    delta = empirical_delta(runs, args.epsilon)
    m = round(f * args.nodes)
    report = {
        "nodes": args.nodes,
        "mute": args.mute,
        "runs": runs.runs,
        "curious": m,
        "topology": args.topology,
        "spreading_time_mean": float(spread.mean()),
        "spreading_time_ci": [float(spread.mean() - half), float(spread.mean() + half)],
        "first_spy_success": success,
        "first_spy_ci": list(clopper_pearson(hits, runs.runs)),
        "epsilon": args.epsilon,
        "delta": delta.delta,
        "delta_ci": [delta.low, delta.high],
    }
    if args.mute == 0 and graph is None:
        n = args.nodes
        harmonic = sum(1 / k for k in range(1, n))
        report["theory"] = {"first_spy_success": (m + 1) / n, "spreading_time": (n - 1) * harmonic}
    if args.json:
        print(json.dumps(report))
        return 0
    low, high = report["spreading_time_ci"]
    mean = report["spreading_time_mean"]
    print(
        f"muted gossip: {args.nodes} nodes ({args.topology}), s = {args.mute:g}, "
        f"{m} curious, {runs.runs} runs"
    )
    print(f"spreading time  mean {mean:.4g}  (95% CI {low:.4g} to {high:.4g})")
    low, high = report["first_spy_ci"]
    print(f"first spy finds the source  {success:.3f}  (95% CI {low:.3f} to {high:.3f})")
    if "theory" in report:
        theory = report["theory"]
        print(
            f"theory (s = 0, complete graph): first spy (m+1)/n = "
            f"{theory['first_spy_success']:.3f}, spreading time (n-1)H(n-1) = "
            f"{theory['spreading_time']:.4g}"
        )
    print(
        f"empirical delta at epsilon {args.epsilon:g}: {delta.delta:.3f} "
        f"(95% CI {delta.low:.3f} to {delta.high:.3f})"
    )
    return 0
