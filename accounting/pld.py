"""Privacy loss distributions (PLD): pessimistic discretisation and FFT composition.

A PLD is the law of the privacy loss L = log(dP/dQ)(X), X ~ P, of a dominating pair
(P, Q); composition adds independent losses (Meiser & Mohammadi, CCS 2018; Koskela,
Jalko, Honkela, AISTATS 2020), and ``delta(eps) = P(L = inf) + E[(1 - e^(eps - L))_+]``.

Discretisation (connect-the-dots, Doroshenko, Ghazi, Kamath, Kumar, Manurangsi,
PETS 2022): losses are put on the grid ``k * dv``. The P-mass of L in each cell
``(a, b]`` is split between a and b so that both the P-mass and the Q-mass
(``E_P[e^-L]``) are preserved: the part sent to a is ``(e^b Q(I) - P(I)) / (e^dv - 1)``.
The resulting hockey-stick curve interpolates the true one at the grid points and lies
above it in between, so the discrete PLD dominates the mechanism (an upper bound on
delta, kept through composition). Mass below the grid is moved up to its first point
and mass above it to +inf (both pessimistic).

Composition of the per-step PMFs is one FFT product on a window chosen from Chernoff
tail bounds; the mass the bound leaves out of the top of the window is added to the
+inf mass, so the composed PLD is still an upper bound (up to floating-point roundoff of
the FFT, ~1e-16 per cell).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.fft
import scipy.signal
from scipy.special import log_ndtr, ndtr

__all__ = [
    "DiscretePLD",
    "PLDRangeError",
    "subsampled_gaussian_pld",
    "laplace_pld",
    "compose_plds",
    "analytic_gaussian_delta",
    "analytic_gaussian_epsilon",
]


class PLDRangeError(ValueError):
    """The privacy losses do not fit on the PLD grid (coarser ``dv`` may help).

    ``factor``: how much coarser the grid must be at least (inf if no grid can do).
    """

    def __init__(self, message: str, factor: float = 2.0) -> None:
        super().__init__(message)
        self.factor = factor


_TAIL_Z = 10.5  # Phi(-10.5) ~ 4e-26: mass beyond is moved pessimistically
_MAX_WINDOW = 1 << 23


@dataclass(frozen=True)
class DiscretePLD:
    """PMF of the privacy loss on the grid ``(offset + k) * dv`` plus a mass at +inf."""

    dv: float
    offset: int
    probs: np.ndarray
    inf_mass: float

    @property
    def losses(self) -> np.ndarray:
        return (self.offset + np.arange(self.probs.size)) * self.dv

    def delta(self, epsilon: float) -> float:
        """Hockey-stick divergence ``delta(epsilon)`` of this PLD."""
        losses = self.losses
        above = losses > epsilon
        with np.errstate(over="ignore"):
            gain = -np.expm1(epsilon - losses[above])
        return float(min(1.0, self.inf_mass + np.dot(self.probs[above], gain)))

    def epsilon(self, delta: float) -> float:
        """Smallest epsilon >= 0 with ``delta(epsilon) <= delta`` (inf if none)."""
        if self.inf_mass > delta:
            return math.inf
        losses, probs = self.losses, self.probs
        pos = losses > 0
        losses, probs = losses[pos], probs[pos]
        if losses.size == 0:
            return 0.0
        # Suffix sums over the equally spaced grid: for eps in [l_{m-1}, l_m),
        # delta(eps) = inf + S1[m] - e^{eps - l_m} R[m], R[m] = sum_{j>=m} p_j e^{l_m - l_j}
        # (R by the stable recurrence R[m] = p_m + e^{-dv} R[m+1]; no overflow at any eps).
        s1 = np.cumsum(probs[::-1])[::-1]
        r = scipy.signal.lfilter([1.0], [1.0, -math.exp(-self.dv)], probs[::-1])[::-1]
        if self.inf_mass + s1[0] - math.exp(-losses[0]) * r[0] <= delta:  # delta(0) is fine
            return 0.0
        # delta at the grid points l_{m-1} (m >= 1), using suffix m.
        d_grid = self.inf_mass + s1[1:] - math.exp(-self.dv) * r[1:]
        ok = np.flatnonzero(d_grid <= delta)
        if ok.size == 0:  # only the last grid point is safe
            return float(losses[-1])
        m = int(ok[0]) + 1  # smallest grid point l_{m-1} with delta <= target
        # Solve inside [l_{m-2}, l_{m-1}] (or [0, l_0] when m == 1) with suffix m - 1.
        num = self.inf_mass + s1[m - 1] - delta
        top = float(losses[m - 1])
        eps = top + math.log(num / r[m - 1]) if num > 0 and r[m - 1] > 0 else top
        lower = float(losses[m - 2]) if m >= 2 else 0.0
        return float(min(max(eps, lower), top))


def _interval_prob(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Phi(hi) - Phi(lo) for lo <= hi, accurate in both tails."""
    upper = lo > 0
    out = np.empty_like(lo)
    # Upper tail: Phi(-lo) - Phi(-hi) in log space.
    lu, hu = log_ndtr(-lo[upper]), log_ndtr(-hi[upper])
    out[upper] = np.exp(lu) * -np.expm1(hu - lu)
    ll, hl = log_ndtr(hi[~upper]), log_ndtr(lo[~upper])
    out[~upper] = np.exp(ll) * -np.expm1(hl - ll)
    return np.where(hi > lo, out, 0.0)


def _ctd(losses: np.ndarray, p_cell: np.ndarray, d_cell: np.ndarray, dv: float) -> np.ndarray:
    """Connect-the-dots masses at the grid points from cell masses.

    ``p_cell[c]`` = P(L in (l_c, l_{c+1}]), ``d_cell[c]`` = e^{l_{c+1}} Q(cell) - P(cell).
    Returns masses at ``losses`` (one more entry than cells).
    """
    to_low = np.clip(d_cell / math.expm1(dv), 0.0, p_cell)
    out = np.zeros(losses.size)
    out[:-1] += to_low
    out[1:] += p_cell - to_low
    return out


def _x_of_loss_remove(eps: np.ndarray, sigma: float, q: float) -> np.ndarray:
    """x with L(x) = eps for the remove direction (eps > log(1 - q))."""
    with np.errstate(divide="ignore", invalid="ignore"):
        big = eps > 1.0
        val = np.where(
            big,
            eps + np.log1p(-(1 - q) * np.exp(-np.where(big, eps, 0.0))),
            np.log(np.expm1(np.where(big, 0.0, eps)) + q),
        )
        return sigma**2 * (val - math.log(q)) + 0.5


def _x_of_loss_add(eps: np.ndarray, sigma: float, q: float) -> np.ndarray:
    """x with L(x) = eps for the add direction (eps < -log(1 - q))."""
    with np.errstate(divide="ignore", invalid="ignore"):
        val = np.log(np.expm1(-eps) + q)
        return sigma**2 * (val - math.log(q)) + 0.5


def _log_mixture(x: float, q: float) -> float:
    """``log(1 + q (e^x - 1))`` without overflow for large x."""
    if x < 700.0:
        return math.log1p(q * math.expm1(x))
    return x + math.log(q) if q == 1.0 else float(np.logaddexp(x + math.log(q), math.log1p(-q)))


def _grid_range(lo_eps: float, hi_eps: float, dv: float) -> tuple[int, int]:
    """Grid indices covering [lo_eps, hi_eps]; ValueError (before allocating anything)
    when that takes more than the composition window holds: the caller coarsens dv."""
    if not (math.isfinite(lo_eps) and math.isfinite(hi_eps)):
        raise PLDRangeError(
            f"the privacy loss range [{lo_eps:g}, {hi_eps:g}] is not finite", math.inf
        )
    points = (hi_eps - lo_eps) / dv
    if points > _MAX_WINDOW or max(abs(lo_eps), abs(hi_eps)) / dv > 2.0**60:
        raise PLDRangeError(
            f"the privacy loss spans [{lo_eps:.3g}, {hi_eps:.3g}]: {points:.3g} grid points "
            f"of width {dv:g}, more than {_MAX_WINDOW}",
            max(points / _MAX_WINDOW, max(abs(lo_eps), abs(hi_eps)) / dv / 2.0**60),
        )
    return math.floor(lo_eps / dv), math.ceil(hi_eps / dv)


@lru_cache(maxsize=64)
def subsampled_gaussian_pld(sigma: float, q: float, dv: float, direction: str) -> DiscretePLD:
    """Connect-the-dots PLD of the Poisson-subsampled Gaussian (sensitivity 1).

    ``direction="remove"``: P = (1-q) N(0, s^2) + q N(1, s^2), Q = N(0, s^2);
    ``"add"``: P = N(0, s^2), Q = the mixture. For q = 1 both are the Gaussian
    mechanism. Cell masses come from Gaussian CDF differences in log space.
    """
    s = sigma
    if direction == "remove" or q == 1.0:
        if q == 1.0:
            lo_eps = (1.0 - _TAIL_Z * s - 0.5) / s**2
        else:
            lo_eps = math.log1p(-q)
        hi_eps = _log_mixture((2 * (1 + _TAIL_Z * s) - 1) / (2 * s**2), q)
        k_lo, k_hi = _grid_range(lo_eps, hi_eps, dv)
        losses = np.arange(k_lo, k_hi + 1) * dv
        x = _x_of_loss_remove(losses, s, q)
        if q < 1.0:
            x[losses <= math.log1p(-q)] = -np.inf
        xa, xb = x[:-1], x[1:]
        # P = (1-q) N(0) + q N(1) on (xa, xb]; e^b Q - P = q [e^{(xb-1/2)/s^2} dPhi0 - dPhi1]
        d0 = _interval_prob(xa / s, xb / s)
        d1 = _interval_prob((xa - 1) / s, (xb - 1) / s)
        p_cell = (1 - q) * d0 + q * d1
        with np.errstate(over="ignore", divide="ignore"):  # log space: no inf * 0
            d_cell = q * (np.exp((xb - 0.5) / s**2 + np.log(d0)) - d1)
        probs = _ctd(losses, p_cell, d_cell, dv)
        below = (1 - q) * ndtr(x[0] / s) + q * ndtr((x[0] - 1) / s) if q == 1.0 else 0.0
        probs[0] += below
        inf_mass = (1 - q) * ndtr(-x[-1] / s) + q * ndtr(-(x[-1] - 1) / s)
        return DiscretePLD(dv, k_lo, probs, float(inf_mass))
    if direction != "add":
        raise ValueError(f"direction must be 'remove' or 'add', got {direction!r}")
    hi_eps = -math.log1p(-q)
    lo_eps = -_log_mixture((2 * _TAIL_Z * s - 1) / (2 * s**2), q)
    k_lo, k_hi = _grid_range(lo_eps, hi_eps, dv)
    losses = np.arange(k_lo, k_hi + 1) * dv
    x = _x_of_loss_add(losses, s, q)
    x[losses >= hi_eps] = -np.inf
    # L in (a, b]  <=>  X in [x_b, x_a); P = N(0), Q = (1-q) N(0) + q N(1).
    xa, xb = x[:-1], x[1:]
    d0 = _interval_prob(xb / s, xa / s)
    d1 = _interval_prob((xb - 1) / s, (xa - 1) / s)
    eb = np.exp(losses[1:])
    with np.errstate(over="ignore", invalid="ignore"):
        d_cell = q * eb * (d1 - np.exp((xb - 0.5) / s**2) * d0)
    # cells reaching past the largest loss -log(1-q): no x_b, use the direct form
    d_cell = np.where(np.isfinite(xb), d_cell, (eb * (1 - q) - 1) * d0 + eb * q * d1)
    probs = _ctd(losses, d0, d_cell, dv)
    probs[0] += ndtr(-x[0] / s)  # P(L <= lowest grid loss), moved up
    return DiscretePLD(dv, k_lo, probs, 0.0)


@lru_cache(maxsize=64)
def laplace_pld(scale: float, dv: float) -> DiscretePLD:
    """Connect-the-dots PLD of the Laplace mechanism (L1 sensitivity 1; symmetric).

    P = Lap(0, b), Q = Lap(1, b): L = (|x - 1| - |x|) / b in [-1/b, 1/b], with atoms at
    the two ends (P-mass 1/2 at 1/b and e^{-1/b}/2 at -1/b).
    """
    b = scale
    k_lo, k_hi = _grid_range(-1 / b, 1 / b, dv)
    losses = np.arange(k_lo, k_hi + 1) * dv
    la, lb = losses[:-1], losses[1:]
    # continuous part: x in (0, 1), L = (1 - 2x)/b; L in (la, lb] <=> x in [xb, xa)
    xa = np.clip((1 - la * b) / 2, 0.0, 1.0)
    xb = np.clip((1 - lb * b) / 2, 0.0, 1.0)
    p_cell = 0.5 * (np.exp(-xb / b) - np.exp(-xa / b))
    q_cell = 0.5 * (np.exp((xa - 1) / b) - np.exp((xb - 1) / b))
    # atoms
    for loss, p_atom, q_atom in (
        (1 / b, 0.5, 0.5 * math.exp(-1 / b)),
        (-1 / b, 0.5 * math.exp(-1 / b), 0.5),
    ):
        c = min(max(int(math.ceil(loss / dv)) - k_lo - 1, 0), la.size - 1)
        p_cell[c] += p_atom
        q_cell[c] += q_atom
    probs = _ctd(losses, p_cell, np.exp(lb) * q_cell - p_cell, dv)
    return DiscretePLD(dv, k_lo, probs, 0.0)


def _chernoff_window(
    parts: list[tuple[DiscretePLD, int]], log_tail: float
) -> tuple[int, int, float]:
    """Grid indices [lo, hi] holding the composed finite loss up to e^log_tail each side.

    Chernoff: P(S >= h) <= exp(sum_k c_k log E[e^{t L_k}] - t h) for any t > 0 (and the
    mirror bound below). The moment generating functions are exact, or on large grids
    bounded above (blocks of points moved to their largest, resp. smallest, loss); t is
    tried on a small grid around the Gaussian-optimal value. Returns (lo, hi, bound on
    the finite mass above hi).
    """
    mean = var = 0.0
    for pld, count in parts:
        w = pld.probs / max(pld.probs.sum(), 1e-300)
        m = float(np.dot(w, pld.losses))
        mean += count * m
        var += count * float(np.dot(w, (pld.losses - m) ** 2))
    t_star = math.sqrt(2.0 * -log_tail / max(var, 1e-300))
    ts = t_star * np.geomspace(0.01, 3.0, 14)
    up = np.zeros(ts.size)
    down = np.zeros(ts.size)
    lo_sum = hi_sum = 0
    for pld, count in parts:
        keep = pld.probs > 0
        p, losses = pld.probs[keep], pld.losses[keep]
        top, bottom = losses[-1], losses[0]
        p_hi = p_lo = p
        l_hi = l_lo = losses
        if p.size > 1 << 15:  # blocks of grid points at their largest (smallest) loss:
            edges = np.arange(0, p.size, -(-p.size // 4096))  # an upper bound on each MGF
            p_hi = p_lo = np.add.reduceat(p, edges)
            l_hi = np.maximum.reduceat(losses, edges)
            l_lo = np.minimum.reduceat(losses, edges)
        # log E[e^{tL}] = t*top + log sum p e^{t (L - top)}: no overflow
        up += count * (ts * top + np.log(np.exp(np.outer(ts, l_hi - top)) @ p_hi))
        down += count * (-ts * bottom + np.log(np.exp(np.outer(ts, bottom - l_lo)) @ p_lo))
        lo_sum += count * pld.offset
        hi_sum += count * (pld.offset + pld.probs.size - 1)
    dv = parts[0][0].dv
    h_up = float(np.min((up - log_tail) / ts))  # exp(up(t) - t h) <= e^log_tail
    h_down = float(np.max((log_tail - down) / ts))  # exp(down(t) + t h) <= e^log_tail
    hi = min(hi_sum, math.ceil(h_up / dv) + 1)
    lo = max(lo_sum, math.floor(h_down / dv) - 1)
    above = 0.0 if hi == hi_sum else math.exp(log_tail)
    return lo, max(hi, lo), above


def compose_plds(parts: list[tuple[DiscretePLD, int]], log_tail: float = -55.0) -> DiscretePLD:
    """PLD of the composition of ``count`` copies of each PLD (one FFT product).

    The window comes from Chernoff bounds (mass outside < e^log_tail on each side);
    circular wrap-around of the tails is bounded by the same amount, and the upper
    tail bound is added to the +inf mass.
    """
    parts = [(p, c) for p, c in parts if c > 0]
    if not parts:
        raise ValueError("nothing to compose")
    dv = parts[0][0].dv
    if len(parts) == 1 and parts[0][1] == 1:
        return parts[0][0]
    lo, hi, above = _chernoff_window(parts, log_tail)
    width = hi - lo + 1
    if width > _MAX_WINDOW:
        raise PLDRangeError(
            f"the composed PLD needs {width} grid points; increase value_discretization_interval",
            width / _MAX_WINDOW,
        )
    n = scipy.fft.next_fast_len(width, real=True)
    spectrum = None
    log_finite = 0.0
    for pld, count in parts:
        pos = (pld.offset + np.arange(pld.probs.size)) % n
        folded = np.bincount(pos, weights=pld.probs, minlength=n)
        f = scipy.fft.rfft(folded)
        f = f**count if count > 1 else f
        spectrum = f if spectrum is None else spectrum * f
        log_finite += count * math.log1p(-pld.inf_mass) if pld.inf_mass < 1 else -math.inf
    out = scipy.fft.irfft(spectrum, n)
    out = np.roll(out, -(lo % n))[:width]
    out = np.maximum(out, 0.0)
    inf_mass = min(1.0, -math.expm1(log_finite) + above)
    return DiscretePLD(dv, lo, out, inf_mass)


def analytic_gaussian_delta(sigma: float, epsilon: float) -> float:
    """Exact delta(epsilon) of the Gaussian mechanism, sensitivity 1 (Balle & Wang 2018, Thm 8).

    ``delta = Phi(1/(2 s) - eps s) - e^eps Phi(-1/(2 s) - eps s)``, evaluated in log space.
    """
    a, b = 0.5 / sigma - epsilon * sigma, -0.5 / sigma - epsilon * sigma
    la, lb = log_ndtr(a), epsilon + log_ndtr(b)
    if lb >= la:  # delta <= 0 up to roundoff (tiny sigma: huge, cancelling terms)
        return 0.0
    return float(max(0.0, math.exp(la) * -math.expm1(lb - la)))


def analytic_gaussian_epsilon(sigma: float, delta: float) -> float:
    """Smallest epsilon >= 0 with ``analytic_gaussian_delta(sigma, eps) <= delta``.

    Bisection to ~1e-12 relative, returning the upper end (one-sided).
    """
    if analytic_gaussian_delta(sigma, 0.0) <= delta:
        return 0.0
    lo, hi = 0.0, 1.0
    while analytic_gaussian_delta(sigma, hi) > delta:
        lo, hi = hi, 2 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if analytic_gaussian_delta(sigma, mid) > delta:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * hi:
            break
    return hi
