"""ROC and score-histogram plots: files written, log axes, legends, nothing left open."""

from __future__ import annotations

import warnings

import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pytest

from privlab.attacks.metrics import ResolutionWarning, evaluate_membership
from privlab.attacks.plots import plot_roc, plot_score_histogram
from privlab.errors import PrivlabError


def gaussian_evaluation(mu: float, members: int, nonmembers: int, seed: int):
    rng = np.random.default_rng(seed)
    scores = np.concatenate([rng.normal(mu, 1.0, members), rng.normal(0.0, 1.0, nonmembers)])
    is_member = np.arange(members + nonmembers) < members
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResolutionWarning)
        return evaluate_membership(scores, is_member)


@pytest.fixture(scope="module")
def strong():
    return gaussian_evaluation(2.0, 1_000, 2_000, seed=0)


@pytest.fixture(scope="module")
def weak():
    return gaussian_evaluation(0.5, 1_000, 4_000, seed=1)


def assert_nontrivial_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000
    pixels = matplotlib.image.imread(path)
    assert pixels.std() > 0.05  # not a blank canvas
    return pixels


def test_log_roc_png(tmp_path, strong, weak):
    path = tmp_path / "report" / "roc.png"  # the folder is created
    figure = plot_roc({"strong": strong, "weak": weak}, path)
    assert_nontrivial_png(path)
    axes = figure.axes[0]
    assert axes.get_xscale() == "log" and axes.get_yscale() == "log"
    assert axes.get_xlim() == pytest.approx((1 / 4_000, 1.0))  # 1 / most non-members
    assert axes.get_ylim() == pytest.approx((1 / 4_000, 1.0))
    labels = [text.get_text() for text in axes.get_legend().get_texts()]
    expected = [
        f"{name} (AUC {e.auc:.2f}, TPR@0.1% {100 * e.tpr_at_fpr['0.001'].tpr:.1f}%)"
        for name, e in (("strong", strong), ("weak", weak))
    ]
    assert labels == [*expected, "chance"]
    assert labels[0].startswith("strong (AUC 0.92, TPR@0.1% ")  # Phi(2 / sqrt 2) = 0.921
    curve = axes.get_lines()[0]
    np.testing.assert_array_equal(curve.get_xdata(), strong.fpr)
    np.testing.assert_array_equal(curve.get_ydata(), strong.tpr)


def test_linear_roc_of_one_evaluation(tmp_path, strong):
    path = tmp_path / "roc.pdf"
    figure = plot_roc(strong, path, log_scale=False)
    assert path.read_bytes()[:5] == b"%PDF-" and path.stat().st_size > 5_000
    axes = figure.axes[0]
    assert axes.get_xscale() == "linear" and axes.get_yscale() == "linear"
    assert axes.get_xlim() == (0.0, 1.0) and axes.get_ylim() == (0.0, 1.0)
    label = axes.get_legend().get_texts()[0].get_text()
    assert label.startswith(f"AUC {strong.auc:.2f}, TPR@0.1% ")
    np.testing.assert_array_equal(axes.get_lines()[1].get_xdata(), [0.0, 1.0])  # diagonal


def test_log_axes_stop_at_1e_minus_5_and_small_rates_keep_digits():
    # 200 000 non-members on 10 tied levels: a short ROC, so the plot stays fast
    rng = np.random.default_rng(2)
    scores = np.concatenate([np.full(1_000, 9.0), rng.integers(0, 10, 200_000).astype(float)])
    is_member = np.arange(scores.size) < 1_000
    figure = plot_roc({"tied": evaluate_membership(scores, is_member)})
    axes = figure.axes[0]
    assert axes.get_xlim() == pytest.approx((1e-5, 1.0))
    assert axes.get_legend().get_texts()[0].get_text() == "tied (AUC 0.95, TPR@0.1% 0%)"


def test_saving_closes_nothing_and_uses_no_pyplot(tmp_path, strong):
    before = plt.get_fignums()
    figure = plot_roc(strong, tmp_path / "first.png")
    figure.savefig(tmp_path / "again.png")  # still usable after saving
    histogram = plot_score_histogram(strong, tmp_path / "hist.png")
    assert plt.get_fignums() == before
    assert len(figure.axes) == 1 and len(histogram.axes) == 1
    assert_nontrivial_png(tmp_path / "again.png")


def test_score_histogram(tmp_path, weak):
    path = tmp_path / "hist.png"
    figure = plot_score_histogram(weak, path, bins=20)
    assert_nontrivial_png(path)
    axes = figure.axes[0]
    labels = [text.get_text() for text in axes.get_legend().get_texts()]
    assert labels == ["members (1000)", "non-members (4000)"]
    edges = np.histogram_bin_edges(weak.scores, bins=20)
    for patch, mask in zip(axes.patches, (weak.is_member, ~weak.is_member)):
        density, _ = np.histogram(weak.scores[mask], bins=edges, density=True)
        assert patch.get_xy()[:, 1].max() == pytest.approx(density.max())
    assert axes.get_xlabel() == "membership score (higher = member)"


def test_histogram_pdf_and_refusals(tmp_path, strong):
    plot_score_histogram(strong, tmp_path / "hist.pdf")
    assert (tmp_path / "hist.pdf").read_bytes()[:5] == b"%PDF-"
    with pytest.raises(PrivlabError, match=r"path must end in \.png or \.pdf"):
        plot_roc(strong, tmp_path / "roc.svg")
    with pytest.raises(PrivlabError, match="bins must be >= 1"):
        plot_score_histogram(strong, bins=0)
    with pytest.raises(PrivlabError, match="evaluations must be a MembershipEvaluation"):
        plot_roc({})
    with pytest.raises(PrivlabError, match="evaluation must be a MembershipEvaluation"):
        plot_score_histogram({"a": strong})
    assert not (tmp_path / "roc.svg").exists()
