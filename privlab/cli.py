"""The ``privlab`` command: ``run`` an experiment, the ``demo``, privacy ``budget``s,
``gossip`` simulations, ``attack``s of a finished run.

Exit status: 0 done; 2 bad input (one line ``privlab: error: ...`` on stderr, no
traceback, nothing written); 3 training diverged (the rounds before it are kept);
130 interrupted by Ctrl-C (the rounds that finished are kept).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings
from collections.abc import Sequence
from datetime import datetime
from importlib import resources
from pathlib import Path

from privlab.threads import configure_threads, prepare_environment

prepare_environment()  # OMP_WAIT_POLICY must be set before anything loads torch

from privlab.accounting.cli import add_budget_parser  # noqa: E402
from privlab.attack_command import add_attack_parser  # noqa: E402
from privlab.audit_command import add_audit_parser  # noqa: E402
from privlab.compare_command import add_compare_parser  # noqa: E402
from privlab.errors import PrivlabError, check  # noqa: E402
from privlab.gossip_command import add_gossip_parser  # noqa: E402
from privlab.launch import RankFailed  # noqa: E402
from privlab.results import (  # noqa: E402
    FILES,
    LEGACY_OBSERVATIONS,
    privlab_version,
    remove_entries,
)

EXIT_USAGE = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130
EXIT_RANK_FAILED = 4


# argparse takes "-1e-5" for an option unless it looks like a number: every real number
# (with an exponent, inf or nan) is a value, so a negative one is rejected by its range.
_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.I)


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit status 2, reads negative
    numbers as values, and prints help without reStructuredText markup."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = _NUMBER

    def error(self, message: str) -> None:  # type: ignore[override]
        raise PrivlabError(message)

    def format_help(self) -> str:
        return super().format_help().replace("``", "")


def packaged_config(name: str) -> Path | None:
    """The config shipped with privlab under ``name`` (``default``, ``epidemic``), if any."""
    candidate = resources.files("privlab") / "configs" / f"{name}.yaml"
    return Path(str(candidate)) if candidate.is_file() else None


def privacy_line(summary: dict) -> str:
    """The run's epsilon per node, in words: mean and max at the accountant's delta."""
    privacy = summary["privacy"]
    epsilon = privacy["epsilon"]
    line = (
        f"privacy: epsilon per node mean {epsilon['mean']:.3g}, max {epsilon['max']:.3g} "
        f"at delta {privacy['delta']:g} ({privacy['accountant']})"
    )
    note = (summary.get("gradient") or {}).get("epsilon_note")
    return f"{line}; {note}" if note else line


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


def _out_dir(value: str | None, default: str) -> Path:
    if value is None:
        return Path(default)
    check(bool(value.strip()), "--out", "a folder path", value)
    return Path(value)


def _check_out_dir(out: Path, force: bool) -> None:
    """Before any work: ``out`` is a folder (or can become one) holding no earlier run,
    unless ``--force``. Nothing is written here, so a bad config loses nothing."""
    if out.exists() and not out.is_dir():
        raise PrivlabError(f"--out {out} is a file, not a folder")
    if not force and (out / FILES["summary"]).exists():
        raise PrivlabError(
            f"--out {out} already holds a run; choose another folder or pass --force"
        )
    parent = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    if not os.access(parent, os.W_OK):
        raise PrivlabError(f"--out {out} cannot be created: {parent} is not writable")


def _prepare_out_dir(out: Path) -> None:
    """Create ``out`` and remove what an earlier run (``--force``) left there."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PrivlabError(f"--out {out} cannot be created: {error.strerror}") from None
    remove_entries(out, (*FILES.values(), LEGACY_OBSERVATIONS))


def _cmd_run(args: argparse.Namespace) -> int:
    from privlab.config import load_config
    from privlab.experiment import DivergedWarning, build, divergence_message, train

    overrides = list(args.set) + [
        f"{key}={value}"
        for key, value in (("engine", args.engine), ("device", args.device))
        if value
    ]
    config = load_config(_resolve_config_path(args.config), overrides)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = _out_dir(args.out, f"runs/{config.name}-{stamp}")
    distributed = config.engine == "distributed"
    torchrun = distributed and "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if not torchrun or os.environ["RANK"] == "0":
        _check_out_dir(out, args.force)
    if config.attacks:
        from privlab.attacks.runner import check_configured

        check_configured(config.attacks)
    if distributed:
        results = _run_distributed(config, out, args, torchrun)
        if results is None:  # a rank other than 0 under torchrun
            return 0
    else:
        experiment = build(config, run_dir=out)  # every name and value checked first
        _prepare_out_dir(out)
        with warnings.catch_warnings():  # said below, as the one error line
            warnings.simplefilter("ignore", DivergedWarning)
            results = train(experiment, progress=not args.quiet)
        results.save(out)
    if args.plot:
        results.save_plot(out / FILES["plot"])
    summary = results.summary
    accuracy = summary.get("final_accuracy")
    line = f"{config.name}: {summary['completed_rounds']}/{config.rounds} rounds"
    if accuracy:
        line += f", test accuracy mean {accuracy['mean']:.3f} (min {accuracy['min']:.3f})"
    print(f"{line}, {summary['total_bytes'] / 1e6:.2f} MB sent, {summary['wall_time_s']:.1f} s")
    if "privacy" in summary:
        print(privacy_line(summary))
    for party, view in summary.get("network_privacy", {}).get("parties", {}).items():
        epsilon = view["epsilon"]
        print(
            f"network privacy against {party}: epsilon over the other nodes mean "
            f"{epsilon['mean']:.3g}, max {epsilon['max']:.3g} (node {view['worst_source']}) "
            f"at delta {summary['network_privacy']['delta']:g}, per unit sensitivity"
        )
    print(f"results in {out}/")
    if config.attacks and "diverged" not in summary and not summary["interrupted"]:
        _run_configured_attacks(out, config.attacks, progress=not args.quiet)
    if "diverged" in summary:
        print(f"privlab: error: {divergence_message(summary['diverged'], config)}", file=sys.stderr)
        return EXIT_DIVERGED
    if summary["interrupted"]:
        print("interrupted: kept the rounds that finished", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def _run_distributed(config, out: Path, args: argparse.Namespace, torchrun: bool):
    """Run on the distributed engine: join torchrun's process group, or spawn --procs
    local processes; the run folder is rank 0's, loaded back here."""
    from privlab.experiment import build
    from privlab.launch import join, run_processes, run_rank
    from privlab.results import load_run

    timeout = args.timeout
    if torchrun:
        join(timeout)
        try:
            return run_rank(config, out if os.environ["RANK"] == "0" else None)
        finally:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
    build(_single_process(config))  # every name and value checked before spawning
    _prepare_out_dir(out)
    try:
        run_processes(config, args.procs, out, progress=not args.quiet, timeout=timeout)
    except RankFailed as error:
        kept = (out / FILES["summary"]).exists()
        where = f"; the rounds evaluated before it are in {out}/" if kept else ""
        raise RankFailed(f"{error}{where}") from None
    return load_run(out)


def _single_process(config):
    """``config`` on the vectorized engine and the CPU, to check it in the launching
    process without a process group (nor holding GPU memory for the whole run); a GPU
    that is not there is refused first."""
    from privlab.config import parse_config
    from privlab.devices import resolve_device

    resolve_device(config.device)
    return parse_config({**config.to_dict(), "engine": "vectorized", "device": "cpu"})


def _run_configured_attacks(out: Path, attacks: list, *, progress: bool) -> None:
    from privlab.attack_command import headline
    from privlab.attacks.runner import run_configured

    with warnings.catch_warnings():  # the CLI's own report lines say what matters
        warnings.simplefilter("ignore")
        reports = run_configured(out, attacks, progress=progress)
    for report, folder in reports:
        print(f"{report.attack} {report.method} ({report.attacker} attacker): {headline(report)}")
        print(f"  report in {folder}/")


def _cmd_demo(args: argparse.Namespace) -> int:
    from privlab.demo import clear_previous_demo, run_demo

    check(args.rounds >= 1, "--rounds", ">= 1", args.rounds)
    out = _out_dir(args.out, "runs/demo")
    if out.exists() and not out.is_dir():
        raise PrivlabError(f"--out {out} is a file, not a folder")
    replaced = clear_previous_demo(out)
    _, interrupted = run_demo(out, rounds=args.rounds, progress=not args.quiet)
    if replaced:
        print(f"(replaced the previous demo in {out}/)")
    return EXIT_INTERRUPTED if interrupted else 0


def _threads_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        metavar="N",
        help="torch threads: an integer >= 1 or 'auto' (default: $PRIVLAB_THREADS, else auto)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="privlab",
        description="privlab: privacy attacks and defenses in decentralized learning",
    )
    parser.add_argument("--version", action="version", version=f"privlab {privlab_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run_p = sub.add_parser(
        "run",
        help="run one experiment from a YAML config",
        description="Run one experiment and write its run folder: config.yaml, metrics.csv, "
        "summary.json, observations/ (with an observer) and, with --plot, curves.png.",
    )
    run_p.add_argument("config", help="a YAML file, or a packaged config: default, epidemic")
    run_p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set topology.degree=6 (repeatable); setting "
        "topology.name, model.name, protocol.name or data.dataset to a new value drops that "
        "component's options first, e.g. --set topology.name=ring",
    )
    run_p.add_argument("--out", help="run folder (default: runs/NAME-TIMESTAMP)")
    run_p.add_argument("--force", action="store_true", help="write over an earlier run in --out")
    run_p.add_argument(
        "--plot", action="store_true", help="also write curves.png (accuracy, consensus)"
    )
    run_p.add_argument("--quiet", action="store_true", help="no progress bar")
    run_p.add_argument(
        "--engine", help="vectorized (default), loop, or distributed (torch.distributed)"
    )
    run_p.add_argument(
        "--device", help="cpu (default), auto (a GPU when torch sees one), cuda or cuda:K"
    )
    run_p.add_argument(
        "--procs",
        type=int,
        default=2,
        metavar="P",
        help="local processes of the distributed engine (default 2; under torchrun, torchrun's)",
    )
    run_p.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds a distributed run waits for a silent peer before it fails (60)",
    )
    _threads_option(run_p)
    run_p.set_defaults(func=_cmd_run)

    demo_p = sub.add_parser(
        "demo",
        help="D-PSGD and Epidemic Learning on digits, 16 nodes",
        description="Four runs on the embedded digits data; replaces the previous demo's "
        "output in --out.",
    )
    demo_p.add_argument("--out", help="demo folder (default: runs/demo)")
    demo_p.add_argument("--rounds", type=int, default=30, help="rounds per run (default: 30)")
    demo_p.add_argument("--quiet", action="store_true", help="no progress bars")
    _threads_option(demo_p)
    demo_p.set_defaults(func=_cmd_demo)

    add_budget_parser(sub)
    add_gossip_parser(sub)
    add_attack_parser(sub)
    add_compare_parser(sub)
    add_audit_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``privlab`` command; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        configure_threads(getattr(args, "threads", None))
        return args.func(args)
    except RankFailed as error:  # a process of a distributed run failed
        print(f"privlab: error: {error}", file=sys.stderr)
        return EXIT_RANK_FAILED
    except ValueError as error:  # PrivlabError and invalid privacy parameters
        print(f"privlab: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("privlab: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
