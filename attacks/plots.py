"""Plots of membership-inference evaluations: ROC curves and score histograms.

The ROC follows Carlini et al. ("Membership Inference Attacks From First Principles",
S&P 2022): log-log axes, so the low-FPR region that matters is visible, with the chance
diagonal and, per attack, the AUC and the TPR at 0.1 % FPR in the legend. Figures are
built with ``matplotlib.figure.Figure`` directly, never through ``pyplot``: no GUI backend,
no global figure state, nothing to close; the caller owns the returned figure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from privlab.attacks.metrics import MembershipEvaluation
from privlab.errors import PrivlabError, check, is_integer

__all__ = ["plot_roc", "plot_score_histogram"]

LOWEST_LOG_FPR = 1e-5
"""The log-scale axes stop here even with more than 100 000 non-members (Privacy Meter and
LiRA plot down to 1e-5)."""
SUFFIXES = (".png", ".pdf")


def plot_roc(
    evaluations: Mapping[str, MembershipEvaluation] | MembershipEvaluation,
    path: str | Path | None = None,
    *,
    log_scale: bool = True,
) -> Figure:
    """ROC curves of one evaluation or of several named ones, with the chance diagonal;
    each legend entry reads "name (AUC 0.76, TPR@0.1% 1.8%)", the TPR read by the rule of
    ``RateAtFPR``. With ``log_scale`` both axes are logarithmic from ``1 / N_neg`` (the
    smallest non-zero FPR of the curve with most non-members, but not below 1e-5) to 1;
    otherwise linear from 0 to 1. Writes ``path`` (PNG or PDF by suffix) when given."""
    curves = _named(evaluations)
    floor = _log_floor(curves.values()) if log_scale else 0.0
    figure = Figure(figsize=(4.5, 4.2), layout="constrained")
    axes = figure.add_subplot()
    for name, evaluation in curves.items():
        axes.plot(evaluation.fpr, evaluation.tpr, label=_legend(name, evaluation))
    axes.plot([floor, 1.0], [floor, 1.0], "--", color="gray", linewidth=1, label="chance")
    if log_scale:
        axes.set_xscale("log", nonpositive="clip")
        axes.set_yscale("log", nonpositive="clip")
    axes.set_xlim(floor, 1.0)
    axes.set_ylim(floor, 1.0)
    axes.set_xlabel("false-positive rate")
    axes.set_ylabel("true-positive rate")
    axes.legend(loc="lower right", fontsize="small")
    _save(figure, path)
    return figure


def plot_score_histogram(
    evaluation: MembershipEvaluation, path: str | Path | None = None, *, bins: int = 50
) -> Figure:
    """Densities of the scores of members and of non-members over ``bins`` shared bins
    (Privacy Meter's histogram plot); the legend gives each count. Writes ``path`` (PNG or
    PDF by suffix) when given."""
    check(
        isinstance(evaluation, MembershipEvaluation),
        "evaluation",
        "a MembershipEvaluation",
        type(evaluation).__name__,
    )
    check(is_integer(bins) and bins >= 1, "bins", ">= 1 (an integer)", bins)
    edges = np.histogram_bin_edges(evaluation.scores, bins=bins)
    figure = Figure(figsize=(5.0, 3.5), layout="constrained")
    axes = figure.add_subplot()
    for label, mask in (("members", evaluation.is_member), ("non-members", ~evaluation.is_member)):
        axes.hist(
            evaluation.scores[mask],
            bins=edges,
            density=True,
            histtype="stepfilled",
            alpha=0.5,
            label=f"{label} ({np.count_nonzero(mask)})",
        )
    axes.set_xlabel("membership score (higher = member)")
    axes.set_ylabel("density")
    axes.legend(fontsize="small")
    _save(figure, path)
    return figure


def _named(
    evaluations: Mapping[str, MembershipEvaluation] | MembershipEvaluation,
) -> dict[str, MembershipEvaluation]:
    if isinstance(evaluations, MembershipEvaluation):
        return {"": evaluations}
    check(
        isinstance(evaluations, Mapping)
        and len(evaluations) > 0
        and all(isinstance(e, MembershipEvaluation) for e in evaluations.values()),
        "evaluations",
        "a MembershipEvaluation or a non-empty mapping of names to them",
        type(evaluations).__name__,
    )
    return {str(name): evaluation for name, evaluation in evaluations.items()}


def _log_floor(evaluations: Iterable[MembershipEvaluation]) -> float:
    return max(LOWEST_LOG_FPR, min(1.0 / e.nonmembers for e in evaluations))


def _legend(name: str, evaluation: MembershipEvaluation) -> str:
    numbers = f"AUC {evaluation.auc:.2f}, TPR@0.1% {_percent(evaluation.rate_at(0.001).tpr)}"
    return f"{name} ({numbers})" if name else numbers


def _percent(rate: float) -> str:
    """1.8% above 1 %, two significant digits below (0.05%), so small rates do not read 0."""
    return f"{100 * rate:.1f}%" if rate >= 0.01 else f"{100 * rate:.2g}%"


def _save(figure: Figure, path: str | Path | None) -> None:
    if path is None:
        return
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise PrivlabError(f"path must end in .png or .pdf, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=150)
