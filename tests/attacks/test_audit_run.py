"""The audit end to end: it catches planted bugs, passes the correct DP-SGD, trains the
worlds of a multi-run audit side by side exactly as alone, and refuses bad input."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest

from privlab.attacks.audit_run import AuditSettings, run_audit
from privlab.cli import main
from privlab.config import parse_config
from privlab.mechanisms.gossip import DecentralizedSGD

BUGS = Path(__file__).resolve().parents[2] / "examples" / "planted_bugs.py"
BASE = {
    "name": "audit-test",
    "nodes": 16,
    "rounds": 10,
    "eval_every": 10,
    "data": {"dataset": "digits"},
    "model": {"name": "mlp", "hidden": [32]},
    "topology": {"name": "regular", "degree": 4},
    "protocol": {"name": "d-psgd"},
    "training": {"lr": 0.1, "batch_size": 16, "local_steps": 5},
}
DP_SGD = {"name": "dp-sgd", "noise_multiplier": 4.0, "max_grad_norm": 1.0}


def config(**parts):
    return parse_config({**BASE, **parts})


def audit(settings=None, **parts):
    return run_audit(config(**parts), settings or AuditSettings(), progress=False)


def test_protocol_claiming_noise_it_does_not_add_is_a_violation(tmp_path):
    path = tmp_path / "claims.yaml"
    path.write_text(
        json.dumps(
            {**BASE, "protocol": {"name": f"{BUGS}:GossipClaimingNoise", "noise_multiplier": 10}}
        )
    )
    code = main(["audit", str(path), "--out", str(tmp_path / "out"), "--quiet"])
    report = json.loads((tmp_path / "out" / "audit.json").read_text())
    assert code == 1
    assert report["verdict"] == "violation"
    assert report["claim_source"] == "ledger"
    assert report["epsilon_lower_bound"] > report["claimed_epsilon"] > 0.5
    assert report["method"] == "one-run" and report["confidence"] == 0.95
    assert report["canaries"]["kind"] == "dirac" and report["canaries"]["count"] == 200
    for name in ("report.md", "scores.csv", "scores.png", "bound.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0


def test_dp_sgd_that_forgets_to_clip_is_a_violation():
    result = audit(gradient={**DP_SGD, "name": f"{BUGS}:UnclippedDPSGD"})
    assert result.claim_source == "ledger"
    assert result.verdict == "violation", result.reason
    assert result.epsilon_lower_bound > result.claimed_epsilon


def test_correct_dp_sgd_is_consistent():
    result = audit(gradient=DP_SGD)
    assert result.verdict == "consistent", result.reason
    assert result.epsilon_lower_bound < result.claimed_epsilon < result.ceiling
    # the same claim: the bug changes the gradients, not the ledger
    unclipped = audit(gradient={**DP_SGD, "name": f"{BUGS}:UnclippedDPSGD"})
    assert unclipped.claimed_epsilon == pytest.approx(result.claimed_epsilon)


def test_multi_run_catches_the_missing_clip_and_passes_the_correct_one():
    settings = AuditSettings(method="multi-run", runs=4, canaries=100)
    correct = audit(settings, gradient=DP_SGD)
    buggy = audit(settings, gradient={**DP_SGD, "name": f"{BUGS}:UnclippedDPSGD"})
    assert correct.worlds["together"] and correct.worlds["trained"] == 4
    assert correct.counts["trials"] == 4 * 50
    assert correct.verdict == "consistent", correct.reason
    assert buggy.verdict == "violation", buggy.reason


def test_worlds_side_by_side_train_as_alone():
    """World 0 of a stacked multi-run audit holds the one-run audit's canaries and draws
    the same random streams: its scores are the one-run scores."""
    one = audit(AuditSettings(canaries=40), gradient=DP_SGD)
    many = audit(AuditSettings(method="multi-run", runs=3, canaries=40), gradient=DP_SGD)
    assert one.statistic == many.statistic == "isolated"
    assert many.worlds["together"]
    np.testing.assert_array_equal(one.scores["labels"][0], many.scores["labels"][0])
    np.testing.assert_allclose(many.scores["scores"][0], one.scores["scores"][0], atol=1e-6)
    assert not np.array_equal(many.scores["labels"][0], many.scores["labels"][1])


def test_no_claim_is_inconclusive_and_the_flag_supplies_one():
    plain = audit()
    assert plain.claimed_epsilon is None and plain.verdict == "inconclusive"
    assert "--claimed-epsilon" in plain.reason
    flagged = audit(AuditSettings(claimed_epsilon=1.0))
    assert flagged.claim_source == "--claimed-epsilon"
    assert flagged.verdict == "violation"  # plain D-PSGD releases its updates exactly


def test_a_claim_above_the_ceiling_is_inconclusive():
    result = audit(AuditSettings(canaries=20, claimed_epsilon=50.0))
    assert result.verdict == "inconclusive"
    assert "perfect attack" in result.reason and result.ceiling < 50


def test_input_space_canaries_join_the_targets_data():
    result = audit(AuditSettings(kind="mislabelled"))
    assert result.canaries["kind"] == "mislabelled"
    assert 2 <= result.canaries["count"] <= 100
    assert result.statistic in ("isolated", "difference", "calibrated")
    assert result.scores["scores"].shape == (1, result.canaries["count"])


@pytest.mark.parametrize(
    "arguments, field",
    [
        (["--canaries", "100000"], "--canaries"),
        (["--canary-kind", "mislabelled", "--canaries", "5000"], "--canaries"),
        (["--method", "multi-run", "--runs", "1"], "--runs"),
        (["--method", "twice"], "--method"),
        (["--canary-kind", "ood"], "--canary-kind"),
        (["--target", "99"], "--target"),
        (["--delta", "2"], "--delta"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, arguments, field):
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(BASE))
    code = main(["audit", str(path), "--out", str(tmp_path / "out"), "--quiet", *arguments])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and field in err[0]
    assert not (tmp_path / "out").exists()


def interrupt_at(monkeypatch, calls: int) -> None:
    """Raise Ctrl-C in D-PSGD's ``send`` at its ``calls``-th call (mid-round)."""
    original, count = DecentralizedSGD.send, [0]

    def send(self, params, plan, round, exchange):
        count[0] += 1
        if count[0] == calls:
            signal.raise_signal(signal.SIGINT)
        return original(self, params, plan, round, exchange)

    monkeypatch.setattr(DecentralizedSGD, "send", send)


def test_ctrl_c_audits_the_rounds_that_finished(tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps({**BASE, "gradient": DP_SGD}))
    interrupt_at(monkeypatch, 3)
    assert main(["audit", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 130
    report = json.loads((tmp_path / "out" / "audit.json").read_text())
    assert report["interrupted"] and report["worlds"]["rounds"] == 3
    assert report["verdict"] == "consistent"


def test_ctrl_c_keeps_the_worlds_that_finished(monkeypatch):
    monkeypatch.setattr("privlab.attacks.audit_run._default_plan", lambda protocol: False)
    interrupt_at(monkeypatch, BASE["rounds"] * 2 + 3)  # in the third world
    result = audit(AuditSettings(method="multi-run", runs=4, canaries=40), gradient=DP_SGD)
    assert not result.worlds["together"] and "one by one" in result.worlds["note"]
    assert result.interrupted and result.worlds["trained"] == 2
    assert result.worlds["rounds"] == BASE["rounds"]
    assert result.counts["trials"] == 2 * 20


@pytest.mark.parametrize("kind", ["dirac", "mislabelled"])
def test_the_loop_engine_gives_the_same_scores(kind):
    """The per-node reference engine plants, trains and scores the same canaries."""
    settings = AuditSettings(kind=kind, canaries=30)
    fast = audit(settings, gradient=DP_SGD, rounds=4)
    slow = audit(settings, gradient=DP_SGD, rounds=4, engine="loop")
    assert fast.statistic == slow.statistic
    np.testing.assert_array_equal(fast.scores["labels"], slow.scores["labels"])
    np.testing.assert_allclose(fast.scores["scores"], slow.scores["scores"], atol=1e-4)


def test_multi_run_also_reads_its_counts_as_gaussian_dp():
    settings = AuditSettings(method="multi-run", runs=4, canaries=100)
    correct = audit(settings, gradient=DP_SGD)
    buggy = audit(settings, gradient={**DP_SGD, "name": f"{BUGS}:UnclippedDPSGD"})
    assert correct.counts["gdp"]["epsilon"] < correct.claimed_epsilon
    assert buggy.counts["gdp"]["mu_lower_bound"] > 2.0
    assert buggy.counts["gdp"]["epsilon"] > buggy.claimed_epsilon
    json.dumps(correct.to_json())  # every field is plain JSON
