"""The distributed engine: seconds per round and bytes between processes, against the
single-process vectorized engine in the same run.

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

    python benchmarks/bench_distributed.py [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import torch

from privlab.config import parse_config
from privlab.distributed import block_bounds
from privlab.experiment import build, train
from privlab.launch import run_processes
from privlab.results import load_run

PARAMETERS = 2410


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="256,1024,4096")
    parser.add_argument("--procs", default="1,2")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args()
    rows = []
    for n in [int(v) for v in args.sizes.split(",")]:
        raw = config(n, args.rounds)
        single = train(build(parse_config(raw)), progress=False)
        single_s = single.summary["wall_time_s"] / args.rounds
        for procs in [int(v) for v in args.procs.split(",")]:
            with tempfile.TemporaryDirectory() as folder:
                run_processes(parse_config(raw), procs, folder)
                run = load_run(folder)
            seconds = run.summary["wall_time_s"] / args.rounds
            sent = run.summary["distributed"]["bytes_between_ranks"] / args.rounds
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
    if args.json:
        out = {"machine": platform.platform(), "cpus": torch.get_num_threads(), "rows": rows}
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
