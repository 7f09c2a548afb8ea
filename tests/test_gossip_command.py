"""``privlab gossip``: muted gossip over many runs, against the s = 0 theory."""

from __future__ import annotations

import json

import pytest

from privlab.cli import main


def test_gossip_json_matches_the_s0_theory(capsys):
    assert main(["gossip", "--nodes", "40", "--mute", "0", "--runs", "2000", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    expected_keys = {"spreading_time_mean", "spreading_time_ci", "first_spy_success"}
    assert expected_keys | {"first_spy_ci", "runs", "nodes", "curious", "mute"} <= set(report)
    theory = report["theory"]
    low, high = report["first_spy_ci"]
    assert low <= theory["first_spy_success"] <= high  # (m + 1) / n inside the 95% interval
    low, high = report["spreading_time_ci"]
    assert abs(report["spreading_time_mean"] - theory["spreading_time"]) < 2 * (high - low)


def test_gossip_text_output(capsys):
    assert main(["gossip", "--nodes", "50", "--mute", "0.5", "--runs", "100"]) == 0
    out = capsys.readouterr().out
    assert "spreading time" in out and "first spy finds the source" in out
    assert "theory" not in out  # the s = 0 line only at s = 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mute", "1.5"], "mute must be in [0, 1]"),
        (["--mute", "0.5", "--curious-fraction", "1"], "--curious-fraction must be in [0, 1)"),
        (["--mute", "0.5", "--runs", "0"], "--runs must be >= 1"),
    ],
)
def test_gossip_bad_input_is_one_line_and_exit_2(capsys, args, message):
    assert main(["gossip", "--nodes", "20", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
