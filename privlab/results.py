"""Results of an experiment: tidy metric tables, a summary, saving, loading and plots."""

from __future__ import annotations

import json
import platform
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml

from privlab.errors import PrivlabError
from privlab.jsonio import dumps
from privlab.observe import ObservationLog

METRIC_COLUMNS = ["round", "node", "metric", "value"]
OBSERVATIONS_DIR = "observations"
FILES = {
    "config": "config.yaml",
    "metrics": "metrics.csv",
    "summary": "summary.json",
    "observations": OBSERVATIONS_DIR,
    "plot": "curves.png",
    "models": "models.pt",
}
LEGACY_OBSERVATIONS = "observations.pt"


@dataclass
class Results:
    """A run's metrics (one row per round x node x metric), summary, observation log and
    final models (``models["params"]``: the ``[n, D]`` parameters after the last completed
    round, with what rebuilds the model; see ``node_model``)."""

    config: dict[str, Any]
    metrics: pd.DataFrame
    summary: dict[str, Any]
    observations: ObservationLog | None = field(default=None, repr=False)
    models: dict[str, Any] | None = field(default=None, repr=False)

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
        """Write config.yaml, metrics.csv, summary.json (strict JSON) and the observation
        log (``observations/``) to ``out_dir``; a log already streaming there is finalised."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / FILES["config"]).write_text(yaml.safe_dump(self.config, sort_keys=False))
        self.metrics.to_csv(out / FILES["metrics"], index=False)
        (out / FILES["summary"]).write_text(dumps(self.summary, indent=2) + "\n")
        (out / LEGACY_OBSERVATIONS).unlink(missing_ok=True)
        if self.observations is not None:
            self.observations.save(out / OBSERVATIONS_DIR)
        else:  # a run written over with --force must not keep the old run's log
            shutil.rmtree(out / OBSERVATIONS_DIR, ignore_errors=True)
        if self.models is not None:
            torch.save(self.models, out / FILES["models"])
        else:
            (out / FILES["models"]).unlink(missing_ok=True)
        return out

    @classmethod
    def load(cls, out_dir: str | Path) -> Results:
        """Read a run folder written by ``save`` (the observation log is read lazily)."""
        out = Path(out_dir)
        observations = next(
            (p for p in (out / OBSERVATIONS_DIR, out / LEGACY_OBSERVATIONS) if p.exists()), None
        )
        models = out / FILES["models"]
        return cls(
            config=yaml.safe_load((out / FILES["config"]).read_text()),
            metrics=pd.read_csv(out / FILES["metrics"]),
            summary=json.loads((out / FILES["summary"]).read_text()),
            observations=None if observations is None else ObservationLog.load(observations),
            models=torch.load(models, weights_only=True) if models.exists() else None,
        )

    def node_model(self, node: int) -> torch.nn.Module:
        """Node ``node``'s final model as an ``nn.Module`` (a registered model only; for your
        own module, load ``models["params"][node]`` with ``ParamSpec.of(module).load``)."""
        from privlab.models import build_model
        from privlab.state import ParamSpec

        if self.models is None:
            raise PrivlabError("this run kept no final models (it diverged or was aborted)")
        spec = self.models["model"]
        model = build_model(
            spec["name"], tuple(spec["input_shape"]), spec["num_classes"], **spec["options"]
        )
        ParamSpec.of(model).load(model, self.models["params"][node])
        return model

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

    def save_plot(self, path: str | Path) -> Path:
        """Write the accuracy and consensus curves to ``path`` (PNG): the line is the mean
        over nodes, the band spans the worst to the best node."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        axes = self.plot()
        figure = axes[0].figure
        status = _status(self.summary)
        figure.suptitle(
            f"{self.config.get('name', 'run')}{status}: line = mean over nodes, "
            "band = min to max over nodes",
            fontsize=9,
        )
        figure.tight_layout()
        figure.savefig(path, dpi=120)
        plt.close(figure)
        return Path(path)


def _status(summary: dict[str, Any]) -> str:
    """`` (diverged in round 7)`` or `` (interrupted after round 12)`` or nothing."""
    if "diverged" in summary:
        return f" (diverged in round {summary['diverged']['round']})"
    if summary.get("interrupted"):
        return f" (interrupted after round {summary['completed_rounds']})"
    return ""


def remove_entries(folder: Path, names: Iterable[str]) -> bool:
    """Remove the files or folders ``names`` from ``folder``; whether any was there."""
    found = False
    for name in names:
        path = folder / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        else:
            continue
        found = True
    return found


def load_run(run_dir: str | Path) -> Results:
    """Everything a run folder holds: config, metrics, summary, the observation log (read
    lazily) and the final models. Attacks and users read runs through it."""
    return Results.load(run_dir)


def versions() -> dict[str, str]:
    """Versions of Python and the libraries that decide the numbers."""
    import numpy
    import torch

    return {
        "python": platform.python_version(),
        "privlab": privlab_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "pandas": pd.__version__,
    }


def privlab_version() -> str:
    """The installed distribution's version: read from its metadata, so it does not depend
    on which folder ``import privlab`` resolves from."""
    try:
        return metadata.version("privlab")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"
