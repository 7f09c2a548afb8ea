"""``privlab attack``: attack a finished run and write ``attack.json``, ``attack.csv`` and
plots (default folder ``RUN_DIR/attacks/<attack>-<method>/``).

``privlab attack mia|linkability|inversion|source RUN_DIR [--method NAME] [--rounds
1,4-6] [--out DIR] [--option KEY=VALUE ...]``; the methods and options of each attack are
those of ``privlab.attacks.runner.RUN_ATTACKS``.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

import yaml

from privlab.errors import PrivlabError, check

ATTACK_NAMES = ("mia", "linkability", "inversion", "source")
METHODS_HELP = """methods (attacker: peer = what a curious node holds, oracle = more):
  mia          loss, population, calibrated, rmia-offline (peer); trajectory, lira-online,
               lira-offline, rmia-online (oracle)
  linkability  lowest-loss (oracle: every candidate's data)
  inversion    analytic, cosine (peer; round 1, one local step, no gradient mechanism)
  source       first-spy, maximum-likelihood (peer); rumor-centrality, jordan-center
               (oracle: who knows the rumour at the end)
options: privlab.attacks.runner.RUN_ATTACKS[ATTACK].options, e.g. --option party=node:0,
  --option completion=own (Shatter chunks), --option samples_per_victim=200"""


def add_attack_parser(sub) -> None:
    parser = sub.add_parser(
        "attack",
        help="attack a finished run: membership, linkability, inversion, source",
        description="Attack a run folder (it needs an observer section and its final "
        "models) and write attack.json, attack.csv and plots.",
        epilog=METHODS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("attack", help=f"one of {', '.join(ATTACK_NAMES)}")
    parser.add_argument("run_dir", help="a run folder written by privlab run")
    parser.add_argument("--method", help="the attack's method (default: its first)")
    parser.add_argument("--rounds", help="rounds to attack, e.g. 1,4-6 (default: every one)")
    parser.add_argument("--out", help="report folder (default: RUN_DIR/attacks/ATTACK-METHOD)")
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the attack, e.g. --option completion=own (repeatable)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_attack_command)


def parse_rounds(text: str | None) -> list[int] | None:
    """``"1,4-6"`` -> ``[1, 4, 5, 6]``; rounds count from 1."""
    if text is None:
        return None
    rounds: set[int] = set()
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        try:
            first, last = int(low), int(high or low)
        except ValueError:
            raise PrivlabError(
                f"--rounds must be rounds >= 1 and ranges like 1,4-6, got {text!r}"
            ) from None
        check(1 <= first <= last, "--rounds", "rounds >= 1 and ranges low-high", text)
        rounds.update(range(first, last + 1))
    return sorted(rounds)


def parse_options(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs, each value read as YAML (``200``, ``true``, ``[1, 5]``)."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        check(bool(sep and key.strip()), "--option", "KEY=VALUE", item)
        options[key.strip()] = yaml.safe_load(value)
    return options


def run_attack_command(args: argparse.Namespace) -> int:
    from privlab.attacks.runner import RUN_ATTACKS, run_attack

    RUN_ATTACKS[args.attack]  # an unknown attack names the valid ones first
    run_dir = Path(args.run_dir)
    check(run_dir.is_dir(), "RUN_DIR", "a run folder written by privlab run", str(run_dir))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report, folder = run_attack(
            run_dir,
            args.attack,
            args.method,
            rounds=parse_rounds(args.rounds),
            options=parse_options(args.option),
            out=args.out,
            progress=not args.quiet,
        )
    for message in dict.fromkeys(str(w.message) for w in caught):
        print(f"privlab: warning: {message}", file=sys.stderr)
    print(f"{report.attack} {report.method} ({report.attacker} attacker): {headline(report)}")
    print(f"report in {folder}/")
    return 0


def headline(report) -> str:
    """One line of the report's main numbers."""
    s = report.summary
    if report.attack == "mia":
        low, high = s["auc_ci"]
        tpr = s["tpr_at_fpr"]["0.01"]
        return (
            f"AUC {s['auc']:.3f} ({low:.3f} to {high:.3f}), TPR at 1% FPR "
            f"{tpr['tpr']:.3f}, over {s['instances']} instances"
        )
    if report.attack == "linkability":
        parts = [
            f"top-{k} {t['accuracy']:.3f} (chance {t['baseline']:.3f})" for k, t in s["top"].items()
        ]
        return ", ".join(parts) + f", over {s['messages']} messages"
    if report.attack == "source":
        return (
            f"predicted {s['predicted']}, true source {s['source']}, "
            f"hop error {s['mean_hop_error']:g}"
        )
    return ", ".join(f"{k} {v:.3g}" for k, v in s.items() if isinstance(v, float))
