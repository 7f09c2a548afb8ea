"""Gradient inversion of a run's first updates (``privlab attack inversion``)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from privlab.cli import main

FIRST_STEP = {
    "nodes": 8,
    "rounds": 1,
    "model": {"name": "mlp", "hidden": [32]},
    "training": {"lr": 0.1, "momentum": 0.9, "batch_size": 1, "local_steps": 1},
    "observer": {"curious_nodes": [0]},
}


def run_folder(tmp_path, name, **overrides):
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump({**FIRST_STEP, **overrides}))
    out = tmp_path / name
    assert main(["run", str(config), "--out", str(out), "--quiet"]) == 0
    return out


def attack(run, method, *extra):
    assert main(["attack", "inversion", str(run), "--method", method, "--quiet", *extra]) == 0
    folder = run / "attacks" / f"inversion-{method}"
    return json.loads((folder / "attack.json").read_text()), pd.read_csv(folder / "attack.csv")


def test_analytic_inversion_of_d_psgd_first_updates_is_exact(tmp_path):
    report, instances = attack(run_folder(tmp_path, "dpsgd"), "analytic")
    assert len(instances) == 4  # the curious node's 4 neighbours
    assert (instances["gradient_residual"] < 1e-5).all()  # the ground-truth batch is right
    assert (instances["psnr"] > 80).all() and (instances["ssim"] > 0.999).all()
    assert (instances["labels"] == "idlg").all() and instances["label_correct"].all()
    assert report["attacker"] == "peer" and report["summary"]["pixels_recovered_mean"] == 1.0


def test_shatter_chunks_are_inverted_mask_aware_and_only_partly(tmp_path):
    run = run_folder(tmp_path, "shatter", protocol={"name": "shatter", "virtual_nodes": 4})
    report, instances = attack(run, "analytic")
    seen = instances["coordinates_seen"]
    assert ((seen > 0.2) & (seen < 0.3)).all()  # a quarter of the model per chunk
    recovered = instances["pixels_recovered"]
    assert 0.5 < recovered.mean() < 1.0  # pixels whose weight and some bias share a chunk
    assert (instances["labels"] == "known").all()  # the last layer is not all in one chunk
    assert (instances["gradient_residual"] < 1e-5).all()
    dpsgd, _ = attack(run_folder(tmp_path, "plain"), "analytic")
    assert report["summary"]["psnr_mean"] < dpsgd["summary"]["psnr_mean"]


def test_cosine_inversion_beats_a_blank_guess(tmp_path):
    run = run_folder(tmp_path, "cos")
    report, instances = attack(
        run, "cosine", "--option", "max_messages=1", "--option", "iterations=150"
    )
    assert len(instances) == 1 and instances["psnr"].iloc[0] > 12


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"training": {**FIRST_STEP["training"], "local_steps": 2}}, "training.local_steps"),
        (
            {"gradient": {"name": "dp-sgd", "noise_multiplier": 1.0, "max_grad_norm": 1.0}},
            "gradient must be absent for inversion",
        ),
        ({"protocol": {"name": "cesar"}, "topology": {"name": "regular", "degree": 3}}, "cesar"),
    ],
)
def test_runs_inversion_cannot_read_are_refused(tmp_path, capsys, overrides, message):
    run = run_folder(tmp_path, "bad", **overrides)
    assert main(["attack", "inversion", str(run)]) == 2
    assert message in capsys.readouterr().err


def test_multi_exchange_protocols_are_inverted_on_their_first_exchange(tmp_path):
    protocol = {"name": "muffliato", "noise_multiplier": 1e-6, "gossip_steps": 3}
    report, instances = attack(run_folder(tmp_path, "muffliato", protocol=protocol), "analytic")
    # exchange 0 holds each victim's own model (noise ~1e-6): the first update is recovered
    assert (instances["psnr"] > 40).all()


def test_analytic_inversion_of_a_batch_is_refused_naming_the_batch_size(tmp_path, capsys):
    run = run_folder(tmp_path, "batch", training={**FIRST_STEP["training"], "batch_size": 4})
    assert main(["attack", "inversion", str(run), "--method", "analytic", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "training.batch_size" in err[0] and "cosine" in err[0]
