"""`privlab budget`: through argparse directly, through main(), and as a subprocess."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from privlab.accounting.cli import add_budget_parser

MNIST = ["--sample-rate", str(256 / 60000), "--steps", "14063", "--delta", "1e-5"]


def harness(argv):
    parser = argparse.ArgumentParser(prog="privlab")
    add_budget_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_harness_dp_sgd_rdp_json(capsys):
    assert harness(["budget", "dp-sgd", "--noise-multiplier", "1.1", *MNIST, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["epsilon"] == pytest.approx(2.5966, abs=2e-4)
    assert out["accountant"] == "rdp" and 5 < out["order"] < 15
    assert out["noise_multiplier"] == 1.1 and out["steps"] == 14063


def test_harness_dp_sgd_pld_text(capsys):
    assert (
        harness(["budget", "dp-sgd", "--noise-multiplier", "1.1", *MNIST, "--accountant", "pld"])
        == 0
    )
    out = capsys.readouterr().out
    assert "epsilon 2.381" in out and "[PLD]" in out


def test_harness_target_epsilon_prints_the_noise(capsys):
    assert harness(["budget", "dp-sgd", "--target-epsilon", "3", *MNIST, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["noise_multiplier"] == pytest.approx(1.01401, rel=1e-4)
    assert out["epsilon"] <= 3.0


def test_harness_gaussian_and_rgm(capsys):
    assert (
        harness(
            [
                "budget",
                "gaussian",
                "--noise-multiplier",
                "1",
                "--delta",
                "1e-5",
                "--accountant",
                "pld",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["epsilon"] == pytest.approx(4.377178, abs=1e-6) and out["order"] is None
    assert (
        harness(
            [
                "budget",
                "rgm",
                "--noise-multiplier",
                "4.472",
                "--relative-sensitivity",
                "0.01",
                "--dimension",
                "22",
                "--steps",
                "40",
                "--delta",
                "1e-5",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert 7 < out["epsilon"] < 9 and out["order"] < out["max_order"] == pytest.approx(
        50.25, rel=1e-3
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--noise-multiplier", "-1", *MNIST], "noise_multiplier must be > 0"),
        (
            ["--noise-multiplier", "1", "--sample-rate", "1.5", "--steps", "3", "--delta", "1e-5"],
            "sample_rate must be in (0, 1]",
        ),
        (
            ["--noise-multiplier", "1", "--sample-rate", "0.1", "--steps", "3", "--delta", "1"],
            "delta must be in (0, 1)",
        ),
        (["--target-epsilon", "-2", *MNIST], "target_epsilon must be > 0"),
    ],
)
def test_harness_bad_values_raise_value_error(argv, message):
    with pytest.raises(ValueError) as info:
        harness(["budget", "dp-sgd", *argv])
    assert message in str(info.value)


def test_main_budget(capsys):
    main = pytest.importorskip("privlab.cli").main
    assert main(["budget", "dp-sgd", "--noise-multiplier", "1.1", *MNIST, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["epsilon"] == pytest.approx(2.5966, abs=2e-4)
    assert (
        main(
            [
                "budget",
                "dp-sgd",
                "--noise-multiplier",
                "1",
                "--sample-rate",
                "0.1",
                "--steps",
                "2.5",
                "--delta",
                "1e-5",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "steps must be a positive integer" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--noise-multiplier", "0", *MNIST], "noise_multiplier must be > 0"),
        (
            ["--noise-multiplier", "1", "--sample-rate", "0", "--steps", "3", "--delta", "1e-5"],
            "sample_rate must be in (0, 1]",
        ),
        (
            ["--noise-multiplier", "1", "--sample-rate", "0.1", "--steps", "0", "--delta", "1e-5"],
            "steps must be a positive integer",
        ),
    ],
)
def test_subprocess_bad_input_exits_2_without_traceback(argv, message):
    proc = subprocess.run(
        [sys.executable, "-m", "privlab", "budget", "dp-sgd", *argv],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and proc.stdout == ""


def test_subprocess_prints_epsilon():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "privlab",
            "budget",
            "dp-sgd",
            "--noise-multiplier",
            "1.1",
            *MNIST,
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["epsilon"] == pytest.approx(2.5966, abs=2e-4)


NETWORK = ["budget", "network", "--topology", "ring", "--nodes", "8", "--delta", "1e-5"]


def test_harness_network_json_keys_and_sorting(capsys):
    argv = [*NETWORK, "--mechanism", "muffliato", "--gossip-steps", "2"]
    argv += ["--noise-multiplier", "1", "--observers", "0", "3", "--json"]
    assert harness(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"pairs", "per_pair_formula"} <= set(out)
    pairs = out["pairs"]
    assert len(pairs) == 14 and set(pairs[0]) == {"observer", "source", "mu", "epsilon"}
    assert {p["observer"] for p in pairs} == {"node:0", "node:3"}
    eps = [p["epsilon"] for p in pairs]
    assert eps == sorted(eps, reverse=True)
    near = {(p["observer"], p["source"]): p["mu"] for p in pairs}
    assert near["node:0", 1] == pytest.approx(1.0) and near["node:0", 4] == 0
    assert len(out["per_pair_formula"]) == 14


def test_harness_network_colluding_zipdl_and_text(capsys):
    argv = [*NETWORK, "--mechanism", "zipdl", "--gossip-steps", "2", "--noise-multiplier", "1"]
    assert harness([*argv, "--observers", "0", "4", "--colluding", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {p["observer"] for p in out["pairs"]} == {"nodes:0,4"} and len(out["pairs"]) == 6
    assert out["per_pair_formula"] is None
    argv = [*NETWORK, "--mechanism", "muffliato", "--gossip-steps", "1"]
    assert harness([*argv, "--noise-multiplier", "0", "--observers", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines[2:] if line.strip().startswith("node:")]
    assert [r[3] for r in rows] == ["inf", "inf", "0", "0", "0", "0", "0"]


@pytest.mark.parametrize(
    "change, message",
    [
        (["--noise-multiplier", "-1"], "noise_multiplier must be >= 0 and finite"),
        (["--noise-multiplier", "nan"], "noise_multiplier must be >= 0 and finite"),
        (["--gossip-steps", "0"], "gossip_steps must be a positive integer"),
        (["--observers", "8"], "observers must be nodes in [0, 7]"),
        (["--mechanism", "decor"], "mechanism must be one of muffliato, zipdl"),
        (["--topology", "star"], "topology must be one of"),
    ],
)
def test_main_network_bad_input_exits_2_one_line(capsys, change, message):
    main = pytest.importorskip("privlab.cli").main
    base = {"--mechanism": "muffliato", "--gossip-steps": "2", "--noise-multiplier": "1"}
    base["--observers"] = "0"
    base.update({change[0]: change[1]})
    argv = ["budget", "network", "--nodes", "8", "--delta", "1e-5"]
    argv += ["--topology", base.pop("--topology", "ring")]
    for key, value in base.items():
        argv += [key, value]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.err.count("\n") == 1 and captured.out == ""


def test_subprocess_network_bad_input_exits_2():
    proc = subprocess.run(
        [sys.executable, "-m", "privlab", *NETWORK, "--mechanism", "muffliato"]
        + ["--gossip-steps", "1", "--noise-multiplier", "1", "--observers", "-1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert "observers must be nodes in [0, 7]" in proc.stderr and "Traceback" not in proc.stderr
