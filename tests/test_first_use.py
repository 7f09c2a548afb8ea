"""What a newcomer tried first: one default, strict values, divergence, strict JSON, the
command line people expect, a run from any folder (issue 6)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from privlab.cli import main, packaged_config
from privlab.config import ExperimentConfig, apply_overrides, load_config, parse_config
from privlab.errors import PrivlabError
from privlab.experiment import build, run
from privlab.jsonio import dumps
from privlab.mechanisms import DecentralizedSGD
from privlab.results import Results, load_run

SMALL = {"nodes": 6, "rounds": 3, "eval_every": 1, "model": {"name": "mlp", "hidden": [8]}}


def write(tmp_path: Path, raw: dict, name: str = "config.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def one_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("privlab: error: "), err
    assert "Traceback" not in err
    return err


# -- one default -------------------------------------------------------------------------


def test_there_is_one_default_experiment():
    packaged = load_config(packaged_config("default"))
    assert packaged == ExperimentConfig() == parse_config({})
    assert packaged.training.lr == 0.1 and packaged.training.local_steps == 4
    assert packaged.name == "d-psgd-regular4"


def test_the_default_learns_whichever_way_it_is_built():
    for config in (ExperimentConfig(), parse_config({}), load_config(packaged_config("default"))):
        assert run(config, progress=False).summary["final_accuracy"]["mean"] > 0.9


def test_the_run_name_follows_what_was_run():
    assert load_config(packaged_config("default"), ["topology.name=ring"]).name == "d-psgd-ring"
    assert load_config(packaged_config("epidemic")).name == "epidemic-el-oracle4"
    assert parse_config({"name": "mine", "topology": {"name": "ring"}}).name == "mine"


# -- strict values -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["observer.curious_nodes=[0]", "observer.rounds=[]"], "observer.rounds"),
        (["observer.curious_nodes=[0]", "observer.rounds=[0]"], "in [1, 3]"),
        (["observer.curious_nodes=[0]", "observer.rounds=[4]"], "in [1, 3]"),
        (["training.lr=.inf"], "training.lr: input should be a finite number"),
        (["training.lr=.nan"], "training.lr: input should be a finite number"),
        (["training.weight_decay=.inf"], "training.weight_decay: input should be a finite"),
        (["data.alpha=.inf"], "data.alpha: input should be a finite number"),
        (["rounds=true"], "rounds: input should be a valid integer, got True"),
        (["nodes=6.0"], "nodes: input should be a valid integer"),
        (["name=a/../../b"], "name must be a name, not a path"),
        (["name=.."], "name must be a name"),
        (["topology.degree=9"], "topology.degree"),
        (["topology.name=erdos_renyi", "topology.p=2"], "topology.p must be in (0, 1]"),
        (["topology.name=small_world", "topology.k=3"], "topology.k must be even"),
        (["topology.name=ring", "topology.degree=2"], "unknown option 'topology.degree'"),
        (
            ["observer.eavesdropped_links=[[0, 3]]", "topology.name=ring"],
            "observer.eavesdropped_links must be edges of the ring topology",
        ),
        (["data.dataset=npz"], "data.options.path"),
        (["data.dataset=synthetic", "data.options.num_classes=1000000000"], "num_classes"),
    ],
)
def test_bad_values_name_their_field(tmp_path, capsys, overrides, message):
    args = ["run", write(tmp_path, SMALL), "--out", str(tmp_path / "x"), "--quiet"]
    assert main([*args, *(f"--set={o}" for o in overrides)]) == 2
    err = one_error(capsys)
    assert message in err
    assert "num_samples" not in err or "num_classes" not in message
    assert not (tmp_path / "x").exists()


def test_duplicate_yaml_keys_are_refused(tmp_path, capsys):
    path = tmp_path / "dup.yaml"
    path.write_text("nodes: 6\nrounds: 2\nnodes: 8\n")
    assert main(["run", str(path), "--quiet", "--out", str(tmp_path / "x")]) == 2
    assert "duplicate key 'nodes'" in one_error(capsys)


def test_a_binary_file_is_named(tmp_path, capsys):
    path = tmp_path / "model.bin"
    path.write_bytes(bytes(range(256)) * 4)
    assert main(["run", str(path), "--quiet"]) == 2
    assert "model.bin" in one_error(capsys)


def test_empty_out_is_refused(tmp_path, capsys):
    assert main(["run", write(tmp_path, SMALL), "--out", "", "--quiet"]) == 2
    assert "--out must be a folder path" in one_error(capsys)


def test_negative_numbers_are_values_then_rejected_by_range(capsys):
    base = ["budget", "dp-sgd", "--noise-multiplier", "1", "--sample-rate", "0.01"]
    assert main([*base, "--steps", "10", "--delta", "-1e-5"]) == 2
    err = one_error(capsys)
    assert "delta" in err and "(0, 1)" in err and "-1e-05" in err
    assert main(["budget", "gaussian", "--noise-multiplier", "-2", "--delta", "1e-5"]) == 2
    assert "noise" in one_error(capsys)


def test_changing_a_component_name_resets_its_options():
    raw = {"topology": {"name": "regular", "degree": 4, "weights": "uniform"}}
    assert apply_overrides(raw, ["topology.name=ring"])["topology"] == {
        "name": "ring",
        "weights": "uniform",
    }
    same = apply_overrides(raw, ["topology.name=regular", "topology.degree=6"])
    assert same["topology"] == {"name": "regular", "degree": 6, "weights": "uniform"}


# -- divergence and consistent files ----------------------------------------------------


def run_until_it_diverges(tmp_path, capsys, sets: list[str]) -> tuple[Path, dict]:
    out = tmp_path / "run"
    raw = {**SMALL, "rounds": 20, "model": {"name": "mlp", "hidden": [64, 32]}}
    config = write(tmp_path, {**raw, "observer": {"curious_nodes": [0]}})
    assert main(["run", config, "--out", str(out), "--quiet", *sets]) == 3
    err = capsys.readouterr().err
    assert err.count("privlab: error: training diverged in round") == 1, err
    assert "lower training.lr" in err and "Traceback" not in err
    return out, json.loads((out / "summary.json").read_text())


def test_a_huge_learning_rate_stops_the_run_with_exit_3(tmp_path, capsys):
    out, summary = run_until_it_diverges(tmp_path, capsys, ["--set=training.lr=1e10"])
    assert summary["diverged"] == {"round": 1, "nodes": 6} and summary["completed_rounds"] == 0
    assert (out / "metrics.csv").exists()
    assert not (out / "models.pt").exists()  # no final models: they are not finite


def test_a_diverged_run_keeps_the_rounds_before_it(tmp_path, capsys, monkeypatch):
    original = DecentralizedSGD.send

    def send(self, params, plan, round, exchange):
        if round == 5:
            params[2, 0] = float("inf")  # node 2's model blows up during round 5
        return original(self, params, plan, round, exchange)

    monkeypatch.setattr(DecentralizedSGD, "send", send)
    out, summary = run_until_it_diverges(tmp_path, capsys, [])
    assert summary["diverged"]["round"] == 5 and summary["completed_rounds"] == 4
    assert 1 <= summary["diverged"]["nodes"] <= 6
    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics["round"].max() == 4 and metrics.value.notna().all()
    assert Results.load(out).observations.rounds() == [1, 2, 3, 4]


def test_rounds_are_numbered_from_one_everywhere(tmp_path):
    out = tmp_path / "run"
    config = write(tmp_path, {**SMALL, "observer": {"curious_nodes": [0], "rounds": [1, 3]}})
    assert main(["run", config, "--out", str(out), "--quiet"]) == 0
    results = Results.load(out)
    assert results.observations.rounds() == [1, 3]
    bytes_rounds = results.metrics[results.metrics.metric == "bytes_sent"]["round"]
    assert sorted(bytes_rounds.unique()) == [1, 2, 3]
    assert results.summary["completed_rounds"] == 3


# -- strict JSON ---------------------------------------------------------------------------


def _strict(text: str):
    def refuse(name: str):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_json_never_holds_infinity_or_nan(tmp_path, capsys):
    assert _strict(dumps({"a": float("inf"), "b": [float("nan"), -float("inf")], "c": 1.5})) == {
        "a": "inf",
        "b": ["nan", "-inf"],
        "c": 1.5,
    }
    args = ["budget", "rgm", "--noise-multiplier", "2", "--relative-sensitivity", "0"]
    assert main([*args, "--dimension", "10", "--delta", "1e-5", "--json"]) == 0
    printed = _strict(capsys.readouterr().out)
    assert printed["max_order"] == "inf"
    out = tmp_path / "run"
    assert main(["run", write(tmp_path, SMALL), "--out", str(out), "--quiet"]) == 0
    _strict((out / "summary.json").read_text())


# -- the command line people expect ------------------------------------------------------


def test_version_and_plain_help(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0
    assert capsys.readouterr().out.startswith("privlab ")
    for command in (["--help"], ["run", "--help"], ["budget", "--help"], ["demo", "--help"]):
        with pytest.raises(SystemExit):
            main(command)
        assert "``" not in capsys.readouterr().out


def test_run_writes_a_readable_plot(tmp_path):
    out = tmp_path / "run"
    assert main(["run", write(tmp_path, SMALL), "--out", str(out), "--quiet", "--plot"]) == 0
    assert (out / "curves.png").stat().st_size > 10_000


def test_no_progress_bar_floods_a_log(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "privlab", "run", write(tmp_path, SMALL), "--out", "r"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # not a terminal: no bar


def test_a_run_works_from_any_folder(tmp_path):
    """From a folder holding a directory named like the package (the clone's parent)."""
    (tmp_path / "privlab").mkdir()
    script = Path(sys.executable).with_name("privlab")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "privlab.cli"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [*command, "run", "default", "--set", "rounds=1", "--out", "r", "--quiet"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["versions"]["privlab"] not in ("", "0+unknown")


def test_interrupted_demo_says_so(tmp_path, monkeypatch, capsys):
    from privlab import demo

    original = demo.run

    def interrupted_run(config, progress=True):
        results = original(config, progress=progress)
        if config.name == "d-psgd-regular4":
            results.summary["interrupted"] = True
        return results

    monkeypatch.setattr(demo, "run", interrupted_run)
    assert main(["demo", "--out", str(tmp_path), "--rounds", "1", "--quiet"]) == 130
    assert "interrupted: 2 of 4 runs" in capsys.readouterr().out


def test_bad_input_errors_are_privlab_errors():
    with pytest.raises(PrivlabError, match="observer.rounds"):
        parse_config({"observer": {"curious_nodes": [0], "rounds": [31]}})


def test_retired_names_say_the_new_one(tmp_path, capsys):
    """`d-psgd` is the decentralized protocol, `dp-sgd` the private gradient mechanism."""
    args = ["run", write(tmp_path, SMALL), "--out", str(tmp_path / "x"), "--quiet"]
    assert main([*args, "--set", "protocol.name=dpsgd"]) == 2
    assert "protocol 'dpsgd' is now called 'd-psgd'" in one_error(capsys)
    assert main(["budget", "dpsgd", "--noise-multiplier", "1", "--delta", "1e-5"]) == 2
    assert "privlab budget dpsgd is now privlab budget dp-sgd" in one_error(capsys)
    assert parse_config({}).protocol.name == "d-psgd"


def test_final_models_rebuild_every_node(tmp_path):
    out = tmp_path / "run"
    assert main(["run", write(tmp_path, SMALL), "--out", str(out), "--quiet"]) == 0
    results = load_run(out)
    assert results.models["params"].shape == (6, 64 * 8 + 8 + 8 * 10 + 10)
    assert results.models["round"] == 3
    data = build(parse_config(results.config)).data
    test = torch.tensor(data.test_indices)
    x, y = data.dataset.X[test], data.dataset.y[test]
    final = results.final("test_accuracy")
    for node in range(6):
        with torch.no_grad():
            accuracy = (results.node_model(node)(x).argmax(dim=-1) == y).float().mean()
        assert float(accuracy) == pytest.approx(final[node], abs=1e-6)


def test_metrics_hold_bytes_by_kind_and_the_batch_loss(tmp_path):
    out = tmp_path / "run"
    assert main(["run", write(tmp_path, SMALL), "--out", str(out), "--quiet"]) == 0
    wide = pd.read_csv(out / "metrics.csv").pivot_table(
        index=["round", "node"], columns="metric", values="value"
    )
    sent = wide.loc[wide.bytes_sent.notna()]
    parts = sent.bytes_payload + sent.bytes_indices + sent.bytes_metadata
    assert (parts == sent.bytes_sent).all() and (sent.bytes_payload > 0).all()
    assert (sent.bytes_indices == 0).all()  # whole models: no coordinate indices
    assert sent.batch_loss.between(0, 10).all() and len(sent) == 3 * 6
