"""From a typed config to a finished run: build the parts, train, evaluate, collect results.

``build(config)`` assembles data, model, topology, protocol, observer and engine;
``run(config)`` trains rounds 1..R with a progress bar and returns ``Results``.
An interrupt (Ctrl-C) stops after the round in flight and keeps everything finished;
a diverged model (NaN or infinity) stops the run and keeps the rounds before it.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from pydantic import BaseModel
from tqdm import tqdm

import privlab.mechanisms  # noqa: F401  (registers the protocols)
from privlab.config import DataConfig, ExperimentConfig
from privlab.data import make_federated
from privlab.devices import resolve_device
from privlab.distributed import PeerFailure  # also registers the distributed engine
from privlab.engine import ENGINES, Engine
from privlab.errors import PrivlabError, fields_named
from privlab.gradient import GRADIENT_MECHANISMS, GradientMechanism
from privlab.ledger import PrivacyLedger
from privlab.models import build_model
from privlab.network_privacy import network_privacy
from privlab.observe import Observer, ThreatModel, threat_model_from
from privlab.partition import FederatedData
from privlab.protocol import PROTOCOLS, Protocol
from privlab.resources import check_fits, check_fits_device, estimate
from privlab.results import METRIC_COLUMNS, OBSERVATIONS_DIR, Results, versions
from privlab.rng import derive_seed
from privlab.state import ParamSpec
from privlab.threads import thread_report
from privlab.topology import StaticTopology, Topology, build_topology
from privlab.training import LocalTraining, SGDConfig


@dataclass
class Experiment:
    """The assembled parts of one run."""

    config: ExperimentConfig
    data: FederatedData
    model: torch.nn.Module
    topology: Topology
    protocol: Protocol
    gradient: GradientMechanism | None
    engine: Engine
    observer: Observer | None
    ledger: PrivacyLedger


def build(
    config: ExperimentConfig,
    *,
    run_dir: str | Path | None = None,
    data: FederatedData | None = None,
    topology: Topology | None = None,
    threat: ThreatModel | None = None,
    wrap_gradient: Callable[[GradientMechanism | None], GradientMechanism | None] | None = None,
) -> Experiment:
    """Assemble every part of ``config``; invalid names or options raise ``PrivlabError``.

    Before anything is loaded or allocated, the memory the run needs is estimated and a
    run that does not fit is refused (``privlab.resources``). With ``run_dir``, the
    observer streams what it records into ``run_dir/observations``.

    An audit replaces parts: ``data`` and ``topology`` (built by the caller, e.g. with
    canaries or several independent worlds side by side), ``threat`` (the observers)
    and ``wrap_gradient`` (a wrapper around the configured gradient mechanism).
    """
    c = config
    device = resolve_device(c.device)  # a GPU that is not there is refused before any work
    if data is None:
        needs = estimate(c)
        check_fits(needs)
        if c.engine != "distributed":  # a rank picks its GPU later, and holds n / P nodes
            check_fits_device(needs, device)
        data = federated_data(c)
    with torch.random.fork_rng(devices=[]), fields_named(_paths("model", c.model)):
        torch.manual_seed(derive_seed(c.seed, "model"))
        model = build_model(
            c.model.name, data.dataset.input_shape, data.dataset.num_classes, **c.model.options
        )
    if topology is None:
        with fields_named(_paths("topology", c.topology) | {"num_nodes": "nodes"}):
            topology = build_topology(
                c.topology.name,
                c.nodes,
                seed=derive_seed(c.seed, "topology"),
                weights=c.topology.weights,
                **c.topology.options,
            )
    with fields_named(_paths("protocol", c.protocol)):
        protocol = PROTOCOLS.with_options(c.protocol.name, c.protocol.options)(**c.protocol.options)
    gradient = None
    if c.gradient is not None:
        with fields_named(_paths("gradient", c.gradient)):
            factory = GRADIENT_MECHANISMS.with_options(c.gradient.name, c.gradient.options)
            gradient = factory(**c.gradient.options)
    if wrap_gradient is not None:
        gradient = wrap_gradient(gradient)
    training = LocalTraining(
        batch_size=c.training.batch_size,
        local_steps=c.training.local_steps,
        sgd=SGDConfig(c.training.lr, c.training.momentum, c.training.weight_decay),
    )
    num_nodes = data.num_nodes
    observer = None
    if threat is None and c.observer is not None:
        threat = threat_model_from(**c.observer.model_dump())
    if threat is not None:
        _check_links_exist(threat.eavesdropped_links, topology)
        directory = None if run_dir is None else Path(run_dir) / OBSERVATIONS_DIR
        observer = Observer(threat, num_nodes, ParamSpec.of(model).dim, directory=directory)
    with fields_named(_paths("protocol", c.protocol) | _paths("gradient", c.gradient)):
        engine = ENGINES[c.engine](
            model,
            data,
            topology,
            protocol,
            training,
            seed=c.seed,
            observer=observer,
            gradient=gradient,
            eval_nodes=c.evaluation.nodes,
            eval_test_samples=c.evaluation.test_samples,
            device=c.device,
        )
    ledger = PrivacyLedger(num_nodes, c.privacy.accountant, c.privacy.delta)
    return Experiment(c, data, model, topology, protocol, gradient, engine, observer, ledger)


def federated_data(c: ExperimentConfig) -> FederatedData:
    """The config's dataset split over its nodes."""
    data_fields = {name: f"data.{name}" for name in DataConfig.model_fields}
    data_fields |= {name: f"data.options.{name}" for name in c.data.options}
    with fields_named(data_fields | {"num_nodes": "nodes", "seed": "seed"}):
        return make_federated(
            c.data.dataset,
            c.nodes,
            c.data.partition,
            root=c.data.root,
            seed=c.seed,
            dataset_options=c.data.options,
            alpha=c.data.alpha,
            shards_per_node=c.data.shards_per_node,
            test_fraction=c.data.test_fraction,
            nonmember_fraction=c.data.nonmember_fraction,
        )


def _paths(section: str, component: BaseModel | None) -> dict[str, str]:
    """Config paths of a component's options, for messages that name a bare option."""
    if component is None:
        return {}
    names = set(component.model_extra or {}) | set(type(component).model_fields)
    return {name: f"{section}.{name}" for name in names}


def _check_links_exist(links: tuple[tuple[int, int], ...], topology: Topology) -> None:
    """An eavesdropped link that is never an edge would silently record nothing."""
    if not links or not isinstance(topology, StaticTopology):
        return
    plan = topology.plan(1)
    edges = set(zip(plan.src.tolist(), plan.dst.tolist()))
    missing = [list(link) for link in links if link not in edges]
    if missing:
        raise PrivlabError(
            f"observer.eavesdropped_links must be edges of the {topology.name} topology "
            f"(directed [src, dst]), got {missing} which never carry a message"
        )


def run(config: ExperimentConfig, *, progress: bool = True) -> Results:
    """Build ``config`` and train it (see ``train``)."""
    return train(build(config), progress=progress)


def train(experiment: Experiment, *, progress: bool = True) -> Results:
    """Train rounds 1..``config.rounds``, evaluating every ``eval_every`` rounds and at the end.

    Every file of the results describes the same rounds (``summary["completed_rounds"]``):
    - Ctrl-C lets the round in flight finish, evaluates it and stops; a second Ctrl-C
      aborts at once and keeps the rounds up to the last evaluation.
    - A round after which some node's parameters are not finite stops the run
      (``summary["diverged"]``: the round and how many nodes); the rounds before it are
      kept and a ``DivergedWarning`` says so.
    - In a distributed run, Ctrl-C in any process stops them all after the same round;
      a process that dies or stops answering stops the others
      within the engine's timeout (``summary["failed"]`` names it); the rounds up to the
      last evaluation are kept.
    """
    config, engine, observer = experiment.config, experiment.engine, experiment.observer
    ledger = experiment.ledger
    rows: list[tuple[int, int, str, float]] = []
    started = time.perf_counter()
    completed, evaluated, aborted, diverged, failure = 0, 0, False, None, None
    stopping = False
    _record(rows, 0, engine.evaluate(), engine.metric_nodes)
    bar = tqdm(
        range(1, config.rounds + 1),
        desc=config.name,
        disable=not (progress and _interactive()),
        leave=False,
    )
    with _StopAfterRound() as stop:
        try:
            for t in bar:
                report = engine.run_round(t)
                bad = engine.non_finite_nodes()
                if bad:
                    diverged = {"round": t, "nodes": bad}
                    break
                completed = t
                stopping = engine.agree_to_stop(stop.requested)
                ledger.record(report.emitted)
                _record(rows, t, report.metrics(), engine.metric_nodes)
                if t % config.eval_every == 0 or t == config.rounds or stopping:
                    metrics = engine.evaluate() | _epsilon(ledger)
                    _record(rows, t, metrics, engine.metric_nodes)
                    evaluated = t
                    if "test_accuracy" in metrics:
                        bar.set_postfix(acc=f"{metrics['test_accuracy'].mean():.3f}")
                if stopping:
                    break
        except KeyboardInterrupt:  # a second Ctrl-C: the round in flight is half done
            aborted = True
        except PeerFailure as error:  # another process of a distributed run is gone
            aborted, failure = True, str(error)
        finally:
            bar.close()
    if aborted:
        completed = evaluated
    rows = [row for row in rows if row[0] <= completed]
    if observer is not None:
        observer.flush()
        observer.log.truncate(completed)
    metrics = pd.DataFrame(rows, columns=METRIC_COLUMNS)
    summary = _summary(config, experiment, metrics, time.perf_counter() - started)
    summary.update(completed_rounds=completed, interrupted=aborted or stopping)
    if failure is not None:
        summary["failed"] = failure
    threat = None if observer is None else observer.threat_model
    network = network_privacy(
        experiment.protocol, experiment.topology, threat, completed, config.privacy.delta
    )
    if network is not None:
        summary["network_privacy"] = network
    if diverged is not None:
        summary["diverged"] = diverged
        warnings.warn(divergence_message(diverged, config), DivergedWarning, stacklevel=2)
    models = None if aborted or diverged else final_models(experiment, completed)
    return Results(config.to_dict(), metrics, summary, observer and observer.log, models)


def final_models(experiment: Experiment, round: int) -> dict[str, Any]:
    """Every node's parameters ``[n, D]`` after ``round`` (on the CPU, whatever the run's
    device), with the model's name, options, input shape and classes (rebuild with
    ``Results.node_model``), as plain values that load with
    ``torch.load(..., weights_only=True)``."""
    c, dataset = experiment.config, experiment.data.dataset
    return {
        "params": experiment.engine.params.detach().to("cpu", copy=True),
        "round": round,
        "model": {
            "name": c.model.name,
            "options": c.model.options,
            "input_shape": list(dataset.input_shape),
            "num_classes": dataset.num_classes,
        },
        "parameters": [[s.name, list(s.shape)] for s in experiment.engine.spec.slots],
    }


class DivergedWarning(RuntimeWarning):
    """Training stopped because some node's parameters became NaN or infinite."""


def divergence_message(diverged: dict[str, int], config: ExperimentConfig) -> str:
    """One line saying where training diverged and what to change."""
    return (
        f"training diverged in round {diverged['round']}: {diverged['nodes']} of "
        f"{config.nodes} nodes have non-finite parameters (lower training.lr, now "
        f"{config.training.lr:g}); kept rounds up to {diverged['round'] - 1}"
    )


def _interactive() -> bool:
    """Progress bars only on a terminal or in a notebook, never flooding a log file."""
    return sys.stderr.isatty() or "ipykernel" in sys.modules


class _StopAfterRound:
    """While active, the first SIGINT asks to stop after the current round; the second one
    raises ``KeyboardInterrupt``. Outside the main thread (no signal handlers there), every
    Ctrl-C raises at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> _StopAfterRound:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after this round (Ctrl-C again to abort)", file=sys.stderr)

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _epsilon(ledger: PrivacyLedger) -> dict[str, torch.Tensor]:
    """The ``epsilon`` of every node so far, when some mechanism claims DP."""
    epsilon = ledger.epsilon()
    return {} if epsilon is None else {"epsilon": epsilon}


def _record(
    rows: list,
    round: int,
    metrics: dict[str, torch.Tensor],
    node_ids: Callable[[str], torch.Tensor],
) -> None:
    """Append one ``(round, node, metric, value)`` row per value; ``node_ids(metric)`` are
    the ids of the nodes whose values ``metric`` holds (``Engine.metric_nodes``)."""
    for name, values in metrics.items():
        ids = node_ids(name).tolist()
        if len(ids) != len(values):
            raise ValueError(f"metric {name!r} has {len(values)} values for {len(ids)} nodes")
        rows.extend((round, node, name, float(v)) for node, v in zip(ids, values.tolist()))


def _device_report(device: torch.device) -> str:
    """The device a run computed on, with the GPU's name (``cuda:0 (NVIDIA H200)``)."""
    if device.type != "cuda":
        return str(device)
    return f"{device} ({torch.cuda.get_device_name(device)})"


def _summary(
    config: ExperimentConfig,
    experiment: Experiment,
    metrics: pd.DataFrame,
    wall_time: float,
) -> dict[str, Any]:
    """What ``summary.json`` holds. ``evaluation`` says what an evaluation covered:
    ``nodes`` evaluated of ``of_nodes``, on ``test_samples`` of ``of_test_samples`` test
    samples (``config.evaluation``); ``final_accuracy`` (mean, min, max) is over those
    evaluated nodes at the last evaluation."""
    engine = experiment.engine
    accuracy = metrics[metrics.metric == "test_accuracy"]
    final = accuracy[accuracy["round"] == accuracy["round"].max()]["value"]
    summary: dict[str, Any] = {
        "name": config.name,
        "seed": config.seed,
        "nodes": config.nodes,
        "protocol": experiment.protocol.describe(),
        "gradient": None if experiment.gradient is None else experiment.gradient.describe(),
        "topology": experiment.topology.describe(),
        "data": experiment.data.summary(),
        "parameters": engine.spec.dim,
        "total_bytes": int(metrics[metrics.metric == "bytes_sent"]["value"].sum()),
        "evaluation": {
            "nodes": len(engine.eval_nodes),
            "of_nodes": engine.num_nodes,
            "test_samples": len(engine.test_indices),
            "of_test_samples": engine.num_test,
        },
        "wall_time_s": round(wall_time, 3),
        "device": _device_report(engine.device),
        "threads": thread_report(),
        "versions": versions(),
    }
    privacy = experiment.ledger.summary()
    if privacy is not None:
        summary["privacy"] = privacy
    if not final.empty:
        summary["final_accuracy"] = {
            "mean": float(final.mean()),
            "min": float(final.min()),
            "max": float(final.max()),
        }
    return summary
