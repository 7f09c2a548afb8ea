"""Renyi DP -> (epsilon, delta) conversions.

* ``"improved"`` (default): Balle, Berrada, De, Ghalebikesabi, Hayes, Brendan McMahan
  2020, "Hypothesis testing interpretations and Renyi differential privacy", Thm 21
  (the same expression as Canonne, Kamath, Steinke 2020, Prop. 12):
  ``eps = rdp + log((a - 1) / a) - (log(delta) + log(a)) / (a - 1)``.
* ``"classic"``: Mironov 2017, Prop. 3: ``eps = rdp + log(1 / delta) / (a - 1)``.

Both are valid at every order, so we minimise over the orders given. We also use the
total-variation shortcut of dp-accounting: RDP(a) >= KL and Pinsker/Bretagnolle-Huber
give TV <= sqrt(1 - exp(-rdp)), so the mechanism is (0, delta)-DP once delta exceeds it.
"""

from __future__ import annotations

import numpy as np

from privlab.errors import PrivlabError

__all__ = ["CONVERSIONS", "epsilon_curve", "log_delta_curve", "rdp_to_epsilon", "rdp_to_delta"]

CONVERSIONS = ("improved", "classic")


def _check_method(method: str) -> str:
    if method not in CONVERSIONS:
        raise PrivlabError(f"conversion must be one of {', '.join(CONVERSIONS)}, got {method!r}")
    return method


def epsilon_curve(
    orders: np.ndarray, rdp: np.ndarray, delta: float, method: str = "improved"
) -> np.ndarray:
    """epsilon(a) for each order (inf where the RDP is infinite), clamped at 0."""
    _check_method(method)
    a = np.asarray(orders, dtype=float)
    r = np.asarray(rdp, dtype=float)
    with np.errstate(invalid="ignore", over="ignore"):
        if method == "improved":
            eps = r + np.log1p(-1.0 / a) - (np.log(delta) + np.log(a)) / (a - 1.0)
        else:
            eps = r - np.log(delta) / (a - 1.0)
        tv_ok = -np.expm1(-r) < delta * delta  # delta above the TV bound: epsilon = 0
    eps = np.where(np.isfinite(r), np.maximum(eps, 0.0), np.inf)
    return np.where(tv_ok & np.isfinite(r), 0.0, eps)


def rdp_to_epsilon(
    orders: np.ndarray, rdp: np.ndarray, delta: float, method: str = "improved"
) -> tuple[float, float]:
    """(smallest epsilon over the orders, the order attaining it)."""
    eps = epsilon_curve(orders, rdp, delta, method)
    k = int(np.argmin(eps))
    return float(eps[k]), float(np.asarray(orders, dtype=float)[k])


def log_delta_curve(
    orders: np.ndarray, rdp: np.ndarray, epsilon: float, method: str = "improved"
) -> np.ndarray:
    """log delta(a) at ``epsilon`` for each order: the inverted conversion and the TV bound."""
    _check_method(method)
    a = np.asarray(orders, dtype=float)
    r = np.asarray(rdp, dtype=float)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        if method == "improved":
            log_delta = (a - 1.0) * (r - epsilon + np.log1p(-1.0 / a)) - np.log(a)
        else:
            log_delta = (a - 1.0) * (r - epsilon)
        log_delta = np.minimum(log_delta, 0.5 * np.log(-np.expm1(-r)))
    return np.where(np.isfinite(r), np.minimum(log_delta, 0.0), 0.0)


def rdp_to_delta(
    orders: np.ndarray, rdp: np.ndarray, epsilon: float, method: str = "improved"
) -> tuple[float, float]:
    """(smallest delta over the orders at ``epsilon``, the order attaining it)."""
    log_delta = log_delta_curve(orders, rdp, epsilon, method)
    k = int(np.argmin(log_delta))
    return float(np.exp(log_delta[k])), float(np.asarray(orders, dtype=float)[k])
