"""Thread settings for ``privlab run default``, on an idle and on a loaded machine.

Each run is ``privlab run default --quiet`` in a fresh process (so OpenMP variables act
before ``import torch``), timed by the ``wall_time_s`` (training only) of its
summary.json. Settings: ``N`` (``torch.set_num_threads(N)``), ``N:passive`` (the same
with ``OMP_WAIT_POLICY=PASSIVE``) and ``auto`` (privlab's choice, as the CLI makes it:
``prepare_environment()``, then ``configure_threads(None)``). Machine states: ``idle``;
``torch``, another process running a 512x512 matmul loop with torch's default threads
(one per usable core); ``spin``, one pure-Python busy loop (one core taken). Within a
state the settings run interleaved, rep by rep; ratios are to ``1`` in the same state.
Load processes stop by themselves after ``--load-limit`` seconds and are always killed.
``--set KEY=VALUE`` passes config overrides to every run (e.g. ``--set nodes=256``).

    python benchmarks/bench_threads.py [--reps 3] [--json benchmarks/results/threads.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from privlab.results import versions
from privlab.threads import machine_load, usable_cpus

CHILD = """
import os, sys
setting, out, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
if setting == "auto":
    from privlab.threads import configure_threads, prepare_environment
    prepare_environment()
    import torch
    configure_threads(None)
else:
    import torch
    os.environ["PRIVLAB_THREADS"] = setting.split(":")[0]
    torch.set_num_threads(int(os.environ["PRIVLAB_THREADS"]))
from privlab.cli import main
sets = [arg for kv in overrides for arg in ("--set", kv)]
sys.exit(main(["run", "default", "--quiet", "--force", "--out", out, *sets]))
"""

LOADS = {
    "torch": "import torch\na = torch.randn(512, 512)\nwhile time.monotonic() < end:\n    a @ a\n",
    "spin": "while time.monotonic() < end:\n    pass\n",
}


@contextmanager
def machine_state(state: str, limit: float) -> Iterator[None]:
    """Start the load process of ``state`` (none for ``idle``), ending after ``limit`` s;
    always kill it."""
    procs = []
    if state != "idle":
        code = f"import time\nend = time.monotonic() + {limit}\n{LOADS[state]}"
        procs.append(subprocess.Popen([sys.executable, "-c", code]))
    try:
        time.sleep(2.0 if procs else 0.0)  # let the load reach steady state
        yield
        if any(proc.poll() is not None for proc in procs):
            raise RuntimeError(f"the {state} load ended before the runs; raise --load-limit")
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def run_once(setting: str, overrides: list[str]) -> float:
    """``wall_time_s`` of one ``privlab run default`` under ``setting``."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "PRIVLAB_THREADS")}
    if setting.endswith(":passive"):
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    with tempfile.TemporaryDirectory() as out:
        subprocess.run(
            [sys.executable, "-c", CHILD, setting, out, *overrides],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        return json.loads((Path(out) / "summary.json").read_text())["wall_time_s"]


def measure(state: str, settings: list[str], args: argparse.Namespace) -> dict:
    """Seconds per setting, interleaved rep by rep, and the machine load, under ``state``."""
    times: dict[str, list[float]] = {s: [] for s in settings}
    loads = []
    with machine_state(state, args.load_limit):
        for _ in range(args.reps):
            loads.append(machine_load())
            for setting in settings:
                times[setting].append(run_once(setting, args.set))
    base = statistics.median(times["1"])
    return {
        "machine_load_before_reps": loads,
        "settings": {
            s: {
                "median_s": statistics.median(ts),
                "min_s": min(ts),
                "ratio_vs_1": statistics.median(ts) / base,
                "runs_s": ts,
            }
            for s, ts in times.items()
        },
    }


def print_table(results: dict, settings: list[str], args: argparse.Namespace) -> None:
    sets = f" --set {' '.join(args.set)}" if args.set else ""
    print(
        f"\nprivlab run default{sets}: wall_time_s, median of {args.reps} (ratio to 1 thread);"
        f" {usable_cpus()} usable cores"
    )
    print(f"{'setting':<12}" + "".join(f"{state:>20}" for state in results))
    for s in settings:
        cells = (r["settings"][s] for r in results.values())
        print(
            f"{s:<12}"
            + "".join(f"{c['median_s']:>10.3f} s ({c['ratio_vs_1']:>5.1f}x)" for c in cells)
        )
    loads = (f"{max(r['machine_load_before_reps']):>20.2f}" for r in results.values())
    print(f"{'max load':<12}" + "".join(loads))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=["1", "2", "2:passive", "auto"])
    parser.add_argument("--states", nargs="+", default=["idle", "torch", "spin"])
    parser.add_argument("--reps", type=int, default=3, help="runs per setting and state")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--load-limit", type=float, default=600.0, help="max s of one load")
    parser.add_argument("--json", type=Path, help="write the results to this JSON file")
    args = parser.parse_args(argv)
    settings = args.settings if "1" in args.settings else ["1", *args.settings]

    results = {state: measure(state, settings, args) for state in args.states}
    print_table(results, settings, args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "benchmark": "privlab run default --quiet, wall_time_s, a fresh process per run",
            "overrides": args.set,
            "machine": {"platform": platform.platform(), "usable_cores": usable_cpus()},
            "versions": versions(),
            "reps": args.reps,
            "results": results,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
