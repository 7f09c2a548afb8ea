"""Renyi DP accountant: exact per-event RDP curves, composed and converted.

Composition adds RDP curves (Mironov 2017, Prop. 1). The curve is evaluated on a
default grid of orders (1.1 to ~1.2e4), the grid is extended when the best order sits
at its edge (down towards 1, up to 1e6), and the best order is then refined over the
reals between its grid neighbours (16-point zooms until the bracket is 1e-6 wide: the
RDP curve of a subsampled Gaussian can turn sharply, e.g. near order 2 * z0, so integer
orders alone can miss the optimum by ~0.2%). When the ledger's RDP is finite only below
an order limit (the Relative Gaussian mechanism: ``1 / (2 Delta - Delta^2)``, which for
Delta >= ~0.7 lies below the whole default grid), orders inside ``(1, limit)`` are added
first: geometric in ``alpha - 1`` from 1 and in ``limit - alpha`` towards the limit.
The conversion to (epsilon, delta) is Balle et al. 2020
Thm 21 by default; Mironov 2017's classic one is available as ``conversion="classic"``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from privlab.accounting.accountant import PrivacyAccountant
from privlab.accounting.conversion import _check_method, epsilon_curve, log_delta_curve
from privlab.accounting.events import PrivacyEvent
from privlab.accounting.rdp import (
    _check_orders,
    check_rdp_event,
    default_orders,
    rdp_of_event,
    rdp_order_limit,
)

__all__ = ["RDPAccountant"]

_MAX_ORDER = 1e6


class RDPAccountant(PrivacyAccountant):
    """Renyi DP accountant (Mironov 2017; Mironov, Talwar, Zhang 2019).

    ``orders``: the grid (default: :func:`privlab.accounting.rdp.default_orders`).
    ``conversion``: ``"improved"`` (Balle et al. 2020, Thm 21) or ``"classic"``.
    ``refine``: extend the grid at its edges and optimise the order over the reals;
    with ``refine=False`` the result is the minimum over ``orders`` only.
    """

    def __init__(
        self,
        orders: Sequence[float] | np.ndarray | None = None,
        conversion: str = "improved",
        refine: bool = True,
    ) -> None:
        super().__init__()
        grid = default_orders() if orders is None else _check_orders(np.asarray(orders))
        if grid.size == 0:
            raise ValueError("orders must not be empty")
        self.orders = np.unique(grid)
        self.conversion = _check_method(conversion)
        self.refine = bool(refine)
        self._cache: dict[object, np.ndarray] = {}

    def _check_event(self, event: PrivacyEvent) -> None:
        check_rdp_event(event)

    def rdp(self, orders: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
        """The composed RDP curve at ``orders`` (default: the accountant's grid)."""
        alpha = self.orders if orders is None else _check_orders(np.asarray(orders))
        key = (self._version, alpha.tobytes())
        if key not in self._cache:
            if len(self._cache) > 64:
                self._cache.clear()
            self._cache[key] = rdp_of_event(self.ledger, alpha)
        return self._cache[key].copy()

    def _optimise(
        self, objective: Callable[[np.ndarray, np.ndarray], np.ndarray]
    ) -> tuple[float, float]:
        """Minimise ``objective(orders, rdp)`` over the grid, then refine (see module doc)."""
        orders = self.orders
        values = objective(orders, self.rdp(orders))
        limit = rdp_order_limit(self.ledger) if self.refine else np.inf
        if np.isfinite(limit):  # finite RDP only in (1, limit): search there too
            frac = np.concatenate([np.geomspace(1e-4, 0.5, 24), 1.0 - np.geomspace(1e-6, 0.5, 24)])
            new = 1.0 + (limit - 1.0) * np.unique(frac)
            new = new[(new > 1.0) & (new < limit) & ~np.isin(new, orders)]
            orders = np.concatenate([orders, new])
            values = np.concatenate([values, objective(new, self.rdp(new))])
            idx = np.argsort(orders)
            orders, values = orders[idx], values[idx]
        k = int(np.argmin(values))
        if not self.refine or not np.isfinite(values[k]):
            return float(values[k]), float(orders[k])
        for _ in range(6):  # extend the grid while the optimum sits on an edge
            if k == 0 and orders[0] > 1.0 + 1e-6:
                new = 1.0 + (orders[0] - 1.0) * np.array([0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7])
            elif k == orders.size - 1 and orders[-1] < _MAX_ORDER:
                new = np.unique(
                    np.minimum(np.round(orders[-1] * np.array([1.25, 1.6, 2.0, 3.0])), _MAX_ORDER)
                )
            else:
                break
            orders = np.concatenate([orders, new])
            values = np.concatenate([values, objective(new, self.rdp(new))])
            idx = np.argsort(orders)
            orders, values = orders[idx], values[idx]
            k = int(np.argmin(values))
        best_v, best_a = float(values[k]), float(orders[k])
        lo = orders[k - 1] if k > 0 else 1.0 + (orders[0] - 1.0) * 0.5
        hi = orders[k + 1] if k < orders.size - 1 else orders[k]
        for _ in range(8):  # zoom around the best order: each pass shrinks the bracket 8x
            if hi - lo <= 1e-6 * hi:
                break
            cand = np.linspace(lo, hi, 17)[1:-1]
            cand = cand[(cand > 1.0) & (cand != best_a)]
            if cand.size == 0:
                break
            vals = objective(cand, self.rdp(cand))
            j = int(np.argmin(vals))
            step = (hi - lo) / 16.0
            if vals[j] < best_v:
                best_v, best_a = float(vals[j]), float(cand[j])
            lo, hi = max(best_a - step, lo), min(best_a + step, hi)
        return best_v, best_a

    def get_epsilon_and_order(self, delta: float) -> tuple[float, float]:
        """(epsilon, optimal order) at ``delta``; epsilon is clamped at 0."""
        delta = self._delta(delta)
        return self._optimise(lambda a, r: epsilon_curve(a, r, delta, self.conversion))

    def get_epsilon(self, delta: float) -> float:
        """Smallest epsilon with (epsilon, delta)-DP over all (refined) orders."""
        return self.get_epsilon_and_order(delta)[0]

    def get_delta_and_order(self, epsilon: float) -> tuple[float, float]:
        """(delta, optimal order) at ``epsilon``."""
        epsilon = self._epsilon(epsilon)

        value, order = self._optimise(lambda a, r: log_delta_curve(a, r, epsilon, self.conversion))
        return float(np.exp(value)), order

    def get_delta(self, epsilon: float) -> float:
        """Smallest delta with (epsilon, delta)-DP over all (refined) orders."""
        return self.get_delta_and_order(epsilon)[0]
