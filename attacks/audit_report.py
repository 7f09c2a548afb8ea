"""What an audit leaves on disk: ``audit.json``, ``scores.csv``, plots and ``report.md``.

The plots follow the reference's conventions (``shared/reference/attacks.md`` §5): the
evaluation canaries' score histograms, IN against OUT, with the decision thresholds; the
bound beside the claim and the audit's ceiling; for a one-run audit, the bound against
the number of guesses (Privacy Meter's ``plot_eps_vs_num_guesses``), drawn on the
evaluation canaries after the fact and labelled so: the audit's own bound uses the
thresholds fixed on the held-out canaries.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from privlab.attacks.audit import best_guesses, eps_one_run  # noqa: E402
from privlab.attacks.audit_run import AuditResult  # noqa: E402
from privlab.jsonio import dumps  # noqa: E402

FILES = {
    "json": "audit.json",
    "scores": "scores.csv",
    "report": "report.md",
    "histogram": "scores.png",
    "bound": "bound.png",
    "guesses": "epsilon_vs_guesses.png",
}


def write_report(result: AuditResult, out: str | Path, config_name: str) -> Path:
    """Write every file of the audit into ``out``; returns the path of ``audit.json``."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    scores, labels = result.scores["scores"], result.scores["labels"]
    evaluation = np.zeros(scores.shape[1], dtype=bool)
    evaluation[result.scores["evaluation"]] = True
    worlds, canaries = np.meshgrid(
        np.arange(scores.shape[0]), np.arange(scores.shape[1]), indexing="ij"
    )
    pd.DataFrame(
        {
            "world": worlds.ravel(),
            "canary": canaries.ravel(),
            "included": labels.ravel().astype(int),
            "score": scores.ravel(),
            "split": np.where(
                np.broadcast_to(evaluation, scores.shape).ravel(), "evaluation", "holdout"
            ),
        }
    ).to_csv(folder / FILES["scores"], index=False)
    _histogram(result, scores[:, evaluation].ravel(), labels[:, evaluation].ravel(), folder)
    _bound_plot(result, folder)
    plots = [FILES["histogram"], FILES["bound"]]
    if result.method == "one-run":
        _guesses_plot(result, scores[0, evaluation], labels[0, evaluation], folder)
        plots.append(FILES["guesses"])
    path = folder / FILES["json"]
    path.write_text(dumps(result.to_json() | {"config": config_name, "files": FILES}, indent=2))
    (folder / FILES["report"]).write_text(_markdown(result, config_name, plots))
    return path


def _histogram(result: AuditResult, scores: np.ndarray, labels: np.ndarray, folder: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.2))
    bins = np.histogram_bin_edges(scores, bins=30)
    ax.hist(scores[labels], bins=bins, alpha=0.6, label="IN (planted)")
    ax.hist(scores[~labels], bins=bins, alpha=0.6, label="OUT")
    counts = result.counts
    for key, style in (("threshold_in", "-"), ("threshold_out", "--"), ("threshold", "-")):
        value = counts.get(key)
        if value is not None and math.isfinite(value):
            ax.axvline(value, color="k", linestyle=style, linewidth=1)
    ax.set_xlabel(f"canary score ({result.statistic})")
    ax.set_ylabel("canaries")
    ax.set_title("evaluation canaries")
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(folder / FILES["histogram"], dpi=100)
    plt.close(fig)


def _bound_plot(result: AuditResult, folder: Path) -> None:
    names = ["lower bound", "ceiling"]
    values = [result.epsilon_lower_bound, result.ceiling]
    if result.claimed_epsilon is not None:
        names.append("claimed")
        values.append(result.claimed_epsilon)
    fig, ax = plt.subplots(figsize=(4.5, 3))
    shown = [v if math.isfinite(v) else 0.0 for v in values]
    ax.bar(names, shown, color=["tab:red", "tab:gray", "tab:blue"][: len(names)])
    for i, v in enumerate(values):
        ax.text(i, shown[i], f"{v:.2f}", ha="center", va="bottom")
    ax.set_ylabel("epsilon")
    ax.set_title(f"{result.method}: {result.verdict}")
    fig.tight_layout()
    fig.savefig(folder / FILES["bound"], dpi=100)
    plt.close(fig)


def _guesses_plot(
    result: AuditResult, scores: np.ndarray, labels: np.ndarray, folder: Path
) -> None:
    _, correct, _ = best_guesses(scores, labels)
    m = len(scores)
    ks = np.unique(np.round(np.geomspace(1, m, num=min(m, 24))).astype(int))
    epsilon = [
        eps_one_run(m, int(k), int(correct[k]), delta=result.delta, confidence=result.confidence)
        for k in ks
    ]
    fig, ax1 = plt.subplots(figsize=(5, 3.2))
    ax1.plot(ks, epsilon, marker="o", color="tab:blue")
    ax1.axhline(result.epsilon_lower_bound, color="tab:red", linestyle="--", linewidth=1)
    ax1.set_xscale("log")
    ax1.set_xlabel("guesses (best split of highest IN / lowest OUT)")
    ax1.set_ylabel("epsilon lower bound", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(ks, correct[ks] / ks, color="tab:orange", marker=".")
    ax2.set_ylabel("guess accuracy", color="tab:orange")
    ax1.set_title("after the fact, on the evaluation canaries\n(dashed: the audit's bound)")
    fig.tight_layout()
    fig.savefig(folder / FILES["guesses"], dpi=100)
    plt.close(fig)


def _number(value: float | None) -> str:
    return "none" if value is None else f"{value:.4g}"


def _markdown(result: AuditResult, config_name: str, plots: list[str]) -> str:
    c = result.canaries
    lines = [
        f"# Privacy audit of `{config_name}`",
        "",
        f"**Verdict: {result.verdict}.** {result.reason}.",
        "",
        "| | |",
        "|---|---|",
        f"| claimed epsilon | {_number(result.claimed_epsilon)} ({result.claim_source}) |",
        f"| empirical lower bound | {_number(result.epsilon_lower_bound)} |",
        f"| ceiling (a perfect attack) | {_number(result.ceiling)} |",
        f"| confidence, delta | {result.confidence:g}, {result.delta:g} |",
        f"| method | {result.method} |",
        f"| canaries | {c['count']} {c['kind']} in node {c['target']}, {c['included']} planted "
        "(each with probability 1/2) |",
        f"| score statistic | {result.statistic} (chosen on the held-out canaries) |",
        f"| worlds | {result.worlds['trained']} trained, {result.worlds['rounds']} rounds; "
        f"{result.worlds['note'] or 'one training'} |",
        f"| test accuracy | {_number(result.accuracy)} |",
        "",
        "Counts on the evaluation canaries: "
        + ", ".join(
            f"{k} {_number(v) if isinstance(v, float) else v}" for k, v in result.counts.items()
        ),
        "",
        "Observers: " + json.dumps(result.observers),
        "",
    ]
    if result.interrupted:
        lines += ["Interrupted: the bound uses the rounds and worlds that finished.", ""]
    lines += [f"![{name}]({name})" for name in plots]
    return "\n".join(lines) + "\n"
