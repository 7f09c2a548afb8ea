"""`privlab run`, `privlab demo` and bad input: one line on stderr, exit status 2."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from privlab.cli import main, packaged_config
from privlab.config import load_config, parse_config
from privlab.errors import PrivlabError
from privlab.experiment import run
from privlab.mechanisms import DecentralizedSGD
from privlab.results import Results


def small(**overrides) -> dict:
    raw = {
        "name": "t",
        "nodes": 6,
        "rounds": 3,
        "eval_every": 1,
        "topology": {"name": "ring"},
        "model": {"name": "mlp", "hidden": [8]},
        "observer": {"curious_nodes": [0]},
    }
    raw.update(overrides)
    return raw


def write(tmp_path, raw) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_run_writes_the_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", write(tmp_path, small()), "--out", str(out), "--quiet"]) == 0
    assert "results in" in capsys.readouterr().out
    assert load_config(out / "config.yaml").nodes == 6
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics.columns) == ["round", "node", "metric", "value"]
    assert {"test_accuracy", "train_loss", "consensus_distance", "bytes_sent"} <= set(
        metrics.metric
    )
    assert sorted(metrics[metrics.metric == "test_accuracy"]["round"].unique()) == [0, 1, 2, 3]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seed"] == 0 and summary["completed_rounds"] == 3
    assert set(summary["final_accuracy"]) == {"mean", "min", "max"}
    assert summary["total_bytes"] == int(metrics[metrics.metric == "bytes_sent"].value.sum())
    assert {"torch", "numpy", "privlab", "python"} <= set(summary["versions"])
    assert (out / "observations").is_dir()


def test_set_overrides_and_same_seed_same_numbers(tmp_path):
    args = [
        "run",
        write(tmp_path, small()),
        "--quiet",
        "--set",
        "training.lr=0.2",
        "--set",
        "topology.name=regular",
        "--set",
        "topology.degree=2",
    ]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    a, b = (pd.read_csv(tmp_path / d / "metrics.csv") for d in "ab")
    pd.testing.assert_frame_equal(a, b)
    assert load_config(tmp_path / "a" / "config.yaml").training.lr == 0.2


def test_packaged_configs_run():
    for name in ("default", "epidemic"):
        size = "topology.degree=2" if name == "default" else "topology.fanout=2"
        config = load_config(packaged_config(name), ["rounds=1", "nodes=4", size])
        assert run(config, progress=False).summary["completed_rounds"] == 1


def test_existing_run_is_never_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    config = write(tmp_path, small())
    assert main(["run", config, "--out", str(out), "--quiet"]) == 0
    before = (out / "metrics.csv").read_bytes()
    assert main(["run", config, "--out", str(out), "--quiet", "--set", "seed=1"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (out / "metrics.csv").read_bytes() == before


def interrupt_in_send(monkeypatch, at_round: int, how) -> None:
    """Make D-PSGD's send (mid-round: after local training) interrupt at ``at_round``."""
    original = DecentralizedSGD.send

    def send(self, params, plan, round, exchange):
        if round == at_round:
            how()
        return original(self, params, plan, round, exchange)

    monkeypatch.setattr(DecentralizedSGD, "send", send)


def final_metrics(out) -> pd.DataFrame:
    metrics = pd.read_csv(out / "metrics.csv")
    last = metrics[(metrics["round"] == metrics["round"].max()) & (metrics.metric != "bytes_sent")]
    return last.reset_index(drop=True)


def test_ctrl_c_finishes_the_round_in_flight_and_keeps_everything(tmp_path, monkeypatch):
    config = write(tmp_path, small(rounds=6, eval_every=4))
    assert (
        main(["run", config, "--out", str(tmp_path / "clean"), "--quiet", "--set", "rounds=3"]) == 0
    )
    interrupt_in_send(monkeypatch, 3, lambda: signal.raise_signal(signal.SIGINT))
    out = tmp_path / "run"
    handler_before = signal.getsignal(signal.SIGINT)  # SIG_IGN in a background job
    assert main(["run", config, "--out", str(out), "--quiet"]) == 130
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] and summary["completed_rounds"] == 3
    pd.testing.assert_frame_equal(final_metrics(out), final_metrics(tmp_path / "clean"))
    assert signal.getsignal(signal.SIGINT) is handler_before  # restored


def test_a_hard_abort_keeps_only_rounds_evaluated_before_it(tmp_path, monkeypatch):
    config = write(tmp_path, small(rounds=6))
    assert (
        main(["run", config, "--out", str(tmp_path / "clean"), "--quiet", "--set", "rounds=2"]) == 0
    )

    def abort():
        raise KeyboardInterrupt

    interrupt_in_send(monkeypatch, 3, abort)
    out = tmp_path / "run"
    assert main(["run", config, "--out", str(out), "--quiet"]) == 130
    assert json.loads((out / "summary.json").read_text())["completed_rounds"] == 2
    assert pd.read_csv(out / "metrics.csv")["round"].max() == 2
    assert Results.load(out).observations.rounds() == [1, 2]  # every file: the same rounds
    pd.testing.assert_frame_equal(final_metrics(out), final_metrics(tmp_path / "clean"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"nodes": 1}, "nodes: input should be greater than or equal to 2"),
        ({"training": {"lr": 0}}, "training.lr: input should be greater than 0"),
        ({"training": {"lrr": 0.1}}, "unknown config key 'training.lrr'"),
        ({"colour": 1}, "unknown config key 'colour'"),
        (
            {"data": {"alpha": 0, "partition": "dirichlet"}},
            "data.alpha: input should be greater than 0",
        ),
        ({"data": {"dataset": "imagenet"}}, "unknown dataset 'imagenet'; valid: breast_cancer, "),
        ({"model": {"name": "resnet"}}, "unknown model 'resnet'; valid: cnn, logreg, mlp"),
        ({"topology": {"name": "star"}}, "unknown topology 'star'; valid: complete, "),
        (
            {"protocol": {"name": "gossipy"}},
            "unknown protocol 'gossipy'; valid: cesar, d-psgd, epidemic",
        ),
        ({"topology": {"name": "regular", "degree": 6}}, "degree"),
        (
            {"topology": {"name": "regular", "degree": 3}, "nodes": 5},
            "num_nodes * degree must be even",
        ),
        ({"topology": {"name": "ring", "degree": 3}}, "degree"),
        ({"protocol": {"name": "epidemic"}}, "it needs a dynamic topology ('el-oracle' or"),
        (
            {"gradient": {"name": "dp-sgd", "noise_multiplier": 0}},
            "gradient.noise_multiplier must be > 0 and finite, got 0",
        ),
        (
            {"gradient": {"name": "dp-sgd", "noise_multiplier": float("nan")}},
            "gradient.noise_multiplier must be > 0 and finite, got nan",
        ),
        (
            {"gradient": {"name": "dp-sgd", "max_grad_norm": -1.0}},
            "gradient.max_grad_norm must be > 0 and finite, got -1.0",
        ),
        (
            {"gradient": {"name": "dp-sgd", "sampling": "uniform"}},
            "gradient.sampling must be one of 'poisson', 'shuffle', got 'uniform'",
        ),
        (
            {"gradient": {"name": "dp-sgd", "sample_rate": 1.5}},
            "gradient.sample_rate must be in (0, 1], got 1.5",
        ),
        (
            {"gradient": {"name": "dp-sgd", "sample_rate": 0.0}},
            "gradient.sample_rate must be in (0, 1], got 0.0",
        ),
        ({"gradient": {"name": "dp-sgd", "clip": 1.0}}, "unknown option 'gradient.clip'"),
        ({"gradient": {"name": "dpsgd"}}, "gradient mechanism 'dpsgd' is now called 'dp-sgd'"),
        ({"privacy": {"delta": 2.0}}, "privacy.delta must be in (0, 1), got 2.0"),
        ({"privacy": {"delta": 0.0}}, "privacy.delta must be in (0, 1), got 0.0"),
        ({"privacy": {"accountant": "moments"}}, "privacy.accountant: input should be 'rdp'"),
        ({"engine": "gpu"}, "unknown engine 'gpu'; valid: distributed, loop, vectorized"),
        (
            {
                "gradient": {
                    "name": "relative-gaussian",
                    "relative_sensitivity": 1.0,
                    "absolute_sensitivity": 0.1,
                }
            },
            "gradient.relative_sensitivity must be in [0, 1)",
        ),
        ({"gradient": {"name": "relative-gaussian"}}, "for model 'logreg' only"),
        ({"protocol": {"name": "shatter", "virtual_nodes": 0}}, "protocol.virtual_nodes must be"),
        (
            {"protocol": {"name": "shatter", "virtual_nodes": 3, "degree": 3}, "nodes": 5},
            "degree * n * virtual_nodes is even",
        ),
        ({"protocol": {"name": "cesar", "fraction": 1.5}}, "protocol.fraction must be in (0, 1]"),
        ({"protocol": {"name": "cesar", "threshold": 0}}, "protocol.threshold must be"),
        (
            {"protocol": {"name": "cesar", "threshold": 9}, "topology": {"name": "ring"}},
            "protocol.threshold must be at most 1",
        ),
        ({"protocol": {"name": "muted-gossip", "mute": 1.5}}, "protocol.mute must be in [0, 1]"),
        (
            {"protocol": {"name": "zipdl", "noise_multiplier": -1.0}},
            "protocol.noise_multiplier must be >= 0 and finite, got -1.0",
        ),
        (
            {"protocol": {"name": "muffliato", "gossip_steps": 0}},
            "protocol.gossip_steps must be >= 1 (an integer), got 0",
        ),
        (
            {
                "protocol": {"name": "muffliato", "chebyshev": True},
                "topology": {"name": "el-oracle", "fanout": 2},
            },
            "chebyshev needs a static topology",
        ),
        ({"observer": {"curious_nodes": [7]}}, "observer.curious_nodes must be in [0, 6)"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, overrides, message):
    code = main(
        ["run", write(tmp_path, small(**overrides)), "--out", str(tmp_path / "x"), "--quiet"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("privlab: error: ")
    assert message in err
    assert not (tmp_path / "x").exists()


def test_bad_usage_and_missing_files(tmp_path, capsys):
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "file").write_text("keep me")
    config = write(tmp_path, small())
    calls = [
        ["run", str(tmp_path / "none.yaml")],
        ["launch"],
        ["run", config, "--set", "oops"],
        ["run", str(tmp_path / "list.yaml")],
        ["run", config, "--set", "model.hidden=[64,"],
        ["run", config, "--out", str(tmp_path / "file")],
        ["demo", "--rounds", "0"],
    ]
    assert [main(call) for call in calls] == [2] * len(calls)
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == len(calls) and all(e.startswith("privlab: error: ") for e in errors)
    assert "mapping" in errors[3] and "--set model.hidden is not valid YAML" in errors[4]
    assert "is a file" in errors[5] and (tmp_path / "file").read_text() == "keep me"


def test_yaml_reads_exponents_as_numbers_and_fills_empty_sections(tmp_path):
    raw = small(topology={"name": "erdos_renyi", "p": "PLACEHOLDER"}, observer=None)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw).replace("PLACEHOLDER", "5e-1"))
    config = load_config(path, ["training.lr=1e-1", "observer.curious_nodes=[1]"])
    assert config.topology.options == {"p": 0.5} and config.training.lr == 0.1
    assert config.observer.curious_nodes == [1]


def test_runs_without_a_test_set_report_no_accuracy(tmp_path):
    results = run(parse_config(small(data={"test_fraction": 0.0})), progress=False)
    assert "test_accuracy" not in set(results.metrics.metric)
    assert "final_accuracy" not in results.summary


def test_force_replaces_the_whole_run(tmp_path):
    out = tmp_path / "run"
    assert main(["run", write(tmp_path, small()), "--out", str(out), "--quiet"]) == 0
    assert (out / "observations").is_dir()
    no_observer = write(tmp_path, small(observer=None))
    assert main(["run", no_observer, "--out", str(out), "--quiet", "--force"]) == 0
    assert not (out / "observations").exists()


def test_parse_config_rejects_non_mappings():
    with pytest.raises(PrivlabError, match="mapping"):
        parse_config([1, 2])


def test_the_command_line_entry_point_exits_2_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "privlab", "run", write(tmp_path, small(nodes=0))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("privlab: error: nodes")


def test_demo_writes_its_table_and_runs(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--rounds", "2", "--quiet"]) == 0
    printed = capsys.readouterr().out
    table = pd.read_csv(out / "comparison.csv")
    assert table.run.tolist() == ["d-psgd-ring", "d-psgd-regular4", "el-oracle4", "el-local4"]
    assert (table.acc_mean > 0.1).all() and "d-psgd-ring" in printed
    assert (out / "comparison.png").stat().st_size > 10_000
    assert (out / "el-local4" / "summary.json").exists()
    (out / "notes.txt").write_text("mine")
    assert main(["demo", "--out", str(out), "--rounds", "1", "--quiet"]) == 0  # works twice
    assert "replaced the previous demo" in capsys.readouterr().out
    assert pd.read_csv(out / "comparison.csv").rounds.tolist() == ["1/1"] * 4
    assert (out / "notes.txt").read_text() == "mine"  # only the demo's own files are replaced
