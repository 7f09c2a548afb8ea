"""Fast check of ``reproductions/rgm_ridge.py`` (the RGM ridge-regression reproduction)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "reproductions" / "rgm_ridge.py"


@pytest.fixture(scope="module")
def rgm_ridge():
    spec = importlib.util.spec_from_file_location("rgm_ridge", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def result(rgm_ridge):
    # quick mode (3 seeds), one large budget: reachable for the RGM on both datasets
    return rgm_ridge.run(budgets=[50.0], seeds=3)


def test_calibrated_epsilons_hit_the_target(result):
    assert len(result["results"]) == 2
    for row in result["results"]:
        assert row["rgm_reachable"]
        assert abs(row["rgm_epsilon"] - row["epsilon"]) < 1e-3
        assert abs(row["clip_epsilon"] - row["epsilon"]) < 1e-3


def test_excess_losses(result):
    for row in result["results"]:
        info = result["datasets"][row["dataset"]]
        values = [row["rgm_excess"], row["clip_excess"], row["nonprivate_excess"]]
        values += [level["excess"] for level in row["clip_by_level"].values()]
        assert all(math.isfinite(v) and v >= 0.0 for v in values)
        assert row["nonprivate_excess"] < 1e-3
        # at epsilon = 50 the RGM removes most of the initial suboptimality
        assert row["rgm_excess"] < 0.05 * info["initial_excess"]
        assert row["rgm_excess"] < 0.02


def test_budget_below_the_rdp_floor_is_unreachable(rgm_ridge, result):
    info = result["datasets"]["breast_cancer"]
    assert info["rgm_epsilon_floor"] > 1.0
    k = rgm_ridge.calibrate_rgm(1.0, info["Delta"], info["R"], info["d"], rgm_ridge.ITERATIONS)
    assert k is None
