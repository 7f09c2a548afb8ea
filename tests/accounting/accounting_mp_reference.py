"""Independent high-precision references for the accounting tests (mpmath, scipy).

Written separately from the library code: integer orders use the plain binomial sum of
A_alpha at 50 digits, fractional orders the tanh-sinh quadrature of the defining
integral E_{N(0, s^2)}[(1 - q + q exp((2z - 1) / (2 s^2)))^alpha].
"""

from __future__ import annotations

import math

import mpmath


def log_a(sigma: float, q: float, alpha: float, dps: int = 50) -> float:
    """log A_alpha of the Poisson-subsampled Gaussian (Mironov, Talwar, Zhang 2019)."""
    with mpmath.workdps(dps):
        s, qq = mpmath.mpf(sigma), mpmath.mpf(q)
        if float(alpha).is_integer():
            a = int(alpha)
            total = mpmath.fsum(
                mpmath.binomial(a, i)
                * qq**i
                * (1 - qq) ** (a - i)
                * mpmath.exp(mpmath.mpf(i * i - i) / (2 * s**2))
                for i in range(a + 1)
            )
            return float(mpmath.log(total))
        al = mpmath.mpf(alpha)

        def f(z):
            mix = 1 - qq + qq * mpmath.exp((2 * z - 1) / (2 * s**2))
            return mpmath.npdf(z, 0, s) * mix**al

        pts = sorted(
            {
                -20 * s,
                0,
                mpmath.mpf(1) / 2,
                1,
                al,
                al + 20 * s,
                s**2 * mpmath.log(1 / qq - 1) + mpmath.mpf(1) / 2 if q < 1 else 0,
            }
        )
        return float(mpmath.log(mpmath.quad(f, [-mpmath.inf, *pts, mpmath.inf])))


def rdp(sigma: float, q: float, alpha: float) -> float:
    """Per-step RDP at order alpha."""
    if q == 1.0:
        return alpha / (2 * sigma**2)
    return log_a(sigma, q, alpha) / (alpha - 1)


def improved_epsilon(total_rdp: float, alpha: float, delta: float) -> float:
    """Balle et al. 2020 Thm 21, written out independently."""
    return max(
        0.0,
        total_rdp
        + math.log((alpha - 1) / alpha)
        - (math.log(delta) + math.log(alpha)) / (alpha - 1),
    )


def analytic_gaussian_epsilon(sigma: float, delta: float) -> float:
    """Exact epsilon of the Gaussian mechanism (Balle & Wang 2018), 50-digit bisection."""
    with mpmath.workdps(50):
        s = mpmath.mpf(sigma)

        def d(eps):
            return mpmath.ncdf(1 / (2 * s) - eps * s) - mpmath.exp(eps) * mpmath.ncdf(
                -1 / (2 * s) - eps * s
            )

        lo, hi = mpmath.mpf(0), mpmath.mpf(1)
        while d(hi) > delta:
            hi *= 2
        for _ in range(200):
            mid = (lo + hi) / 2
            if d(mid) > delta:
                lo = mid
            else:
                hi = mid
        return float(hi)
