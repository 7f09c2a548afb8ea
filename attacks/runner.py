"""Attacks of a finished run, by name: what ``privlab attack`` and a config's ``attacks:``
section call.

``RUN_ATTACKS`` maps each attack (``mia``, ``linkability``, ``inversion``, ``source``) to a
``RunAttack``: its methods with the attacker each assumes, the options it takes, and how
it turns a run folder into an ``AttackReport``. ``run_attack`` validates everything
(attack, method, option names and values) before any work.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

from privlab.attacks.decentralized import METHODS as MIA_METHODS
from privlab.attacks.plots import plot_roc, plot_score_histogram
from privlab.attacks.report import AttackReport
from privlab.errors import PrivlabError, check
from privlab.registry import Registry
from privlab.results import Results, load_run

ATTACKS_FOLDER = "attacks"


class RunAttack(abc.ABC):
    """An attack of a run folder: ``methods`` maps each method to its attacker ("peer" or
    "oracle"); ``options`` are the keyword options it accepts."""

    methods: ClassVar[dict[str, str]]
    options: ClassVar[tuple[str, ...]]
    name: ClassVar[str]

    @property
    def default_method(self) -> str:
        return next(iter(self.methods))

    def check(self, method: str, options: Mapping[str, Any]) -> None:
        valid = ", ".join(self.methods)
        check(method in self.methods, "--method", f"one of {valid} for {self.name}", method)
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise PrivlabError(
                f"unknown option{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))} "
                f"for attack {self.name!r}; valid: {', '.join(self.options) or 'none'}"
            )

    @abc.abstractmethod
    def run(
        self,
        results: Results,
        method: str,
        rounds: Iterable[int] | None,
        options: Mapping[str, Any],
        progress: bool,
    ) -> AttackReport:
        """Attack the run and report."""


RUN_ATTACKS: Registry[RunAttack] = Registry("attack")


def run_attack(
    run_dir: str | Path,
    attack: str,
    method: str | None = None,
    *,
    rounds: Iterable[int] | None = None,
    options: Mapping[str, Any] | None = None,
    out: str | Path | None = None,
    progress: bool = False,
) -> tuple[AttackReport, Path]:
    """Run ``attack`` (``method``, default the attack's first) on the run in ``run_dir``
    and write its report into ``out`` (default ``run_dir/attacks/<attack>-<method>``)."""
    runner = RUN_ATTACKS[attack]()
    method = method or runner.default_method
    options = dict(options or {})
    runner.check(method, options)
    results = load_run(run_dir)
    report = runner.run(results, method, rounds, options, progress)
    folder = Path(out) if out is not None else default_out(run_dir, attack, method)
    return report, report.write(folder).parent


def default_out(run_dir: str | Path, attack: str, method: str) -> Path:
    return Path(run_dir) / ATTACKS_FOLDER / f"{attack}-{method}"


def _threat_model(results: Results) -> dict[str, Any]:
    if results.observations is None:
        return {}
    return results.observations.threat_model.to_dict()


def _context(results: Results):
    from privlab.attacks.run_data import AttackContext

    return AttackContext.from_run(results)


@RUN_ATTACKS.register("mia")
class MembershipAttack(RunAttack):
    """Membership inference on every model a curious party received
    (``privlab.attacks.decentralized.ReceivedModelMIA``), pooled over every (victim,
    round) instance."""

    methods: ClassVar[dict[str, str]] = MIA_METHODS
    options = (
        "party",
        "victims",
        "aggregate",
        "completion",
        "exchange",
        "samples_per_victim",
        "match_labels",
        "population",
        "train_fraction",
        "offline_a",
        "reference_models",
        "reference_epochs",
        "confidence",
        "seed",
    )

    def run(self, results, method, rounds, options, progress):
        from privlab.attacks.decentralized import ReceivedModelMIA

        options = dict(options)
        party, victims = options.pop("party", None), options.pop("victims", None)
        attack = ReceivedModelMIA(method=method, **options)
        result = attack.run(_context(results), party, rounds, victims, progress=progress)
        aggregations = {k: v for k, v in result.summary().items() if k != "pooled"}
        summary = {**result.pooled.summary(), **aggregations}
        figures = {
            "roc": plot_roc({f"{method} ({result.party})": result.pooled}),
            "scores": plot_score_histogram(result.pooled),
        }
        return AttackReport(
            "mia",
            method,
            attack.attacker,
            _threat_model(results),
            summary,
            result.instances,
            figures,
        )


@RUN_ATTACKS.register("linkability")
class LinkabilityAttack(RunAttack):
    """Which real node sent each received message (``privlab.attacks.linkability``)."""

    methods: ClassVar[dict[str, str]] = {"lowest-loss": "oracle"}
    options = ("party", "completion", "top", "exchange", "samples_per_candidate", "seed")

    def run(self, results, method, rounds, options, progress):
        from privlab.attacks.linkability import Linkability

        options = dict(options)
        party = options.pop("party", None)
        if "top" in options:
            options["top"] = tuple(options["top"])
        attack = Linkability(**options)
        result = attack.run(_context(results), party, rounds, progress=progress)
        return AttackReport(
            "linkability",
            method,
            attack.attacker,
            _threat_model(results),
            result.summary(),
            result.instances,
        )


@RUN_ATTACKS.register("inversion")
class InversionAttack(RunAttack):
    """Gradient inversion of the victims' first updates
    (``privlab.attacks.run_inversion``): ``analytic`` through the first fully connected
    layer, ``cosine`` by optimisation; mask-aware on chunks."""

    methods: ClassVar[dict[str, str]] = {"analytic": "peer", "cosine": "peer"}
    options = ("party", "victims", "max_messages", "iterations", "restarts", "tv", "seed")

    def run(self, results, method, rounds, options, progress):
        from privlab.attacks.run_inversion import inversion_report

        check(rounds in (None, [1]), "--rounds", "1 (inversion reads the first update)", rounds)
        return inversion_report(
            _context(results), method, options, _threat_model(results), progress=progress
        )


@RUN_ATTACKS.register("source")
class SourceAttack(RunAttack):
    """Who started the rumour of a ``muted-gossip`` run (``privlab.attacks.source``).

    ``first-spy`` and ``maximum-likelihood`` use what the curious nodes received (peer);
    ``rumor-centrality`` and ``jordan-center`` need the snapshot of who knows the rumour
    at the end of the run (oracle: no curious node sees it).
    """

    methods: ClassVar[dict[str, str]] = {
        "first-spy": "peer",
        "maximum-likelihood": "peer",
        "rumor-centrality": "oracle",
        "jordan-center": "oracle",
    }
    options = ("runs", "seed")

    def run(self, results, method, rounds, options, progress):
        from privlab.attacks import source

        check(rounds is None, "--rounds", "not given for source (it reads every round)", rounds)
        observation = source.from_run(results)
        scores = self._scores(source, observation, method, results, options)
        metrics = source.evaluate_source([scores], [observation.source], observation.graph)
        best = max(scores.values())
        predicted = sorted(v for v, s in scores.items() if s == best)
        instances = pd.DataFrame(
            [
                {
                    "source": observation.source,
                    "predicted": predicted[0],
                    "tied_best": len(predicted),
                    "rank": source.source_rank(scores, observation.source),
                    "hop_error": metrics["mean_hop_error"],
                }
            ]
        )
        summary = {**metrics, "source": observation.source, "predicted": predicted}
        return AttackReport(
            "source", method, self.methods[method], _threat_model(results), summary, instances
        )

    @staticmethod
    def _scores(source, observation, method, results, options) -> dict[int, float]:
        graph = observation.graph
        if method == "first-spy":
            guess = source.first_spy(observation, seed=options.get("seed", 0))
            return {v: float(v == guess) for v in graph.nodes}
        if method == "maximum-likelihood":
            mute = results.config["protocol"].get("mute")
            check(mute is not None, "protocol.mute", "set in the run's config", mute)
            return source.maximum_likelihood_by_simulation(
                graph,
                observation.curious,
                observation,
                mute=mute,
                runs=options.get("runs", 200),
                seed=options.get("seed", 0),
            )
        check(
            observation.infected is not None,
            "run",
            "a run whose final state was kept (models.pt)",
            None,
        )
        if method == "rumor-centrality":
            connected = _largest_infected_component(graph, observation.infected)
            return source.rumor_centrality(graph, connected)
        eccentricity = source.infection_eccentricity(graph, observation.infected)
        return {v: -e for v, e in eccentricity.items()}


def _largest_infected_component(graph, infected) -> set[int]:
    import networkx as nx

    components = nx.connected_components(graph.subgraph(infected))
    return max(components, key=len)


def check_configured(attacks: Iterable[Any]) -> None:
    """Refuse a config's ``attacks:`` entry with an unknown attack, method or option
    before the run starts (each entry: ``attack``, ``method``, ``options``)."""
    for entry in attacks:
        runner = RUN_ATTACKS[entry.attack]()
        runner.check(entry.method or runner.default_method, entry.options)


def run_configured(
    run_dir: str | Path, attacks: Iterable[Any], *, progress: bool = False
) -> list[tuple[AttackReport, Path]]:
    """Run a config's ``attacks:`` entries on the finished run in ``run_dir``."""
    return [
        run_attack(
            run_dir,
            entry.attack,
            entry.method,
            rounds=entry.rounds,
            options=entry.options,
            progress=progress,
        )
        for entry in attacks
    ]
