"""Renyi DP of the Relative Gaussian mechanism (Hendrikx, Mangold, Bellet, AISTATS 2024).

The mechanism releases ``g + N(0, s(g)^2 I_d)`` with ``s(g) = k * S(g)`` where
``S(g) = Delta * ||g|| + R`` bounds the sensitivity at g (relative L2 sensitivity,
arXiv:2308.15250). In units of S(g), neighbouring outputs differ in mean by at most 1
and, by the triangle inequality, in noise std by a ratio ``r`` in ``[1 - Delta, 1 + Delta]``
(for the pure and the affine form alike, so the RDP does not depend on R).

The RDP at order alpha is the worst case, over r and over both directions, of the
closed-form Renyi divergence between isotropic Gaussians with different variances
(e.g. Gil, Alajaji, Linder 2013; see ``shared/reference/rgm-gossip-network-dp.md`` 1.4):

    D_a(N(m1, s1^2 I_d) || N(m2, s2^2 I_d))
        = a ||m1 - m2||^2 / (2 s_a^2) + d [ln(s2 / s1) + ln(s2^2 / s_a^2) / (2 (a - 1))],

with ``s_a^2 = a s2^2 + (1 - a) s1^2``; finite only while ``s_a^2 > 0`` for every r, that
is for ``a < 1 / (2 Delta - Delta^2)``. Orders at or beyond that bound get ``inf`` (they
are excluded from the conversion, never NaN).

Note: the paper's own theorem was not available to us; this is the first-principles
worst case, which is tight for the stated assumption.
"""

from __future__ import annotations

import math

import numpy as np

from privlab.accounting.events import RelativeGaussianEvent

__all__ = ["max_order", "relative_gaussian_rdp", "gaussian_renyi_divergence"]


def max_order(relative_sensitivity: float) -> float:
    """Supremum of the orders with finite RDP: ``1 / (2 Delta - Delta^2)`` (inf if 0)."""
    d = float(relative_sensitivity)
    return math.inf if d == 0.0 else 1.0 / (2.0 * d - d * d)


def gaussian_renyi_divergence(
    alpha: np.ndarray | float,
    mean_shift: float,
    s1: np.ndarray | float,
    s2: np.ndarray | float,
    dimension: int = 1,
) -> np.ndarray:
    """``D_alpha(N(m1, s1^2 I_d) || N(m2, s2^2 I_d))`` with ``||m1 - m2|| = mean_shift``.

    Closed form (Gil, Alajaji, Linder 2013, Table 2); ``inf`` where
    ``alpha s2^2 + (1 - alpha) s1^2 <= 0``.
    """
    a = np.asarray(alpha, dtype=float)
    s1 = np.asarray(s1, dtype=float)
    s2 = np.asarray(s2, dtype=float)
    var_a = a * s2**2 + (1.0 - a) * s1**2
    with np.errstate(divide="ignore", invalid="ignore"):
        out = a * mean_shift**2 / (2.0 * var_a) + dimension * (
            np.log(s2 / s1) + np.log(s2**2 / var_a) / (2.0 * (a - 1.0))
        )
    return np.where(var_a > 0, out, np.inf)


def _worst_case(alpha: np.ndarray, k: float, delta: float, d: int, r: np.ndarray) -> np.ndarray:
    """max over ratios r (columns) and both directions, for each order (rows)."""
    a = alpha[:, None]
    forward = gaussian_renyi_divergence(a, 1.0, k, k * r[None, :], d)
    backward = gaussian_renyi_divergence(a, 1.0, k * r[None, :], k, d)
    return np.maximum(forward, backward)


def relative_gaussian_rdp(
    event: RelativeGaussianEvent, orders: np.ndarray | list[float], grid: int = 2001
) -> np.ndarray:
    """Per-release RDP of the Relative Gaussian mechanism at each order.

    Worst case over the std ratio r in [1 - Delta, 1 + Delta]: a grid of ``grid``
    points, then a 201-point zoom around the best grid point (the maximiser is usually
    an endpoint). Orders ``>= max_order(Delta)`` give ``inf``.
    """
    alpha = np.asarray(orders, dtype=float).ravel()
    k, delta, d = event.noise_multiplier, event.relative_sensitivity, event.dimension
    out = np.full(alpha.shape, np.inf)
    valid = alpha < max_order(delta)
    if not valid.any():
        return out
    a = alpha[valid]
    if delta == 0.0:
        out[valid] = a / (2.0 * k * k)
        return out
    r = np.linspace(1.0 - delta, 1.0 + delta, grid)
    values = _worst_case(a, k, delta, d, r)
    best = np.argmax(values, axis=1)
    step = r[1] - r[0]
    zoom = r[best][:, None] + np.linspace(-step, step, 201)[None, :]
    zoom = np.clip(zoom, 1.0 - delta, 1.0 + delta)
    fine = np.maximum(
        gaussian_renyi_divergence(a[:, None], 1.0, k, k * zoom, d),
        gaussian_renyi_divergence(a[:, None], 1.0, k * zoom, k, d),
    )
    out[valid] = np.maximum(values.max(axis=1), fine.max(axis=1))
    return out
