"""Source hiding of muted gossip: the exact s = 0 guarantee and an empirical audit.

Source-hiding DP (reference ``shared/reference/rgm-gossip-network-dp.md`` section 2.3):
a gossip protocol is (epsilon, delta)-DP against the curious nodes if for every pair of
honest nodes u != v and every set S of curious observations,
``P[O in S | source = u] <= e^epsilon P[O in S | source = v] + delta``.

Notation (reference section 2.4): ``n`` nodes, ``m`` curious, ``h = n - m`` honest,
``q = m / (n - 1)`` the probability that one push hits a curious node. In the reference's
working model (complete graph, continuous time, reactivation on receipt) with s = 0 the
rumour is a single random-walk token:

* observing the sender of the first curious contact, ``P_u(sender = u) = (m + 1) / n`` and
  ``P_u(sender = w) = 1 / n`` for every other honest ``w``: the view is exactly
  ``(0, m / n)``-DP, and pure epsilon-DP needs ``epsilon >= ln(m + 1)``;
* also observing the number of honest hops (hence the time, post-processing):
  ``(ln((h - 1) / (h - 2)), q n / (n - 1))``-DP.

These are the reference's derivations [D], not the paper's theorems (whose text the
reference could not read).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from privlab.errors import check, is_integer, is_real
from privlab.intervals import clopper_pearson

__all__ = [
    "EmpiricalDelta",
    "clopper_pearson",
    "empirical_delta",
    "first_push_delta_lower_bound",
    "muted_gossip_s0_delta",
    "muted_gossip_s0_guarantee",
    "push_first_spy_success",
]


def _check_sizes(num_nodes: object, num_curious: object, min_honest: int = 2) -> tuple[int, int]:
    check(is_integer(num_nodes) and num_nodes >= 2, "num_nodes", ">= 2 (an integer)", num_nodes)
    check(
        is_integer(num_curious) and 0 <= num_curious <= num_nodes - min_honest,
        "num_curious",
        f"an integer in [0, num_nodes - {min_honest}]",
        num_curious,
    )
    return int(num_nodes), int(num_curious)


def _check_epsilon(epsilon: object) -> float:
    check(is_real(epsilon) and epsilon >= 0 and not math.isnan(epsilon), "epsilon", ">= 0", epsilon)
    return float(epsilon)


def muted_gossip_s0_delta(num_nodes: int, num_curious: int, epsilon: float = 0.0) -> float:
    """The exact delta(epsilon) of muted gossip at s = 0 on the complete graph, when the
    curious nodes see the sender of their first contact (reference section 2.4).

    The hockey-stick divergence between ``P_u`` = ((m+1)/n at u, 1/n at the other honest
    nodes) and ``P_v`` (the same with u and v swapped): ``max(0, (m + 1 - e^epsilon) / n)``
    for epsilon >= 0. It is m / n at epsilon = 0 and 0 from epsilon = ln(m + 1).
    """
    n, m = _check_sizes(num_nodes, num_curious)
    eps = _check_epsilon(epsilon)
    if eps >= math.log(m + 1):  # also avoids overflow of e^epsilon
        return 0.0
    return max(0.0, (m + 1 - math.exp(eps)) / n)


def muted_gossip_s0_guarantee(
    num_nodes: int, num_curious: int, view: str = "sender"
) -> tuple[float, float]:
    """``(epsilon, delta)`` of muted gossip at s = 0 on the complete graph (reference 2.4).

    ``view="sender"``: curious nodes see the sender of the first curious contact:
    ``(0, m / n)``, exact. ``view="hops"``: they also see how many honest hops the token
    made (equivalently, the time): ``(ln((h - 1) / (h - 2)), q n / (n - 1))`` with
    ``h = n - m`` and ``q = m / (n - 1)``; the delta is the mass of the two events
    impossible under another source (the source hits a spy first, with probability q;
    u -> v -> spy, with probability q / (n - 1)); needs ``h >= 3``.
    """
    check(view in ("sender", "hops"), "view", "'sender' or 'hops'", view)
    if view == "sender":
        n, m = _check_sizes(num_nodes, num_curious)
        return 0.0, m / n
    n, m = _check_sizes(num_nodes, num_curious, min_honest=3)
    h, q = n - m, m / (n - 1)
    return math.log((h - 1) / (h - 2)), q * n / (n - 1)


def first_push_delta_lower_bound(num_nodes: int, num_curious: int, epsilon: float) -> float:
    """Reference 2.4's lower bound for any relabelling-symmetric protocol whose first push
    goes to a uniform node: ``delta >= q - e^epsilon / (h - 1)`` (clipped at 0)."""
    n, m = _check_sizes(num_nodes, num_curious)
    eps = _check_epsilon(epsilon)
    h, q = n - m, m / (n - 1)
    if h == 1 or eps > 700:
        return 0.0
    return max(0.0, q - math.exp(eps) / (h - 1))


def push_first_spy_success(num_nodes: int, num_curious: int) -> float:
    """Heuristic first-spy success of push (s = 1), reference 2.4 [D, heuristic]:
    ``q ln(1/q) / (1 - q)`` (0.256 at q = 0.1)."""
    n, m = _check_sizes(num_nodes, num_curious, min_honest=1)
    q = m / (n - 1)
    check(0 < q < 1, "num_curious", "in [1, num_nodes - 2]", num_curious)
    return q * math.log(1 / q) / (1 - q)


@dataclass(frozen=True)
class EmpiricalDelta:
    """An empirical delta at ``epsilon`` with its ``level`` confidence interval
    ``[low, high]``, from ``successes`` correct first-spy guesses in ``runs`` runs."""

    epsilon: float
    delta: float
    low: float
    high: float
    level: float
    successes: int
    runs: int
    honest: int


def empirical_delta(runs, epsilon: float = 0.0, level: float = 0.95) -> EmpiricalDelta:
    """Estimate delta at ``epsilon`` from simulated runs (``mechanisms.muted_gossip.GossipRuns``),
    with the first-spy event, as reference section 2.6 suggests ("estimate delta at
    epsilon = 0 as max over events of P_u - P_v; with the first-spy event this is
    P[correct] - P[guess = a specific wrong node]").

    For the event ``E_u = {first-spy guess = u}`` and sources u != v:
    ``delta >= P_u(E_u) - e^epsilon P_v(E_u)``. With ``p = P[guess = source]`` estimated
    over the runs (sources drawn uniformly) and the honest nodes exchangeable (complete
    graph, curious nodes uniform), ``P_v(E_u) = (1 - p) / (h - 1)`` (the guess is always
    an honest node: curious nodes cannot send before one of them has been reached; a
    run with no curious contact counts as a wrong guess, which only lowers p), so

        delta_hat = p - e^epsilon (1 - p) / (h - 1).

    On a graph where the honest nodes are not exchangeable this is the average over pairs
    (u, v) of the same difference: still a lower bound on the worst-case delta. It is a
    lower bound (an audit) in any case: one event family, not the sup over all events.
    The interval maps the Clopper-Pearson interval on p through this increasing map, and
    all three values are clipped at 0. At s = 0 it estimates m / n exactly (reference 2.4).
    """
    from privlab.mechanisms.muted_gossip import first_spy_guess

    eps = _check_epsilon(epsilon)
    check(is_real(level) and 0 < level < 1, "level", "in (0, 1)", level)
    honest = runs.num_nodes - runs.num_curious
    check(
        bool((honest == honest[0]).all()) and int(honest[0]) >= 2,
        "runs",
        "runs with the same number (>= 2) of honest nodes",
        sorted(set(honest.tolist()))[:5],
    )
    h = int(honest[0])
    successes = int(np.sum(first_spy_guess(runs) == runs.source))
    total = runs.runs

    def delta_of(p: float) -> float:
        return max(0.0, p - math.exp(min(eps, 700.0)) * (1.0 - p) / (h - 1))

    low, high = clopper_pearson(successes, total, level)
    return EmpiricalDelta(
        epsilon=eps,
        delta=delta_of(successes / total),
        low=delta_of(low),
        high=delta_of(high),
        level=float(level),
        successes=successes,
        runs=total,
        honest=h,
    )
