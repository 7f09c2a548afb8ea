"""Membership-inference evaluation: ROC, AUC with a DeLong interval, TPR at low FPR with
Clopper-Pearson intervals and resolution checks, balanced accuracy and advantage.

Every attack scores each (model, example) pair, higher meaning "more likely a member";
this module turns scores and ground-truth membership into the numbers the literature
reports (Carlini et al., "Membership Inference Attacks From First Principles", S&P 2022:
ROC on log axes and TPR at low FPR as the headline metric).

Quick start::

    evaluation = evaluate_membership(scores, is_member)
    evaluation.auc, evaluation.tpr_at_fpr["0.001"].tpr, evaluation.summary()
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy import stats
from sklearn.metrics import roc_curve

from privlab.errors import PrivlabError, check, is_real
from privlab.intervals import clopper_pearson_lower, clopper_pearson_upper

__all__ = [
    "DEFAULT_FPRS",
    "MembershipEvaluation",
    "RateAtFPR",
    "ResolutionWarning",
    "cluster_bootstrap_auc",
    "evaluate_membership",
    "fpr_key",
    "pooled",
]

DEFAULT_FPRS = (0.01, 0.001, 0.0)
RESOLUTION_EVENTS = 10
"""A TPR at FPR ``a`` is resolved when ``a * negatives >= RESOLUTION_EVENTS``: the
threshold then rests on at least ten false positives."""


class ResolutionWarning(UserWarning):
    """Too few non-members to measure the TPR at a requested FPR: fewer than ``10 / fpr``."""


@dataclass(frozen=True)
class RateAtFPR:
    """The TPR of the attack at the requested false-positive rate ``fpr``.

    ``tpr`` is read at the largest threshold whose empirical FPR is ``<= fpr`` (the last
    ROC point with FPR ``<= fpr``, as ML Privacy Meter's ``compute_attack_results``; no
    interpolation between thresholds), so it never claims an FPR above the requested one;
    at ``fpr = 0`` it is the fraction of members scored above every non-member.

    ``ci`` is a distribution-free interval, at the evaluation's confidence, for the TPR of
    the attack at FPR ``fpr`` (the true TPR of its best threshold with true FPR <= ``fpr``),
    valid for any score distribution, ties included. Decision: a Clopper-Pearson (1934)
    interval of the TPR at the empirical threshold, with the members as trials, ignores
    that the threshold is itself estimated from the non-members; at FPR 1 % and 0.1 %
    with 20 000 samples per class it covered the true TPR in only 59 % and 38 % of seeds.
    So the interval brackets the threshold first, in the manner of Hilgers (1991,
    "Distribution-free confidence bounds for ROC curves", Methods Inf. Med. 30): the lower
    end is the one-sided Clopper-Pearson lower bound of the members' TPR at the lowest
    threshold whose non-member Clopper-Pearson upper FPR bound is <= ``fpr``, the upper end
    the Clopper-Pearson upper bound at the highest threshold whose lower FPR bound is
    > ``fpr``; each of the four one-sided bounds takes a quarter of ``1 - confidence``
    (Bonferroni). At ``fpr = 0`` the lower end is therefore 0.

    ``resolved`` is False when ``fpr > 0`` and there are fewer than ``10 / fpr``
    non-members. Decision for ``fpr = 0``: it is always False, since the TPR with no false
    positive keeps falling as non-members are added and no sample size resolves it; it is
    reported as the empirical "TPR at 0 % FPR" of Privacy Meter and the RMIA paper (Zarifzadeh
    et al., ICML 2024), and no ``ResolutionWarning`` is raised for it.
    """

    fpr: float
    tpr: float
    ci: tuple[float, float]
    resolved: bool


@dataclass(frozen=True, eq=False)
class MembershipEvaluation:
    """Scores, membership and every metric derived from them (see ``evaluate_membership``).

    Arrays are read-only. ``fpr``, ``tpr``, ``thresholds`` hold every distinct threshold
    (``sklearn.metrics.roc_curve`` with ``drop_intermediate=False``), the first being
    ``inf`` at FPR = TPR = 0.
    """

    scores: np.ndarray
    is_member: np.ndarray
    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    auc: float
    auc_ci: tuple[float, float]
    balanced_accuracy: float
    advantage: float
    tpr_at_fpr: dict[str, RateAtFPR]
    confidence: float

    @property
    def members(self) -> int:
        """Number of members (positives)."""
        return int(np.count_nonzero(self.is_member))

    @property
    def nonmembers(self) -> int:
        """Number of non-members (negatives)."""
        return int(self.is_member.size - self.members)

    def rate_at(self, fpr: float) -> RateAtFPR:
        """The TPR at any ``fpr`` in [0, 1), by the rule of ``RateAtFPR`` (no warning)."""
        _check_fpr(fpr, "fpr")
        counts = (self.members, self.nonmembers)
        return _rate_at_fpr((self.fpr, self.tpr), float(fpr), counts, self.confidence)

    def summary(self) -> dict[str, Any]:
        """JSON-able headline numbers: AUC with its interval, balanced accuracy, advantage,
        TPR at each requested FPR, confidence level and class sizes."""
        return {
            "auc": self.auc,
            "auc_ci": list(self.auc_ci),
            "balanced_accuracy": self.balanced_accuracy,
            "advantage": self.advantage,
            "tpr_at_fpr": {
                key: {"tpr": rate.tpr, "ci": list(rate.ci), "resolved": rate.resolved}
                for key, rate in self.tpr_at_fpr.items()
            },
            "confidence": self.confidence,
            "members": self.members,
            "nonmembers": self.nonmembers,
        }


def fpr_key(fpr: float) -> str:
    """The dictionary key of a false-positive rate, in positional notation without trailing
    zeros: 0.01 -> "0.01", 0.001 -> "0.001", 1e-5 -> "0.00001", 0.0 -> "0"."""
    _check_fpr(fpr, "fpr")
    return np.format_float_positional(float(fpr), trim="-")


def evaluate_membership(
    scores: Iterable[float] | np.ndarray,
    is_member: Iterable[bool] | np.ndarray,
    *,
    fprs: Sequence[float] = DEFAULT_FPRS,
    confidence: float = 0.95,
) -> MembershipEvaluation:
    """Evaluate membership scores (higher = member) against the truth ``is_member``.

    ``scores`` and ``is_member`` must have the same shape (any shape; they are flattened,
    so ``[targets, examples]`` arrays pool their rows). Metrics:

    * ROC over all thresholds and AUC, the Mann-Whitney statistic (ties count one half),
      equal to the trapezoidal area of the ROC;
    * ``auc_ci``: DeLong, DeLong & Clarke-Pearson (1988) normal interval at ``confidence``,
      with the O(N log N) midrank computation of Sun & Xu (2014), clipped to [0, 1].
      Decision: with a single member or non-member the variance is undefined and the
      interval is [0, 1]; at AUC 0 or 1 the estimated variance is 0 and the interval is a
      point (a known limitation of DeLong's interval);
    * ``balanced_accuracy``: max over thresholds of (TPR + TNR) / 2 (Carlini et al. 2022);
    * ``advantage``: max over thresholds of TPR - FPR, the membership advantage of Yeom,
      Giacomelli, Fredrikson & Jha (CSF 2018, Definition 4), equal to
      ``2 * balanced_accuracy - 1``;
    * ``tpr_at_fpr``: one ``RateAtFPR`` per entry of ``fprs``, keyed by ``fpr_key``.

    Emits a ``ResolutionWarning`` for each positive FPR with fewer than ``10 / fpr``
    non-members. Raises ``PrivlabError`` for non-finite scores, differing shapes, no
    member or no non-member, an FPR outside [0, 1) or ``confidence`` outside (0, 1).
    """
    scores, is_member = _checked_inputs(scores, is_member)
    rates = _checked_fprs(fprs)
    check(is_real(confidence) and 0 < confidence < 1, "confidence", "in (0, 1)", confidence)
    confidence = float(confidence)

    fpr, tpr, thresholds = roc_curve(is_member, scores, drop_intermediate=False)
    members, nonmembers = int(is_member.sum()), int(is_member.size - is_member.sum())
    auc, auc_ci = _delong_interval(scores[is_member], scores[~is_member], confidence)
    counts = (members, nonmembers)
    tpr_at_fpr = {
        fpr_key(rate): _rate_at_fpr((fpr, tpr), rate, counts, confidence) for rate in rates
    }
    _warn_unresolved(tpr_at_fpr.values(), nonmembers)
    return MembershipEvaluation(
        scores=_read_only(scores),
        is_member=_read_only(is_member),
        fpr=_read_only(fpr),
        tpr=_read_only(tpr),
        thresholds=_read_only(thresholds),
        auc=auc,
        auc_ci=auc_ci,
        balanced_accuracy=float(np.max(tpr + 1.0 - fpr) / 2.0),
        advantage=float(np.max(tpr - fpr)),
        tpr_at_fpr=tpr_at_fpr,
        confidence=confidence,
    )


def pooled(
    evaluations: Sequence[MembershipEvaluation],
    records: Sequence[np.ndarray] | None = None,
    **kw: Any,
) -> MembershipEvaluation:
    """One evaluation of the concatenated scores and labels of several attack instances
    (several target models or victims), as ML Privacy Meter's "average" ROC: it is how
    TPR at 0.1 % FPR gets the ``>= 10 000`` non-members it needs. The scores must be on a
    common scale (one attack, calibrated the same way on every instance).

    ``records[i]`` names the record behind each score of instance i (e.g. its dataset
    index). When one record is scored in several instances (the same victim's samples
    attacked in every round), the scores are not independent and DeLong's interval is
    too narrow; the AUC interval is then a percentile bootstrap over records (Field and
    Welsh, 2007, the cluster bootstrap: each record's scores stay together).

    ``kw`` goes to ``evaluate_membership``; ``fprs`` and ``confidence`` default to those of
    the evaluations, which must then agree.
    """
    evaluations = list(evaluations)
    check(
        len(evaluations) > 0 and all(isinstance(e, MembershipEvaluation) for e in evaluations),
        "evaluations",
        "a non-empty sequence of MembershipEvaluation",
        [type(e).__name__ for e in evaluations],
    )
    if "fprs" not in kw:
        kw["fprs"] = _agreed(
            evaluations, "fprs", lambda e: tuple(r.fpr for r in e.tpr_at_fpr.values())
        )
    if "confidence" not in kw:
        kw["confidence"] = _agreed(evaluations, "confidence", lambda e: e.confidence)
    scores = np.concatenate([e.scores for e in evaluations])
    is_member = np.concatenate([e.is_member for e in evaluations])
    result = evaluate_membership(scores, is_member, **kw)
    if records is None:
        return result
    check(
        len(records) == len(evaluations)
        and all(len(r) == e.scores.size for r, e in zip(records, evaluations, strict=False)),
        "records",
        "one record id per score of every evaluation",
        [len(r) for r in records],
    )
    _, clusters = np.unique(np.concatenate([np.asarray(r) for r in records]), return_inverse=True)
    if clusters.max() + 1 == clusters.size:  # every record scored once: DeLong holds
        return result
    interval = cluster_bootstrap_auc(scores, is_member, clusters, result.confidence)
    return replace(result, auc_ci=interval)


def cluster_bootstrap_auc(
    scores: np.ndarray,
    is_member: np.ndarray,
    clusters: np.ndarray,
    confidence: float,
    resamples: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of the AUC when whole clusters (records) are resampled with
    replacement: each resample weighs every score by its cluster's multiplicity, and the
    weighted Mann-Whitney AUC (ties one half) is computed on one sort of the scores."""
    order = np.argsort(scores, kind="stable")
    values, members, groups = scores[order], is_member[order], clusters[order]
    _, level = np.unique(values, return_inverse=True)
    count = int(groups.max()) + 1
    rng = np.random.default_rng(seed)
    aucs = []
    for start in range(0, resamples, 100):
        size = min(100, resamples - start)
        multiplicity = rng.multinomial(count, np.full(count, 1.0 / count), size=size)
        weights = multiplicity[:, groups].astype(np.float64)  # [size, N]
        negative = np.where(members, 0.0, weights)
        per_level = np.zeros((size, int(level.max()) + 1))
        np.add.at(per_level, (slice(None), level), negative)
        below = np.cumsum(per_level, axis=1) - per_level
        credit = below[:, level] + 0.5 * per_level[:, level]
        positive = np.where(members, weights, 0.0)
        total = positive.sum(axis=1) * negative.sum(axis=1)
        aucs.append((positive * credit).sum(axis=1) / np.where(total > 0, total, np.nan))
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.nanpercentile(np.concatenate(aucs), [tail, 100 - tail])
    return float(low), float(high)


def _checked_inputs(scores: Any, is_member: Any) -> tuple[np.ndarray, np.ndarray]:
    """Flat float scores and bool labels, or a ``PrivlabError`` naming the bad argument."""
    try:
        scores = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError):
        raise PrivlabError(f"scores must be real numbers, got {type(scores).__name__}") from None
    labels = np.asarray(is_member)
    check(
        labels.shape == scores.shape,
        "is_member",
        f"the same shape as scores {scores.shape}",
        f"shape {labels.shape}",
    )
    bad = int(np.count_nonzero(~np.isfinite(scores)))
    check(bad == 0, "scores", "finite (no NaN or inf)", f"{bad} non-finite values")
    if labels.dtype != np.bool_:
        check(
            labels.dtype.kind in "biuf" and bool(np.isin(labels, (0, 1)).all()),
            "is_member",
            "booleans (or 0/1)",
            f"values {np.unique(labels)[:5].tolist()}",
        )
    labels = labels.astype(bool).ravel()
    members = int(labels.sum())
    if members == 0 or members == labels.size:
        raise PrivlabError(
            "is_member has too few samples: need at least one member and one non-member, "
            f"got {members} members and {labels.size - members} non-members"
        )
    return scores.ravel(), labels


def _check_fpr(fpr: object, field: str) -> None:
    check(is_real(fpr) and 0 <= fpr < 1, field, "in [0, 1)", fpr)


def _checked_fprs(fprs: Any) -> list[float]:
    check(
        isinstance(fprs, Iterable) and not isinstance(fprs, str),
        "fprs",
        "a sequence of rates in [0, 1)",
        fprs,
    )
    rates = list(fprs)
    for rate in rates:
        _check_fpr(rate, "fprs")
    return [float(rate) for rate in rates]


def _rate_at_fpr(
    curve: tuple[np.ndarray, np.ndarray], fpr: float, counts: tuple[int, int], confidence: float
) -> RateAtFPR:
    """The last point with FPR <= ``fpr`` of the ROC ``curve = (fpr, tpr)`` (both are
    non-decreasing, so it has the largest TPR among those points); ``counts`` are the
    numbers of members and non-members."""
    fpr_curve, tpr_curve = curve
    tpr = float(tpr_curve[np.searchsorted(fpr_curve, fpr, side="right") - 1])
    resolved = fpr > 0 and counts[1] >= _negatives_needed(fpr)
    return RateAtFPR(fpr, tpr, _tpr_interval(curve, fpr, counts, confidence), resolved)


def _tpr_interval(
    curve: tuple[np.ndarray, np.ndarray], fpr: float, counts: tuple[int, int], confidence: float
) -> tuple[float, float]:
    """The interval of ``RateAtFPR.ci``: Clopper-Pearson bounds of the members' hits at the
    two ROC points whose false-positive counts bracket the true FPR-``fpr`` threshold."""
    members, nonmembers = counts
    tail = (1.0 - confidence) / 4
    false_positives = np.rint(curve[0] * nonmembers)
    hits = np.rint(curve[1] * members).astype(np.int64)
    low, high = 0.0, 1.0
    safe = _most_false_positives_within(fpr, nonmembers, tail)
    if safe >= 0:
        point = np.searchsorted(false_positives, safe, side="right") - 1
        low = clopper_pearson_lower(int(hits[point]), members, tail)
    beyond = _fewest_false_positives_beyond(fpr, nonmembers, tail)
    if beyond <= nonmembers:
        point = np.searchsorted(false_positives, beyond, side="left")
        high = clopper_pearson_upper(int(hits[point]), members, tail)
    return low, high


def _most_false_positives_within(fpr: float, trials: int, tail: float) -> int:
    """The largest count k whose one-sided Clopper-Pearson upper bound (level ``1 - tail``)
    is <= ``fpr``, i.e. with ``P(Binomial(trials, fpr) <= k) <= tail``; -1 when none."""
    count = int(stats.binom.ppf(tail, trials, fpr))
    return count if stats.binom.cdf(count, trials, fpr) <= tail else count - 1


def _fewest_false_positives_beyond(fpr: float, trials: int, tail: float) -> int:
    """The smallest count k whose one-sided Clopper-Pearson lower bound (level ``1 - tail``)
    is > ``fpr``, i.e. with ``P(Binomial(trials, fpr) >= k) < tail``; may exceed ``trials``."""
    count = int(stats.binom.isf(tail, trials, fpr))
    return count + 1 if stats.binom.sf(count, trials, fpr) < tail else count + 2


def _negatives_needed(fpr: float) -> int:
    """``ceil(10 / fpr)``, with the rounding of 10 / 0.001 = 10000.000000000002 undone."""
    return math.ceil(round(RESOLUTION_EVENTS / fpr, 6)) if fpr > 0 else 0


def _warn_unresolved(rates: Iterable[RateAtFPR], nonmembers: int) -> None:
    for rate in rates:
        if rate.fpr > 0 and not rate.resolved:
            warnings.warn(
                f"TPR at FPR {fpr_key(rate.fpr)} is unresolved: {nonmembers} non-members, "
                f"fewer than 10 / FPR = {_negatives_needed(rate.fpr)}; pool more attack "
                "instances (privlab.attacks.metrics.pooled)",
                ResolutionWarning,
                stacklevel=3,
            )


def _delong_interval(
    positives: np.ndarray, negatives: np.ndarray, confidence: float
) -> tuple[float, tuple[float, float]]:
    """AUC and its DeLong et al. (1988) interval, by the midrank algorithm of Sun & Xu
    (2014, IEEE Signal Processing Letters 21(11)): the structural components are
    ``V10_i = (T_Z(x_i) - T_X(x_i)) / n`` and ``V01_j = 1 - (T_Z(y_j) - T_Y(y_j)) / m``
    with ``T`` the midranks within the pooled sample Z, the positives X and negatives Y."""
    m, n = positives.size, negatives.size
    pooled_ranks = stats.rankdata(np.concatenate([positives, negatives]))
    v10 = (pooled_ranks[:m] - stats.rankdata(positives)) / n
    v01 = 1.0 - (pooled_ranks[m:] - stats.rankdata(negatives)) / m
    auc = float(v10.mean())
    if m < 2 or n < 2:
        return auc, (0.0, 1.0)
    std = math.sqrt(v10.var(ddof=1) / m + v01.var(ddof=1) / n)
    half_width = stats.norm.ppf(0.5 + confidence / 2) * std
    return auc, (max(0.0, float(auc - half_width)), min(1.0, float(auc + half_width)))


def _agreed(evaluations: list[MembershipEvaluation], field: str, value_of) -> Any:
    values = {value_of(e) for e in evaluations}
    check(len(values) == 1, field, "given to pooled when the evaluations disagree", sorted(values))
    return values.pop()


def _read_only(array: np.ndarray) -> np.ndarray:
    array = np.array(array, copy=True)
    array.setflags(write=False)
    return array
