"""``privlab budget``: privacy budgets from the command line.

``privlab budget dp-sgd --noise-multiplier S --sample-rate Q --steps T --delta D``
prints epsilon (and the optimal Renyi order with the RDP accountant); with
``--target-epsilon E`` instead of ``--noise-multiplier`` it prints the smallest noise
multiplier meeting the target. ``gaussian`` is the same without subsampling and ``rgm``
accounts the Relative Gaussian mechanism (RDP only). ``--json`` prints one strict JSON
object (an infinite value is the string ``"inf"``).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

from privlab.accounting.calibrate import calibrate, calibrate_noise_multiplier, make_accountant
from privlab.accounting.events import (
    GaussianEvent,
    PoissonSampledEvent,
    PrivacyEvent,
    RelativeGaussianEvent,
    SelfComposedEvent,
    check_count,
    check_delta,
    check_positive,
    check_sample_rate,
)
from privlab.accounting.rdp_accountant import RDPAccountant
from privlab.accounting.relative_gaussian import max_order
from privlab.errors import PrivlabError
from privlab.jsonio import dumps

__all__ = ["add_budget_parser", "run_budget"]


def _positive_int(name: str) -> Callable[[str], int]:
    """argparse type: a positive integer, with an error naming ``name``."""

    def parse(text: str) -> int:
        try:
            value = float(text)
            if not value.is_integer() or value < 1:
                raise ValueError
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name} must be a positive integer (>= 1), got {text!r}"
            ) from None
        return int(value)

    parse.__name__ = name
    return parse


_steps = _positive_int("steps")


def _common(p: argparse.ArgumentParser, steps_default: int | None, accountant: bool) -> None:
    if steps_default is None:
        p.add_argument("--steps", type=_steps, required=True, help="number of steps T")
    else:
        p.add_argument(
            "--steps",
            type=_steps,
            default=steps_default,
            help=f"number of releases T (default: {steps_default})",
        )
    p.add_argument("--delta", type=float, required=True, help="target delta, in (0, 1)")
    if accountant:
        p.add_argument(
            "--accountant",
            choices=("rdp", "pld"),
            default="rdp",
            help="rdp (Renyi DP, default) or pld (tight, privacy loss distribution)",
        )
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _noise_or_target(p: argparse.ArgumentParser, noise_help: str) -> None:
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--noise-multiplier", type=float, help=noise_help)
    group.add_argument(
        "--target-epsilon",
        type=float,
        help="print the smallest noise multiplier reaching this epsilon",
    )


def add_budget_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``budget`` (with ``dp-sgd``, ``gaussian``, ``rgm``) to the ``privlab`` command."""
    budget = subparsers.add_parser(
        "budget",
        help="privacy budget (epsilon) of DP-SGD, the Gaussian mechanism, the RGM",
        description=__doc__.splitlines()[0],
    )
    sub = budget.add_subparsers(
        dest="budget_command",
        required=True,
        parser_class=type(budget),
        metavar="{dp-sgd,gaussian,rgm}",
    )
    dp_sgd = sub.add_parser("dp-sgd", help="DP-SGD: Poisson-subsampled Gaussian, T steps")
    _noise_or_target(dp_sgd, "noise multiplier (std / clipping norm)")
    dp_sgd.add_argument(
        "--sample-rate", type=float, required=True, help="Poisson sampling rate q, in (0, 1]"
    )
    _common(dp_sgd, None, accountant=True)
    retired = sub.add_parser("dpsgd", add_help=False, prefix_chars="+")  # old name: an error
    retired.add_argument("ignored", nargs=argparse.REMAINDER)
    retired.set_defaults(func=_renamed)

    gauss = sub.add_parser("gaussian", help="Gaussian mechanism, T releases, no sampling")
    _noise_or_target(gauss, "noise std / L2 sensitivity")
    _common(gauss, 1, accountant=True)

    rgm = sub.add_parser("rgm", help="Relative Gaussian mechanism (RDP accountant)")
    _noise_or_target(rgm, "noise multiplier k: noise std = k * (rel * ||g|| + abs)")
    rgm.add_argument(
        "--relative-sensitivity",
        type=float,
        required=True,
        help="relative sensitivity Delta, in [0, 1)",
    )
    rgm.add_argument(
        "--absolute-sensitivity",
        type=float,
        default=0.0,
        help="absolute sensitivity R >= 0 (default 0; does not change epsilon)",
    )
    rgm.add_argument(
        "--dimension", type=_positive_int("dimension"), required=True, help="output dimension d"
    )
    _common(rgm, 1, accountant=False)
    budget.set_defaults(func=run_budget)


def _renamed(args: argparse.Namespace) -> int:
    raise PrivlabError(
        "privlab budget dpsgd is now privlab budget dp-sgd (differentially private SGD; "
        "'d-psgd' is the decentralized training protocol)"
    )


def _dp_sgd_event(sigma: float, q: float, steps: int) -> PrivacyEvent:
    step: PrivacyEvent = GaussianEvent(sigma)
    if q < 1.0:
        step = PoissonSampledEvent(q, step)
    return step if steps == 1 else SelfComposedEvent(step, steps)


def _rgm_event(args: argparse.Namespace, k: float) -> PrivacyEvent:
    step = RelativeGaussianEvent(
        k, args.relative_sensitivity, args.absolute_sensitivity, args.dimension
    )
    return step if args.steps == 1 else SelfComposedEvent(step, args.steps)


def _budget(args: argparse.Namespace) -> dict[str, Any]:
    """The result of one ``budget`` command as a dict (validated inputs echoed)."""
    cmd = args.budget_command
    delta = check_delta(args.delta)
    steps = check_count(args.steps, "steps")
    name = getattr(args, "accountant", "rdp")
    out: dict[str, Any] = {"mechanism": cmd}
    if cmd == "rgm":
        RelativeGaussianEvent(
            1.0, args.relative_sensitivity, args.absolute_sensitivity, args.dimension
        )  # validates the sensitivities and d
        out.update(
            relative_sensitivity=args.relative_sensitivity,
            absolute_sensitivity=args.absolute_sensitivity,
            dimension=args.dimension,
            max_order=max_order(args.relative_sensitivity),
        )
    q = 1.0
    if cmd == "dp-sgd":
        q = check_sample_rate(args.sample_rate)
        out["sample_rate"] = q
    out.update(steps=steps, delta=delta, accountant=name)
    if args.target_epsilon is not None:
        target = check_positive(args.target_epsilon, "target_epsilon")
        if cmd == "rgm":
            sigma = calibrate(lambda k: _rgm_event(args, k), target, delta, "rdp")
        else:
            sigma = calibrate_noise_multiplier(target, delta, q, steps, accountant=name)
        out.update(noise_multiplier=sigma, target_epsilon=target)
    else:
        sigma = check_positive(args.noise_multiplier, "noise_multiplier")
        out["noise_multiplier"] = sigma
    event = _rgm_event(args, sigma) if cmd == "rgm" else _dp_sgd_event(sigma, q, steps)
    accountant = make_accountant(name)
    accountant.compose(event)
    if isinstance(accountant, RDPAccountant):
        eps, order = accountant.get_epsilon_and_order(delta)
        out.update(epsilon=eps, order=order if math.isfinite(eps) else None)
    else:
        out.update(epsilon=accountant.get_epsilon(delta), order=None)
    return out


def _text(r: dict[str, Any]) -> str:
    inputs = f"{r['mechanism']}: "
    if "sample_rate" in r:
        inputs += f"sample rate {r['sample_rate']:g}, "
    if r["mechanism"] == "rgm":
        inputs += (
            f"relative sensitivity {r['relative_sensitivity']:g}, dimension {r['dimension']}, "
        )
    inputs += f"{r['steps']} step{'s' if r['steps'] != 1 else ''}, delta {r['delta']:g}"
    how = "RDP" if r["accountant"] == "rdp" else "PLD"
    order = f" (optimal order {r['order']:.4g})" if r.get("order") is not None else ""
    lines = [inputs]
    if "target_epsilon" in r:
        lines.append(
            f"noise multiplier {r['noise_multiplier']:.6g} "
            f"(smallest reaching epsilon <= {r['target_epsilon']:g}, {how} accountant)"
        )
    else:
        lines.append(f"noise multiplier {r['noise_multiplier']:g}")
    lines.append(f"epsilon {r['epsilon']:.6f} [{how}]{order}")
    return "\n".join(lines)


def run_budget(args: argparse.Namespace) -> int:
    """Run a ``privlab budget`` command: print text (or one JSON object), return 0.

    Invalid values raise ``PrivlabError`` (a ``ValueError``) naming the parameter.
    """
    result = _budget(args)
    if args.json:
        print(dumps(result))
    else:
        print(_text(result))
    return 0
