"""``privlab attack`` and a config's ``attacks:`` section: reports, and bad input as one
line with exit status 2."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from privlab.attack_command import parse_rounds
from privlab.cli import main
from privlab.errors import PrivlabError

LEAKY = {
    "nodes": 8,
    "rounds": 3,
    "data": {"test_fraction": 0.5, "nonmember_fraction": 0.4},
    "model": {"name": "mlp", "hidden": [32]},
    "training": {"lr": 0.1, "momentum": 0.9, "batch_size": 8, "local_steps": 30},
    "observer": {"curious_nodes": [0]},
}


def run_folder(tmp_path, name="run", **overrides):
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump({**LEAKY, **overrides}))
    out = tmp_path / name
    assert main(["run", str(config), "--out", str(out), "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def leaky(tmp_path_factory):
    return run_folder(tmp_path_factory.mktemp("attack"))


def test_mia_report_has_the_promised_keys(leaky, capsys):
    assert main(["attack", "mia", str(leaky), "--quiet"]) == 0
    folder = leaky / "attacks" / "mia-loss"
    report = json.loads((folder / "attack.json").read_text())
    assert report["attack"] == "mia" and report["method"] == "loss"
    assert report["attacker"] == "peer" and report["instances"] == "attack.csv"
    assert report["threat_model"]["curious_nodes"] == [0]
    summary = report["summary"]
    for key in ("auc", "auc_ci", "balanced_accuracy", "advantage", "tpr_at_fpr"):
        assert key in summary
    assert set(summary["tpr_at_fpr"]) == {"0.01", "0.001", "0"}
    low, high = summary["auc_ci"]
    assert 0.6 < low < summary["auc"] < high  # small nodes, many local steps: it leaks
    instances = pd.read_csv(folder / "attack.csv")
    assert len(instances) == summary["instances"] == 4 * 3  # 4 neighbours, 3 rounds
    assert (folder / "roc.png").stat().st_size > 10_000
    out = capsys.readouterr()
    assert "AUC" in out.out and "warning: TPR at FPR 0.01 is unresolved" in out.err


def test_rounds_and_out_and_options(leaky, tmp_path):
    out = tmp_path / "report"
    argv = ["attack", "mia", str(leaky), "--method", "calibrated", "--rounds", "2-3"]
    argv += ["--out", str(out), "--option", "samples_per_victim=50", "--quiet"]
    assert main(argv) == 0
    instances = pd.read_csv(out / "attack.csv")
    assert set(instances["round"]) == {2, 3}
    assert json.loads((out / "attack.json").read_text())["method"] == "calibrated"


def test_linkability_of_whole_models(leaky):
    assert main(["attack", "linkability", str(leaky), "--quiet"]) == 0
    report = json.loads((leaky / "attacks" / "linkability-lowest-loss" / "attack.json").read_text())
    assert report["attacker"] == "oracle"
    top = report["summary"]["top"]
    assert top["1"]["accuracy"] > 3 * top["1"]["baseline"]
    assert top["5"]["accuracy"] >= top["1"]["accuracy"]


def test_config_attacks_run_at_the_end(tmp_path, capsys):
    attacks = [{"attack": "mia", "method": "loss", "options": {"samples_per_victim": 50}}]
    out = run_folder(tmp_path, attacks=attacks)
    assert (out / "attacks" / "mia-loss" / "attack.json").exists()
    assert "mia loss (peer attacker): AUC" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--method", "nope"], "--method must be one of loss"),
        (["--option", "foo=1"], "unknown option 'foo' for attack 'mia'"),
        (["--option", "noequals"], "--option must be KEY=VALUE"),
        (["--rounds", "0-2"], "--rounds must be rounds >= 1"),
        (["--rounds", "a"], "--rounds must be rounds >= 1"),
        (["--option", "aggregate=median"], "aggregate must be one of pooled"),
        (["--option", "samples_per_victim=0"], "samples_per_victim must be an integer >= 1"),
    ],
)
def test_bad_attack_input_is_one_line_and_exit_2(leaky, capsys, argv, message):
    assert main(["attack", "mia", str(leaky), "--quiet", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_unknown_attack_and_missing_folder(tmp_path, capsys):
    assert main(["attack", "bogus", str(tmp_path)]) == 2
    assert "unknown attack 'bogus'; valid: " in capsys.readouterr().err
    assert main(["attack", "mia", str(tmp_path / "none")]) == 2
    assert "RUN_DIR must be a run folder" in capsys.readouterr().err


def test_runs_an_attack_cannot_read_are_refused(tmp_path, capsys):
    plain = run_folder(tmp_path, "plain", observer=None, rounds=1)
    assert main(["attack", "mia", str(plain)]) == 2
    assert "no observation log" in capsys.readouterr().err
    cesar = run_folder(
        tmp_path,
        "cesar",
        rounds=1,
        protocol={"name": "cesar"},
        topology={"name": "regular", "degree": 3},
    )
    assert main(["attack", "mia", str(cesar)]) == 2
    assert "masked integers" in capsys.readouterr().err
    shatter = run_folder(tmp_path, "shatter", rounds=1, protocol={"name": "shatter"})
    assert main(["attack", "mia", str(shatter)]) == 2
    assert "completion" in capsys.readouterr().err
    assert main(["attack", "mia", str(shatter), "--option", "completion=own", "--quiet"]) == 0


def test_config_attacks_are_checked_before_the_run(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({**LEAKY, "attacks": [{"attack": "mia", "method": "x"}]}))
    assert main(["run", str(config), "--out", str(tmp_path / "out")]) == 2
    assert "--method must be one of" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    config.write_text(yaml.safe_dump({**LEAKY, "observer": None, "attacks": [{"attack": "mia"}]}))
    assert main(["run", str(config), "--out", str(tmp_path / "out")]) == 2
    assert "attacks need an observer section" in capsys.readouterr().err


def test_parse_rounds():
    assert parse_rounds("1,4-6") == [1, 4, 5, 6]
    assert parse_rounds(None) is None
    with pytest.raises(PrivlabError):
        parse_rounds("3-1")


@pytest.mark.parametrize("method", ["first-spy", "jordan-center", "maximum-likelihood"])
def test_source_of_a_muted_gossip_run(tmp_path, method):
    gossip = {
        "nodes": 12,
        "rounds": 3,
        "topology": {"name": "regular", "degree": 3},
        "protocol": {"name": "muted-gossip", "source": 2, "mute": 0.5},
        "observer": {"curious_nodes": [0, 5, 9]},
    }
    config = tmp_path / "gossip.yaml"
    config.write_text(yaml.safe_dump(gossip))
    run = tmp_path / "gossip"
    assert main(["run", str(config), "--out", str(run), "--quiet"]) == 0
    argv = ["attack", "source", str(run), "--method", method, "--quiet"]
    assert main([*argv, "--option", "runs=20"] if method == "maximum-likelihood" else argv) == 0
    report = json.loads((run / "attacks" / f"source-{method}" / "attack.json").read_text())
    summary = report["summary"]
    assert summary["source"] == 2 and summary["runs"] == 1
    assert all(0 <= v < 12 for v in summary["predicted"])
    assert summary["top1_accuracy"] in (0.0, 1.0)
    assert report["attacker"] == ("oracle" if method == "jordan-center" else "peer")


def test_help_lists_every_method_of_every_attack():
    import re

    from privlab.attack_command import METHODS_HELP
    from privlab.attacks.runner import RUN_ATTACKS

    methods_part = METHODS_HELP.split("\noptions:")[0]
    sections = re.split(r"\n  (?=[a-z]+ )", methods_part)[1:]
    listed = {text.split()[0]: text for text in sections}
    assert set(listed) == set(RUN_ATTACKS)
    for name, text in listed.items():
        for method in RUN_ATTACKS[name].methods:
            assert re.search(rf"(?<![a-z-]){re.escape(method)}(?![a-z-])", text), method
