"""Shared fixtures: small engines built directly from the parts."""

from __future__ import annotations

import pytest
import torch

from privlab.context import RoundContext
from privlab.data import make_federated
from privlab.engine import ENGINES
from privlab.models import build_model
from privlab.observe import Observer
from privlab.protocol import Protocol
from privlab.rng import NodeStreams
from privlab.topology import Topology, build_topology
from privlab.training import LocalTraining, SGDConfig

_CUDA = {name: getattr(torch.cuda, name) for name in ("is_available", "device_count")}
"""What the device tests patch to make torch see a GPU."""


@pytest.fixture(autouse=True)
def _torch_sees_its_own_devices():
    """After each test, torch's device queries are its own again (a patch left behind
    makes later tests believe in a GPU)."""
    yield
    leaked = [name for name, function in _CUDA.items() if getattr(torch.cuda, name) is not function]
    assert not leaked, f"a test left torch.cuda.{', '.join(leaked)} patched"


def set_up(protocol: Protocol, topology: Topology, dim: int, seed: int = 0) -> Protocol:
    """``protocol`` set up on ``topology`` alone (one sample per node), for calling its
    ``send`` and ``receive`` directly."""
    n = topology.num_nodes
    context = RoundContext(
        num_nodes=n,
        dim=dim,
        topology=topology,
        training=LocalTraining(),
        node_indices=torch.arange(n).unsqueeze(1),
        node_sizes=torch.ones(n, dtype=torch.int64),
        streams=NodeStreams(seed),
    )
    protocol.setup(context)
    return protocol


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
    gradient=None,
    seed: int = 0,
    device: str | torch.device = "cpu",
):
    """An engine of ``kind`` ("vectorized" or "loop") on a small digits federation."""
    data = make_federated(dataset, nodes, seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_model(
            model,
            data.dataset.input_shape,
            data.dataset.num_classes,
            **({"hidden": [16]} if model_options is None else model_options),
        )
    options = topology_options if topology_options is not None else {"degree": 4}
    topo = build_topology(topology, nodes, seed=seed, **options)
    training = training or LocalTraining(batch_size=8, sgd=SGDConfig(lr=0.1))
    return ENGINES[kind](
        net,
        data,
        topo,
        protocol,
        training,
        seed=seed,
        observer=observer,
        gradient=gradient,
        device=device,
    )


@pytest.fixture
def engine_factory():
    return make_engine
