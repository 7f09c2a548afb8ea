"""Results of an experiment: tidy metric tables, a summary, saving, loading and plots."""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from privlab.protocol import ObservationLog

METRIC_COLUMNS = ["round", "node", "metric", "value"]
FILES = {
    "config": "config.yaml",
    "metrics": "metrics.csv",
    "summary": "summary.json",
    "observations": "observations.pt",
}


@dataclass
class Results:
    """A run's metrics (one row per round x node x metric), summary and observation log."""

    config: dict[str, Any]
    metrics: pd.DataFrame
    summary: dict[str, Any]
    observations: ObservationLog | None = field(default=None, repr=False)

    def final(self, metric: str) -> pd.Series:
        """The per-node values of ``metric`` at the last round it was measured."""
        rows = self.metrics[self.metrics.metric == metric]
        if rows.empty:
            return pd.Series(dtype=float)
        last = rows[rows["round"] == rows["round"].max()]
        return last.set_index("node")["value"]

    def curve(self, metric: str) -> pd.DataFrame:
        """``metric`` over rounds: mean, min and max over nodes (one row per round)."""
        rows = self.metrics[self.metrics.metric == metric]
        return rows.groupby("round")["value"].agg(["mean", "min", "max"]).reset_index()

    def save(self, out_dir: str | Path) -> Path:
        """Write config.yaml, metrics.csv, summary.json (and observations.pt) to ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / FILES["config"]).write_text(yaml.safe_dump(self.config, sort_keys=False))
        self.metrics.to_csv(out / FILES["metrics"], index=False)
        (out / FILES["summary"]).write_text(json.dumps(self.summary, indent=2) + "\n")
        observations = out / FILES["observations"]
        if self.observations is not None:
            self.observations.save(observations)
        else:  # a run written over with --force must not keep the old run's log
            observations.unlink(missing_ok=True)
        return out

    @classmethod
    def load(cls, out_dir: str | Path) -> Results:
        """Read a run folder written by ``save``."""
        out = Path(out_dir)
        observations = out / FILES["observations"]
        return cls(
            config=yaml.safe_load((out / FILES["config"]).read_text()),
            metrics=pd.read_csv(out / FILES["metrics"]),
            summary=json.loads((out / FILES["summary"]).read_text()),
            observations=ObservationLog.load(observations) if observations.exists() else None,
        )

    def plot(self, metrics: tuple[str, ...] = ("test_accuracy", "consensus_distance"), ax=None):
        """Mean over nodes (line) and min-max band of each metric against the round."""
        import matplotlib.pyplot as plt

        present = [m for m in metrics if (self.metrics.metric == m).any()]
        if ax is None:
            _, axes = plt.subplots(
                1, len(present), figsize=(4.5 * len(present), 3.4), squeeze=False
            )
            axes = list(axes[0])
        else:
            axes = [ax] * len(present)
        for axis, metric in zip(axes, present):
            curve = self.curve(metric)
            if metric == "consensus_distance":  # zero before the first round: off a log axis
                curve = curve[curve["round"] > 0]
            label = self.config.get("name", "run")
            axis.plot(curve["round"], curve["mean"], label=label)
            axis.fill_between(curve["round"], curve["min"], curve["max"], alpha=0.2)
            axis.set_xlabel("round")
            axis.set_ylabel(metric.replace("_", " "))
            if metric == "consensus_distance":
                axis.set_yscale("log")
        return axes


def versions() -> dict[str, str]:
    """Versions of Python and the libraries that decide the numbers."""
    import numpy
    import torch

    import privlab

    return {
        "python": platform.python_version(),
        "privlab": privlab.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "pandas": pd.__version__,
    }
