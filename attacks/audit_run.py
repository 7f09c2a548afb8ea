"""Audit a protocol end to end: plant canaries in a target node, train, attack from the
observers' view, and set an empirical lower bound on epsilon against the claimed one.

The harness of the reference (``shared/reference/attacks.md`` §4.7):

1. m canaries (``attacks.canaries``: Dirac gradients by default, or natural / mislabelled
   examples) go to the target node, each independently with probability 1/2;
2. the config's experiment trains once (``one-run``, Steinke, Nasr, Jagielski, NeurIPS
   2023) or R times (``multi-run``, Jagielski, Ullman, Oprea, NeurIPS 2020) -- the R worlds
   side by side in one engine when the protocol allows it (``attacks.audit_worlds``);
3. the observers (the config's observer section, else the target's neighbours,
   colluding, who also know what they sent it) score every canary
   (``attacks.audit_scores``);
4. the canaries are split at random: on the held-out part the audit chooses the score
   statistic and the decision thresholds, on the rest it counts and bounds. Nothing is
   searched on the evaluation canaries.

One-run: guesses IN above ``t+``, OUT below ``t-``, abstain between; the bound is
:func:`privlab.attacks.audit.eps_one_run`. Multi-run: every (world, canary) is a trial of
the test "IN when score >= t"; the bound is Clopper-Pearson
(:func:`privlab.attacks.audit.eps_lower_bound_clopper_pearson`). Pooling the canaries of
one world treats their outcomes as independent, which is exact for Dirac canaries on
coordinates no data gradient touches (each has its own sampling draws and noise
coordinates) and an approximation otherwise; one-run needs no such assumption.

The verdict compares the bound with the claim: ``violation`` when the bound exceeds it
(at the audit's confidence), ``consistent`` when it does not and the audit could have
shown a violation (its ceiling, the bound a perfect attack would reach, is above the
claim), ``inconclusive`` otherwise, with the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from privlab.accounting.network import gdp_epsilon, pairwise_network_mu
from privlab.attacks import audit as bounds
from privlab.attacks.audit_scores import (
    DIRAC_STATISTICS,
    INPUT_STATISTICS,
    TargetView,
    dirac_scores,
    input_scores,
    target_views,
)
from privlab.attacks.audit_worlds import WorldsTopology, stack_worlds
from privlab.attacks.canaries import (
    DIRAC_NORM,
    KINDS,
    DiracCanaryGradients,
    capacity,
    check_count,
    dirac_coordinates,
    draw_inclusion,
    plant_input_canaries,
)
from privlab.attacks.run_data import initial_model
from privlab.config import ExperimentConfig, parse_config
from privlab.errors import PrivlabError, check, is_integer, is_real
from privlab.experiment import Experiment, build, federated_data, train
from privlab.observe import ThreatModel, threat_model_from
from privlab.partition import FederatedData
from privlab.protocol import Protocol
from privlab.rng import derive_seed
from privlab.state import ParamSpec
from privlab.topology import Topology

METHODS = ("one-run", "multi-run")
NETWORK_CLAIM = (
    "network accounting of the observers against the target, per unit of sensitivity: "
    "it holds when one record moves the target's model by at most 1"
)
DIRAC_CANARIES = 200
INPUT_CANARIES = 100  # at most; fewer when the target holds fewer records


@dataclass(frozen=True)
class AuditSettings:
    """What to audit and how; None fields take the config's values or the defaults."""

    method: str = "one-run"
    kind: str = "dirac"
    canaries: int | None = None
    runs: int | None = None
    target: int = 0
    delta: float | None = None
    claimed_epsilon: float | None = None
    confidence: float = 0.95
    holdout_fraction: float = 0.5
    canary_norm: float = DIRAC_NORM

    def validated(self) -> AuditSettings:
        check(self.method in METHODS, "--method", "one of " + ", ".join(METHODS), self.method)
        check(self.kind in KINDS, "--canary-kind", "one of " + ", ".join(KINDS), self.kind)
        runs = self.runs if self.runs is not None else (1 if self.method == "one-run" else 8)
        check(is_integer(runs) and runs >= 1, "--runs", "an integer >= 1", runs)
        if self.method == "multi-run":
            check(runs >= 2, "--runs", ">= 2 for a multi-run audit", runs)
        count = self.canaries
        if count is not None:
            check(is_integer(count) and count >= 2, "--canaries", "an integer >= 2", count)
        if self.claimed_epsilon is not None:
            check(
                is_real(self.claimed_epsilon) and self.claimed_epsilon >= 0,
                "--claimed-epsilon",
                ">= 0",
                self.claimed_epsilon,
            )
        if self.delta is not None:
            check(is_real(self.delta) and 0 < self.delta < 1, "--delta", "in (0, 1)", self.delta)
        check(0.5 <= self.confidence < 1, "confidence", "in [0.5, 1)", self.confidence)
        check(0 < self.holdout_fraction < 1, "holdout_fraction", "in (0, 1)", self.holdout_fraction)
        check(self.canary_norm > 0, "canary_norm", "> 0", self.canary_norm)
        return AuditSettings(**{**self.__dict__, "runs": runs, "canaries": count})


@dataclass
class AuditResult:
    """Everything the audit found (``to_json`` is ``audit.json``)."""

    claimed_epsilon: float | None
    claim_source: str
    epsilon_lower_bound: float
    ceiling: float
    confidence: float
    delta: float
    method: str
    canaries: dict[str, Any]
    verdict: str
    reason: str
    statistic: str
    counts: dict[str, Any]
    worlds: dict[str, Any]
    observers: dict[str, Any]
    accuracy: float | None
    interrupted: bool
    scores: dict[str, np.ndarray] = field(repr=False, default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "scores"}
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}


# ------------------------------------------------------------------------------- setup


def _observers(topology: Topology, target: int, config: ExperimentConfig) -> ThreatModel:
    """The config's observers, or the target's neighbours colluding plus the links they
    send the target on (what they sent is theirs to know). On a dynamic graph anyone may
    be a neighbour: every other node observes."""
    if config.observer is not None:
        threat = threat_model_from(**config.observer.model_dump())
        check(
            target not in threat.curious_nodes,
            "--target",
            "a node that is not itself curious",
            target,
        )
        return threat
    n = topology.num_nodes
    if topology.dynamic:
        return threat_model_from([v for v in range(n) if v != target], colluding=True)
    plan = topology.plan(1)
    neighbours = sorted(set(plan.dst[plan.src == target].tolist()))
    links = [(u, target) for u in sorted(set(plan.src[plan.dst == target].tolist()))]
    return threat_model_from(neighbours, colluding=True, eavesdropped_links=links)


def _shift(threat: ThreatModel, n: int, worlds: int) -> ThreatModel:
    """The same observers in every world."""
    nodes = [v + r * n for r in range(worlds) for v in threat.curious_nodes]
    links = [(s + r * n, d + r * n) for r in range(worlds) for s, d in threat.eavesdropped_links]
    colluding = threat.colluding or worlds > 1
    return threat_model_from(nodes, colluding, links, threat.rounds)


def _world_config(config: ExperimentConfig, nodes: int, delta: float, seed: int):
    raw = config.to_dict()
    raw.update(nodes=nodes, seed=seed)
    raw["privacy"] = {**raw.get("privacy", {}), "delta": delta}
    raw.pop("observer", None)
    raw.pop("attacks", None)
    return parse_config(raw)


@dataclass
class _Planted:
    data: list[FederatedData]
    included: list[np.ndarray]
    samples: np.ndarray | None
    coordinates: np.ndarray | None


def _plant(
    config: ExperimentConfig, settings: AuditSettings, data: FederatedData, dim: int, worlds: int
) -> _Planted:
    """The canaries of every world: the same canaries, drawn in or out per world."""
    target, kind, count = settings.target, settings.kind, settings.canaries
    check(0 <= target < config.nodes, "--target", f"a node in [0, {config.nodes})", target)
    check_count(kind, count, data, target, dim)
    included = [
        draw_inclusion(count, derive_seed(config.seed, "audit-world", r)) for r in range(worlds)
    ]
    if kind == "dirac":
        coordinates = dirac_coordinates(initial_model(config, data), data, count, config.seed)
        return _Planted([data] * worlds, included, None, coordinates)
    planted = [plant_input_canaries(data, target, kind, inc, config.seed) for inc in included]
    return _Planted([p for p, _ in planted], included, planted[0][1].samples, None)


def _default_plan(protocol: Protocol) -> bool:
    return type(protocol).plan is Protocol.plan


@dataclass
class _Trained:
    experiments: list[Experiment]
    targets: list[list[int]]  # per experiment, the target of each world it holds
    interrupted: bool
    rounds: int
    together: bool
    note: str


def _train_worlds(
    config: ExperimentConfig,
    settings: AuditSettings,
    planted: _Planted,
    topology: Topology,
    threat: ThreatModel,
    delta: float,
    progress: bool,
) -> _Trained:
    """Train every world: side by side when the protocol takes the stacked graph, else
    one after the other (each with its own seed); Ctrl-C keeps the finished worlds."""
    n, worlds, target = config.nodes, len(planted.included), settings.target

    def wrap(targets):
        if planted.coordinates is None:
            return None
        return lambda inner: DiracCanaryGradients(
            inner, targets, planted.coordinates, planted.included, settings.canary_norm
        )

    note = ""
    if worlds > 1:
        stacked = _world_config(config, n * worlds, delta, config.seed)
        targets = [target + r * n for r in range(worlds)]
        try:
            experiment = build(
                stacked,
                data=stack_worlds(planted.data),
                topology=WorldsTopology(topology, worlds),
                threat=_shift(threat, n, worlds),
                wrap_gradient=wrap(targets),
            )
        except PrivlabError as error:
            note = f"worlds trained one by one: the protocol refuses the stacked graph ({error})"
        else:
            if _default_plan(experiment.protocol):
                results = train(experiment, progress=progress)
                return _Trained(
                    [experiment],
                    [targets],
                    bool(results.summary["interrupted"]),
                    int(results.summary["completed_rounds"]),
                    True,
                    "worlds trained side by side",
                )
            note = "worlds trained one by one: the protocol draws its own communication plan"
    done: list[Experiment] = []
    interrupted, rounds = False, config.rounds
    for r in range(worlds):
        seed = config.seed if r == 0 else derive_seed(config.seed, "audit-world-seed", r)
        experiment = build(
            _world_config(config, n, delta, seed),
            data=planted.data[r],
            topology=topology,
            threat=threat,
            wrap_gradient=None
            if planted.coordinates is None
            else (
                lambda inner, r=r: DiracCanaryGradients(
                    inner,
                    [target],
                    planted.coordinates,
                    [planted.included[r]],
                    settings.canary_norm,
                )
            ),
        )
        results = train(experiment, progress=progress)
        if results.summary["interrupted"]:
            interrupted = True
            if done:
                break
        done.append(experiment)
        rounds = min(rounds, int(results.summary["completed_rounds"]))
        if interrupted:
            break
    return _Trained(done, [[target] for _ in done], interrupted, rounds, False, note)


# ------------------------------------------------------------------------------ scoring


def _scores(
    trained: _Trained, planted: _Planted, views: list[list[TargetView]], statistic: str
) -> np.ndarray:
    """Scores ``[worlds, m]`` of every canary under ``statistic``."""
    rows = []
    for experiment, group in zip(trained.experiments, views, strict=True):
        engine, topology = experiment.engine, experiment.topology
        initial = engine.initial_state[0].double().cpu()
        isolable = (
            not topology.dynamic
            and experiment.protocol.exchanges == 1
            and _default_plan(experiment.protocol)
        )
        plans = {t: topology.plan(t) for t in range(trained.rounds + 1)} if isolable else None
        for view in group:
            if planted.coordinates is not None:
                rows.append(dirac_scores(view, initial, planted.coordinates, statistic, plans))
            else:
                data = experiment.data.dataset
                index = torch.from_numpy(planted.samples)
                rows.append(
                    input_scores(
                        view,
                        initial,
                        experiment.model,
                        data.X[index],
                        data.y[index],
                        statistic,
                        plans,
                    )
                )
    return np.stack(rows)


# ------------------------------------------------------------------------------- bounds


def _claim(
    trained: _Trained,
    settings: AuditSettings,
    threat: ThreatModel,
    topology: Topology,
    delta: float,
) -> tuple[float | None, str]:
    """The epsilon the run claims for the target: its ledger's (the largest over worlds),
    else the exact network accounting of the observers against it, else the flag."""
    claims = []
    for experiment, targets in zip(trained.experiments, trained.targets, strict=True):
        epsilon = experiment.ledger.epsilon()
        if epsilon is not None:
            claims.extend(float(epsilon[t]) for t in targets)
    if claims and math.isfinite(max(claims)):
        return max(claims), "ledger"
    protocol = trained.experiments[0].protocol
    model = protocol.network_model()
    if model is not None and not topology.dynamic and threat.curious_nodes:
        mechanism, steps, noise = model
        W = topology.plan(1).mixing_matrix("dense").double().numpy()
        mu = pairwise_network_mu(mechanism, W, threat.curious_nodes, steps, noise)
        if settings.target in mu:
            value = gdp_epsilon(math.sqrt(trained.rounds) * mu[settings.target]["mu"], delta)
            return value, NETWORK_CLAIM
    if settings.claimed_epsilon is not None:
        return float(settings.claimed_epsilon), "--claimed-epsilon"
    return None, "none"


def _verdict(
    claim: float | None, bound: float, ceiling: float, seen: bool, confidence: float
) -> tuple[str, str]:
    if not seen:
        return "inconclusive", (
            "the observers never received a whole model attributed to the target (the "
            "protocol hides senders, sends chunks or masks): nothing to score"
        )
    if claim is None:
        return "inconclusive", (
            "no claimed epsilon: the run's ledger holds none; pass --claimed-epsilon"
        )
    if bound > claim:
        return "violation", (
            f"the lower bound {bound:.3f} exceeds the claimed epsilon {claim:.3f} "
            f"(at {confidence:.0%} confidence)"
        )
    if ceiling <= claim:
        return "inconclusive", (
            f"even a perfect attack on these canaries could only show epsilon >= "
            f"{ceiling:.3f}, not above the claimed {claim:.3f}: add canaries or runs"
        )
    return "consistent", (
        f"the lower bound {bound:.3f} does not exceed the claimed {claim:.3f}; a perfect "
        f"attack would have shown up to {ceiling:.3f}"
    )


def run_audit(
    config: ExperimentConfig, settings: AuditSettings | None = None, *, progress: bool = True
) -> AuditResult:
    """Audit ``config``'s protocol (see the module docstring)."""
    s = (settings or AuditSettings()).validated()
    delta = s.delta if s.delta is not None else config.privacy.delta
    data = federated_data(config)
    probe = build(_world_config(config, config.nodes, delta, config.seed), data=data)
    if not probe.protocol.trains:
        raise PrivlabError(
            f"protocol {config.protocol.name!r} does not train: canaries live in training "
            "data or gradients, there is nothing to audit"
        )
    topology, dim = probe.topology, ParamSpec.of(probe.model).dim
    worlds = s.runs if s.method == "multi-run" else 1
    if s.canaries is None:
        most = DIRAC_CANARIES if s.kind == "dirac" else INPUT_CANARIES
        s = replace(s, canaries=min(most, capacity(s.kind, data, s.target, dim)))
    planted = _plant(config, s, data, dim, worlds)
    threat = _observers(topology, s.target, config)
    trained = _train_worlds(config, s, planted, topology, threat, delta, progress)
    labels = np.stack(planted.included[: sum(len(t) for t in trained.targets)])
    holdout, evaluation = bounds.split_holdout(
        s.canaries, s.holdout_fraction, derive_seed(config.seed, "audit-split")
    )
    statistics = DIRAC_STATISTICS if s.kind == "dirac" else INPUT_STATISTICS
    views = [
        target_views(e.observer.log, t)
        for e, t in zip(trained.experiments, trained.targets, strict=True)
    ]
    candidates = {stat: _scores(trained, planted, views, stat) for stat in statistics}
    if s.method == "one-run":
        picked = {
            stat: bounds.one_run_thresholds(sc[0, holdout], labels[0, holdout], delta, s.confidence)
            for stat, sc in candidates.items()
        }
        statistic = max(statistics, key=lambda stat: picked[stat][2])
        t_plus, t_minus, _ = picked[statistic]
        scores = candidates[statistic][0, evaluation]
        guesses, correct = bounds.one_run_guesses(scores, labels[0, evaluation], t_plus, t_minus)
        m = len(evaluation)
        bound = bounds.eps_one_run(m, guesses, correct, delta=delta, confidence=s.confidence)
        ceiling = bounds.eps_one_run(m, m, m, delta=delta, confidence=s.confidence)
        counts = {
            "evaluation_canaries": m,
            "holdout_canaries": len(holdout),
            "guesses": guesses,
            "correct": correct,
            "threshold_in": t_plus,
            "threshold_out": t_minus,
        }
    else:
        picked = {}
        for stat, sc in candidates.items():
            threshold = bounds.threshold_on_holdout(
                sc[:, holdout].ravel(),
                labels[:, holdout].ravel(),
                delta=delta,
                confidence=s.confidence,
            )
            held = bounds.rates_at(sc[:, holdout].ravel(), labels[:, holdout].ravel(), threshold)
            picked[stat] = (
                threshold,
                bounds.eps_lower_bound_clopper_pearson(*held, delta=delta, confidence=s.confidence),
            )
        statistic = max(statistics, key=lambda stat: picked[stat][1])
        threshold = picked[statistic][0]
        fp, negatives, fn, positives = bounds.rates_at(
            candidates[statistic][:, evaluation].ravel(), labels[:, evaluation].ravel(), threshold
        )
        bound = bounds.eps_lower_bound_clopper_pearson(
            fp, negatives, fn, positives, delta=delta, confidence=s.confidence
        )
        ceiling = bounds.eps_lower_bound_clopper_pearson(
            0, negatives, 0, positives, delta=delta, confidence=s.confidence
        )
        counts = {
            "trials": negatives + positives,
            "false_positives": fp,
            "negatives": negatives,
            "false_negatives": fn,
            "positives": positives,
            "threshold": threshold,
        }
        mu = bounds.gdp_mu_lower_bound(fp, negatives, fn, positives, confidence=s.confidence)
        counts["gdp"] = {  # Nasr et al. 2023: the same counts read as Gaussian DP
            "mu_lower_bound": mu,
            "epsilon": bounds.eps_from_gdp(mu, delta) if mu > 0 else 0.0,
        }
    claim, source = _claim(trained, s, threat, topology, delta)
    seen = any(view.sent for group in views for view in group)
    verdict, reason = _verdict(claim, bound, ceiling, seen, s.confidence)
    accuracy = _accuracy(trained)
    return AuditResult(
        claimed_epsilon=claim,
        claim_source=source,
        epsilon_lower_bound=bound,
        ceiling=ceiling,
        confidence=s.confidence,
        delta=delta,
        method=s.method,
        canaries={
            "kind": s.kind,
            "count": s.canaries,
            "included": int(labels.sum()),
            "target": s.target,
            "inclusion_probability": 0.5,
            **({"norm": s.canary_norm} if s.kind == "dirac" else {}),
        },
        verdict=verdict,
        reason=reason,
        statistic=statistic,
        counts=counts,
        worlds={
            "requested": worlds,
            "trained": int(labels.shape[0]),
            "rounds": trained.rounds,
            "together": trained.together,
            "note": trained.note,
        },
        observers=threat.to_dict(),
        accuracy=accuracy,
        interrupted=trained.interrupted,
        scores={"scores": candidates[statistic], "labels": labels, "evaluation": evaluation},
    )


@torch.no_grad()
def _accuracy(trained: _Trained) -> float | None:
    """Mean test accuracy of the first world's nodes at the end."""
    engine = trained.experiments[0].engine
    metrics = engine.evaluate()
    if "test_accuracy" not in metrics:
        return None
    n = trained.experiments[0].config.nodes // max(1, len(trained.targets[0]))
    nodes = engine.metric_nodes("test_accuracy")
    values = metrics["test_accuracy"][nodes < n]
    return float(values.mean()) if len(values) else None
