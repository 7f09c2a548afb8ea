"""Exact (Clopper-Pearson) confidence bounds of a binomial proportion (Clopper & Pearson,
Biometrika 1934): the one place privlab computes them (attack metrics, gossip accounting,
linkability and source-localization rates)."""

from __future__ import annotations

from scipy import stats

from privlab.errors import check, is_integer, is_real


def clopper_pearson_lower(successes: int, trials: int, tail: float) -> float:
    """One-sided lower bound at level ``1 - tail``: the ``tail`` quantile of
    Beta(k, n - k + 1), 0 at k = 0."""
    if successes == 0:
        return 0.0
    return float(stats.beta.ppf(tail, successes, trials - successes + 1))


def clopper_pearson_upper(successes: int, trials: int, tail: float) -> float:
    """One-sided upper bound at level ``1 - tail``: the ``1 - tail`` quantile of
    Beta(k + 1, n - k), 1 at k = n."""
    if successes == trials:
        return 1.0
    return float(stats.beta.ppf(1.0 - tail, successes + 1, trials - successes))


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The two-sided interval of ``k`` successes out of ``n`` trials at ``level``: each
    one-sided bound at ``(1 - level) / 2``."""
    check(is_integer(n) and n >= 1, "n", ">= 1 (an integer)", n)
    check(is_integer(k) and 0 <= k <= n, "k", f"an integer in [0, n = {n}]", k)
    check(is_real(level) and 0 < level < 1, "level", "in (0, 1)", level)
    tail = (1.0 - float(level)) / 2
    return clopper_pearson_lower(k, n, tail), clopper_pearson_upper(k, n, tail)
