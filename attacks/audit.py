"""Empirical privacy auditing: the arithmetic that turns an attack's outcomes into a lower
bound on epsilon (or a Gaussian-DP estimate).

Conventions: label 1 = IN (the canary / differing record was present, world D1), label 0 = OUT;
a test says IN when ``score >= threshold``. Every bound is a *lower* confidence bound on the
epsilon of the audited mechanism, valid with probability ``confidence`` over the audit's
randomness, provided the threshold was fixed before the counts were taken (choose it on a
held-out split with :func:`threshold_on_holdout`, or pay for a search with ``bonferroni``).

Quick start::

    audit = audit_with_holdout(scores, labels, seed=0, delta=1e-5)
    audit.epsilon, audit.threshold
    eps_one_run(num_canaries=1000, num_guesses=100, num_correct=90, delta=1e-5)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

from privlab.errors import check, is_integer, is_real
from privlab.intervals import clopper_pearson_upper

__all__ = [
    "ThresholdAudit",
    "audit_with_holdout",
    "best_guesses",
    "delta_from_gdp",
    "eps_from_gdp",
    "eps_from_rates",
    "eps_gdp",
    "eps_lower_bound_clopper_pearson",
    "eps_lower_bound_searched",
    "eps_one_run",
    "gdp_mu",
    "gdp_mu_lower_bound",
    "one_run_guesses",
    "one_run_p_value",
    "one_run_thresholds",
    "rates_at",
    "split_holdout",
    "threshold_on_holdout",
]

_EPS_CEILING = 200.0  # root searches stop here; beyond it every bound reads as +inf


# --------------------------------------------------------------------------- validation


def _check_rate(value: object, field: str) -> float:
    check(is_real(value) and 0.0 <= value <= 1.0, field, "in [0, 1]", value)
    return float(value)


def _check_delta(delta: object) -> float:
    check(is_real(delta) and 0.0 <= delta < 1.0, "delta", "in [0, 1)", delta)
    return float(delta)


def _check_confidence(confidence: object) -> float:
    check(is_real(confidence) and 0.0 < confidence < 1.0, "confidence", "in (0, 1)", confidence)
    return float(confidence)


def _check_count(value: object, field: str, upper: int | None = None) -> int:
    if upper is None:
        check(is_integer(value) and value >= 1, field, ">= 1 (an integer)", value)
    else:
        valid = f"an integer in [0, {upper}]"
        check(is_integer(value) and 0 <= value <= upper, field, valid, value)
    return int(value)


def _check_scores_labels(
    scores: object, labels: object, prefix: str
) -> tuple[np.ndarray, np.ndarray]:
    scores_array = np.asarray(scores, dtype=float)
    labels_array = np.asarray(labels)
    check(
        scores_array.ndim == 1 and scores_array.size >= 2 and np.isfinite(scores_array).all(),
        f"{prefix}scores",
        "a 1-D array of >= 2 finite numbers",
        f"shape {scores_array.shape}",
    )
    check(
        labels_array.shape == scores_array.shape and np.isin(labels_array, (0, 1)).all(),
        f"{prefix}labels",
        f"0/1 values, one per score ({scores_array.size})",
        f"shape {labels_array.shape}",
    )
    is_in = labels_array.astype(bool)
    check(
        0 < is_in.sum() < is_in.size,
        f"{prefix}labels",
        "holding both classes (some 1 = IN and some 0 = OUT)",
        f"{int(is_in.sum())} IN of {is_in.size}",
    )
    return scores_array, is_in


# --------------------------------------------------------------------------- epsilon from rates


def eps_from_rates(fpr: float, fnr: float, delta: float = 0.0) -> float:
    """Epsilon implied by a test's false-positive and false-negative rates.

    Hypothesis-testing characterisation of (eps, delta)-DP (Kairouz, Oh, Viswanath, ICML 2015,
    Thm 2.1; Wasserman & Zhou 2010): every test obeys FPR + e^eps FNR >= 1 - delta and
    FNR + e^eps FPR >= 1 - delta, hence
    eps >= max{0, ln((1 - delta - FPR)/FNR), ln((1 - delta - FNR)/FPR)}.
    A term whose numerator is <= 0 is dropped; a positive numerator over a zero rate gives
    +inf. This is a point value: it has whatever confidence the rates have.
    """
    fpr, fnr = _check_rate(fpr, "fpr"), _check_rate(fnr, "fnr")
    delta = _check_delta(delta)
    epsilon = 0.0
    for other_rate, rate in ((fpr, fnr), (fnr, fpr)):
        numerator = 1.0 - delta - other_rate
        if numerator <= 0.0:
            continue
        if rate == 0.0:
            return math.inf
        epsilon = max(epsilon, math.log(numerator / rate))
    return epsilon


def eps_lower_bound_clopper_pearson(
    false_positives: int,
    negatives: int,
    false_negatives: int,
    positives: int,
    *,
    delta: float = 0.0,
    confidence: float = 0.95,
    bonferroni: int = 1,
) -> float:
    """Lower bound on epsilon from counts, at level ``confidence`` (Jagielski, Ullman, Oprea,
    "Auditing Differentially Private Machine Learning", NeurIPS 2020, Alg. 2).

    One-sided Clopper-Pearson upper bounds of FPR and FNR, each at failure probability
    alpha / (2 * bonferroni) with alpha = 1 - confidence, go into :func:`eps_from_rates` (both
    decision directions on the same event, as jax_privacy's ``epsilon_clopper_pearson``).
    ``bonferroni`` = number of thresholds tried on these same counts' data (1 when the
    threshold was fixed in advance or chosen on a held-out split).
    """
    negatives = _check_count(negatives, "negatives")
    positives = _check_count(positives, "positives")
    false_positives = _check_count(false_positives, "false_positives", negatives)
    false_negatives = _check_count(false_negatives, "false_negatives", positives)
    delta = _check_delta(delta)
    tail = (1.0 - _check_confidence(confidence)) / (2 * _check_count(bonferroni, "bonferroni"))
    fpr_upper = clopper_pearson_upper(false_positives, negatives, tail)
    fnr_upper = clopper_pearson_upper(false_negatives, positives, tail)
    return eps_from_rates(fpr_upper, fnr_upper, delta)


# --------------------------------------------------------------------------- thresholds


def rates_at(scores, labels, threshold: float) -> tuple[int, int, int, int]:
    """``(false_positives, negatives, false_negatives, positives)`` of the test
    "say IN when score >= threshold" (labels: 1 = IN, 0 = OUT)."""
    scores_array, is_in = _check_scores_labels(scores, labels, "")
    check(is_real(threshold) and not math.isnan(threshold), "threshold", "a number", threshold)
    flagged = scores_array >= threshold
    return (
        int(np.sum(flagged & ~is_in)),
        int(np.sum(~is_in)),
        int(np.sum(~flagged & is_in)),
        int(np.sum(is_in)),
    )


def _bounds_per_threshold(
    scores_array: np.ndarray, is_in: np.ndarray, delta: float, confidence: float, bonferroni: int
) -> tuple[np.ndarray, np.ndarray]:
    """Candidate thresholds (every distinct score) and the CP bound of each."""
    thresholds = np.unique(scores_array)
    negative_scores = np.sort(scores_array[~is_in])
    positive_scores = np.sort(scores_array[is_in])
    negatives, positives = negative_scores.size, positive_scores.size
    false_positives = negatives - np.searchsorted(negative_scores, thresholds, side="left")
    false_negatives = np.searchsorted(positive_scores, thresholds, side="left")
    bounds = np.array(
        [
            eps_lower_bound_clopper_pearson(
                int(fp),
                negatives,
                int(fn),
                positives,
                delta=delta,
                confidence=confidence,
                bonferroni=bonferroni,
            )
            for fp, fn in zip(false_positives, false_negatives)
        ]
    )
    return thresholds, bounds


def threshold_on_holdout(
    scores_holdout, labels_holdout, *, delta: float = 0.0, confidence: float = 0.95
) -> float:
    """The decision threshold to use on a separate evaluation split, chosen on the holdout
    only (jax_privacy's ``Split`` threshold strategy, following Jagielski et al. 2020).

    Decision: the objective is the Clopper-Pearson epsilon bound computed *on the holdout*
    rather than the raw point estimate ln(TPR/FPR), because the point estimate is +inf at
    every threshold above all OUT scores (one lucky IN suffices) and so picks thresholds that
    flag a handful of canaries. Candidates are the distinct holdout scores; ties go to the
    lowest threshold. The returned threshold depends on nothing but the holdout.
    """
    scores_array, is_in = _check_scores_labels(scores_holdout, labels_holdout, "holdout ")
    thresholds, bounds = _bounds_per_threshold(
        scores_array, is_in, _check_delta(delta), _check_confidence(confidence), 1
    )
    return float(thresholds[int(np.argmax(bounds))])


def split_holdout(size: int, holdout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random ``(holdout_index, evaluation_index)`` partition of ``range(size)``."""
    _check_count(size, "size")
    check(
        is_real(holdout_fraction) and 0.0 < holdout_fraction < 1.0,
        "holdout_fraction",
        "in (0, 1)",
        holdout_fraction,
    )
    order = np.random.default_rng(seed).permutation(size)
    cut = int(round(holdout_fraction * size))
    return np.sort(order[:cut]), np.sort(order[cut:])


@dataclass(frozen=True)
class ThresholdAudit:
    """A Clopper-Pearson audit at one threshold: the bound, the threshold and its counts."""

    epsilon: float
    threshold: float
    false_positives: int
    negatives: int
    false_negatives: int
    positives: int


def audit_with_holdout(
    scores,
    labels,
    *,
    holdout_fraction: float = 0.5,
    seed: int = 0,
    delta: float = 0.0,
    confidence: float = 0.95,
) -> ThresholdAudit:
    """Split the trials (:func:`split_holdout`), choose the threshold on the holdout
    (:func:`threshold_on_holdout`), bound epsilon on the rest at ``confidence``
    (:func:`eps_lower_bound_clopper_pearson`, Jagielski et al. 2020)."""
    scores_array = np.asarray(scores, dtype=float)
    labels_array = np.asarray(labels)
    holdout, evaluation = split_holdout(scores_array.size, holdout_fraction, seed)
    threshold = threshold_on_holdout(
        scores_array[holdout], labels_array[holdout], delta=delta, confidence=confidence
    )
    counts = rates_at(scores_array[evaluation], labels_array[evaluation], threshold)
    epsilon = eps_lower_bound_clopper_pearson(*counts, delta=delta, confidence=confidence)
    return ThresholdAudit(epsilon, threshold, *counts)


def eps_lower_bound_searched(
    scores, labels, *, delta: float = 0.0, confidence: float = 0.95
) -> ThresholdAudit:
    """Search every distinct score as threshold on the same data, paying for it with a
    Bonferroni correction (confidence split k ways over the k candidates; jax_privacy's
    ``Bonferroni`` strategy on Jagielski et al. 2020's bound). Valid at ``confidence``."""
    scores_array, is_in = _check_scores_labels(scores, labels, "")
    candidates = np.unique(scores_array).size
    thresholds, bounds = _bounds_per_threshold(
        scores_array, is_in, _check_delta(delta), _check_confidence(confidence), candidates
    )
    best = int(np.argmax(bounds))
    counts = rates_at(scores_array, is_in.astype(int), float(thresholds[best]))
    return ThresholdAudit(float(bounds[best]), float(thresholds[best]), *counts)


# --------------------------------------------------------------------------- Gaussian DP


def gdp_mu(fpr: float, fnr: float) -> float:
    """Gaussian-DP parameter of a test, mu = Phi^-1(1 - FPR) - Phi^-1(FNR) (Dong, Roth, Su,
    "Gaussian Differential Privacy", JRSS-B 2022 / arXiv 2019, Eq. 6; used for auditing by
    Nasr et al., "Tight Auditing of Differentially Private Machine Learning", USENIX Security
    2023). Point estimate. Decision: returns |mu| (a test worse than chance, flipped, is a
    test better than chance), +inf when a rate is 0 and the other is < 1."""
    fpr, fnr = _check_rate(fpr, "fpr"), _check_rate(fnr, "fnr")
    if fpr + fnr >= 1.0:
        fpr, fnr = 1.0 - fpr, 1.0 - fnr
    return float(abs(stats.norm.isf(fpr) - stats.norm.ppf(fnr)))


def gdp_mu_lower_bound(
    false_positives: int,
    negatives: int,
    false_negatives: int,
    positives: int,
    *,
    confidence: float = 0.95,
) -> float:
    """Lower bound on mu at level ``confidence`` (Nasr et al. 2023): :func:`gdp_mu` of the
    one-sided Clopper-Pearson upper bounds of FPR and FNR, each at (1 - confidence) / 2.
    Decision: 0 when the upper bounds sum to >= 1 (no evidence of distinguishability)."""
    negatives = _check_count(negatives, "negatives")
    positives = _check_count(positives, "positives")
    false_positives = _check_count(false_positives, "false_positives", negatives)
    false_negatives = _check_count(false_negatives, "false_negatives", positives)
    tail = (1.0 - _check_confidence(confidence)) / 2
    fpr_upper = clopper_pearson_upper(false_positives, negatives, tail)
    fnr_upper = clopper_pearson_upper(false_negatives, positives, tail)
    if fpr_upper + fnr_upper >= 1.0:
        return 0.0
    return gdp_mu(fpr_upper, fnr_upper)


def delta_from_gdp(mu: float, epsilon: float) -> float:
    """delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2) of a mu-GDP mechanism
    (Dong, Roth, Su 2019, Corollary 2.13); the e^eps term in log space to avoid overflow."""
    check(is_real(mu) and mu > 0 and math.isfinite(mu), "mu", "> 0 and finite", mu)
    check(is_real(epsilon) and epsilon >= 0, "epsilon", ">= 0", epsilon)
    shifted = epsilon / mu
    tail = math.exp(epsilon + stats.norm.logcdf(-shifted - mu / 2))
    return float(stats.norm.cdf(-shifted + mu / 2) - tail)


def eps_from_gdp(mu: float, delta: float) -> float:
    """The smallest epsilon at which a mu-GDP mechanism is (eps, delta)-DP: the root of
    :func:`delta_from_gdp` (Dong, Roth, Su 2019, Corollary 2.13) by Brent's method, as
    jax_privacy's ``epsilon_from_gdp``. 0 when delta >= delta(0) or mu = 0; +inf for mu = inf."""
    check(is_real(mu) and mu >= 0 and not math.isnan(mu), "mu", ">= 0", mu)
    check(is_real(delta) and 0.0 < delta < 1.0, "delta", "in (0, 1)", delta)
    if mu == 0.0:
        return 0.0
    if math.isinf(mu):
        return math.inf
    if delta_from_gdp(mu, 0.0) <= delta:
        return 0.0
    upper = 1.0
    while delta_from_gdp(mu, upper) > delta:
        upper *= 2.0
        if upper > _EPS_CEILING:
            return math.inf
    return float(optimize.brentq(lambda eps: delta_from_gdp(mu, eps) - delta, 0.0, upper))


def eps_gdp(fpr: float, fnr: float, delta: float) -> tuple[float, float]:
    """``(mu, epsilon at delta)`` of the GDP estimate from a test's rates (Nasr et al. 2023):
    :func:`gdp_mu` then :func:`eps_from_gdp`. A point estimate, not a confidence bound; feed
    Clopper-Pearson upper rates (or use :func:`gdp_mu_lower_bound`) for a bound."""
    mu = gdp_mu(fpr, fnr)
    return mu, eps_from_gdp(mu, delta)


# --------------------------------------------------------------------------- one run


def _check_one_run_counts(
    num_canaries: object, num_guesses: object, num_correct: object
) -> tuple[int, int, int]:
    num_canaries = _check_count(num_canaries, "num_canaries")
    num_guesses = _check_count(num_guesses, "num_guesses", num_canaries)
    return num_canaries, num_guesses, _check_count(num_correct, "num_correct", num_guesses)


def one_run_p_value(
    num_canaries: int, num_guesses: int, num_correct: int, epsilon: float, delta: float = 0.0
) -> float:
    """Upper bound on Pr[>= v of r guesses correct] under (eps, delta)-DP (Steinke, Nasr,
    Jagielski, "Privacy Auditing with One (1) Training Run", NeurIPS 2023, Thm 5.2 / Alg. 1):
    beta + 2 m delta alpha with q = e^eps / (1 + e^eps), beta = Pr[Bin(r, q) >= v] and
    alpha = max_{1 <= i <= v} Pr[v - i <= Bin(r, q) < v] / i."""
    counts = _check_one_run_counts(num_canaries, num_guesses, num_correct)
    check(is_real(epsilon) and epsilon >= 0, "epsilon", ">= 0", epsilon)
    return _one_run_p_value(*counts, float(epsilon), _check_delta(delta))


def _one_run_p_value(
    num_canaries: int, num_guesses: int, num_correct: int, epsilon: float, delta: float
) -> float:
    q = 1.0 / (1.0 + math.exp(-epsilon))
    beta = float(stats.binom.sf(num_correct - 1, num_guesses, q))
    if delta == 0.0 or num_correct == 0:
        return beta
    steps = np.arange(1, num_correct + 1)
    below_v = stats.binom.cdf(num_correct - 1, num_guesses, q)
    below_v_minus_i = stats.binom.cdf(num_correct - steps - 1, num_guesses, q)
    alpha = float(np.max((below_v - below_v_minus_i) / steps))
    return beta + 2.0 * num_canaries * delta * alpha


def eps_one_run(
    num_canaries: int,
    num_guesses: int,
    num_correct: int,
    *,
    delta: float = 0.0,
    confidence: float = 0.95,
) -> float:
    """Lower bound on epsilon at level ``confidence`` from a single training run with m
    canaries, r guesses and v correct ones (Steinke, Nasr, Jagielski, NeurIPS 2023, Alg. 1 /
    Thm 5.2): the largest eps whose :func:`one_run_p_value` is still < 1 - confidence (the
    p-value grows with eps), found by Brent's method; 0 when even eps = 0 is not rejected.
    The guess counts must be fixed before looking at the scores (or chosen on a holdout)."""
    counts = _check_one_run_counts(num_canaries, num_guesses, num_correct)
    delta = _check_delta(delta)
    target = 1.0 - _check_confidence(confidence)

    def excess(epsilon: float) -> float:
        return _one_run_p_value(*counts, epsilon, delta) - target

    if counts[1] == 0 or excess(0.0) >= 0.0:  # no guesses: no evidence
        return 0.0
    upper = 1.0
    while excess(upper) < 0.0:
        upper *= 2.0
        if upper > _EPS_CEILING:
            return math.inf
    return float(optimize.brentq(excess, 0.0, upper, xtol=1e-10))


# --------------------------------------------------------------------------- one-run guesses


def best_guesses(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ranked, correct, plus)``: the scores in decreasing order and, for every number
    r = 0..m of guesses, the most correct guesses ``correct[r]`` that r guesses (the
    ``plus[r]`` highest scores IN, the ``r - plus[r]`` lowest OUT) can make."""
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    ranked, hits = np.asarray(scores, dtype=float)[order], np.asarray(labels, dtype=bool)[order]
    m = len(ranked)
    top_in = np.concatenate([[0], np.cumsum(hits)])  # IN among the k highest
    bottom_out = np.concatenate([[0], np.cumsum(~hits[::-1])])  # OUT among the k lowest
    best_correct = np.full(m + 1, -1)
    best_plus = np.zeros(m + 1, dtype=int)
    for plus in range(m + 1):
        minus = np.arange(m - plus + 1)
        correct = top_in[plus] + bottom_out[minus]
        better = correct > best_correct[plus + minus]
        best_correct[plus + minus[better]] = correct[better]
        best_plus[plus + minus[better]] = plus
    return ranked, best_correct, best_plus


def one_run_thresholds(
    scores: np.ndarray, labels: np.ndarray, delta: float, confidence: float
) -> tuple[float, float, float]:
    """``(t_plus, t_minus, bound)``: guess IN at scores >= t_plus and OUT at <= t_minus,
    the pair whose one-run bound on these (held-out) canaries is largest.

    Every pair of guess counts (k+, k-) of Steinke et al. (2023, Sec. 6) is tried, as
    Privacy Meter tries a grid of them, but on held-out canaries only: the thresholds
    then go unchanged to the evaluation canaries (:func:`one_run_guesses`), so the
    evaluation bound pays for no search. For each number of guesses only the pair with
    the most correct guesses can be best; the bound is computed on a grid of numbers
    and at every number near the grid's best.
    """
    ranked, best_correct, best_plus = best_guesses(scores, labels)
    m = len(ranked)

    def bound(guesses: int) -> float:
        correct = int(best_correct[guesses])
        return eps_one_run(m, guesses, correct, delta=delta, confidence=confidence)

    # the bound is smooth in the number of guesses: a coarse grid, then every count
    # around the best of it
    coarse = np.unique(np.r_[np.geomspace(1, m, 40).round(), np.linspace(1, m, 20).round()])
    values = {int(g): bound(int(g)) for g in coarse}
    top = max(values, key=values.get)
    for g in range(max(1, int(top / 1.3)), min(m, int(top * 1.3) + 1) + 1):
        values.setdefault(g, bound(g))
    guesses = max(values, key=lambda g: (values[g], -g))
    if values[guesses] <= 0.0:
        return math.inf, -math.inf, 0.0
    plus = int(best_plus[guesses])
    minus = guesses - plus
    t_plus = float(ranked[plus - 1]) if plus else math.inf
    t_minus = float(ranked[m - minus]) if minus else -math.inf
    return t_plus, t_minus, values[guesses]


def one_run_guesses(
    scores: np.ndarray, labels: np.ndarray, t_plus: float, t_minus: float
) -> tuple[int, int]:
    """``(guesses, correct)`` of fixed thresholds: IN at ``scores >= t_plus``, else OUT
    at ``scores <= t_minus``, else abstain."""
    inside = scores >= t_plus
    outside = (scores <= t_minus) & ~inside
    labels = labels.astype(bool)
    return int(inside.sum() + outside.sum()), int(
        (inside & labels).sum() + (outside & ~labels).sum()
    )
