"""Shared fixtures: small engines built directly from the parts."""

from __future__ import annotations

import pytest
import torch

from privlab.data import make_federated
from privlab.engine import ENGINES, LocalTraining
from privlab.models import build_model
from privlab.protocol import Observer, Protocol
from privlab.topology import build_topology
from privlab.training import SGDConfig


def make_engine(
    kind: str,
    protocol: Protocol,
    *,
    nodes: int = 12,
    topology: str = "regular",
    topology_options: dict | None = None,
    dataset: str = "digits",
    model: str = "mlp",
    model_options: dict | None = None,
    training: LocalTraining | None = None,
    observer: Observer | None = None,
    seed: int = 0,
):
    """An engine of ``kind`` ("vectorized" or "loop") on a small digits federation."""
    data = make_federated(dataset, nodes, seed=seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = build_model(
            model,
            data.dataset.input_shape,
            data.dataset.num_classes,
            **(model_options or {"hidden": [16]}),
        )
    options = topology_options if topology_options is not None else {"degree": 4}
    topo = build_topology(topology, nodes, seed=seed, **options)
    training = training or LocalTraining(batch_size=8, sgd=SGDConfig(lr=0.1))
    return ENGINES[kind](net, data, topo, protocol, training, seed=seed, observer=observer)


@pytest.fixture
def engine_factory():
    return make_engine
