"""Membership evaluation: the Gaussian oracle, interval coverage, sklearn, ties, refusals."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score, roc_curve

from privlab.attacks.metrics import (
    MembershipEvaluation,
    RateAtFPR,
    ResolutionWarning,
    cluster_bootstrap_auc,
    evaluate_membership,
    fpr_key,
    pooled,
)
from privlab.errors import PrivlabError


def gaussian_scores(mu: float, members: int, nonmembers: int, seed: int):
    """IN ~ N(mu, 1), OUT ~ N(0, 1) (reference attacks.md 6.3 item 1)."""
    rng = np.random.default_rng(seed)
    scores = np.concatenate([rng.normal(mu, 1.0, members), rng.normal(0.0, 1.0, nonmembers)])
    is_member = np.concatenate([np.ones(members, bool), np.zeros(nonmembers, bool)])
    return scores, is_member


def true_tpr(mu: float, fpr: float) -> float:
    return float(norm.cdf(norm.ppf(fpr) + mu))


def evaluate_quietly(scores, is_member, **kw) -> MembershipEvaluation:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResolutionWarning)
        return evaluate_membership(scores, is_member, **kw)


def test_closed_form_oracle_values():
    assert norm.cdf(1 / np.sqrt(2)) == pytest.approx(0.760, abs=5e-4)
    assert true_tpr(1.0, 0.01) == pytest.approx(0.0924, abs=5e-5)
    assert true_tpr(1.0, 0.001) == pytest.approx(0.0183, abs=5e-5)


def test_gaussian_oracle_lies_within_the_intervals():
    scores, is_member = gaussian_scores(1.0, 20_000, 20_000, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 20 000 non-members resolve 0.1 %: no warning
        evaluation = evaluate_membership(scores, is_member)
    true_auc = norm.cdf(1 / np.sqrt(2))
    low, high = evaluation.auc_ci
    assert low < true_auc < high
    assert high - low < 0.02
    for key, fpr in (("0.01", 0.01), ("0.001", 0.001)):
        rate = evaluation.tpr_at_fpr[key]
        assert rate.fpr == fpr and rate.resolved
        assert rate.ci[0] < true_tpr(1.0, fpr) < rate.ci[1]
        assert rate.ci[0] <= rate.tpr <= rate.ci[1]
    assert evaluation.tpr_at_fpr["0.01"].tpr == pytest.approx(0.0924, abs=0.015)
    assert evaluation.tpr_at_fpr["0.001"].tpr == pytest.approx(0.0183, abs=0.006)
    assert not evaluation.tpr_at_fpr["0"].resolved
    # balanced accuracy of two unit Gaussians mu apart: Phi(mu / 2)
    assert evaluation.balanced_accuracy == pytest.approx(norm.cdf(0.5), abs=0.01)
    assert evaluation.advantage == pytest.approx(2 * evaluation.balanced_accuracy - 1)


def test_delong_interval_covers_the_true_auc_and_matches_the_spread_over_seeds():
    true_auc = norm.cdf(1 / np.sqrt(2))
    aucs, half_widths, covered = [], [], 0
    for seed in range(200):
        evaluation = evaluate_quietly(*gaussian_scores(1.0, 300, 300, seed), fprs=())
        low, high = evaluation.auc_ci
        covered += low <= true_auc <= high
        aucs.append(evaluation.auc)
        half_widths.append((high - low) / 2)
    assert 0.90 <= covered / 200 <= 0.99
    delong_std = np.mean(half_widths) / norm.ppf(0.975)
    assert delong_std == pytest.approx(np.std(aucs, ddof=1), rel=0.15)


def test_tpr_interval_covers_the_true_tpr_at_the_requested_fpr():
    """The interval accounts for the threshold estimated from the non-members: it covers
    the true TPR@1 % in (at least) 95 % of seeds, where the Clopper-Pearson interval at the
    empirical threshold alone covered it in about 60 %."""
    target = true_tpr(1.0, 0.01)
    covered = 0
    for seed in range(100):
        rate = evaluate_quietly(*gaussian_scores(1.0, 2_000, 2_000, seed), fprs=(0.01,))
        low, high = rate.tpr_at_fpr["0.01"].ci
        covered += low <= target <= high
    assert covered >= 95


def test_auc_roc_and_maxima_match_sklearn_and_brute_force_with_ties():
    rng = np.random.default_rng(3)
    is_member = rng.random(400) < 0.4
    scores = np.round(rng.normal(is_member * 0.7, 1.0), 1)  # many ties, across classes too
    evaluation = evaluate_membership(scores, is_member, fprs=())
    assert evaluation.auc == pytest.approx(roc_auc_score(is_member, scores), abs=1e-12)
    fpr, tpr, thresholds = roc_curve(is_member, scores, drop_intermediate=False)
    np.testing.assert_array_equal(evaluation.fpr, fpr)
    np.testing.assert_array_equal(evaluation.tpr, tpr)
    np.testing.assert_array_equal(evaluation.thresholds, thresholds)
    rates = [
        ((scores[is_member] >= t).mean(), (scores[~is_member] >= t).mean())
        for t in np.append(np.unique(scores), np.inf)
    ]
    assert evaluation.advantage == pytest.approx(max(tp - fp for tp, fp in rates))
    assert evaluation.balanced_accuracy == pytest.approx(max((tp + 1 - fp) / 2 for tp, fp in rates))


def test_perfect_separator():
    scores = np.concatenate([np.arange(10, 20), np.arange(10)]).astype(float)
    is_member = np.arange(20) < 10
    evaluation = evaluate_quietly(scores, is_member)
    assert evaluation.auc == 1.0
    assert evaluation.auc_ci == (1.0, 1.0)  # DeLong's variance is 0 at AUC 1 (documented)
    assert evaluation.balanced_accuracy == 1.0 and evaluation.advantage == 1.0
    at_zero = evaluation.tpr_at_fpr["0"]
    assert at_zero.tpr == 1.0 and at_zero.ci == (0.0, 1.0) and not at_zero.resolved


def test_inverted_scores_have_auc_zero_and_no_advantage():
    scores = np.concatenate([np.arange(10), np.arange(10, 20)]).astype(float)
    evaluation = evaluate_quietly(scores, np.arange(20) < 10)
    assert evaluation.auc == 0.0
    assert evaluation.advantage == 0.0 and evaluation.balanced_accuracy == 0.5
    assert evaluation.tpr_at_fpr["0.01"].tpr == 0.0


def test_ties_never_claim_an_fpr_above_the_requested_one():
    # member 3 ties with non-member 3: no threshold separates them
    scores = np.array([3.0, 2.0, 1.0, 3.0, 0.0, 0.0])
    is_member = np.array([True, True, True, False, False, False])
    evaluation = evaluate_quietly(scores, is_member, fprs=(0.0, 0.3, 1 / 3, 0.5))
    tprs = {key: rate.tpr for key, rate in evaluation.tpr_at_fpr.items()}
    assert tprs == {"0": 0.0, "0.3": 0.0, "0.3333333333333333": 1.0, "0.5": 1.0}
    # pairs won: member 3 beats two non-members and ties one (one half); 2 and 1 beat two
    assert evaluation.auc == pytest.approx((2.5 + 2 + 2) / 9)


def test_all_scores_tied():
    evaluation = evaluate_quietly(np.zeros(8), np.arange(8) < 4, fprs=(0.0, 0.5, 0.99))
    assert evaluation.auc == 0.5
    assert [rate.tpr for rate in evaluation.tpr_at_fpr.values()] == [0.0, 0.0, 0.0]
    assert evaluation.advantage == 0.0


def test_resolution_warning_names_the_fpr_and_the_negatives():
    scores, is_member = gaussian_scores(1.0, 100, 1_000, seed=1)
    with pytest.warns(ResolutionWarning) as caught:
        evaluation = evaluate_membership(scores, is_member)
    assert len(caught) == 1  # 1 000 non-members resolve 1 % exactly, not 0.1 %
    message = str(caught[0].message)
    assert "FPR 0.001" in message and "1000 non-members" in message and "10000" in message
    assert caught[0].filename == __file__  # attributed to the caller
    assert evaluation.tpr_at_fpr["0.01"].resolved
    assert not evaluation.tpr_at_fpr["0.001"].resolved


@pytest.mark.parametrize(("nonmembers", "resolved"), [(10_000, True), (9_999, False)])
def test_resolution_threshold_is_exactly_ten_over_fpr(nonmembers, resolved):
    scores, is_member = gaussian_scores(1.0, 10, nonmembers, seed=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        evaluation = evaluate_membership(scores, is_member, fprs=(0.001,))
    assert evaluation.tpr_at_fpr["0.001"].resolved is resolved
    assert len(caught) == (0 if resolved else 1)


def test_fpr_zero_is_never_resolved_and_never_warns():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluation = evaluate_membership([1.0, 0.0], [True, False], fprs=(0.0,))
    assert evaluation.tpr_at_fpr["0"] == RateAtFPR(0.0, 1.0, (0.0, 1.0), False)


def test_interval_widens_with_confidence():
    scores, is_member = gaussian_scores(1.0, 2_000, 2_000, seed=4)
    narrow = evaluate_membership(scores, is_member, fprs=(0.01,), confidence=0.8)
    wide = evaluate_membership(scores, is_member, fprs=(0.01,), confidence=0.99)
    assert wide.auc_ci[0] < narrow.auc_ci[0] < narrow.auc_ci[1] < wide.auc_ci[1]
    low, high = narrow.tpr_at_fpr["0.01"].ci
    assert wide.tpr_at_fpr["0.01"].ci[0] < low < high < wide.tpr_at_fpr["0.01"].ci[1]
    assert wide.confidence == 0.99


@pytest.mark.parametrize(
    ("scores", "is_member", "kw", "names"),
    [
        ([0.1, np.nan], [True, False], {}, "scores must be finite"),
        ([0.1, np.inf], [True, False], {}, "scores must be finite"),
        ([0.1, 0.2, 0.3], [True, False], {}, "is_member must be the same shape as scores"),
        ([0.1, 0.2], [True, True], {}, "too few samples"),
        ([0.1, 0.2], [False, False], {}, "too few samples"),
        ([], [], {}, "too few samples"),
        ([0.1, 0.2], [2, 0], {}, "is_member must be booleans"),
        (["a", "b"], [True, False], {}, "scores must be real numbers"),
        ([0.1, 0.2], [True, False], {"fprs": (0.01, -0.1)}, "fprs must be in [0, 1)"),
        ([0.1, 0.2], [True, False], {"fprs": (1.0,)}, "fprs must be in [0, 1)"),
        ([0.1, 0.2], [True, False], {"fprs": 0.01}, "fprs must be a sequence"),
        ([0.1, 0.2], [True, False], {"confidence": 0.0}, "confidence must be in (0, 1)"),
        ([0.1, 0.2], [True, False], {"confidence": 1.0}, "confidence must be in (0, 1)"),
    ],
)
def test_refusals_name_the_argument_in_one_line(scores, is_member, kw, names):
    with pytest.raises(PrivlabError) as error:
        evaluate_membership(scores, is_member, **kw)
    message = str(error.value)
    assert names in message and "\n" not in message


def test_too_few_samples_message_gives_the_counts():
    with pytest.raises(PrivlabError, match=r"got 2 members and 0 non-members"):
        evaluate_membership([0.1, 0.2], [1, 1])


def test_fpr_key():
    assert [fpr_key(f) for f in (0.01, 0.001, 0.0, 0.1, 1e-5)] == [
        "0.01",
        "0.001",
        "0",
        "0.1",
        "0.00001",
    ]
    with pytest.raises(PrivlabError, match=r"fpr must be in \[0, 1\)"):
        fpr_key(1.0)


def test_summary_is_json_and_complete():
    scores, is_member = gaussian_scores(1.0, 300, 1_200, seed=5)
    evaluation = evaluate_quietly(scores, is_member)
    summary = json.loads(json.dumps(evaluation.summary()))
    assert summary["auc"] == evaluation.auc and summary["auc_ci"] == list(evaluation.auc_ci)
    assert (summary["members"], summary["nonmembers"]) == (300, 1_200)
    assert list(summary["tpr_at_fpr"]) == ["0.01", "0.001", "0"]
    assert summary["tpr_at_fpr"]["0.01"]["resolved"] is True
    assert summary["tpr_at_fpr"]["0.001"]["resolved"] is False
    assert summary["tpr_at_fpr"]["0.01"]["tpr"] == evaluation.tpr_at_fpr["0.01"].tpr
    assert summary["confidence"] == 0.95
    assert summary["balanced_accuracy"] == evaluation.balanced_accuracy


def test_arrays_are_flat_and_read_only():
    scores, is_member = gaussian_scores(1.0, 50, 50, seed=6)
    evaluation = evaluate_quietly(scores.reshape(2, 50), is_member.reshape(2, 50))
    assert evaluation.scores.shape == (100,) and evaluation.is_member.dtype == bool
    assert evaluation.auc == pytest.approx(roc_auc_score(is_member, scores))
    with pytest.raises(ValueError):
        evaluation.scores[0] = 1.0


def test_rate_at_matches_the_requested_rates():
    evaluation = evaluate_quietly(*gaussian_scores(1.0, 500, 2_000, seed=7))
    for key, rate in evaluation.tpr_at_fpr.items():
        assert evaluation.rate_at(rate.fpr) == rate, key
    assert evaluation.rate_at(0.5).tpr == pytest.approx(true_tpr(1.0, 0.5), abs=0.06)


def test_pooled_equals_one_evaluation_of_the_concatenation_and_resolves():
    parts = [gaussian_scores(1.0, 1_000, 5_000, seed) for seed in (8, 9)]
    with pytest.warns(ResolutionWarning):
        evaluations = [evaluate_membership(s, m, confidence=0.9) for s, m in parts]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 10 000 pooled non-members resolve 0.1 %
        both = pooled(evaluations)
    direct = evaluate_membership(
        np.concatenate([s for s, _ in parts]), np.concatenate([m for _, m in parts]), confidence=0.9
    )
    assert both.summary() == direct.summary()
    assert both.confidence == 0.9 and list(both.tpr_at_fpr) == ["0.01", "0.001", "0"]
    assert both.nonmembers == 10_000


def test_pooled_refuses_disagreement_unless_told():
    first = evaluate_quietly(*gaussian_scores(1.0, 50, 50, seed=10), confidence=0.9)
    second = evaluate_quietly(*gaussian_scores(1.0, 50, 50, seed=11), confidence=0.95)
    with pytest.raises(PrivlabError, match="confidence must be given to pooled"):
        pooled([first, second])
    assert evaluate_quietly_pooled([first, second], confidence=0.8).confidence == 0.8
    with pytest.raises(PrivlabError, match="evaluations must be a non-empty sequence"):
        pooled([])


def evaluate_quietly_pooled(evaluations, **kw) -> MembershipEvaluation:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResolutionWarning)
        return pooled(evaluations, **kw)


def test_cluster_bootstrap_matches_delong_on_independent_records():
    rng = np.random.default_rng(3)
    labels = np.arange(2000) % 2 == 0
    scores = rng.normal(size=2000) + labels
    delong = evaluate_membership(scores, labels).auc_ci
    low, high = cluster_bootstrap_auc(scores, labels, np.arange(2000), 0.95)
    assert low == pytest.approx(delong[0], abs=0.01) and high == pytest.approx(delong[1], abs=0.01)


def test_pooled_widens_the_interval_when_records_repeat_across_instances():
    """The same 200 records scored in 10 rounds are 200 observations, not 2000."""
    rng = np.random.default_rng(4)
    labels = np.arange(200) % 2 == 0
    base = rng.normal(size=200) + 0.5 * labels
    rounds = [evaluate_membership(base + 0.05 * rng.normal(size=200), labels) for _ in range(10)]
    naive = pooled(rounds).auc_ci
    clustered = pooled(rounds, records=[np.arange(200)] * 10)
    assert clustered.auc == pytest.approx(pooled(rounds).auc)
    one_round = rounds[0].auc_ci
    assert (clustered.auc_ci[1] - clustered.auc_ci[0]) > 2.5 * (naive[1] - naive[0])
    assert (clustered.auc_ci[1] - clustered.auc_ci[0]) == pytest.approx(
        one_round[1] - one_round[0], rel=0.25
    )
    # distinct records in every instance: DeLong's interval stands
    distinct = pooled(rounds, records=[np.arange(200) + 200 * k for k in range(10)])
    assert distinct.auc_ci == naive
