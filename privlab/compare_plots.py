"""Privacy-utility plots of a ``privlab compare`` sweep, with Pareto frontiers.

Each plot puts a privacy or cost measure on x (MIA AUC, claimed DP epsilon, bytes sent)
and test accuracy on y. A point is one parameter point of one mechanism: the mean over
its finished seeds, with error bars of one standard deviation over the seeds on both
axes (none for a single seed); one colour per mechanism. Each mechanism's Pareto
frontier joins its points that no other of its points dominates (another point with
accuracy at least as high and x at least as low, one of them strictly).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

PLOTS = {
    "mia_auc": ("accuracy_vs_auc.png", "membership inference AUC (lower is more private)", False),
    "epsilon": ("accuracy_vs_epsilon.png", "claimed DP epsilon (largest over nodes)", True),
    "bytes_sent": ("accuracy_vs_bytes.png", "bytes sent (total, all nodes)", True),
}


def pareto_frontier(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of the points not dominated by another (lower or equal ``x`` and higher
    or equal ``y``, one of them strictly), ordered by increasing ``x``; of identical
    points, the first. Points with a non-finite coordinate are never on the frontier."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    finite = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
    order = finite[np.lexsort((-y[finite], x[finite]))]  # by x, then best accuracy first
    frontier, best = [], -np.inf
    for i in order:
        if y[i] > best:
            frontier.append(i)
            best = y[i]
    return np.asarray(frontier, dtype=int)


def point_means(summary: pd.DataFrame, x: str) -> pd.DataFrame:
    """Per mechanism and parameter point over its finished runs with a finite ``x``: the
    mean and standard deviation of ``x`` and of test accuracy, and how many seeds."""
    rows = summary[(summary["status"] == "finished") & np.isfinite(summary[x])]
    rows = rows[np.isfinite(rows["test_accuracy"])]
    grouped = rows.groupby(["mechanism", "parameters"], sort=False)
    table = grouped.agg(
        x=(x, "mean"),
        x_std=(x, "std"),
        accuracy=("test_accuracy", "mean"),
        accuracy_std=("test_accuracy", "std"),
        seeds=("seed", "size"),
    )
    return table.fillna({"x_std": 0.0, "accuracy_std": 0.0}).reset_index()


def plot_tradeoff(summary: pd.DataFrame, x: str, path: str | Path) -> Path:
    """Accuracy against ``x`` (a column of ``summary.csv``), written to ``path``."""
    _, label, log = PLOTS[x]
    means = point_means(summary, x)
    figure = Figure(figsize=(6.4, 4.4), layout="constrained")
    axis = figure.add_subplot()
    colours = _colours(summary["mechanism"].unique())
    for mechanism, points in means.groupby("mechanism", sort=False):
        colour = colours[mechanism]
        axis.errorbar(
            points["x"], points["accuracy"], xerr=points["x_std"], yerr=points["accuracy_std"],
            fmt="o", color=colour, label=mechanism, capsize=3, markersize=5,
        )  # fmt: skip
        frontier = points.iloc[pareto_frontier(points["x"], points["accuracy"])]
        axis.plot(frontier["x"], frontier["accuracy"], "--", color=colour, linewidth=1)
    missing = sorted(set(summary["mechanism"]) - set(means["mechanism"]))
    if log and len(means) and (means["x"] > 0).all():
        axis.set_xscale("log")
    axis.set_xlabel(label)
    axis.set_ylabel("test accuracy (mean over nodes)")
    title = "points: mean over seeds (bars: 1 std); dashed: Pareto frontier"
    if missing:
        title += f"\nno value for: {', '.join(missing)}"
    axis.set_title(title, fontsize=8)
    if len(means):
        axis.legend(fontsize=8)
    else:
        axis.text(0.5, 0.5, "no finished run has this measure", ha="center",
                  transform=axis.transAxes)  # fmt: skip
    figure.savefig(path, dpi=120)
    return Path(path)


def write_plots(summary: pd.DataFrame, out: str | Path) -> list[Path]:
    """The three plots of ``PLOTS`` into the folder ``out``."""
    return [plot_tradeoff(summary, x, Path(out) / name) for x, (name, _, _) in PLOTS.items()]


def _colours(mechanisms) -> dict[str, str]:
    palette = [f"C{i}" for i in range(10)]
    return {m: palette[i % len(palette)] for i, m in enumerate(mechanisms)}
