"""The ``privlab`` command: ``run`` an experiment, the ``demo``, privacy ``budget``s.

Bad input prints one line ``privlab: error: ...`` to stderr and exits with status 2,
without a traceback; an interrupted run keeps what finished and exits with 130.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import datetime
from importlib import resources
from pathlib import Path

from privlab.accounting.cli import add_budget_parser
from privlab.errors import PrivlabError, check

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise PrivlabError(message)


def packaged_config(name: str) -> Path | None:
    """The config shipped with privlab under ``name`` (``default``, ``epidemic``), if any."""
    candidate = resources.files("privlab") / "configs" / f"{name}.yaml"
    return Path(str(candidate)) if candidate.is_file() else None


def _resolve_config_path(spec: str) -> Path:
    path = Path(spec)
    if path.is_file():
        return path
    shipped = packaged_config(spec)
    if shipped is None:
        raise PrivlabError(
            f"config {spec!r} is neither a file nor a packaged config (default, epidemic)"
        )
    return shipped


def _free_out_dir(out: Path, force: bool, markers: tuple[str, ...] = ("summary.json",)) -> Path:
    """Check ``out`` before any work: a folder we can write, holding no earlier run unless
    ``--force``. Nothing already written is lost, and no run is lost to a bad path."""
    if out.exists() and not out.is_dir():
        raise PrivlabError(f"--out {out} is a file, not a folder")
    if not force and any((out / marker).exists() for marker in markers):
        raise PrivlabError(
            f"--out {out} already holds a run; choose another folder or pass --force"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PrivlabError(f"--out {out} cannot be created: {error.strerror}") from None
    return out


def _cmd_run(args: argparse.Namespace) -> int:
    from privlab.config import load_config
    from privlab.experiment import build, train

    config = load_config(_resolve_config_path(args.config), args.set)
    experiment = build(config)  # every name and value checked before anything is written
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = _free_out_dir(Path(args.out or f"runs/{config.name}-{stamp}"), args.force)
    results = train(experiment, progress=not args.quiet)
    results.save(out)
    summary = results.summary
    accuracy = summary.get("final_accuracy")
    line = f"{config.name}: {summary['completed_rounds']}/{config.rounds} rounds"
    if accuracy:
        line += f", test accuracy mean {accuracy['mean']:.3f} (min {accuracy['min']:.3f})"
    print(f"{line}, {summary['total_bytes'] / 1e6:.2f} MB sent, {summary['wall_time_s']:.1f} s")
    print(f"results in {out}/")
    if summary["interrupted"]:
        print("interrupted: kept the rounds that finished", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from privlab.demo import VARIANTS, run_demo

    check(args.rounds >= 1, "--rounds", ">= 1", args.rounds)
    markers = ("comparison.csv", *(f"{variant}/summary.json" for variant in VARIANTS))
    out = _free_out_dir(Path(args.out), args.force, markers)
    _, interrupted = run_demo(out, rounds=args.rounds, progress=not args.quiet)
    return EXIT_INTERRUPTED if interrupted else 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="privlab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run_p = sub.add_parser("run", help="run one experiment from a YAML config")
    run_p.add_argument("config", help="a YAML file, or a packaged config: default, epidemic")
    run_p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set topology.degree=6 (repeatable)",
    )
    run_p.add_argument("--out", help="run folder (default: runs/NAME-TIMESTAMP)")
    run_p.add_argument("--force", action="store_true", help="write over an earlier run in --out")
    run_p.add_argument("--quiet", action="store_true", help="no progress bar")
    run_p.set_defaults(func=_cmd_run)

    demo_p = sub.add_parser("demo", help="D-PSGD and Epidemic Learning on digits, 16 nodes")
    demo_p.add_argument("--out", default="runs/demo", help="run folder (default: runs/demo)")
    demo_p.add_argument("--rounds", type=int, default=30, help="rounds per run (default: 30)")
    demo_p.add_argument("--force", action="store_true", help="write over an earlier demo")
    demo_p.add_argument("--quiet", action="store_true", help="no progress bars")
    demo_p.set_defaults(func=_cmd_demo)

    add_budget_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``privlab`` command; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except ValueError as error:  # PrivlabError and invalid privacy parameters
        print(f"privlab: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("privlab: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
