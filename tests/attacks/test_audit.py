"""Audit arithmetic against the oracles of reference attacks.md 4.2, 4.4 and 6.3 items 2-3."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from privlab.attacks.audit import (
    audit_with_holdout,
    delta_from_gdp,
    eps_from_gdp,
    eps_from_rates,
    eps_gdp,
    eps_lower_bound_clopper_pearson,
    eps_lower_bound_searched,
    eps_one_run,
    gdp_mu,
    gdp_mu_lower_bound,
    one_run_guesses,
    one_run_p_value,
    one_run_thresholds,
    rates_at,
    split_holdout,
    threshold_on_holdout,
)
from privlab.errors import PrivlabError


def gaussian_trials(mu: float, per_world: int, seed: int):
    """Scores of a test: IN ~ N(mu, 1), OUT ~ N(0, 1); labels 1 = IN."""
    rng = np.random.default_rng(seed)
    scores = np.concatenate([rng.normal(mu, 1.0, per_world), rng.normal(0.0, 1.0, per_world)])
    labels = np.concatenate([np.ones(per_world, int), np.zeros(per_world, int)])
    return scores, labels


# --------------------------------------------------------------------------- eps_from_rates


def test_eps_from_rates_hand_values():
    assert eps_from_rates(0.001, 0.9) == pytest.approx(math.log(0.1 / 0.001))
    assert eps_from_rates(0.9, 0.001) == pytest.approx(math.log(0.1 / 0.001))  # reverse test
    assert eps_from_rates(0.1, 0.2, delta=0.05) == pytest.approx(math.log(0.75 / 0.1))
    assert eps_from_rates(0.5, 0.5) == 0.0
    assert eps_from_rates(0.7, 0.6) == 0.0  # worse than chance both ways
    assert eps_from_rates(0.0, 0.3) == math.inf
    assert eps_from_rates(0.0, 1.0) == 0.0  # never says IN: no evidence
    assert eps_from_rates(1.0, 0.0) == 0.0


# --------------------------------------------------------------------------- Clopper-Pearson


@pytest.mark.parametrize(
    ("trials", "ceiling"), [(100, 3.28), (500, 4.91), (1_000, 5.60), (10_000, 7.91)]
)
def test_perfect_attack_reproduces_ceilings(trials, ceiling):
    for delta in (0.0, 1e-5):
        bound = eps_lower_bound_clopper_pearson(0, trials, 0, trials, delta=delta)
        assert bound == pytest.approx(ceiling, abs=0.01)


def test_clopper_pearson_worked_example():
    # TPR 10 %, FPR 0.1 % on 10 000 trials per world: point 4.61, 95 % bound 3.94 (4.2)
    assert eps_lower_bound_clopper_pearson(10, 10_000, 9_000, 10_000) == pytest.approx(
        3.94, abs=0.01
    )


def test_bonferroni_lowers_the_bound():
    single = eps_lower_bound_clopper_pearson(0, 1_000, 0, 1_000)
    split = eps_lower_bound_clopper_pearson(0, 1_000, 0, 1_000, bonferroni=100)
    tail = 0.05 / 200
    fpr_upper = 1.0 - tail ** (1 / 1_000)  # CP upper bound at k = 0 in closed form
    assert split == pytest.approx(math.log((1 - fpr_upper) / fpr_upper), rel=1e-9)
    assert split < single


def test_randomised_response_coverage():
    """The 95 % bound exceeds the true epsilon in at most ~5 % of seeds; the point estimate,
    in about half of them (so this test can tell a bound from an estimate)."""
    epsilon, per_world, seeds = 1.0, 500, 400
    flip = 1.0 / (1.0 + math.exp(epsilon))  # randomised response: FPR = FNR = flip
    rng = np.random.default_rng(0)
    false_positives = rng.binomial(per_world, flip, seeds)
    false_negatives = rng.binomial(per_world, flip, seeds)
    bounds = np.array(
        [
            eps_lower_bound_clopper_pearson(int(fp), per_world, int(fn), per_world)
            for fp, fn in zip(false_positives, false_negatives)
        ]
    )
    estimates = np.array(
        [
            eps_from_rates(fp / per_world, fn / per_world)
            for fp, fn in zip(false_positives, false_negatives)
        ]
    )
    assert np.mean(bounds > epsilon) <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / seeds)
    assert np.mean(estimates > epsilon) > 0.3
    assert np.median(bounds) > 0.6 * epsilon  # not vacuous


# --------------------------------------------------------------------------- thresholds


def test_rates_at_counts():
    scores = [0.1, 0.4, 0.5, 0.9, 0.2, 0.8]
    labels = [0, 0, 1, 1, 1, 0]
    assert rates_at(scores, labels, 0.5) == (1, 3, 1, 3)
    assert rates_at(scores, labels, 10.0) == (0, 3, 3, 3)


def test_threshold_on_holdout_maximises_the_holdout_bound():
    """Brute force over every score: the chosen threshold attains the best holdout bound, and
    with well-separated worlds that bound is far above 0 (either decision direction counts)."""
    scores, labels = gaussian_trials(4.0, 200, seed=1)
    threshold = threshold_on_holdout(scores, labels)
    brute = [eps_lower_bound_clopper_pearson(*rates_at(scores, labels, t)) for t in scores]
    chosen = eps_lower_bound_clopper_pearson(*rates_at(scores, labels, threshold))
    assert chosen == pytest.approx(max(brute))
    assert chosen > 3.0


def test_holdout_threshold_ignores_evaluation_labels():
    scores, labels = gaussian_trials(2.0, 1_000, seed=2)
    holdout, evaluation = split_holdout(scores.size, 0.5, seed=3)
    assert np.intersect1d(holdout, evaluation).size == 0
    honest = audit_with_holdout(scores, labels, seed=3)
    poisoned_labels = labels.copy()
    poisoned_labels[evaluation] = 1 - poisoned_labels[evaluation]  # swap IN/OUT there
    poisoned = audit_with_holdout(scores, poisoned_labels, seed=3)
    assert poisoned.threshold == honest.threshold
    assert honest.threshold == threshold_on_holdout(scores[holdout], labels[holdout])
    assert honest.epsilon > 1.0 and poisoned.epsilon < honest.epsilon
    assert honest.negatives + honest.positives == evaluation.size


def test_searched_threshold_pays_bonferroni():
    scores, labels = gaussian_trials(3.0, 500, seed=4)
    searched = eps_lower_bound_searched(scores, labels)
    counts = rates_at(scores, labels, searched.threshold)
    uncorrected = eps_lower_bound_clopper_pearson(*counts)
    candidates = np.unique(scores).size
    corrected = eps_lower_bound_clopper_pearson(*counts, bonferroni=candidates)
    assert searched.epsilon == pytest.approx(corrected)
    assert 0.0 < searched.epsilon < uncorrected


# --------------------------------------------------------------------------- Gaussian DP


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_gaussian_mechanism_mu_from_empirical_rates(sigma):
    """Sensitivity 1, noise sigma: scores N(1, sigma^2) vs N(0, sigma^2), so mu = 1/sigma."""
    rng = np.random.default_rng(5)
    samples = 200_000
    inside = rng.normal(1.0, sigma, samples)
    outside = rng.normal(0.0, sigma, samples)
    for threshold in (0.25, 0.5, 0.75):
        fpr = np.mean(outside >= threshold)
        fnr = np.mean(inside < threshold)
        assert gdp_mu(fpr, fnr) == pytest.approx(1.0 / sigma, abs=0.02)
    fp, fn = int(np.sum(outside >= 0.5)), int(np.sum(inside < 0.5))
    lower = gdp_mu_lower_bound(fp, samples, fn, samples)
    assert 1.0 / sigma - 0.05 < lower < 1.0 / sigma


def test_gdp_conversion_round_trip_and_reference_values():
    mu, epsilon = eps_gdp(0.5, 0.5, 1e-5)  # chance-level test
    assert (mu, epsilon) == (0.0, 0.0)
    for mu in (0.5, 1.0, 3.0):
        epsilon = eps_from_gdp(mu, 1e-5)
        assert delta_from_gdp(mu, epsilon) == pytest.approx(1e-5, rel=1e-6)
    # mu = 1 at eps = 0 has delta = 2 Phi(1/2) - 1 = 0.383: nothing to pay above it
    assert delta_from_gdp(1.0, 0.0) == pytest.approx(2 * norm.cdf(0.5) - 1)
    assert eps_from_gdp(1.0, 0.4) == 0.0
    assert gdp_mu(0.0, 0.5) == math.inf and eps_from_gdp(math.inf, 1e-5) == math.inf
    fpr = norm.sf(1.0)  # symmetric test with mu = 2
    assert gdp_mu(fpr, fpr) == pytest.approx(2.0)
    assert gdp_mu(1 - fpr, 1 - fpr) == pytest.approx(2.0)  # flipped test


# --------------------------------------------------------------------------- one run


@pytest.mark.parametrize(
    ("correct", "expected"), [(70, 0.47), (80, 0.96), (90, 1.63), (95, 2.17), (100, 3.47)]
)
def test_one_run_worked_example(correct, expected):
    bound = eps_one_run(1_000, 100, correct, delta=1e-5)
    assert bound == pytest.approx(expected, abs=0.01)
    assert one_run_p_value(1_000, 100, correct, bound, 1e-5) == pytest.approx(0.05, rel=1e-6)


@pytest.mark.parametrize(
    ("canaries", "guesses", "delta", "expected"),
    [(1_000, 500, 0.0, 5.11), (1_000, 1_000, 1e-5, 5.78), (10_000, 10, 1e-5, 0.61)],
)
def test_one_run_ceiling_table(canaries, guesses, delta, expected):
    assert eps_one_run(canaries, guesses, guesses, delta=delta) == pytest.approx(expected, abs=0.01)


def test_one_run_chance_level_gives_zero():
    assert eps_one_run(1_000, 100, 50) == 0.0
    assert eps_one_run(1_000, 0, 0) == 0.0


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: eps_from_rates(1.5, 0.1), "fpr"),
        (lambda: eps_from_rates(0.1, -0.1), "fnr"),
        (lambda: eps_from_rates(0.1, 0.1, delta=1.0), "delta"),
        (lambda: eps_lower_bound_clopper_pearson(5, 4, 0, 4), "false_positives"),
        (lambda: eps_lower_bound_clopper_pearson(0, 0, 0, 4), "negatives"),
        (lambda: eps_lower_bound_clopper_pearson(0, 4, 0, 4, confidence=1.0), "confidence"),
        (lambda: eps_lower_bound_clopper_pearson(0, 4, 0, 4, bonferroni=0), "bonferroni"),
        (lambda: eps_one_run(100, 200, 10), "num_guesses"),
        (lambda: eps_one_run(100, 20, 21), "num_correct"),
        (lambda: eps_one_run(0, 0, 0), "num_canaries"),
        (lambda: one_run_p_value(100, 20, 10, -1.0), "epsilon"),
        (lambda: eps_from_gdp(1.0, 0.0), "delta"),
        (lambda: threshold_on_holdout([0.1, 0.2], [1, 1]), "holdout labels"),
        (lambda: threshold_on_holdout([0.1, np.nan], [0, 1]), "holdout scores"),
        (lambda: rates_at([0.1, 0.2], [0, 2], 0.1), "labels"),
        (lambda: split_holdout(10, 1.0, seed=0), "holdout_fraction"),
    ],
)
def test_bad_inputs_name_the_argument(call, field):
    with pytest.raises(PrivlabError, match=rf"^{field} must be ") as error:
        call()
    assert "\n" not in str(error.value)


def test_one_run_thresholds_on_separated_scores_guess_everything():
    labels = np.arange(100) % 2 == 0
    scores = np.where(labels, 1.0, -1.0) + np.linspace(0, 0.1, 100)
    t_plus, t_minus, bound = one_run_thresholds(scores, labels, 1e-5, 0.95)
    assert bound == pytest.approx(eps_one_run(100, 100, 100, delta=1e-5))
    assert one_run_guesses(scores, labels, t_plus, t_minus) == (100, 100)


def test_one_run_thresholds_transfer_and_abstain_in_between():
    rng = np.random.default_rng(0)
    labels = rng.random(400) < 0.5
    scores = rng.normal(size=400) + 3.0 * labels
    t_plus, t_minus, _ = one_run_thresholds(scores[:200], labels[:200], 0.0, 0.95)
    assert t_minus < t_plus
    guesses, correct = one_run_guesses(scores[200:], labels[200:], t_plus, t_minus)
    inside = (scores[200:] >= t_plus) | (scores[200:] <= t_minus)
    assert guesses == int(inside.sum()) and 0.85 * guesses < correct <= guesses
    # a threshold pair that guesses nothing gives no evidence
    assert one_run_guesses(scores, labels, np.inf, -np.inf) == (0, 0)


def test_one_run_thresholds_at_chance_find_no_bound():
    rng = np.random.default_rng(1)
    labels = rng.random(200) < 0.5
    _, _, bound = one_run_thresholds(rng.normal(size=200), labels, 0.0, 0.95)
    assert bound < 0.6
