"""From a typed config to a finished run: build the parts, train, evaluate, collect results.

``build(config)`` assembles data, model, topology, protocol, observer and engine;
``run(config)`` trains round by round with a progress bar and returns ``Results``.
An interrupt (Ctrl-C) stops after the round in flight and keeps everything finished.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

import privlab.mechanisms  # noqa: F401  (registers the protocols)
from privlab.config import ExperimentConfig
from privlab.data import FederatedData, make_federated
from privlab.engine import ENGINES, Engine, LocalTraining
from privlab.errors import PrivlabError
from privlab.models import build_model
from privlab.protocol import PROTOCOLS, Observer, Protocol, threat_model_from
from privlab.results import METRIC_COLUMNS, Results, versions
from privlab.rng import derive_seed
from privlab.state import ParamSpec
from privlab.topology import Topology, build_topology
from privlab.training import SGDConfig


@dataclass
class Experiment:
    """The assembled parts of one run."""

    config: ExperimentConfig
    data: FederatedData
    model: torch.nn.Module
    topology: Topology
    protocol: Protocol
    engine: Engine
    observer: Observer | None


def build(config: ExperimentConfig) -> Experiment:
    """Assemble every part of ``config``; invalid names or options raise ``PrivlabError``."""
    c = config
    data = make_federated(
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
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(c.seed, "model"))
        model = build_model(
            c.model.name, data.dataset.input_shape, data.dataset.num_classes, **c.model.options
        )
    topology = build_topology(
        c.topology.name, c.nodes, seed=c.seed, weights=c.topology.weights, **c.topology.options
    )
    protocol = PROTOCOLS.with_options(c.protocol.name, c.protocol.options)(**c.protocol.options)
    if protocol.name == "epidemic" and not topology.name.startswith("el-"):
        raise PrivlabError(
            f"protocol 'epidemic' needs topology 'el-oracle' or 'el-local', got {topology.name!r}"
        )
    training = LocalTraining(
        batch_size=c.training.batch_size,
        local_steps=c.training.local_steps,
        sgd=SGDConfig(c.training.lr, c.training.momentum, c.training.weight_decay),
    )
    observer = None
    if c.observer is not None:
        threat = threat_model_from(**c.observer.model_dump())
        observer = Observer(threat, c.nodes, ParamSpec.of(model).dim)
    engine = ENGINES[c.engine](
        model, data, topology, protocol, training, seed=c.seed, observer=observer
    )
    return Experiment(c, data, model, topology, protocol, engine, observer)


def run(config: ExperimentConfig, *, progress: bool = True) -> Results:
    """Build ``config`` and train it (see ``train``)."""
    return train(build(config), progress=progress)


def train(experiment: Experiment, *, progress: bool = True) -> Results:
    """Train for ``config.rounds`` rounds, evaluating every ``eval_every`` and at the end.

    Ctrl-C lets the round in flight finish, evaluates it and stops; a second Ctrl-C
    aborts at once and keeps only the rounds evaluated before it.
    """
    config, engine = experiment.config, experiment.engine
    rows: list[tuple[int, int, str, float]] = []
    started = time.perf_counter()
    completed, evaluated, aborted = 0, 0, False
    _record(rows, 0, engine.evaluate())
    bar = tqdm(range(config.rounds), desc=config.name, disable=not progress, leave=False)
    with _StopAfterRound() as stop:
        try:
            for t in bar:
                report = engine.run_round(t)
                completed = t + 1
                _record(rows, completed, {"bytes_sent": report.bytes_sent})
                last = completed == config.rounds or stop.requested
                if completed % config.eval_every == 0 or last:
                    metrics = engine.evaluate()
                    _record(rows, completed, metrics)
                    evaluated = completed
                    if "test_accuracy" in metrics:
                        bar.set_postfix(acc=f"{metrics['test_accuracy'].mean():.3f}")
                if stop.requested:
                    break
        except KeyboardInterrupt:  # a second Ctrl-C: the round in flight is half done
            aborted = True
        finally:
            bar.close()
    if aborted:  # drop what the unfinished round recorded past the last evaluation
        rows = [row for row in rows if row[0] <= evaluated]
        completed = evaluated
    metrics = pd.DataFrame(rows, columns=METRIC_COLUMNS)
    summary = _summary(config, experiment, metrics, time.perf_counter() - started)
    summary.update(completed_rounds=completed, interrupted=aborted or stop.requested)
    return Results(
        config.to_dict(), metrics, summary, experiment.observer and experiment.observer.log
    )


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


def _record(rows: list, round: int, metrics: dict[str, torch.Tensor]) -> None:
    for name, values in metrics.items():
        rows.extend((round, node, name, float(v)) for node, v in enumerate(values.tolist()))


def _summary(
    config: ExperimentConfig,
    experiment: Experiment,
    metrics: pd.DataFrame,
    wall_time: float,
) -> dict[str, Any]:
    accuracy = metrics[metrics.metric == "test_accuracy"]
    final = accuracy[accuracy["round"] == accuracy["round"].max()]["value"]
    summary: dict[str, Any] = {
        "name": config.name,
        "seed": config.seed,
        "nodes": config.nodes,
        "protocol": experiment.protocol.describe(),
        "topology": experiment.topology.describe(),
        "data": experiment.data.summary(),
        "parameters": experiment.engine.spec.dim,
        "total_bytes": int(metrics[metrics.metric == "bytes_sent"]["value"].sum()),
        "wall_time_s": round(wall_time, 3),
        "versions": versions(),
    }
    if not final.empty:
        summary["final_accuracy"] = {
            "mean": float(final.mean()),
            "min": float(final.min()),
            "max": float(final.max()),
        }
    return summary
