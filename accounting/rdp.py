"""Exact Renyi DP of the Poisson-subsampled Gaussian, vectorised over orders.

Renyi DP (Mironov, CSF 2017). For the Poisson-subsampled Gaussian mechanism under
add/remove adjacency, the RDP at order alpha is ``log(A_alpha) / (alpha - 1)`` with
``A_alpha = E_{z ~ N(0, s^2)} [(1 - q + q exp((2z - 1) / (2 s^2)))^alpha]``
(Mironov, Talwar, Zhang 2019, "Renyi differential privacy of the sampled Gaussian
mechanism", arXiv:1908.10530, Sec. 3.3).

* Integer orders: the finite binomial expansion. We sum ``A_alpha - 1`` directly,
  ``sum_{i>=2} C(alpha, i) q^i (1-q)^(alpha-i) expm1((i^2 - i) / (2 s^2))``, whose terms
  are all positive (the i = 0, 1 terms of ``A_alpha`` sum with the rest to exactly 1), in
  log space with gammaln binomials: full relative precision even when the RDP is 1e-12,
  and no overflow for orders in the tens of thousands.
* Fractional orders: the two-sided signed series of Mironov-Talwar-Zhang (their Sec. 3.3,
  split at ``z0 = s^2 log(1/q - 1) + 1/2``), vectorised over terms, with the alternating
  tail closed by averaging the last two partial sums, and the result rounded up by its
  roundoff and truncation bounds (so it never falls below the truth; this only shows
  when the RDP is below ~1e-10). When the roundoff estimate shows
  that cancellation makes the sum unreliable, or the series has not converged, the value
  is recomputed by mpmath quadrature of ``A_alpha - 1`` at 40 digits.
  The series needs about ``alpha + s^2 log(1/q - 1) + 8 s`` terms, which grows with
  ``s^2``; when that exceeds ``max_series_terms`` (default 2^15) the order gets a
  rigorous upper bound instead: ``log A_alpha = (alpha - 1) RDP(alpha)`` is convex in
  alpha (it is the cumulant generating function of the privacy loss, Mironov 2017;
  Wang, Balle, Kasiviswanathan 2019), so linear interpolation of ``log A`` between the
  neighbouring integer orders (``log A_1 = 0``) lies above it. It is never below the
  truth, equals it at integer orders, and is tight where such large s are used (the
  optimal order is then large; the relative gap is ~``1 / (4 alpha^2)``). Integer
  orders need only O(alpha) terms, so the cost no longer grows with s.

Also the Laplace mechanism (Mironov 2017, Prop. 6) and the RDP of a whole event.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy.special import gammaln, log_ndtr

from privlab.accounting.events import (
    ComposedEvent,
    GaussianEvent,
    LaplaceEvent,
    NoOpEvent,
    NoPrivacyEvent,
    PoissonSampledEvent,
    PrivacyEvent,
    RelativeGaussianEvent,
    SelfComposedEvent,
    UnsupportedEventError,
    check_positive,
    check_sample_rate,
    flatten,
)

__all__ = [
    "default_orders",
    "subsampled_gaussian_rdp",
    "laplace_rdp",
    "rdp_of_event",
    "rdp_order_limit",
    "check_rdp_event",
    "log_a_mpmath",
]

_EPS = np.finfo(float).eps
_MAX_TERMS = 1 << 17
_MAX_FRAC_TERMS = 1 << 15  # above this, fractional orders use the convexity bound


@lru_cache(maxsize=1)
def _default_orders() -> tuple[float, ...]:
    frac = [1.1 + 0.1 * k for k in range(9)] + [1.25, 1.5, 1.75, 2.5, 3.5, 4.5]
    ints = list(range(2, 257))
    tail = sorted({int(round(256 * 1.2**k)) for k in range(1, 22)})
    return tuple(sorted({round(a, 10) for a in frac} | set(ints) | set(tail)))


def default_orders() -> np.ndarray:
    """The default grid: 1.1-2 (step 0.1), every integer 2-256, geometric to ~1.1e4."""
    return np.array(_default_orders())


def _check_orders(orders: np.ndarray) -> np.ndarray:
    orders = np.asarray(orders, dtype=float).ravel()
    if orders.size and not (np.all(np.isfinite(orders)) and np.all(orders > 1.0)):
        raise ValueError(f"orders must be finite and > 1, got {orders!r}")
    return orders


def _logexpm1(x: np.ndarray) -> np.ndarray:
    """log(exp(x) - 1) for x > 0, without overflow."""
    return x + np.log(-np.expm1(-x))


def _segments(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(starts, row of each element, index of each element within its row)."""
    starts = np.cumsum(lengths) - lengths
    row = np.repeat(np.arange(lengths.size), lengths)
    return starts, row, np.arange(lengths.sum()) - starts[row]


def _log_a_int(sigma: float, q: float, orders: np.ndarray, block: int = 16) -> np.ndarray:
    """log A_alpha at integer orders >= 2 (positive-term expansion of A_alpha - 1).

    Terms are grouped in blocks of ``block`` indices; a block whose upper bound is below
    exp(-60) times the largest term is skipped (at most ~1e-22 of the sum per block).
    """
    a = orders.astype(np.int64)
    log_q, log_1q, two_s2 = math.log(q), math.log1p(-q), 2.0 * sigma**2
    lgf = gammaln(np.arange(a.max() + 1, dtype=float) + 1.0)

    def log_term(alpha: np.ndarray, i: np.ndarray) -> np.ndarray:
        lt = lgf[alpha] - lgf[i] - lgf[alpha - i] + i * log_q + (alpha - i) * log_1q
        return lt + _logexpm1(i * (i - 1.0) / two_s2)

    # Blocks [lo, hi] covering i = 2 .. alpha for each order.
    n_blocks = (a - 2) // block + 1
    b_start, b_row, b_idx = _segments(n_blocks)
    alpha_b = a[b_row]
    lo = 2 + b_idx * block
    hi = np.minimum(lo + block - 1, alpha_b)
    mode = np.clip(alpha_b // 2, lo, hi)
    bound = lgf[alpha_b] - lgf[mode] - lgf[alpha_b - mode]
    bound = np.maximum(
        bound,
        lgf[alpha_b] - lgf[np.minimum(mode + 1, hi)] - lgf[alpha_b - np.minimum(mode + 1, hi)],
    )
    bound += np.maximum(lo * log_q + (alpha_b - lo) * log_1q, hi * log_q + (alpha_b - hi) * log_1q)
    bound += _logexpm1(hi * (hi - 1.0) / two_s2)
    ends = np.maximum(log_term(alpha_b, lo), log_term(alpha_b, hi))
    best = np.maximum.reduceat(ends, b_start)
    keep = bound >= best[b_row] - 60.0
    lo, hi, k_row = lo[keep], hi[keep], b_row[keep]
    # Terms of the kept blocks.
    sizes = hi - lo + 1
    t_start, t_blk, t_idx = _segments(sizes)
    i = lo[t_blk] + t_idx
    row = k_row[t_blk]
    lt = log_term(a[row], i)
    # Rows are contiguous in `row` (blocks were generated order by order).
    r_start = np.flatnonzero(np.r_[True, row[1:] != row[:-1]])
    m = np.maximum.reduceat(lt, r_start)
    s = np.add.reduceat(np.exp(lt - np.repeat(m, np.diff(np.r_[r_start, lt.size]))), r_start)
    return np.logaddexp(0.0, m + np.log(s))


def _frac_series(
    sigma: float, q: float, alpha: np.ndarray, n_terms: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Signed MTZ series for each order: (log A, roundoff and tail bounds on log A)."""
    starts = np.cumsum(n_terms) - n_terms
    row = np.repeat(np.arange(alpha.size), n_terms)
    i = (np.arange(n_terms.sum()) - starts[row]).astype(float)
    al = alpha[row]
    j = al - i
    z0 = sigma**2 * (math.log1p(-q) - math.log(q)) + 0.5
    log_q, log_1q = math.log(q), math.log1p(-q)
    logc = gammaln(al + 1.0) - gammaln(i + 1.0) - gammaln(j + 1.0)
    n_neg = np.maximum(0.0, i - np.floor(al) - 1.0)
    sign = 1.0 - 2.0 * np.mod(n_neg, 2.0)
    two_s2 = 2.0 * sigma**2
    lt0 = logc + i * log_q + j * log_1q + (i * i - i) / two_s2 + log_ndtr((z0 - i) / sigma)
    lt1 = logc + j * log_q + i * log_1q + (j * j - j) / two_s2 + log_ndtr((j - z0) / sigma)
    m = np.maximum(np.maximum.reduceat(lt0, starts), np.maximum.reduceat(lt1, starts))
    mag = np.exp(lt0 - m[row]) + np.exp(lt1 - m[row])
    # Roundoff: each term's log carries an absolute error ~ eps * (size of its parts).
    scale = 1.0 + np.abs(logc) + np.abs((i * i - i) / two_s2) + np.abs((j * j - j) / two_s2)
    total = np.add.reduceat(sign * mag, starts)
    err = 8.0 * _EPS * np.add.reduceat(mag * scale, starts)
    last = starts + n_terms - 1
    total -= 0.5 * sign[last] * mag[last]  # average of the last two partial sums
    tail = mag[last] * (alpha + 3.0) / np.maximum(n_terms - 1.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_a = m + np.log(total)
        # errors relative to A, i.e. absolute errors of log A
        return log_a, err / total, tail / total


def _log_a_interp(sigma: float, q: float, orders: np.ndarray) -> np.ndarray:
    """Upper bound on log A_alpha at fractional orders: the chord between integer orders.

    log A is convex in alpha (a cumulant generating function), so on
    ``[floor(alpha), floor(alpha) + 1]`` it lies below its chord; ``log A_1 = 0``.
    """
    lo = np.floor(orders)
    ints = np.unique(np.concatenate([lo, lo + 1.0]))
    ints = ints[ints >= 2.0]
    table = dict(zip(ints.tolist(), _log_a_int(sigma, q, ints).tolist(), strict=True))
    table[1.0] = 0.0
    at_lo = np.array([table[v] for v in lo.tolist()])
    at_hi = np.array([table[v] for v in (lo + 1.0).tolist()])
    w = orders - lo
    return (1.0 - w) * at_lo + w * at_hi


def _log_a_frac(
    sigma: float, q: float, orders: np.ndarray, max_terms: int = _MAX_FRAC_TERMS
) -> np.ndarray:
    """log A_alpha at fractional orders (signed series, mpmath fallback; chord bound
    where the series would need more than ``max_terms`` terms)."""
    z0 = sigma**2 * (math.log1p(-q) - math.log(q)) + 0.5
    n0 = np.ceil(orders + abs(z0) + 8.0 * sigma).astype(np.int64) + 4
    n_terms = np.maximum(n0, 48)
    out = np.full(orders.shape, np.nan)
    big = n0 > max_terms
    if big.any():
        out[big] = _log_a_interp(sigma, q, orders[big])
    todo = np.flatnonzero(~big)
    while todo.size:
        log_a, err, tail = _frac_series(sigma, q, orders[todo], n_terms[todo])
        size = np.abs(np.where(np.isfinite(log_a), log_a, 0.0))
        ok_tail = tail <= 1e-13 * size + 1e-19
        reliable = np.isfinite(log_a) & (err >= 0) & (err <= 1e-7 * size + 1e-13)
        done = ok_tail & reliable
        # round up by the error bounds: the result is an upper bound, never below truth
        out[todo[done]] = log_a[done] + err[done] + tail[done]
        hopeless = ~done & (~reliable | (n_terms[todo] >= _MAX_TERMS))
        for k in todo[hopeless]:
            out[k] = log_a_mpmath(sigma, q, float(orders[k]))
        todo = todo[~done & ~hopeless]
        n_terms[todo] = np.minimum(n_terms[todo] * 4, _MAX_TERMS)
    return out


@lru_cache(maxsize=4096)
def log_a_mpmath(sigma: float, q: float, alpha: float, dps: int = 40) -> float:
    """log A_alpha by mpmath quadrature of ``A_alpha - 1`` (the slow, reliable path).

    The integrand ``phi_s(z) * expm1(alpha * log1p(q * expm1((2z - 1) / (2 s^2))))`` is
    integrated over breakpoints at the crossover z0 and the peak near z = alpha.
    """
    import mpmath

    with mpmath.workdps(dps):
        s, qq, al = mpmath.mpf(sigma), mpmath.mpf(q), mpmath.mpf(alpha)

        def f(z: mpmath.mpf) -> mpmath.mpf:
            inner = mpmath.log1p(qq * mpmath.expm1((2 * z - 1) / (2 * s**2)))
            return mpmath.npdf(z, 0, s) * mpmath.expm1(al * inner)

        z0 = s**2 * mpmath.log(1 / qq - 1) + mpmath.mpf(0.5) if q < 1 else mpmath.mpf(0)
        pts = {
            -40 * s,
            -8 * s,
            0,
            mpmath.mpf(0.5),
            1,
            z0,
            al - 8 * s,
            al - 2 * s,
            al,
            al + 2 * s,
            al + 8 * s,
            al + 40 * s,
        }
        grid = [-mpmath.inf] + sorted(pts) + [mpmath.inf]
        val = mpmath.quad(f, grid)
        return float(mpmath.log1p(val))


@lru_cache(maxsize=256)
def _sg_rdp_cached(
    sigma: float, q: float, orders: tuple[float, ...], max_terms: int = _MAX_FRAC_TERMS
) -> np.ndarray:
    alpha = np.array(orders, dtype=float)
    if q == 1.0:
        return alpha / (2.0 * sigma**2)
    log_a = np.empty_like(alpha)
    is_int = alpha == np.round(alpha)
    if is_int.any():
        log_a[is_int] = _log_a_int(sigma, q, alpha[is_int])
    if (~is_int).any():
        log_a[~is_int] = _log_a_frac(sigma, q, alpha[~is_int], max_terms)
    out = log_a / (alpha - 1.0)
    out.setflags(write=False)
    return out


def subsampled_gaussian_rdp(
    noise_multiplier: float,
    sample_rate: float,
    orders: np.ndarray | list[float],
    max_series_terms: int = _MAX_FRAC_TERMS,
) -> np.ndarray:
    """Per-step RDP of the Poisson-subsampled Gaussian at each order.

    Mironov, Talwar, Zhang 2019 (arXiv:1908.10530), Sec. 3.3; for ``sample_rate == 1``
    the Gaussian mechanism's ``alpha / (2 sigma^2)`` (Mironov 2017, Prop. 7). Exact at
    integer orders. A fractional order whose series would need more than
    ``max_series_terms`` terms (about ``alpha + sigma^2 log(1/q - 1) + 8 sigma``, so
    large sigma) gets a rigorous upper bound instead: ``(alpha - 1) RDP(alpha)`` is
    convex in alpha (Mironov 2017; Wang, Balle, Kasiviswanathan 2019), so its linear
    interpolation between the neighbouring integer orders is never below the truth.
    """
    sigma = check_positive(noise_multiplier, "noise_multiplier")
    q = check_sample_rate(sample_rate)
    alpha = _check_orders(np.asarray(orders, dtype=float))
    terms = int(max_series_terms)
    if terms < 1:
        raise ValueError(f"max_series_terms must be >= 1, got {max_series_terms!r}")
    return np.array(_sg_rdp_cached(sigma, q, tuple(alpha.tolist()), terms))


def laplace_rdp(scale: float, orders: np.ndarray | list[float]) -> np.ndarray:
    """RDP of the Laplace mechanism with L1 sensitivity 1 (Mironov 2017, Prop. 6)."""
    b = check_positive(scale, "scale")
    a = _check_orders(np.asarray(orders, dtype=float))
    first = np.log(a / (2 * a - 1)) + (a - 1) / b
    second = np.log((a - 1) / (2 * a - 1)) - a / b
    return np.logaddexp(first, second) / (a - 1)


def _leaf_rdp(event: PrivacyEvent, orders: np.ndarray, do_compute: bool) -> np.ndarray | None:
    """RDP of one non-composite event, or raise UnsupportedEventError (innermost event)."""
    from privlab.accounting.relative_gaussian import relative_gaussian_rdp

    name = "RDPAccountant"
    if isinstance(event, NoOpEvent):
        return np.zeros_like(orders) if do_compute else None
    if isinstance(event, NoPrivacyEvent):
        return np.full_like(orders, np.inf) if do_compute else None
    if isinstance(event, GaussianEvent):
        return orders / (2 * event.noise_multiplier**2) if do_compute else None
    if isinstance(event, LaplaceEvent):
        return laplace_rdp(event.scale, orders) if do_compute else None
    if isinstance(event, RelativeGaussianEvent):
        return relative_gaussian_rdp(event, orders) if do_compute else None
    if isinstance(event, PoissonSampledEvent):
        q, inner = event.sample_rate, event.event
        while isinstance(inner, PoissonSampledEvent):  # Poisson of Poisson is Poisson
            q, inner = q * inner.sample_rate, inner.event
        if isinstance(inner, GaussianEvent):
            if not do_compute:
                return None
            return subsampled_gaussian_rdp(inner.noise_multiplier, q, orders)
        if isinstance(inner, (NoOpEvent, NoPrivacyEvent)):
            return _leaf_rdp(inner, orders, do_compute)
        if q == 1.0 and not isinstance(inner, (ComposedEvent, SelfComposedEvent)):
            return _leaf_rdp(inner, orders, do_compute)
        reason = "only Poisson-subsampled Gaussian events are supported"
        raise UnsupportedEventError(name, event, reason)
    raise UnsupportedEventError(name, event)


def check_rdp_event(event: PrivacyEvent) -> None:
    """Raise UnsupportedEventError unless every leaf of ``event`` has an RDP curve."""
    for leaf, _ in flatten(event):
        _leaf_rdp(leaf, np.array([2.0]), do_compute=False)


def rdp_order_limit(event: PrivacyEvent) -> float:
    """Supremum of the orders at which ``event`` can have finite RDP (inf if none).

    Only the Relative Gaussian mechanism has one (``1 / (2 Delta - Delta^2)``); the
    accountant searches below it when it is under (or inside) its grid of orders.
    """
    from privlab.accounting.relative_gaussian import max_order

    limit = math.inf
    for leaf, _ in flatten(event):
        while isinstance(leaf, PoissonSampledEvent):
            leaf = leaf.event
        if isinstance(leaf, RelativeGaussianEvent):
            limit = min(limit, max_order(leaf.relative_sensitivity))
    return limit


def rdp_of_event(event: PrivacyEvent, orders: np.ndarray | list[float]) -> np.ndarray:
    """RDP curve of ``event`` (compositions add, Mironov 2017 Prop. 1) at ``orders``."""
    alpha = _check_orders(np.asarray(orders, dtype=float))
    total = np.zeros_like(alpha)
    for leaf, count in flatten(event):
        rdp = _leaf_rdp(leaf, alpha, do_compute=True)
        assert rdp is not None
        with np.errstate(invalid="ignore"):
            total = total + count * rdp
    return np.where(np.isnan(total), np.inf, total)
