"""``privlab compare``: a sweep of mechanisms x parameters x seeds, in parallel, resumable.

``privlab compare CONFIG [--out DIR] [--workers W] [--backend local|ray] [--ray-address A]
[--set KEY=VALUE ...] [--threads N]
[--quiet]`` runs the sweep of ``CONFIG`` (``privlab.sweep`` documents its YAML) with
``privlab.compare.compare`` and prints the mean accuracy, MIA AUC and epsilon of every
mechanism at every parameter point. The whole sweep is validated before any run (bad
input: one line, exit status 2, nothing written); Ctrl-C keeps what finished and
writes the summary (exit status 130); a second invocation resumes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from privlab.errors import check


def add_compare_parser(sub) -> None:
    parser = sub.add_parser(
        "compare",
        help="compare mechanisms over parameters and seeds (parallel, resumable)",
        description="Run a sweep of privacy mechanisms x parameters x seeds on the same data "
        "and topology; write summary.csv (one row per run), compare.json and the plots "
        "accuracy_vs_auc.png, accuracy_vs_epsilon.png, accuracy_vs_bytes.png. Runs that "
        "finished are not run again.",
    )
    parser.add_argument("config", help="the sweep's YAML file (see privlab.sweep)")
    parser.add_argument("--out", help="output folder (default: runs/compare-NAME)")
    parser.add_argument(
        "--workers", type=int, default=1, help="parallel processes (default: 1, in-process)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a value of the base config of every run, e.g. --set rounds=4",
    )
    parser.add_argument(
        "--threads",
        metavar="N",
        help="torch threads per worker: an integer >= 1 or 'auto' (default: "
        "$PRIVLAB_THREADS, else the free cores less one, shared among the workers)",
    )
    parser.add_argument(
        "--backend",
        default="local",
        help="local (processes on this machine, default) or ray (a Ray cluster; needs "
        "privlab[ray])",
    )
    parser.add_argument(
        "--ray-address",
        help="the Ray cluster to join (default: $RAY_ADDRESS, else a local instance)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_compare_command)


def run_compare_command(args: argparse.Namespace) -> int:
    from privlab.cli import EXIT_INTERRUPTED
    from privlab.compare import compare
    from privlab.sweep import load_sweep

    check(args.workers >= 1, "--workers", "an integer >= 1", args.workers)
    sweep = load_sweep(args.config, args.set)
    if args.out is not None:
        check(bool(args.out.strip()), "--out", "a folder path", args.out)
    out = Path(args.out or f"runs/compare-{sweep.name}")
    frame = compare(
        sweep,
        out,
        args.workers,
        progress=not args.quiet,
        threads=args.threads,
        backend=args.backend,
        address=args.ray_address,
    )
    finished = table(frame)
    if len(finished):
        print(finished.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    else:
        print("no run finished")
    failed = int((frame["status"] == "failed").sum())
    if failed:
        print(f"{failed} run(s) failed: see the error column of summary.csv")
    print(f"summary.csv, compare.json and plots in {out}/")
    if frame.attrs.get("interrupted"):
        print(
            f"interrupted: kept {frame.attrs['kept']} finished run(s), {len(frame)} of them "
            "in summary.csv (the others tune); run the same command to resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    return 0


def table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per mechanism and parameter point: runs finished, means over them of accuracy,
    MIA AUC, DP epsilon, network epsilon and MB sent, and the learning rate used."""
    finished = frame[frame["status"] == "finished"]
    grouped = finished.groupby(["mechanism", "parameters"], sort=False)
    out = grouped.agg(
        runs=("seed", "size"),
        lr=("lr", "first"),
        accuracy=("test_accuracy", "mean"),
        mia_auc=("mia_auc", "mean"),
        epsilon=("epsilon", "mean"),
        network_epsilon=("network_epsilon", "mean"),
        MB_sent=("bytes_sent", lambda b: b.mean() / 1e6),
    )
    return out.reset_index()
