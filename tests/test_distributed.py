"""The distributed engine against the vectorized one: same seed, same final models, for
every protocol, on 2 and 3 local processes; and a rank that dies fails the run loudly."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from privlab.cli import main
from privlab.config import parse_config
from privlab.distributed import block_bounds
from privlab.experiment import run
from privlab.launch import run_processes
from privlab.results import load_run

BASE = {
    "nodes": 10,
    "rounds": 3,
    "eval_every": 2,
    "data": {"dataset": "digits"},
    "model": {"name": "mlp", "hidden": [16]},
    "training": {"lr": 0.1, "momentum": 0.9, "batch_size": 8, "local_steps": 2},
    "observer": {"curious_nodes": [0, 7]},
}
PROTOCOLS = {
    "d-psgd": {},
    "dp-sgd": {"gradient": {"name": "dp-sgd", "noise_multiplier": 1.0}},
    "epidemic": {"protocol": {"name": "epidemic"}, "topology": {"name": "el-oracle", "fanout": 3}},
    "muffliato": {"protocol": {"name": "muffliato", "noise_multiplier": 0.1, "gossip_steps": 3}},
    "zipdl": {"protocol": {"name": "zipdl", "noise_multiplier": 0.5}},
    "shatter": {"protocol": {"name": "shatter", "virtual_nodes": 2, "degree": 3}},
    "cesar": {"protocol": {"name": "cesar"}},
    "cesar-topk": {"protocol": {"name": "cesar", "sparsifier": "topk"}},
    "sparse-d-psgd": {"protocol": {"name": "sparse-d-psgd", "sparsifier": "topk"}},
    "relative-gaussian": {"model": {"name": "logreg"}, "gradient": {"name": "relative-gaussian"}},
    # which messages exist follows the state (the active nodes push), not the plan
    "muted-gossip": {"protocol": {"name": "muted-gossip", "mute": 0.8}},
}


def test_blocks_are_contiguous_and_balanced():
    assert block_bounds(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert block_bounds(4, 4) == [(0, 1), (1, 2), (2, 3), (3, 4)]


@pytest.mark.parametrize("procs", [2, 3])
def test_every_protocol_gives_the_vectorized_engines_models(tmp_path, procs):
    configs = {
        name: parse_config({**BASE, "name": name, **extra}) for name, extra in PROTOCOLS.items()
    }
    run_processes([(c, tmp_path / name) for name, c in configs.items()], procs)
    for name, config in configs.items():
        reference, distributed = run(config, progress=False), load_run(tmp_path / name)
        difference = (distributed.models["params"] - reference.models["params"]).abs().max()
        assert float(difference) < 1e-5, name
        pd.testing.assert_frame_equal(
            distributed.metrics[distributed.metrics.metric.str.startswith("bytes")],
            reference.metrics[reference.metrics.metric.str.startswith("bytes")],
        )
        final = distributed.metrics[distributed.metrics.metric == "test_accuracy"]
        expected = reference.metrics[reference.metrics.metric == "test_accuracy"]
        assert final.value.to_numpy() == pytest.approx(expected.value.to_numpy(), abs=1e-6)
        seen = distributed.observations.observations
        assert len(distributed.observations) == len(reference.observations), name
        for got, want in zip(seen, reference.observations.observations, strict=True):
            assert got.payload.shape == want.payload.shape, name
            assert torch.allclose(got.payload, want.payload, atol=1e-5), name
            assert torch.equal(got.sender, want.sender) and torch.equal(got.receiver, want.receiver)


def plugin_config(folder: Path, plugin: str, rounds: int, at: int) -> Path:
    """A config file running ``dying_protocol.py``'s ``plugin``, acting at round ``at``."""
    path = Path(__file__).with_name("dying_protocol.py")
    config = folder / f"{plugin}.yaml"
    protocol = {"name": f"{path}:{plugin}", "round": at}
    config.write_text(yaml.safe_dump({**BASE, "rounds": rounds, "protocol": protocol}))
    return config


@pytest.mark.parametrize(
    ("plugin", "timeout", "message"),
    [("DiesAtRound", 20, "rank 1 died"), ("HangsAtRound", 5, "rank 1 stopped answering")],
)
def test_a_rank_that_dies_or_stops_answering_fails_the_run_naming_it_and_keeps_the_evaluated_rounds(
    tmp_path, capsys, plugin, timeout, message
):
    """Rank 1 exits, or sleeps for an hour, at round 4: the run ends within seconds of
    the timeout with one line naming it, and keeps the rounds up to the last evaluation."""
    config = plugin_config(tmp_path, plugin, rounds=6, at=4)
    out = tmp_path / "run"
    started = time.perf_counter()
    code = main(
        ["run", str(config), "--engine", "distributed", "--procs", "2", "--timeout",
         str(timeout), "--out", str(out), "--quiet"]
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 4
    assert len(err) == 1 and message in err[0] and str(out) in err[0]
    assert elapsed < 60 + timeout  # start-up and 3 rounds, then the timeout at most
    summary = json.loads((out / "summary.json").read_text())
    assert summary["completed_rounds"] == 2  # the last evaluation before round 4
    assert "rank" in summary["failed"]
    assert pd.read_csv(out / "metrics.csv")["round"].max() == 2


def test_the_same_config_runs_under_torchrun(tmp_path):
    """torchrun sets RANK and WORLD_SIZE; privlab run joins its process group (what a
    run across machines does, here with both processes on localhost)."""
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**BASE, "name": "torchrun"}))
    out = tmp_path / "run"
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "privlab", "run",
               str(config), "--engine", "distributed", "--out", str(out), "--quiet"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("results in") == 1  # rank 0 speaks, rank 1 does not
    distributed = load_run(out)
    reference = run(parse_config({**BASE, "name": "torchrun"}), progress=False)
    difference = (distributed.models["params"] - reference.models["params"]).abs().max()
    assert float(difference) < 1e-5
    assert distributed.summary["distributed"]["processes"] == 2


def test_ctrl_c_in_one_process_stops_every_process_after_the_same_round(tmp_path):
    config = plugin_config(tmp_path, "CtrlCAtRound", rounds=5, at=2)
    out = tmp_path / "run"
    command = ["run", str(config), "--engine", "distributed", "--procs", "2", "--out", str(out),
               "--quiet"]  # fmt: skip
    assert main(command) == 130
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] and summary["completed_rounds"] == 2
    assert load_run(out).models is not None  # both ranks finished round 2: models kept


def test_the_launcher_names_the_rank_at_fault():
    """Who is named when several ranks end: one killed without a word, else one with an
    error of its own, else one the launcher ended for silence, else a peer's failure."""
    from privlab.launch import _first_failure

    peer = "PeerFailure: rank 0: a peer rank failed or stopped answering"
    own = "PrivlabError: protocol 'x' broke the contract"
    killed = _first_failure([(0, 1), (1, -9)], {0: peer}, [], 60)
    assert killed.startswith("rank 1 died (exit code -9)")
    assert _first_failure([(0, 1), (1, -15)], {0: own}, [1], 60) == f"rank 0 failed: {own}"
    silent = _first_failure([(0, 1), (1, -15)], {0: peer}, [1], 5)
    assert silent.startswith("rank 1 stopped answering (silent for over --timeout 5 s")
    assert _first_failure([(0, 1), (1, 1)], {0: peer, 1: peer}, [], 60) == f"rank 0 failed: {peer}"
