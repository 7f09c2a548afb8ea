"""``privlab budget``: privacy budgets from the command line.

``privlab budget dp-sgd --noise-multiplier S --sample-rate Q --steps T --delta D``
prints epsilon (and the optimal Renyi order with the RDP accountant); with
``--target-epsilon E`` instead of ``--noise-multiplier`` it prints the smallest noise
multiplier meeting the target. ``gaussian`` is the same without subsampling and ``rgm``
accounts the Relative Gaussian mechanism (RDP only). ``network`` prints the exact
pairwise network DP of Muffliato or Zip-DL gossip averaging against observer nodes
(``privlab.accounting.network``). ``--json`` prints one strict JSON object (an infinite
value is the string ``"inf"``).
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
        metavar="{dp-sgd,gaussian,rgm,network}",
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
    _add_network_parser(sub)
    budget.set_defaults(func=run_budget)


def _add_network_parser(sub: argparse._SubParsersAction) -> None:
    net = sub.add_parser(
        "network",
        help="exact pairwise network DP of Muffliato / Zip-DL gossip averaging",
        description="Exact per-source mu-GDP and epsilon of the view of observer nodes "
        "(Muffliato: Cyffers et al. 2022; Zip-DL: Biswas et al. 2025).",
    )
    net.add_argument("--mechanism", required=True, help="muffliato or zipdl")
    net.add_argument(
        "--topology",
        required=True,
        help="ring, torus, complete, regular, erdos_renyi, small_world or hypercube",
    )
    net.add_argument("--nodes", type=_positive_int("nodes"), required=True, help="n")
    net.add_argument("--degree", type=_positive_int("degree"), help="degree (regular)")
    net.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="other topology option (repeatable), e.g. p=0.3 or k=4",
    )
    net.add_argument("--seed", type=int, default=0, help="topology seed (default 0)")
    net.add_argument(
        "--gossip-steps", type=_positive_int("gossip_steps"), required=True, help="K >= 1"
    )
    net.add_argument(
        "--noise-multiplier", type=float, required=True, help="noise std per draw, >= 0"
    )
    net.add_argument("--observers", type=int, nargs="+", required=True, help="observer nodes")
    net.add_argument(
        "--colluding",
        action="store_true",
        help="the observers pool their views (default: each is its own party)",
    )
    net.add_argument("--delta", type=float, required=True, help="target delta, in (0, 1)")
    net.add_argument("--json", action="store_true", help="print one JSON object")


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
    if args.budget_command == "network":
        result = _network(args)
        print(dumps(result) if args.json else _network_text(result))
        return 0
    result = _budget(args)
    if args.json:
        print(dumps(result))
    else:
        print(_text(result))
    return 0


def _option_value(text: str) -> object:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _network_matrix(args: argparse.Namespace):
    """The Metropolis-Hastings mixing matrix (float64 numpy) of the requested topology."""
    import networkx as nx

    from privlab.topology import available_topologies, build_topology, from_networkx

    options: dict[str, object] = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise PrivlabError(f"option must be KEY=VALUE, got {item!r}")
        options[key.strip().replace("-", "_")] = _option_value(value.strip())
    if args.degree is not None:
        options["degree"] = args.degree
    n = args.nodes
    if args.topology == "hypercube":
        dim = n.bit_length() - 1
        if n < 2 or n != 1 << dim:
            raise PrivlabError(f"nodes must be a power of 2 (>= 2) for a hypercube, got {n}")
        if options:
            raise PrivlabError(f"hypercube takes no options, got {', '.join(sorted(options))}")
        topology = from_networkx(nx.hypercube_graph(dim))
    else:
        names = available_topologies()
        if args.topology not in names:
            raise PrivlabError(
                f"topology must be one of {', '.join([*names, 'hypercube'])}, got {args.topology!r}"
            )
        topology = build_topology(args.topology, n, seed=args.seed, **options)
    return topology.plan(0).mixing_matrix("dense").double().numpy()


def _network(args: argparse.Namespace) -> dict[str, Any]:
    from privlab.accounting.network import (
        MECHANISMS,
        muffliato_pairwise_rdp_formula,
        pairwise_network_mu,
    )

    if args.mechanism not in MECHANISMS:
        raise PrivlabError(
            f"mechanism must be one of {', '.join(MECHANISMS)}, got {args.mechanism!r}"
        )
    delta = check_delta(args.delta)
    noise = args.noise_multiplier
    if not (math.isfinite(noise) and noise >= 0):
        raise PrivlabError(f"noise_multiplier must be >= 0 and finite, got {noise!r}")
    n = args.nodes
    bad = [o for o in args.observers if not 0 <= o < n]
    if bad:
        raise PrivlabError(f"observers must be nodes in [0, {n - 1}], got {bad}")
    W = _network_matrix(args)
    observers = sorted(set(args.observers))
    parties = [observers] if args.colluding else [[o] for o in observers]
    pairs, formula = [], []
    for party in parties:
        label = f"node:{party[0]}" if len(party) == 1 else "nodes:" + ",".join(map(str, party))
        exact = pairwise_network_mu(args.mechanism, W, party, args.gossip_steps, noise, delta)
        pairs += [{"observer": label, "source": u, **r} for u, r in exact.items()]
        if formula is not None and args.mechanism == "muffliato":
            per_pair = muffliato_pairwise_rdp_formula(W, party, args.gossip_steps, noise, delta)
            if per_pair is None:
                formula = None
            else:
                formula += [{"observer": label, "source": u, **r} for u, r in per_pair.items()]
        else:
            formula = None
    key = lambda r: (-r["epsilon"], r["observer"], r["source"])  # noqa: E731
    pairs.sort(key=key)
    if formula is not None:
        formula.sort(key=key)
    return {
        "mechanism": args.mechanism,
        "topology": args.topology,
        "nodes": n,
        "gossip_steps": args.gossip_steps,
        "noise_multiplier": noise,
        "observers": observers,
        "colluding": bool(args.colluding),
        "delta": delta,
        "pairs": pairs,
        "per_pair_formula": formula,
    }


def _network_text(r: dict[str, Any]) -> str:
    how = "colluding" if r["colluding"] else "each alone"
    lines = [
        f"{r['mechanism']} on {r['topology']} ({r['nodes']} nodes), {r['gossip_steps']} "
        f"gossip step{'s' if r['gossip_steps'] != 1 else ''}, noise {r['noise_multiplier']:g}, "
        f"observers {r['observers']} ({how}), delta {r['delta']:g}",
    ]
    formula = {(f["observer"], f["source"]): f["epsilon"] for f in r["per_pair_formula"] or []}
    header = f"{'observer':>12} {'source':>6} {'mu':>10} {'epsilon':>10}"
    lines.append(header + (f" {'formula eps':>12}" if formula else ""))
    for p in r["pairs"]:
        line = f"{p['observer']:>12} {p['source']:>6} {p['mu']:>10.4g} {p['epsilon']:>10.4g}"
        if formula:
            line += f" {formula[(p['observer'], p['source'])]:>12.4g}"
        lines.append(line)
    if formula:
        lines.append("formula: Muffliato's per-pair sum (capped at local DP), not an upper bound")
    return "\n".join(lines)
