"""Exact pairwise network DP (``privlab.accounting.network``) against brute force.

The views are rebuilt here by a naive message-by-message simulation, and the Renyi
divergence between ``N(A x, B B^T)`` and ``N(A x', B B^T)`` is computed without the
pseudo-inverse: keep a maximal set of linearly independent rows (pivoted QR of ``B^T``),
check that the other rows carry no signal, then whiten by Cholesky; a Monte Carlo
average of log-likelihood ratios (scipy) checks the KL divergence ``mu^2 / 2``.
"""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pytest
import scipy.linalg
from scipy.stats import multivariate_normal

from privlab.accounting.network import (
    decor_eavesdropper_mu,
    decor_secldp_epsilon,
    decor_view,
    gaussian_view_mu,
    gdp_epsilon,
    muffliato_mu,
    muffliato_pairwise_rdp_formula,
    muffliato_view,
    pairwise_network_mu,
    zipdl_view,
)
from privlab.accounting.pld import analytic_gaussian_epsilon
from privlab.topology import build_topology, from_networkx


def mh(name, n, **options):
    return build_topology(name, n, **options).plan(0).mixing_matrix("dense").double().numpy()


def naive_muffliato(W, observers, K, noise):
    """Messages as coefficient vectors over (x, z), one send at a time."""
    n = len(W)
    y = [(np.eye(n)[v], noise * np.eye(n)[v]) for v in range(n)]
    rows = []
    for _ in range(K):
        for v in observers:
            for u in range(n):
                if u != v and W[v, u] > 0:
                    rows.append(y[u])
        y = [
            (sum(W[v, u] * y[u][0] for u in range(n)), sum(W[v, u] * y[u][1] for u in range(n)))
            for v in range(n)
        ]
    keep = [u for u in range(n) if u not in observers]
    return np.array([r[0] for r in rows])[:, keep], np.array([r[1] for r in rows])[:, keep]


def naive_zipdl(W, observers, K, noise):
    """Zip-DL averaging (Biswas et al. 2025, Alg. 1) one draw, one message at a time."""
    n = len(W)
    gamma = [[j for j in range(n) if W[j, u] > 0] for u in range(n)]
    per_step = sum(len(g) for g in gamma)
    total = K * per_step
    yx, yz = list(np.eye(n)), [np.zeros(total) for _ in range(n)]
    rows_x, rows_z, own = [], [], np.zeros(total, dtype=bool)
    col = 0
    for _ in range(K):
        Y = {}
        for u in range(n):
            for j in gamma[u]:
                Y[u, j] = np.zeros(total)
                Y[u, j][col] = noise
                own[col] = u in observers
                col += 1
        Z = {}
        for u in range(n):
            d = len(gamma[u])
            mix = sum(W[j, u] * Y[u, j] for j in gamma[u])
            for v in gamma[u]:
                Z[u, v] = Y[u, v] - mix / (d * W[v, u])
            assert np.allclose(sum(W[v, u] * Z[u, v] for v in gamma[u]), 0)  # Lemma 3.1
        for v in observers:
            for u in range(n):
                if u != v and W[v, u] > 0:
                    rows_x.append(yx[u])
                    rows_z.append(yz[u] + Z[u, v])
        yx, yz = (
            [sum(W[v, u] * yx[u] for u in range(n)) for v in range(n)],
            [sum(W[v, u] * (yz[u] + Z[u, v]) for u in range(n) if W[v, u] > 0) for v in range(n)],
        )
    keep = [u for u in range(n) if u not in observers]
    return np.array(rows_x)[:, keep], np.array(rows_z)[:, ~own]


def brute_force_renyi(A, B, i, alpha):
    """D_alpha(N(A e_i, BB^T) || N(0, BB^T)) without a pseudo-inverse (inf if singular)."""
    delta = A[:, i]
    _, R, piv = scipy.linalg.qr(B.T, pivoting=True, mode="economic")
    r = int(np.sum(np.abs(np.diag(R)) > 1e-9 * abs(R[0, 0])))
    rows, rest = piv[:r], piv[r:]
    cov = B[rows] @ B[rows].T
    L = scipy.linalg.cho_factor(cov, lower=True)
    if len(rest):  # rest = C @ independent rows in noise; must match in the signal too
        C = scipy.linalg.cho_solve(L, B[rows] @ B[rest].T).T
        if np.linalg.norm(delta[rest] - C @ delta[rows]) > 1e-7 * np.linalg.norm(delta):
            return math.inf, rows, cov
    return alpha / 2 * delta[rows] @ scipy.linalg.cho_solve(L, delta[rows]), rows, cov


@pytest.mark.parametrize(
    "mechanism, topo, n, K, observers",
    [
        ("muffliato", ("ring", {}), 6, 3, [0]),
        ("muffliato", ("erdos_renyi", {"p": 0.3, "seed": 5}), 8, 3, [0]),  # 0 < mu < 1/noise
        ("muffliato", ("torus", {}), 9, 2, [0]),
        ("muffliato", ("erdos_renyi", {"p": 0.4, "seed": 3}), 8, 2, [1, 5]),
        ("zipdl", ("ring", {}), 5, 2, [0]),
        ("zipdl", ("regular", {"degree": 3, "seed": 1}), 6, 2, [0]),
        ("zipdl", ("erdos_renyi", {"p": 0.5, "seed": 2}), 7, 2, [2, 4]),
    ],
)
def test_view_matches_naive_simulation_and_brute_force_renyi(mechanism, topo, n, K, observers):
    name, options = topo
    W = mh(name, n, **options)
    noise = 0.8
    view = muffliato_view if mechanism == "muffliato" else zipdl_view
    naive = naive_muffliato if mechanism == "muffliato" else naive_zipdl
    A, B = view(W, observers, K, noise)
    A0, B0 = naive(W, observers, K, noise)
    np.testing.assert_allclose(A, A0, atol=1e-12)
    np.testing.assert_allclose(B, B0, atol=1e-12)
    mu = gaussian_view_mu(A, B)
    for i in range(A.shape[1]):
        for alpha in (2.0, 5.0):
            direct, _, _ = brute_force_renyi(A, B, i, alpha)
            if math.isinf(direct):
                assert math.isinf(mu[i])
            else:
                assert alpha * mu[i] ** 2 / 2 == pytest.approx(direct, rel=1e-6, abs=1e-12)


def test_monte_carlo_kl_matches_mu():
    """KL = mu^2 / 2, estimated by averaging scipy log-likelihood ratios."""
    W = mh("regular", 6, degree=3, seed=1)
    A, B = zipdl_view(W, [0], 2, 1.0)
    mu = gaussian_view_mu(A, B)
    i = int(np.argmax(np.where(np.isfinite(mu), mu, 0)))
    _, rows, cov = brute_force_renyi(A, B, i, 2.0)
    shift = A[rows, i]
    rng = np.random.default_rng(0)
    y = rng.multivariate_normal(shift, cov, size=20000)
    llr = multivariate_normal(shift, cov).logpdf(y) - multivariate_normal(
        np.zeros(len(rows)), cov
    ).logpdf(y)
    assert llr.mean() == pytest.approx(mu[i] ** 2 / 2, rel=0.05)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("mechanism", ["muffliato", "zipdl"])
def test_coalition_never_leaks_less_than_a_member(seed, mechanism):
    W = mh("erdos_renyi", 8, p=0.35, seed=seed)
    rng = np.random.default_rng(seed)
    coalition = sorted(rng.choice(8, size=3, replace=False).tolist())
    K = 1 + seed % 3
    joint = pairwise_network_mu(mechanism, W, coalition, K, 1.3)
    for member in coalition:
        alone = pairwise_network_mu(mechanism, W, [member], K, 1.3)
        for u, r in joint.items():
            assert r["mu"] >= alone[u]["mu"] * (1 - 1e-7) - 1e-9


@pytest.mark.parametrize("observers", [[0], [2, 5]])
def test_muffliato_fast_path_equals_general_formula(observers):
    W = mh("small_world", 10, k=4, p=0.3, seed=4)
    for K in (1, 3, 6):
        A, B = muffliato_view(W, observers, K, 0.7)
        np.testing.assert_allclose(
            muffliato_mu(W, observers, K, 0.7), gaussian_view_mu(A, B), rtol=1e-7, atol=1e-10
        )


@pytest.mark.parametrize("n", [8, 32])
def test_ring_full_reconstruction_after_n_minus_1_steps(n):
    """Reference Sec. 4.3: on the n-ring after n - 1 steps one node recovers every input."""
    W = mh("ring", n)
    mu = muffliato_mu(W, [3], n - 1, 0.5)
    np.testing.assert_allclose(mu, 2.0, rtol=1e-8)
    A, B = muffliato_view(W, [3], n - 1, 0.5)
    np.testing.assert_allclose(gaussian_view_mu(A, B), 2.0, rtol=1e-6)
    # ... while fewer steps reach only the nearest nodes exactly, the rest not at all
    mu_short = muffliato_mu(W, [0], 2, 1.0)
    np.testing.assert_allclose(np.sort(mu_short)[-4:], 1.0, rtol=1e-8)
    np.testing.assert_allclose(np.sort(mu_short)[:-4], 0.0, atol=1e-8)


def test_zero_noise_is_infinite_for_visible_sources():
    W = mh("ring", 7)
    for mechanism in ("muffliato", "zipdl"):
        res = pairwise_network_mu(mechanism, W, [0], 2, 0.0, delta=1e-5)
        assert [u for u, r in res.items() if math.isinf(r["mu"])] == [1, 2, 5, 6]
        assert all(r["mu"] == 0 and r["epsilon"] == 0 for u, r in res.items() if u in (3, 4))
        assert all(math.isinf(r["epsilon"]) for u, r in res.items() if u in (1, 2, 5, 6))
    A, B = muffliato_view(W, [0], 2, 0.0)
    assert np.all(B == 0) and np.isinf(gaussian_view_mu(A, B)[[0, 1, 4, 5]]).all()


def test_out_of_range_mean_is_infinite():
    A = np.array([[1.0, 0.0], [0.0, 1.0]])
    B = np.array([[1.0], [1.0]])  # noise only along (1, 1)
    mu = gaussian_view_mu(A, B)
    assert np.isinf(mu).all()
    mu = gaussian_view_mu(np.array([[1.0], [1.0]]), B)
    assert mu[0] == pytest.approx(1.0)  # x + z seen twice: no better than once


def test_zipdl_view_is_finite_and_single_neighbour_is_per_message_noise():
    W = mh("regular", 6, degree=3, seed=1)
    res = pairwise_network_mu("zipdl", W, [0], 3, 1.0, delta=1e-5)
    assert all(math.isfinite(r["mu"]) and r["mu"] > 0 for r in res.values())
    # One step: neighbour u's message is x_u + Z_{u->0}, std^2 = (d-1)/d (Remark 3.4, d = 4)
    one = pairwise_network_mu("zipdl", W, [0], 1, 1.0)
    for u in np.flatnonzero(W[0] > 0):
        if u != 0:
            assert one[u]["mu"] == pytest.approx(1 / math.sqrt(3 / 4))


def test_per_pair_formula_reference_numbers_and_coalition():
    """Reference Sec. 4.3 worked numbers (alpha = 2, sigma = 1: eps(2) = mu^2)."""
    ring = mh("ring", 32)
    f = muffliato_pairwise_rdp_formula(ring, [0], 31, 1.0)
    assert f[16]["mu"] ** 2 == pytest.approx(8.7e-6, rel=0.01)
    assert f[6]["mu"] ** 2 == pytest.approx(0.59, abs=0.005)
    assert f[1]["mu"] == 1.0  # capped at local DP
    assert muffliato_pairwise_rdp_formula(ring, [0], 31, 1.0, cap=False)[1]["mu"] > 1
    exact = pairwise_network_mu("muffliato", ring, [0], 31, 1.0)
    assert exact[16]["mu"] == pytest.approx(1.0) and f[16]["mu"] < 0.01  # not a bound
    cube = from_networkx(nx.hypercube_graph(7)).plan(0).mixing_matrix("dense").double().numpy()
    f = muffliato_pairwise_rdp_formula(cube, [0], 10, 1.0)
    assert f[127]["mu"] ** 2 == pytest.approx(0.046, abs=0.001)  # antipodal node 1111111
    assert muffliato_mu(cube, [0], 10, 1.0)[126] == pytest.approx(1.0)
    assert sum(muffliato_mu(cube, [0], 10, 1.0) ** 2) == pytest.approx(43)  # rank 43
    assert muffliato_pairwise_rdp_formula(ring, [0, 1], 3, 1.0) is None


def test_gdp_epsilon():
    assert gdp_epsilon(0.0, 1e-5) == 0.0 and math.isinf(gdp_epsilon(math.inf, 1e-5))
    assert gdp_epsilon(1.0, 1e-5) == pytest.approx(analytic_gaussian_epsilon(1.0, 1e-5))
    assert gdp_epsilon(1.0, 1e-5) == pytest.approx(4.377178, abs=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"noise": -1.0}, "noise must be >= 0 and finite"),
        ({"noise": math.inf}, "noise must be >= 0 and finite"),
        ({"gossip_steps": 0}, "gossip_steps must be an integer >= 1"),
        ({"observers": [9]}, "observers must be nodes in [0, 5]"),
        ({"observers": []}, "observers must be a non-empty set"),
    ],
)
def test_bad_inputs(kwargs, message):
    args = {"W": mh("ring", 6), "observers": [0], "gossip_steps": 2, "noise": 1.0, **kwargs}
    with pytest.raises(ValueError) as info:
        muffliato_view(**args)
    assert message in str(info.value)
    with pytest.raises(ValueError, match="mechanism must be one of"):
        pairwise_network_mu("dp-sgd", mh("ring", 6), [0], 2, 1.0)


# --- DECOR (Allouah et al., ICML 2024), reference Sec. 4.4 / 4.6 -------------------------


def naive_decor(W, observers, sigma_cdp, sigma_cor):
    """One DECOR release per node as coefficients over (x, v, omega), then subtract."""
    n = len(W)
    edges = [(i, j) for i in range(n) for j in range(i + 1, n) if W[i, j] > 0 or W[j, i] > 0]
    nbrs = {i: {j for e in edges for j in e if i in e and j != i} for i in range(n)}
    release = []
    for i in range(n):
        v = [(1.0 if i == a else -1.0 if i == b else 0.0) for a, b in edges]
        release.append((np.eye(n)[i], sigma_cor * np.array(v), sigma_cdp * np.eye(n)[i]))
    party = set(observers)
    seen = sorted({w for o in observers for w in nbrs[o]} - party)
    keep_x = [u for u in range(n) if u not in party]
    keep_v = [k for k, (a, b) in enumerate(edges) if a not in party and b not in party]
    A = np.array([release[w][0][keep_x] for w in seen])
    B = np.array([np.concatenate([release[w][1][keep_v], release[w][2][keep_x]]) for w in seen])
    return A, B


@pytest.mark.parametrize(
    "pair, sigma_ldp",
    [((5, 16), 12.73), ((5, 12), 11.07), ((5, 100), 31.63), ((10, 12), 16.12), ((7, 10), 12.18)],
)
def test_decor_reference_table_256_ring(pair, sigma_ldp):
    W = mh("ring", 256)
    mu = decor_eavesdropper_mu(W, *pair)
    assert 1 / mu.max() == pytest.approx(sigma_ldp, abs=0.006)
    # Only the graph matters, not the weights.
    assert np.allclose(decor_eavesdropper_mu((W > 0).astype(float) * 7.0, *pair), mu)


@pytest.mark.parametrize("graph", ["ring-12", "petersen", "star-6"])
def test_decor_eavesdropper_equals_explicit_view(graph):
    G = {
        "ring-12": nx.cycle_graph(12),
        "petersen": nx.petersen_graph(),
        "star-6": nx.star_graph(5),
    }[graph]
    W = nx.to_numpy_array(G)
    n, edges = len(W), list(G.edges())
    E = np.zeros((n, len(edges)))
    for k, (i, j) in enumerate(edges):
        E[i, k], E[j, k] = 1.0, -1.0
    for sigma_cdp, sigma_cor in ((5.0, 12.0), (1.0, 0.0), (0.3, 4.0)):
        explicit = gaussian_view_mu(np.eye(n), np.hstack([sigma_cor * E, sigma_cdp * np.eye(n)]))
        assert np.allclose(decor_eavesdropper_mu(W, sigma_cdp, sigma_cor), explicit, rtol=1e-9)
    assert np.all(np.isinf(decor_eavesdropper_mu(W, 0.0, 3.0)))  # network sum noiseless


@pytest.mark.parametrize("observers", [[0], [3], [0, 5], [1, 2, 7]])
def test_decor_view_matches_naive(observers):
    W = mh("ring", 10) + 0.01 * nx.to_numpy_array(nx.petersen_graph())
    A, B = decor_view(W, observers, 2.0, 3.0)
    A2, B2 = naive_decor(W, observers, 2.0, 3.0)
    assert np.allclose(A, A2) and np.allclose(B, B2)


@pytest.mark.parametrize("eps", [3.0, 10.0, 40.0])
def test_decor_secldp_epsilon_inverts_reverse_eps(eps):
    T, delta = 5000, 1e-5
    L = math.log(1 / delta)
    eps_tilde = (math.sqrt(L + eps) - math.sqrt(L)) ** 2 / T
    W = mh("ring", 16)
    max_mu2 = float(decor_eavesdropper_mu(W, 5.0, 12.0).max()) ** 2
    clip = math.sqrt(eps_tilde / (2 * max_mu2))
    assert decor_secldp_epsilon(W, 5.0, 12.0, T, delta, clip=clip) == pytest.approx(eps, rel=1e-9)


def test_decor_secldp_reference_worked_numbers():
    # eps = 10 at T = 5000, delta = 1e-5: eps_tilde = 3.101e-4, sigma_LDP / C = 80.31.
    W = mh("ring", 16)
    assert decor_secldp_epsilon(W, 80.31, 0.0, 5000, 1e-5) == pytest.approx(10.0, rel=1e-3)
    mu = decor_eavesdropper_mu(W, 80.31, 0.0)
    assert 2 * mu.max() ** 2 == pytest.approx(3.101e-4, rel=1e-3)


@pytest.mark.parametrize(
    "graph", [nx.cycle_graph(16), nx.petersen_graph(), nx.random_regular_graph(3, 12, seed=0)]
)
def test_decor_single_neighbour_sees_less_than_eavesdropper(graph):
    # Every node has degree >= 2, so no single neighbour knows all of a node's secrets.
    W = nx.to_numpy_array(graph)
    n = len(W)
    eav = decor_eavesdropper_mu(W, 5.0, 12.0)
    for o in range(n):
        mu = gaussian_view_mu(*decor_view(W, [o], 5.0, 12.0))
        sources = [u for u in range(n) if u != o]
        assert np.all(mu <= eav[sources] * (1 + 1e-9))


def test_decor_coalition_of_all_neighbours_leaves_only_omega():
    sigma_cdp, sigma_cor = 5.0, 12.0
    eav_ring = decor_eavesdropper_mu(nx.to_numpy_array(nx.cycle_graph(16)), sigma_cdp, sigma_cor)
    for graph, u, party in (
        (nx.cycle_graph(16), 4, [3, 5]),
        (nx.petersen_graph(), 0, [1, 4, 5, 7]),
        (nx.star_graph(6), 3, [0]),  # the hub: a single neighbour covering a leaf
    ):
        W = nx.to_numpy_array(graph)
        mu = gaussian_view_mu(*decor_view(W, party, sigma_cdp, sigma_cor))
        sources = [v for v in range(len(W)) if v not in party]
        assert mu[sources.index(u)] == pytest.approx(1 / sigma_cdp, rel=1e-9)
    # ... which is more than the eavesdropper learns (1/12.73 on the 256-ring; 16-ring here).
    assert 1 / sigma_cdp > eav_ring.max()


def test_decor_bad_inputs():
    W = nx.to_numpy_array(nx.cycle_graph(5))
    with pytest.raises(ValueError):
        decor_view(W, [], 1.0, 1.0)
    with pytest.raises(ValueError):
        decor_eavesdropper_mu(W, -1.0, 1.0)
    with pytest.raises(ValueError):
        decor_secldp_epsilon(W, 1.0, 1.0, 0, 1e-5)
