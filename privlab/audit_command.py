"""``privlab audit``: plant canaries, train, attack from the observers' view, and set an
empirical lower bound on epsilon against the claimed one (``privlab.attacks.audit_run``).

``privlab audit CONFIG [--claimed-epsilon E] [--delta D] [--canaries N] [--runs R]
[--method one-run|multi-run] [--canary-kind dirac|mislabelled|natural] [--target V]
[--out DIR]`` writes ``DIR/audit.json``, ``DIR/report.md``, ``DIR/scores.csv`` and plots.
Exit status: 0 consistent or inconclusive, 1 violation, 2 bad input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime

EXIT_VIOLATION = 1


def add_audit_parser(sub) -> None:
    parser = sub.add_parser(
        "audit",
        help="audit a protocol: canaries in, attack, epsilon lower bound vs the claim",
        description="Train the config's experiment with canaries in a target node (each "
        "planted with probability 1/2), score them from the observers' view (the config's "
        "observer, else the target's neighbours), and bound epsilon from below: one run "
        "(Steinke et al. 2023) or several (Clopper-Pearson, Jagielski et al. 2020), with "
        "thresholds chosen on held-out canaries. Exit 1 on a violation.",
    )
    parser.add_argument("config", help="a YAML run config, or a packaged one: default, epidemic")
    parser.add_argument(
        "--claimed-epsilon",
        type=float,
        metavar="E",
        help="the epsilon to test when the run's ledger claims none",
    )
    parser.add_argument("--delta", type=float, help="delta of the bound (default: the config's)")
    parser.add_argument(
        "--canaries",
        type=int,
        metavar="N",
        help="canaries (default: 200 dirac; up to 100 examples for the input kinds)",
    )
    parser.add_argument("--runs", type=int, metavar="R", help="worlds of a multi-run audit (8)")
    parser.add_argument("--method", default="one-run", help="one-run (default) or multi-run")
    parser.add_argument(
        "--canary-kind", default="dirac", help="dirac (default), mislabelled or natural"
    )
    parser.add_argument("--target", type=int, default=0, help="the node holding the canaries")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, as in privlab run (repeatable)",
    )
    parser.add_argument("--out", help="report folder (default: runs/audit-NAME-TIMESTAMP)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_audit_command)


def run_audit_command(args: argparse.Namespace) -> int:
    from privlab.attacks.audit_report import write_report
    from privlab.attacks.audit_run import AuditSettings, run_audit
    from privlab.cli import EXIT_INTERRUPTED, _out_dir, _resolve_config_path
    from privlab.config import load_config
    from privlab.errors import check

    config = load_config(_resolve_config_path(args.config), args.set)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = _out_dir(args.out, f"runs/audit-{config.name}-{stamp}")
    check(not out.is_file(), "--out", "a folder, not a file", str(out))
    settings = AuditSettings(
        method=args.method,
        kind=args.canary_kind,
        canaries=args.canaries,
        runs=args.runs,
        target=args.target,
        delta=args.delta,
        claimed_epsilon=args.claimed_epsilon,
    ).validated()
    result = run_audit(config, settings, progress=not args.quiet)
    path = write_report(result, out, config.name)
    claim = "none" if result.claimed_epsilon is None else f"{result.claimed_epsilon:.3f}"
    print(
        f"audit of {config.name} ({result.method}, {result.canaries['count']} "
        f"{result.canaries['kind']} canaries): epsilon >= {result.epsilon_lower_bound:.3f} "
        f"at {result.confidence:.0%} confidence; claimed {claim} ({result.claim_source})"
    )
    print(f"verdict: {result.verdict}: {result.reason}")
    print(f"report in {path.parent}/")
    if result.interrupted:
        print("interrupted: the bound uses the rounds and worlds that finished", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_VIOLATION if result.verdict == "violation" else 0
