"""Exact pairwise network DP of linear gossip with Gaussian noise (Muffliato, Zip-DL).

An adversary (one node, or a coalition pooling its views) sees a *linear* function of
the private values and of Gaussian noise, ``V = A x + B z`` with ``z ~ N(0, I)``, once
it has subtracted what it knows (its own values and noise draws). Changing source
``u``'s value by 1 shifts the view's mean by ``Delta = A e_u`` and leaves its
covariance ``B B^T`` alone, so the view is a Gaussian mechanism: it is ``mu``-GDP with

    mu_u = sqrt(Delta^T (B B^T)^+ Delta)

(Dong, Roth & Su, "Gaussian Differential Privacy", JRSS-B 2022, Thm 2.7 and Cor. 2.13),
its Renyi divergence of every order ``alpha`` is ``alpha mu_u^2 / 2`` (Mironov, "Renyi
Differential Privacy", CSF 2017, Prop. 7), and its exact (epsilon, delta) curve is that
of a Gaussian mechanism with ``sigma = 1 / mu_u`` (Balle & Wang, "Improving the Gaussian
Mechanism for Differential Privacy", ICML 2018, Thm 8;
:func:`privlab.accounting.pld.analytic_gaussian_epsilon`). ``mu_u`` is infinite when
``Delta`` leaves the range of ``B B^T`` (a direction of the view carries no noise).

This is the "pairwise network DP" of Cyffers, Even, Bellet & Massoulie, "Muffliato:
Peer-to-Peer Privacy Amplification for Decentralized Optimization and Averaging",
NeurIPS 2022 (arXiv 2206.05091), and of the PNDP analysis of Zip-DL (Biswas et al.,
"Low-Cost Privacy-Preserving Decentralized Learning", PoPETs 2025(3), arXiv
2403.11795, Sec. 5), computed *exactly* for a fixed, known graph instead of bounded
message by message (the network DP of Cyffers & Bellet, "Privacy Amplification by
Decentralization", AISTATS 2022, with collusion as the union of views). See
privlab's reference notes on gossip privacy (``rgm-gossip-network-dp.md``), Sec. 4.3 and 4.6.

Model (one scalar coordinate: coordinates are independent and the noise isotropic, so
the scalar ``mu`` is the vector one for an L2 sensitivity of 1): each node holds ``x_v``;
``K`` synchronous gossip steps ``y_{t+1} = W y_t`` (``W`` column-``u``-to-row-``v``:
``W[v, u]`` is the weight receiver ``v`` puts on sender ``u``); at step ``t = 0..K-1``
every node sends ``y_t[u]`` (plus its noise) to every ``v != u`` with ``W[v, u] > 0``.
The observer's own final value is a function of what it received, so it adds nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from privlab.accounting.pld import analytic_gaussian_epsilon
from privlab.errors import PrivlabError, check, is_integer, is_real

__all__ = [
    "gaussian_view_mu",
    "muffliato_view",
    "muffliato_mu",
    "zipdl_view",
    "pairwise_network_mu",
    "muffliato_pairwise_rdp_formula",
    "gdp_epsilon",
    "network_table",
    "decor_view",
    "decor_eavesdropper_mu",
    "decor_secldp_epsilon",
    "MECHANISMS",
]

MECHANISMS = ("muffliato", "zipdl")

_EPS = np.finfo(float).eps


def _rank_cutoff(s: np.ndarray, shape: tuple[int, int], rtol: float | None) -> int:
    """Numerical rank: singular values above ``rtol * s_max`` (default
    ``10 * max(shape) * eps``, ten times numpy's ``matrix_rank`` default)."""
    if s.size == 0 or s[0] == 0:
        return 0
    tol = 10 * max(shape) * _EPS if rtol is None else rtol
    return int(np.count_nonzero(s > tol * s[0]))


def gaussian_view_mu(
    A: np.ndarray,
    B: np.ndarray,
    sources: Iterable[int] | None = None,
    rtol: float | None = None,
    residual_tol: float = 1e-8,
) -> np.ndarray:
    """GDP ``mu`` of the view ``V = A x + B z`` (``z ~ N(0, I)``) for each source column.

    For source ``u`` the mean shift is ``Delta = A e_u``; the view is ``mu_u``-GDP with
    ``mu_u = sqrt(Delta^T (B B^T)^+ Delta)`` (Dong, Roth & Su 2022), and its exact
    (epsilon, delta) is the Gaussian mechanism's with ``sigma = 1 / mu_u`` (Balle &
    Wang 2018). Computed from one thin SVD of ``B`` (not an eigendecomposition of
    ``B B^T``, which would square the condition number): with ``B = U S V^T`` restricted
    to its numerical rank (singular values above ``rtol * s_max``),
    ``mu_u = ||S^-1 U^T Delta||``. ``mu_u`` is ``inf`` when ``Delta`` leaves the range of
    ``B``: ``||Delta - U U^T Delta|| > residual_tol * ||Delta||``. A column that is zero
    (up to ``residual_tol`` times the largest column) gives ``mu = 0``.

    Returns a float array, one ``mu`` per source (all columns of ``A`` by default).
    """
    A = np.atleast_2d(np.asarray(A, dtype=float))
    cols = np.arange(A.shape[1]) if sources is None else np.asarray(list(sources), dtype=int)
    if A.shape[0] == 0:  # nothing observed
        return np.zeros(len(cols))
    B = np.asarray(B, dtype=float).reshape(A.shape[0], -1)
    D = A[:, cols]
    if B.size and np.any(B):
        U, s, _ = np.linalg.svd(B, full_matrices=False)
        r = _rank_cutoff(s, B.shape, rtol)
        U, s = U[:, :r], s[:r]
    else:
        U, s = np.zeros((A.shape[0], 0)), np.zeros(0)
    coeff = U.T @ D
    mu = np.sqrt(np.sum((coeff / s[:, None]) ** 2, axis=0)) if s.size else np.zeros(len(cols))
    norms = np.linalg.norm(D, axis=0)
    scale = np.linalg.norm(A, axis=0).max(initial=0.0)
    residual = np.linalg.norm(D - U @ coeff, axis=0)
    zero = norms <= residual_tol * scale
    mu = np.where(residual > residual_tol * norms, np.inf, mu)
    return np.where(zero, 0.0, mu)


def _check_inputs(
    W: np.ndarray, observers: Iterable[int], gossip_steps: int, noise: float
) -> tuple[np.ndarray, list[int]]:
    W = np.asarray(W, dtype=float)
    check(W.ndim == 2 and W.shape[0] == W.shape[1], "W", "a square matrix", W.shape)
    n = W.shape[0]
    obs = sorted({int(o) for o in observers}) if observers is not None else []
    check(bool(obs), "observers", "a non-empty set of nodes", observers)
    check(all(0 <= o < n for o in obs), "observers", f"nodes in [0, {n - 1}]", obs)
    check(
        is_integer(gossip_steps) and gossip_steps >= 1,
        "gossip_steps",
        "an integer >= 1",
        gossip_steps,
    )
    check(
        is_real(noise) and math.isfinite(noise) and noise >= 0,
        "noise",
        ">= 0 and finite",
        noise,
    )
    return W, obs


def _senders_to(W: np.ndarray, observers: Sequence[int]) -> list[tuple[int, int]]:
    """The (sender, receiver) pairs of messages addressed to the observers."""
    return [(u, v) for v in observers for u in np.flatnonzero(W[v] > 0) if u != v]


def _muffliato_rows(W: np.ndarray, observers: list[int], gossip_steps: int) -> np.ndarray:
    """``M``: one row ``(W^t)[u, :]`` per message ``u -> v`` (``v`` an observer), ``t < K``."""
    senders = [u for u, _ in _senders_to(W, observers)]
    rows, power = [], np.eye(W.shape[0])
    for _ in range(gossip_steps):
        rows.append(power[senders])
        power = W @ power
    return np.concatenate(rows) if senders else np.zeros((0, W.shape[0]))


def muffliato_view(
    W: np.ndarray, observers: Iterable[int], gossip_steps: int, noise: float
) -> tuple[np.ndarray, np.ndarray]:
    """The observers' view ``(A, B)`` of Muffliato averaging (Cyffers et al. 2022, Alg. 1).

    Every node adds ``N(0, noise^2)`` once, ``y_0 = x + noise z``, then runs
    ``gossip_steps`` steps ``y_{t+1} = W y_t``; at each step ``t < K`` every node sends
    ``y_t`` to its neighbours. The observers (pooled) see one row ``(W^t)[u, :]`` per
    message ``u -> v`` to an observer ``v``; they know their own ``x`` and ``z``, so those
    columns are removed: ``A = M[:, sources]``, ``B = noise * A`` with ``sources`` the
    other nodes in increasing order (column ``i`` of ``A`` is source ``sources[i]``).
    """
    W, obs = _check_inputs(W, observers, gossip_steps, noise)
    M = _muffliato_rows(W, obs, gossip_steps)
    keep = [u for u in range(W.shape[0]) if u not in obs]
    A = M[:, keep]
    return A, noise * A


def muffliato_mu(
    W: np.ndarray,
    observers: Iterable[int],
    gossip_steps: int,
    noise: float,
    rtol: float | None = None,
) -> np.ndarray:
    """Fast path of :func:`gaussian_view_mu` for Muffliato, where ``B = noise * A``.

    ``mu_u = ||Pi e_u|| / noise``, ``Pi`` the orthogonal projector on the row space of
    ``A`` (the column's leverage; reference Sec. 4.3, "exact projection accountant"):
    one thin SVD of ``A``. With ``noise = 0``, ``mu`` is ``inf`` for every source the
    observers see (a nonzero column) and 0 otherwise. One entry per non-observer node,
    in increasing order.
    """
    A, _ = muffliato_view(W, observers, gossip_steps, noise)
    if A.size == 0 or not np.any(A):
        return np.zeros(A.shape[1])
    if noise == 0:
        return np.where(np.linalg.norm(A, axis=0) > 0, np.inf, 0.0)
    _, s, Vt = np.linalg.svd(A, full_matrices=False)
    r = _rank_cutoff(s, A.shape, rtol)
    return np.linalg.norm(Vt[:r], axis=0) / noise


def zipdl_view(
    W: np.ndarray, observers: Iterable[int], gossip_steps: int, noise: float
) -> tuple[np.ndarray, np.ndarray]:
    """The observers' view ``(A, B)`` of Zip-DL averaging (Biswas et al. 2025, Alg. 1).

    At every step each sender ``u`` draws fresh ``Y_{u->j} ~ N(0, noise^2)`` for every
    ``j`` in its closed neighbourhood ``Gamma_u = {j : W[j, u] > 0}`` (itself included
    when its self weight is positive; ``d_u = |Gamma_u|``) and sends ``y_t[u] + Z_{u->v}``,

        Z_{u->v} = Y_{u->v} - (1 / (d_u W[v, u])) sum_{j in Gamma_u} W[j, u] Y_{u->j},

    the W-weighted correction of ``mechanisms/zipdl.py`` (``sum_v W[v, u] Z_{u->v} = 0``,
    their Lemma 3.1). Receiver ``v``: ``y_{t+1}[v] = sum_{u in Gamma_v^-} W[v, u] (y_t[u]
    + Z_{u->v})``, its self term ``u = v`` included. The observers see the messages
    addressed to them (``u != v``) at ``t = 0..K-1`` and know their own values and their
    own draws, whose columns are removed. ``B``'s columns are the other nodes' draws,
    ``K * sum_u d_u`` in all (dense: meant for graphs of up to a few hundred edges).
    """
    W, obs = _check_inputs(W, observers, gossip_steps, noise)
    n = W.shape[0]
    gamma = [np.flatnonzero(W[:, u] > 0) for u in range(n)]
    offset = np.concatenate([[0], np.cumsum([len(g) for g in gamma])])
    per_step = int(offset[-1])
    # Z of one step as a linear map of that step's draws: row (u, v) for every j in Gamma_u.
    zmap = np.zeros((n, n, per_step))  # zmap[u, v] = coefficients of Z_{u->v}
    for u in range(n):
        g, base = gamma[u], offset[u]
        for k, v in enumerate(g):
            zmap[u, v, base + k] += 1.0
            zmap[u, v, base : base + len(g)] -= W[g, u] / (len(g) * W[v, u])
    # Noise injected into y_{t+1}: sum_u W[v, u] Z_{u->v}.
    inject = np.einsum("vu,uvd->vd", W, zmap)
    messages = _senders_to(W, obs)
    total = gossip_steps * per_step
    rows_x, rows_z = [], []
    state_x, state_z = np.eye(n), np.zeros((n, total))
    for t in range(gossip_steps):
        block = slice(t * per_step, (t + 1) * per_step)
        for u, v in messages:
            z = state_z[u].copy()
            z[block] += zmap[u, v]
            rows_x.append(state_x[u])
            rows_z.append(z)
        state_x = W @ state_x
        state_z = W @ state_z
        state_z[:, block] += inject  # scaled by noise below, with every draw
    A_full = np.array(rows_x).reshape(-1, n)
    B_full = noise * np.array(rows_z).reshape(-1, total)
    own = np.zeros(total, dtype=bool)
    for t in range(gossip_steps):
        for o in obs:
            own[t * per_step + offset[o] : t * per_step + offset[o + 1]] = True
    keep = [u for u in range(n) if u not in obs]
    return A_full[:, keep], B_full[:, ~own]


def gdp_epsilon(mu: float, delta: float) -> float:
    """Exact epsilon at ``delta`` of a ``mu``-GDP mechanism: the Gaussian mechanism with
    ``sigma = 1 / mu`` (Balle & Wang 2018, Thm 8; Dong, Roth & Su 2022, Cor. 2.13).
    ``mu = 0`` gives 0 and ``mu = inf`` gives ``inf``."""
    if mu == 0:
        return 0.0
    if not math.isfinite(mu):
        return math.inf
    return analytic_gaussian_epsilon(1.0 / mu, delta)


def _view(mechanism: str, W: np.ndarray, observers, gossip_steps: int, noise: float):
    if mechanism == "muffliato":
        return muffliato_view(W, observers, gossip_steps, noise)
    if mechanism == "zipdl":
        return zipdl_view(W, observers, gossip_steps, noise)
    raise PrivlabError(f"mechanism must be one of {', '.join(MECHANISMS)}, got {mechanism!r}")


def pairwise_network_mu(
    mechanism: str,
    W: np.ndarray,
    observers: Iterable[int],
    gossip_steps: int,
    noise: float,
    delta: float | None = None,
) -> dict[int, dict[str, float]]:
    """Exact per-source privacy against one party (``observers`` pooled, i.e. colluding).

    Returns ``{source: {"mu": mu, "epsilon": eps}}`` for every node outside the party;
    ``epsilon`` (at ``delta``, via :func:`gdp_epsilon`) only when ``delta`` is given.
    ``mechanism`` is ``"muffliato"`` (fast projector path, :func:`muffliato_mu`) or
    ``"zipdl"`` (general formula on :func:`zipdl_view`).
    """
    if mechanism == "muffliato":
        mus = muffliato_mu(W, observers, gossip_steps, noise)
    else:
        A, B = _view(mechanism, W, observers, gossip_steps, noise)
        mus = gaussian_view_mu(A, B)
    obs = {int(o) for o in observers}
    sources = [u for u in range(np.asarray(W).shape[0]) if u not in obs]
    out: dict[int, dict[str, float]] = {}
    for u, mu in zip(sources, mus):
        entry = {"mu": float(mu)}
        if delta is not None:
            entry["epsilon"] = gdp_epsilon(float(mu), delta)
        out[u] = entry
    return out


def muffliato_pairwise_rdp_formula(
    W: np.ndarray,
    observers: Iterable[int],
    gossip_steps: int,
    noise: float,
    delta: float | None = None,
    cap: bool = True,
) -> dict[int, dict[str, float]] | None:
    """Muffliato's published per-pair sum (Cyffers et al. 2022; official ``muffliato.py``),
    reference Sec. 4.3: for source ``u`` and a single observer ``v``,

        eps_{u->v}(alpha) = alpha / (2 sigma^2) * sum_{t<K} sum_{w in N(v), w != v}
                            (W^t)[w, u]^2 / ||(W^t)[w, :]||^2,

    each message treated as a separate Gaussian mechanism and the losses summed (messages
    ``t = 0..K-1``; the official code sums ``t = 1..T``). It is linear in ``alpha``, hence
    the Renyi curve of a Gaussian mechanism with ``mu^2`` = the sum / sigma^2; epsilon is
    that mechanism's exact curve at ``delta``. With ``cap`` (the paper's figures) ``mu``
    is capped at the local-DP value ``1 / sigma``.

    **Not an upper bound on the exact leakage for a fixed, known graph** (reference
    Sec. 4.3, caution): on a 32-ring after 31 steps the observer reconstructs every
    input. Returns ``None`` for a coalition (more than one observer): the formula is
    stated per pair ``(u, v)``.
    """
    W, obs = _check_inputs(W, observers, gossip_steps, noise)
    if len(obs) > 1:
        return None
    (v,) = obs
    n = W.shape[0]
    M = _muffliato_rows(W, obs, gossip_steps)
    norms2 = np.sum(M**2, axis=1, keepdims=True)
    leak = np.sum(np.divide(M**2, norms2, out=np.zeros_like(M), where=norms2 > 0), axis=0)
    out: dict[int, dict[str, float]] = {}
    for u in range(n):
        if u == v:
            continue
        if noise == 0:
            mu = math.inf if leak[u] > 0 else 0.0
        else:
            mu = math.sqrt(leak[u]) / noise
            if cap:
                mu = min(mu, 1.0 / noise)
        entry = {"mu": mu}
        if delta is not None:
            entry["epsilon"] = gdp_epsilon(mu, delta)
        out[u] = entry
    return out


def _hypercube_W(dimension: int) -> np.ndarray:
    import networkx as nx

    from privlab.topology import from_networkx

    topo = from_networkx(nx.hypercube_graph(dimension))
    return topo.plan(0).mixing_matrix("dense").double().numpy()


def network_table(
    noise: float = 1.0, delta: float = 1e-5, observer: int = 0
) -> list[dict[str, Any]]:
    """Muffliato, one observer: exact mu/epsilon against the per-pair formula (capped),
    worst source and mean over sources, on a 32-node ring and a 128-node hypercube
    (Metropolis-Hastings weights) with ``K`` in ``{1, 4, n - 1}``; ``formula_below_exact``
    counts the sources whose formula ``mu`` is below the exact one (under-reported)."""
    from privlab.topology import build_topology

    graphs = {
        "ring-32": build_topology("ring", 32).plan(0).mixing_matrix("dense").double().numpy(),
        "hypercube-128": _hypercube_W(7),
    }
    rows = []
    for name, W in graphs.items():
        n = W.shape[0]
        for k in (1, 4, n - 1):
            exact = pairwise_network_mu("muffliato", W, [observer], k, noise, delta)
            formula = muffliato_pairwise_rdp_formula(W, [observer], k, noise, delta)
            assert formula is not None
            row: dict[str, Any] = {"graph": name, "n": n, "K": k}
            for label, res in (("exact", exact), ("formula", formula)):
                mus = np.array([r["mu"] for r in res.values()])
                eps = np.array([r["epsilon"] for r in res.values()])
                row[f"{label}_mu_max"] = float(mus.max())
                row[f"{label}_mu_mean"] = float(mus.mean())
                row[f"{label}_eps_max"] = float(eps.max())
                row[f"{label}_eps_mean"] = float(eps.mean())
            row["formula_below_exact"] = sum(
                formula[u]["mu"] < exact[u]["mu"] * (1 - 1e-9) for u in exact
            )
            rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------
# DECOR (Allouah, Koloskova, El Firdoussi, Guerraoui & Jaggi, "Privacy-Preserving
# Decentralized Optimization ... with Correlated Noise", ICML 2024, arXiv 2405.01031);
# reference Sec. 4.4 and 4.6.


def _decor_inputs(W: np.ndarray, sigma_cdp: float, sigma_cor: float) -> np.ndarray:
    W = np.asarray(W, dtype=float)
    check(W.ndim == 2 and W.shape[0] == W.shape[1], "W", "a square matrix", W.shape)
    for name, value in (("sigma_cdp", sigma_cdp), ("sigma_cor", sigma_cor)):
        check(
            is_real(value) and math.isfinite(value) and value >= 0,
            name,
            ">= 0 and finite",
            value,
        )
    return W


def _decor_edges(W: np.ndarray) -> list[tuple[int, int]]:
    """Undirected edges ``(i, j)``, ``i < j``, of the graph ``W[i, j] > 0 or W[j, i] > 0``."""
    adj = (W > 0) | (W.T > 0)
    np.fill_diagonal(adj, False)
    return [(int(i), int(j)) for i, j in zip(*np.nonzero(np.triu(adj, 1)))]


def _decor_incidence(n: int, edges: Sequence[tuple[int, int]]) -> np.ndarray:
    """Signed incidence ``E`` (n x |edges|): ``+1`` at ``i``, ``-1`` at ``j``; ``E E^T = L``."""
    E = np.zeros((n, len(edges)))
    for k, (i, j) in enumerate(edges):
        E[i, k], E[j, k] = 1.0, -1.0
    return E


def decor_view(
    W: np.ndarray, observers: Iterable[int], sigma_cdp: float, sigma_cor: float
) -> tuple[np.ndarray, np.ndarray]:
    """The observers' view ``(A, B)`` of one DECOR round (scalar values, sensitivity 1).

    The graph's edges are the pairs ``i != j`` with ``W[i, j] > 0`` (or ``W[j, i] > 0``).
    Every edge ``(i, j)``, ``i < j``, carries one secret ``v_ij = -v_ji ~ N(0,
    sigma_cor^2)`` and every node one ``omega_i ~ N(0, sigma_cdp^2)``; node ``i``
    releases ``x_i + sum_{j in N(i)} v_ij + omega_i`` to its neighbours. The observers
    (pooled) receive the released values of their members' neighbours outside the party
    (one row each, increasing node order) and know their own ``x`` and ``omega`` and
    every ``v`` on an edge with a member: those columns are removed. ``A``'s columns are
    the other nodes in increasing order; ``B``'s the unknown edge secrets (edge order)
    then the unknown ``omega`` (node order). Use with :func:`gaussian_view_mu`.
    """
    W = _decor_inputs(W, sigma_cdp, sigma_cor)
    n = W.shape[0]
    obs = sorted({int(o) for o in observers}) if observers is not None else []
    check(bool(obs), "observers", "a non-empty set of nodes", observers)
    check(all(0 <= o < n for o in obs), "observers", f"nodes in [0, {n - 1}]", obs)
    edges = _decor_edges(W)
    E = _decor_incidence(n, edges)
    party = set(obs)
    adj = np.abs(E) @ np.abs(E).T > 0
    seen = sorted({int(w) for o in obs for w in np.flatnonzero(adj[o]) if w not in party})
    keep_x = [u for u in range(n) if u not in party]
    keep_v = [k for k, (i, j) in enumerate(edges) if i not in party and j not in party]
    A = np.eye(n)[np.ix_(seen, keep_x)]
    B = np.concatenate(
        [sigma_cor * E[np.ix_(seen, keep_v)], sigma_cdp * np.eye(n)[np.ix_(seen, keep_x)]],
        axis=1,
    )
    return A, B


def decor_eavesdropper_mu(W: np.ndarray, sigma_cdp: float, sigma_cor: float) -> np.ndarray:
    """Per-node GDP ``mu`` of one DECOR round against an eavesdropper on *all* released
    values (reference Sec. 4.6: ``M = I``, covariance ``Sigma = sigma_cdp^2 I +
    sigma_cor^2 L`` per coordinate, ``L`` the graph Laplacian of :func:`decor_view`'s
    edges): ``mu_u = sqrt([Sigma^{-1}]_uu)`` for sensitivity 1. DECOR's SecLDP quantity
    is ``eps_tilde = 2 C^2 max_u mu_u^2`` (replace-one sensitivity ``2 C``). With
    ``sigma_cdp = 0`` every ``mu`` is ``inf`` (the network sum carries no noise).
    """
    W = _decor_inputs(W, sigma_cdp, sigma_cor)
    n = W.shape[0]
    if sigma_cdp == 0:
        return np.full(n, np.inf)
    E = _decor_incidence(n, _decor_edges(W))
    sigma = sigma_cdp**2 * np.eye(n) + sigma_cor**2 * (E @ E.T)
    return np.sqrt(np.diag(np.linalg.inv(sigma)))


def decor_secldp_epsilon(
    W: np.ndarray,
    sigma_cdp: float,
    sigma_cor: float,
    T: int,
    delta: float,
    clip: float = 1.0,
) -> float:
    """DECOR's published SecLDP accountant (Allouah et al., ICML 2024, arXiv 2405.01031;
    official repository ``utils/dp_account.py``: ``rdp_account`` / ``user_level_rdp``,
    reference Sec. 4.4): per round the RDP is ``alpha * eps_tilde`` with

        eps_tilde = 2 C^2 max_i [Sigma^{-1}]_ii,  Sigma = sigma_cdp^2 I + sigma_cor^2 L,

    and over ``T`` rounds, converted at the optimal order
    ``alpha* = 1 + sqrt(ln(1/delta) / (T eps_tilde))``,

        eps = T eps_tilde + 2 sqrt(T eps_tilde ln(1/delta)).

    Its inverse (their ``reverse_eps``) is ``eps_tilde = (sqrt(ln(1/delta) + eps) -
    sqrt(ln(1/delta)))^2 / T``. This is the eavesdropper's view (every released value,
    no shared secret known), :func:`decor_eavesdropper_mu`; ``C = clip``.
    """
    check(is_integer(T) and T >= 1, "T", "an integer >= 1", T)
    check(is_real(delta) and 0 < delta < 1, "delta", "in (0, 1)", delta)
    check(is_real(clip) and math.isfinite(clip) and clip > 0, "clip", "> 0 and finite", clip)
    mu = decor_eavesdropper_mu(W, sigma_cdp, sigma_cor)
    eps_tilde = 2 * clip**2 * float(np.max(mu)) ** 2
    if not math.isfinite(eps_tilde):
        return math.inf
    return T * eps_tilde + 2 * math.sqrt(T * eps_tilde * math.log(1 / delta))


if __name__ == "__main__":  # python -m privlab.accounting.network
    for row in network_table():
        print(
            f"{row['graph']:>14} K={row['K']:>3} | exact mu max {row['exact_mu_max']:.4g} "
            f"mean {row['exact_mu_mean']:.4g} eps max {row['exact_eps_max']:.4g} "
            f"mean {row['exact_eps_mean']:.4g} | formula mu max {row['formula_mu_max']:.4g} "
            f"mean {row['formula_mu_mean']:.4g} eps max {row['formula_eps_max']:.4g} "
            f"mean {row['formula_eps_mean']:.4g} | formula < exact for "
            f"{row['formula_below_exact']} sources"
        )
