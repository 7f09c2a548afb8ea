"""Accountant benchmark: privlab RDP / PLD against Opacus and dp-accounting.

DP-SGD with noise 1.1, sample rate 256/60000, 10^4 steps, delta 1e-5. Every variant is
timed in the same run, interleaved rep by rep (so machine noise hits all alike), from a
cold start (privlab's caches are cleared before each rep). Prints a table of medians and
ratios to the anchors; ``--json FILE`` writes the same numbers. Accuracy of the PLDs is
checked against a fine (dv = 1e-5) privlab PLD computed once, outside the timings.
``--threads N|auto`` sets torch's threads as ``privlab --threads`` does (default:
``PRIVLAB_THREADS``, else auto); the count used heads the table and is in the JSON.

    python benchmarks/bench_accounting.py [--reps 7] [--threads N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from privlab.threads import configure_threads, prepare_environment, thread_report

SIGMA, Q, STEPS, DELTA = 1.1, 256 / 60000, 10_000, 1e-5


def privlab_rdp() -> float:
    from privlab.accounting import GaussianEvent, PoissonSampledEvent, RDPAccountant, clear_caches

    clear_caches()
    return (
        RDPAccountant()
        .compose(PoissonSampledEvent(Q, GaussianEvent(SIGMA)), STEPS)
        .get_epsilon(DELTA)
    )


def privlab_pld(dv: float = 1e-4) -> float:
    from privlab.accounting import GaussianEvent, PLDAccountant, PoissonSampledEvent, clear_caches

    clear_caches()
    return (
        PLDAccountant(dv)
        .compose(PoissonSampledEvent(Q, GaussianEvent(SIGMA)), STEPS)
        .get_epsilon(DELTA)
    )


def opacus_rdp() -> float:
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
    from opacus.accountants.rdp import RDPAccountant

    orders = RDPAccountant.DEFAULT_ALPHAS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        curve = compute_rdp(q=Q, noise_multiplier=SIGMA, steps=STEPS, orders=orders)
        return float(get_privacy_spent(orders=orders, rdp=curve, delta=DELTA)[0])


def _dp_event():
    import dp_accounting

    return dp_accounting.PoissonSampledDpEvent(Q, dp_accounting.GaussianDpEvent(SIGMA))


def dpacc_rdp() -> float:
    import dp_accounting

    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(_dp_event(), STEPS)
    return float(acc.get_epsilon(DELTA))


def dpacc_pld() -> float:
    import dp_accounting

    acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    acc.compose(_dp_event(), STEPS)
    return float(acc.get_epsilon(DELTA))


VARIANTS: dict[str, Callable[[], float]] = {
    "privlab RDP": privlab_rdp,
    "Opacus RDP": opacus_rdp,
    "dp-accounting RDP": dpacc_rdp,
    "privlab PLD (dv=1e-4)": privlab_pld,
    "dp-accounting PLD (dv=1e-4)": dpacc_pld,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7, help="timed repetitions (default 7)")
    parser.add_argument("--threads", help="torch threads: N >= 1 or auto (default: as privlab)")
    parser.add_argument("--json", type=Path, help="write the results to this JSON file")
    args = parser.parse_args(argv)
    prepare_environment()
    configure_threads(args.threads)
    threads = thread_report()

    available = {}
    for name, fn in VARIANTS.items():
        try:
            available[name] = (fn, fn())  # warm-up (imports) and the epsilon value
        except ImportError as error:
            print(f"skipping {name}: {error}")
    times: dict[str, list[float]] = {name: [] for name in available}
    for _ in range(args.reps):  # interleaved: each rep runs every variant once
        for name, (fn, _eps) in available.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    fine = privlab_pld(1e-5)  # accuracy reference, not timed

    med = {name: statistics.median(ts) for name, ts in times.items()}
    anchors = {"RDP": "Opacus RDP", "PLD": "dp-accounting PLD (dv=1e-4)"}
    rows = []
    for name, (_fn, eps) in available.items():
        kind = "PLD" if "PLD" in name else "RDP"
        anchor = anchors[kind]
        row = {
            "variant": name,
            "epsilon": eps,
            "median_ms": 1e3 * med[name],
            "min_ms": 1e3 * min(times[name]),
            "max_ms": 1e3 * max(times[name]),
            "ratio_vs_anchor": med[name] / med[anchor] if anchor in med else None,
            "anchor": anchor,
        }
        if kind == "PLD":
            row["abs_error_vs_fine_pld"] = eps - fine
        rows.append(row)

    print(
        f"\nDP-SGD sigma={SIGMA}, q=256/60000, T={STEPS}, delta={DELTA}; "
        f"{args.reps} interleaved reps, cold caches; fine PLD (dv=1e-5) epsilon {fine:.6f}; "
        f"torch threads {threads['threads']} ({threads['chosen_by']})"
    )
    print(
        f"{'variant':<30}{'epsilon':>12}{'median ms':>12}{'min ms':>9}{'max ms':>9}{'ratio':>8}  vs"
    )
    for r in rows:
        ratio = f"{r['ratio_vs_anchor']:.3f}" if r["ratio_vs_anchor"] is not None else "-"
        print(
            f"{r['variant']:<30}{r['epsilon']:>12.6f}{r['median_ms']:>12.2f}"
            f"{r['min_ms']:>9.2f}{r['max_ms']:>9.2f}{ratio:>8}  {r['anchor']}"
        )
    targets = {
        "privlab RDP <= 0.5 x Opacus RDP": med.get("privlab RDP", 0)
        <= 0.5 * med.get("Opacus RDP", float("inf")),
        "privlab PLD <= 1/3 x dp-accounting PLD": med.get("privlab PLD (dv=1e-4)", 0)
        <= med.get("dp-accounting PLD (dv=1e-4)", float("inf")) / 3,
    }
    for name, ok in targets.items():
        print(f"target {name}: {'met' if ok else 'NOT met'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "setting": {
                        "noise_multiplier": SIGMA,
                        "sample_rate": Q,
                        "steps": STEPS,
                        "delta": DELTA,
                        "reps": args.reps,
                    },
                    "machine": {
                        "platform": platform.platform(),
                        "python": platform.python_version(),
                        "threads": threads,
                    },
                    "fine_pld_epsilon": fine,
                    "results": rows,
                    "targets": targets,
                },
                indent=2,
            )
        )
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
