"""`privlab compare`: a sweep of mechanisms x parameters x seeds, resumable, in parallel."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import privlab.compare_pools
from privlab.cli import main
from privlab.compare import SUMMARY_COLUMNS, choose, compare
from privlab.compare_plots import PLOTS, pareto_frontier
from privlab.compare_run import RESULT
from privlab.sweep import load_sweep

BASE = {
    "nodes": 4,
    "rounds": 2,
    "eval_every": 2,
    "topology": {"name": "ring"},
    "data": {"dataset": "digits", "test_fraction": 0.5, "nonmember_fraction": 0.4},
    "model": {"name": "mlp", "hidden": [8]},
    "training": {"lr": 0.1, "batch_size": 8, "local_steps": 2},
    "observer": {"curious_nodes": [0]},
}
DP_SGD = {"gradient": {"name": "dp-sgd", "max_grad_norm": 1.0}}
SWEEP = {
    "base": BASE,
    "seeds": [0, 1],
    "tune": {"training.lr": [0.05, 0.2]},
    "mechanisms": [
        {"name": "d-psgd", "grid": {"training.momentum": [0.0, 0.9]}},
        {"name": "dp-sgd", "set": DP_SGD, "grid": {"gradient.noise_multiplier": [0.5, 2.0]}},
    ],
}
NUMBERS = ["test_accuracy", "mia_auc", "mia_tpr_at_1pct_fpr", "epsilon", "bytes_sent", "lr"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The tiny sweep, run once in this process: (folder, summary)."""
    out = tmp_path_factory.mktemp("sweep") / "out"
    return out, compare(SWEEP, out, workers=1, progress=False, threads=1)


def copy_of(finished, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(finished[0], out)
    return out


def test_summary_has_one_row_per_run_with_real_values(finished):
    out, frame = finished
    assert len(frame) == 2 * 2 * 2
    on_disk = pd.read_csv(out / "summary.csv")
    assert list(on_disk.columns[: len(SUMMARY_COLUMNS)]) == SUMMARY_COLUMNS
    assert (on_disk["status"] == "finished").all()
    assert on_disk["test_accuracy"].between(0, 1).all()
    assert on_disk["mia_auc"].between(0, 1).all()
    assert on_disk["mia_tpr_at_1pct_fpr"].between(0, 1).all()
    assert (on_disk["bytes_sent"] > 0).all() and (on_disk["wall_time"] > 0).all()
    dp = on_disk["mechanism"] == "dp-sgd"
    assert np.isfinite(on_disk.loc[dp, "epsilon"]).all() and (on_disk.loc[dp, "epsilon"] > 0).all()
    assert on_disk.loc[~dp, "epsilon"].isna().all()
    assert on_disk["network_epsilon"].isna().all()  # neither accounts a network view
    assert set(on_disk["parameters"]) == {
        "momentum=0.0",
        "momentum=0.9",
        "noise_multiplier=0.5",
        "noise_multiplier=2.0",
    }
    assert "dp-sgd--noise_multiplier=0.5--seed1" in set(on_disk["run_id"])
    # more noise, smaller epsilon (same steps, same sample rate)
    eps = on_disk[dp].groupby("parameters")["epsilon"].mean()
    assert eps["noise_multiplier=2.0"] < eps["noise_multiplier=0.5"]


def test_learning_rate_is_the_best_tuning_run(finished):
    out, frame = finished
    report = json.loads((out / "compare.json").read_text())
    assert report["runs"] == {
        "evaluation": 8,
        "finished": 8,
        "failed": 0,
        "tuning": 8,
        "executed_now": 16,
    }
    for entry in report["tuning"]:
        accuracies = {r["tuned"]["training.lr"]: r["test_accuracy"] for r in entry["runs"]}
        best = max(accuracies, key=accuracies.get)
        assert entry["chosen"] == {"training.lr": best}
        assert report["chosen_lr"][entry["mechanism"]][entry["parameters"]] == best
        rows = frame[
            (frame["mechanism"] == entry["mechanism"])
            & (frame["parameters"] == entry["parameters"])
        ]
        assert (rows["lr"] == best).all()
    assert (out / "tuning").is_dir() and len(list((out / "tuning").iterdir())) == 8


def test_a_second_invocation_runs_nothing(finished, tmp_path):
    out = copy_of(finished, tmp_path)
    again = compare(SWEEP, out, workers=1, progress=False, threads=1)
    assert again.attrs["executed"] == []
    pd.testing.assert_frame_equal(
        pd.read_csv(out / "summary.csv"), pd.read_csv(finished[0] / "summary.csv")
    )


def test_a_partial_sweep_reruns_only_what_is_missing(finished, tmp_path):
    out = copy_of(finished, tmp_path)
    missing = "dp-sgd--noise_multiplier=2.0--seed1"
    (out / "runs" / missing / RESULT).unlink()
    again = compare(SWEEP, out, workers=1, progress=False, threads=1)
    assert again.attrs["executed"] == [missing]
    pd.testing.assert_frame_equal(again[NUMBERS], finished[1][NUMBERS])


def test_two_workers_give_the_same_numbers(finished, tmp_path):
    parallel = compare(SWEEP, tmp_path / "parallel", workers=2, progress=False, threads=1)
    assert list(parallel["run_id"]) == list(finished[1]["run_id"])
    np.testing.assert_allclose(
        parallel[NUMBERS].to_numpy(), finished[1][NUMBERS].to_numpy(), atol=1e-6, equal_nan=True
    )


def test_a_local_ray_instance_gives_the_same_numbers(finished, tmp_path):
    """``--backend ray``: the runs are tasks of a Ray instance started by the test."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = compare(SWEEP, tmp_path / "ray", progress=False, threads=1, backend="ray")
        assert ray.is_initialized()  # an instance started by the caller stays up
    finally:
        ray.shutdown()
    assert list(on_ray["run_id"]) == list(finished[1]["run_id"])
    np.testing.assert_allclose(
        on_ray[NUMBERS].to_numpy(), finished[1][NUMBERS].to_numpy(), atol=1e-6, equal_nan=True
    )
    again = compare(SWEEP, tmp_path / "ray", progress=False, threads=1)  # resumable locally
    assert again.attrs["executed"] == []


def test_plots_are_written(finished):
    for name, _, _ in PLOTS.values():
        path = finished[0] / name
        assert path.is_file() and path.stat().st_size > 1000


def test_pareto_frontier_keeps_the_non_dominated_points():
    # (x = AUC, y = accuracy): 1 dominates 2 (lower x, higher y); 3 and 4 tie in x,
    # 4 is better; 5 has the best accuracy at the highest x; 6 is not finite
    x = np.array([0.50, 0.55, 0.60, 0.70, 0.70, 0.80, np.nan])
    y = np.array([0.60, 0.80, 0.70, 0.85, 0.90, 0.95, 0.99])
    assert pareto_frontier(x, y).tolist() == [0, 1, 4, 5]
    assert pareto_frontier(np.array([1.0, 1.0]), np.array([0.5, 0.5])).tolist() == [0]
    assert pareto_frontier(np.array([]), np.array([])).tolist() == []


def test_choose_takes_the_most_accurate_finished_run():
    runs = [
        {"status": "finished", "test_accuracy": 0.7, "tuned": {"training.lr": 0.03}},
        {"status": "finished", "test_accuracy": 0.8, "tuned": {"training.lr": 0.1}},
        {"status": "finished", "test_accuracy": 0.8, "tuned": {"training.lr": 0.3}},
        {"status": "failed", "test_accuracy": 0.9, "tuned": {"training.lr": 1.0}},
    ]
    assert choose(runs) == {"training.lr": 0.1}
    assert choose(runs[3:]) is None


PLUGIN = """
from privlab.mechanisms import DecentralizedSGD


class Broken(DecentralizedSGD):
    def send(self, state, plan, round, exchange):
        raise RuntimeError("broken on purpose")
"""


def test_a_failing_run_is_recorded_and_the_others_finish(tmp_path):
    plugin = tmp_path / "broken.py"
    plugin.write_text(PLUGIN)
    sweep = {
        "base": BASE,
        "seeds": [0],
        "mechanisms": [
            {"name": "diverges", "set": {"training.lr": 1.0e30}},
            {"name": "raises", "set": {"protocol.name": f"{plugin}:Broken"}},
            {"name": "d-psgd"},
        ],
    }
    frame = compare(sweep, tmp_path / "out", progress=False, threads=1).set_index("mechanism")
    assert frame.loc["d-psgd", "status"] == "finished"
    assert 0 <= frame.loc["d-psgd", "mia_auc"] <= 1
    assert frame.loc["diverges", "status"] == "failed"
    assert "training diverged in round 1" in frame.loc["diverges", "error"]
    assert frame.loc["raises", "status"] == "failed"
    assert frame.loc["raises", "error"] == "broken on purpose"
    on_disk = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert list(on_disk["status"]) == ["failed", "failed", "finished"]


def test_shatter_and_cesar_are_attacked_from_the_observer(tmp_path):
    sweep = {
        "base": BASE,
        "seeds": [0],
        "mechanisms": [
            {"name": "shatter", "set": {"protocol": {"name": "shatter", "virtual_nodes": 2}}},
            {"name": "cesar", "set": {"protocol": {"name": "cesar", "fraction": 0.5}}},
        ],
    }
    frame = compare(sweep, tmp_path / "out", progress=False, threads=1).set_index("mechanism")
    assert frame["mia_auc"].between(0, 1).all()
    assert frame.loc["shatter", "attack_target"].startswith("chunks")
    assert frame.loc["cesar", "attack_target"].startswith("the curious node's own final model")


def test_ctrl_c_keeps_what_finished_and_resumes(tmp_path, monkeypatch, capsys):
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump({**SWEEP, "tune": {}}))
    execute = privlab.compare_pools.execute
    calls = []

    def interrupted_at_the_third(spec, root):
        calls.append(spec.run_id)
        if len(calls) == 3:
            return {"status": "interrupted"}
        return execute(spec, root)

    monkeypatch.setattr(privlab.compare_pools, "execute", interrupted_at_the_third)
    out = tmp_path / "out"
    assert main(["compare", str(sweep_file), "--out", str(out), "--quiet"]) == 130
    assert (
        "interrupted: kept 2 finished run(s), 2 of them in summary.csv" in capsys.readouterr().err
    )
    assert len(pd.read_csv(out / "summary.csv")) == 2
    monkeypatch.setattr(privlab.compare_pools, "execute", execute)
    assert main(["compare", str(sweep_file), "--out", str(out), "--quiet"]) == 0
    assert len(pd.read_csv(out / "summary.csv")) == 8


def bad(sweep: dict, tmp_path, capsys) -> str:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    out = tmp_path / "out"
    assert main(["compare", str(path), "--out", str(out), "--quiet"]) == 2
    assert not out.exists()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


def one_mechanism(**entry) -> dict:
    return {**SWEEP, "mechanisms": [{"name": "m", **entry}]}


@pytest.mark.parametrize(
    "sweep, field",
    [
        (one_mechanism(grid={"training.lr": []}), "mechanisms[0].grid.training.lr"),
        ({**SWEEP, "seeds": []}, "seeds must be a non-empty list"),
        ({**SWEEP, "mechanisms": []}, "mechanisms must be a non-empty list"),
        ({**SWEEP, "base": "no-such-base.yaml"}, "base: config file"),
        ({**SWEEP, "mechanism": []}, "unknown key 'mechanism' in sweep"),
        (one_mechanism(grids={}), "unknown key 'grids' in mechanisms[0]"),
        (one_mechanism(grid={"training.lrr": [0.1]}), "mechanisms[0].grid.training.lrr"),
        (
            {
                **SWEEP,
                "mechanisms": [
                    SWEEP["mechanisms"][0],
                    {**SWEEP["mechanisms"][1], "grid": {"gradient.noise_multiplier": [1.0, -1]}},
                ],
            },
            "mechanisms[1].grid.gradient.noise_multiplier: gradient.noise_multiplier must be > 0",
        ),
        ({**SWEEP, "tune_seed": 1}, "tune_seed must be a seed that is not an evaluation seed"),
        ({**SWEEP, "attack": {"method": "lira"}}, "attack.method must be one of"),
        ({**SWEEP, "base": {**BASE, "observer": None}}, "base.observer"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(sweep, field, tmp_path, capsys):
    assert field in bad(sweep, tmp_path, capsys)


def test_sweep_expansion_names_runs_and_applies_overrides():
    sweep = load_sweep(SWEEP, overrides=["rounds=1"])
    points = sweep.points()
    assert [p.label for p in points] == [
        "momentum=0.0",
        "momentum=0.9",
        "noise_multiplier=0.5",
        "noise_multiplier=2.0",
    ]
    tuning = sweep.tuning_runs(points[2])
    assert [s.run_id for s in tuning] == [
        "dp-sgd--noise_multiplier=0.5--lr=0.05--tune-seed1000",
        "dp-sgd--noise_multiplier=0.5--lr=0.2--tune-seed1000",
    ]
    (run, _) = sweep.evaluation_runs(points[2], {"training.lr": 0.2})
    config = run.config
    assert (config["seed"], config["rounds"], config["training"]["lr"]) == (0, 1, 0.2)
    assert config["gradient"] == {"name": "dp-sgd", "max_grad_norm": 1.0, "noise_multiplier": 0.5}
    assert config["attacks"] == [] and math.isclose(config["training"]["momentum"], 0.9)


def test_the_example_sweep_is_valid():
    example = Path(__file__).resolve().parents[1] / "examples" / "compare.yaml"
    sweep = load_sweep(example)
    names = [m.name for m in sweep.mechanisms]
    assert names == ["d-psgd", "dp-sgd", "muffliato", "zipdl", "shatter", "cesar"]
    assert len(sweep.points()) == 15 and sweep.seeds == (0, 1, 2)
    config = sweep.evaluation_runs(sweep.points()[0], {"training.lr": 0.1})[0].config
    assert config["nodes"] == 8 and config["rounds"] == 12
    assert config["observer"]["curious_nodes"] == [0] and config["attacks"] == []
