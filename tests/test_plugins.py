"""A user's own protocol or gradient mechanism, named by ``file.py:Class`` or
``package.module:Class`` in a config (``privlab.plugins``)."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
import yaml

from privlab.cli import main
from privlab.errors import PrivlabError
from privlab.gradient import GRADIENT_MECHANISMS
from privlab.mechanisms.gossip import DecentralizedSGD
from privlab.protocol import PROTOCOLS

# The README's custom protocol: each node averages with ONE random neighbour per round.
ONE_PEER = '''
import torch
from privlab.protocol import Messages, Protocol


class OnePeerGossip(Protocol):
    """Each node sends its model to one neighbour of the topology, drawn each round from
    its own stream, and averages what it received with its own model."""

    def send(self, state, plan, round, exchange):
        draws = self.context.streams.uniform("one-peer", round, 0, range(plan.num_nodes), 1)
        picked = []
        for node in range(plan.num_nodes):
            out = (plan.src == node).nonzero().flatten()
            picked.append(out[int(draws[node, 0] * len(out))])
        edges = torch.stack(picked)
        return Messages.of_rows(state, plan.src[edges], plan.dst[edges])

    def receive(self, state, messages, plan, round, exchange):
        total = state.clone().index_add_(0, messages.dst, messages.payload)
        ones = torch.ones(len(state) + len(messages), device=state.device)
        count = ones[: len(state)].index_add_(0, messages.dst, ones[len(state) :])
        return total / count.unsqueeze(1)

    def receive_node(self, node, own, inbox, plan, round, exchange):
        return (own + inbox.payload.sum(dim=0)) / (1 + len(inbox))
'''

NOISY = '''
import torch
from privlab.accounting import GaussianEvent
from privlab.gradient import GradientMechanism


class ClippedNoise(GradientMechanism):
    """Clip each node's batch gradient to norm 1 and add N(0, sigma^2): a Gaussian
    mechanism per step on the whole batch (no subsampling amplification claimed)."""

    def __init__(self, sigma: float = 1.0):
        self.sigma = sigma

    def privatize(self, grads, round, step, nodes):
        norms = grads.norm(dim=1, keepdim=True).clamp(min=1.0)
        noise = self.context.streams.normal("clipped-noise", round, step, nodes, grads.shape[1])
        return grads / norms + self.sigma * noise

    def account(self, round, step):
        self.context.emit_event(GaussianEvent(self.sigma))
'''


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def run(tmp_path, capsys=None, **config):
    raw = {
        "nodes": 6,
        "rounds": 3,
        "model": {"name": "mlp", "hidden": [8]},
        "training": {"batch_size": 8, "local_steps": 1},
        **config,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return main(["run", str(path), "--out", str(tmp_path / "run"), "--quiet"])


def test_a_custom_protocol_from_a_file_runs_on_both_engines(tmp_path):
    spec = f"{write(tmp_path, 'one_peer.py', ONE_PEER)}:OnePeerGossip"
    for engine in ("vectorized", "loop"):
        out = tmp_path / engine
        out.mkdir()
        assert run(out, protocol={"name": spec}, engine=engine) == 0
    summaries = [
        json.loads((tmp_path / e / "run" / "summary.json").read_text())
        for e in ("vectorized", "loop")
    ]
    assert summaries[0]["protocol"]["name"] == spec
    assert summaries[0]["total_bytes"] == summaries[1]["total_bytes"] > 0
    models = [
        torch.load(tmp_path / e / "run" / "models.pt")["params"] for e in ("vectorized", "loop")
    ]
    assert (models[0] - models[1]).abs().max() < 1e-5


def test_the_readme_protocol_runs_on_a_simulated_gpu_as_on_the_cpu(tmp_path, monkeypatch):
    from conftest import make_engine
    from test_device_runs import simulated_gpu

    factory = PROTOCOLS[f"{write(tmp_path, 'one_peer.py', ONE_PEER)}:OnePeerGossip"]

    def final_params(device: str) -> torch.Tensor:
        engine = make_engine("vectorized", factory(), nodes=8, device=device)
        for t in range(1, 4):
            engine.run_round(t)
        return engine.params.cpu()

    on_cpu = final_params("cpu")
    with simulated_gpu(monkeypatch):
        on_gpu = final_params("cuda")
    torch.testing.assert_close(on_gpu, on_cpu, rtol=0, atol=1e-5)


def test_a_module_path_loads_the_same_class():
    assert PROTOCOLS["privlab.mechanisms.gossip:DecentralizedSGD"] is DecentralizedSGD


def test_a_custom_dp_mechanism_sends_its_events_to_the_ledger(tmp_path):
    spec = f"{write(tmp_path, 'noisy.py', NOISY)}:ClippedNoise"
    assert run(tmp_path, gradient={"name": spec, "sigma": 2.0}) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    epsilon = summary["privacy"]["epsilon"]["max"]
    from privlab.accounting import GaussianEvent, RDPAccountant

    expected = RDPAccountant().compose(GaussianEvent(2.0), 3).get_epsilon(1e-5)  # 3 steps
    assert epsilon == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("missing.py:Foo", "does not exist"),
        ("{dir}/one_peer.py:Nope", "has no class 'Nope'; classes there: Messages, OnePeerGossip"),
        ("{dir}/one_peer.py:Messages", "Messages must subclass privlab.protocol.Protocol"),
        (
            "{dir}/half.py:Half",
            "Half must define receive, receive_node, send (required by Protocol)",
        ),
        ("{dir}/broken.py:X", "running broken.py failed: SyntaxError"),
        ("no.such.module:X", "cannot import no.such.module"),
        (":X", "must be path/to/file.py:ClassName or package.module:ClassName"),
    ],
)
def test_a_component_that_does_not_load_is_one_clear_message(tmp_path, spec, message):
    write(tmp_path, "one_peer.py", ONE_PEER)
    write(
        tmp_path,
        "half.py",
        "from privlab.protocol import Protocol\nclass Half(Protocol):\n    pass\n",
    )
    write(tmp_path, "broken.py", "def (:\n")
    with pytest.raises(PrivlabError, match=message.replace("(", r"\(").replace(")", r"\)")):
        PROTOCOLS[spec.format(dir=tmp_path)]


def test_bad_specs_and_options_from_the_cli_exit_2(tmp_path, capsys):
    spec = f"{write(tmp_path, 'noisy.py', NOISY)}:ClippedNoise"
    assert run(tmp_path, gradient={"name": spec, "noise": 1.0}) == 2
    assert "unknown option 'gradient.noise' for gradient mechanism" in capsys.readouterr().err
    assert run(tmp_path, protocol={"name": "nowhere.py:P"}) == 2
    err = capsys.readouterr().err
    assert "protocol 'nowhere.py:P': file" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_gradient_registry_loads_by_path_too(tmp_path):
    spec = f"{write(tmp_path, 'noisy.py', NOISY)}:ClippedNoise"
    assert GRADIENT_MECHANISMS[spec].__name__ == "ClippedNoise"


def test_the_readme_shows_this_protocol():
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert ONE_PEER.strip() in readme
    assert len(ONE_PEER.strip().splitlines()) < 40


BROKEN = """
import torch
from privlab.mechanisms.gossip import DecentralizedSGD


class WrongShape(DecentralizedSGD):
    def receive(self, state, messages, plan, round, exchange):
        return state[:, :-1]


class NonFinite(DecentralizedSGD):
    def receive(self, state, messages, plan, round, exchange):
        out = super().receive(state, messages, plan, round, exchange)
        if round == 2:
            out[0, 0] = float("nan")
        return out


class OutOfRange(DecentralizedSGD):
    def send(self, state, plan, round, exchange):
        messages = super().send(state, plan, round, exchange)
        messages.dst = messages.dst + 100
        return messages
"""


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("WrongShape", "broke the contract in round 1, exchange 0: receive returned (6, "),
        ("NonFinite", "broke the contract in round 2, exchange 0: receive returned non-finite"),
        ("OutOfRange", "broke the contract in round 1, exchange 0: messages.dst names nodes"),
    ],
)
def test_a_protocol_that_breaks_the_contract_is_named_with_its_round(
    tmp_path, capsys, name, message
):
    spec = f"{write(tmp_path, 'broken_protocols.py', BROKEN)}:{name}"
    assert run(tmp_path, protocol={"name": spec}) == 2
    err = capsys.readouterr().err
    assert f"protocol '{spec}' {message}" in err and err.count("\n") == 1
