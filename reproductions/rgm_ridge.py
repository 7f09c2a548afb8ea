"""Reproduction: private gradient descent on ridge regression with the Relative Gaussian mechanism.

Reproduces the experiment of Hendrikx, Mangold, Bellet, "The Relative Gaussian Mechanism
and its Application to Private Gradient Descent", AISTATS 2024 (arXiv:2308.15250; code
``HadrienHx/RGM`` 953a4314, ``main.py``): full-batch gradient descent on

    f(x) = ||X x - y||^2 / (2 n) + lam ||x||^2 / 2,   gradient g(x) = A x - b,
    A = X^T X / n + lam I,  b = X^T y / n,

with lam = 3e-2, step 0.5 / L (L = largest eigenvalue of A, the code's
``get_smoothness``), T = 40 iterations from x_0 = 0, comparing

* RGM: ``x_{t+1} = x_t - eta (g + N(0, (k (Delta ||g|| + R))^2 I))`` with (Delta, R) from
  ``privlab.mechanisms.relative_gaussian.ridge_sensitivity`` (the authors' formula, without
  their ``remove_mean``), k calibrated so that T compositions of
  ``RelativeGaussianEvent(k, Delta, R, d)`` give exactly the target (epsilon, delta) under
  privlab's RDPAccountant;
* clipped GD: per-sample gradients of the data term ``h_i = x_i (x_i^T x - y_i)`` clipped
  to norm C, averaged over n, plus the (data-independent) ``lam x``, plus
  ``N(0, (sigma C / n)^2 I)``, sigma from ``calibrate_noise_multiplier`` (sample rate 1,
  T steps), best of several C per budget;
* non-private GD with the same step.

Reported: the excess loss f(x_T) - f(x*) (x* the exact ridge solution), averaged over seeds.

Adjacency (both private methods): one sample removed *with the denominator kept at n*,
i.e. (x_j, y_j) replaced by (0, 0), the convention of ``ridge_sensitivity``'s docstring.
Under it the ridge gradient changes by ``(x_j x_j^T x - x_j y_j) / n``, bounded by
``Delta ||g|| + R``; the clipped average changes by at most ``C / n`` (the zeroed sample's
clipped gradient is 0), so sigma is a noise multiplier for sensitivity ``C / n``. The
constants Delta, R, n and the feature/label bounds are computed from, or fixed for, the
data and treated as public (as in the authors' code).

Differences from the authors' setup:

* data: their ijcnn1 (LIBSVM, 10^4 samples, 22 features) is not bundled and privlab never
  downloads, so we use (a) scikit-learn's breast_cancer (569 x 30; z-scored features, each
  row scaled to norm <= 1, labels {-1, +1} as regression targets) and (b) a synthetic
  linear regression set (n = 2000, d = 20, Gaussian rows scaled to norm <= 1,
  y = X w* + N(0, 0.05^2) with ||w*|| = 1, clipped to [-1, 1]);
* one party: their run splits the data into two "clients" whose noisy steps are averaged;
  here a single data holder runs the mechanism the paper studies;
* budgets: they set eps = 0.1 at Renyi order alpha = 2 *per step* (noise multiplier
  sqrt(alpha / eps)) and never compose; here each budget is a *total* (epsilon, delta =
  1e-5) over the T steps, by RDP composition and the Balle et al. 2020 conversion, and
  both methods are calibrated to it exactly;
* RDP of the RGM: privlab's first-principles worst case (``accounting/relative_gaussian``;
  the paper's theorem was not available). Its variance-mismatch term, about
  ``alpha d Delta^2`` per step, does not vanish as k grows, so the total epsilon has a
  floor: budgets at or below it are *unreachable* for the RGM at any noise, and are
  reported as such;
* Delta > 1 would silently disable the authors' noiser; here Delta >= 1 is an error;
* clipping: the authors clip per-sample gradients that include ``lam x`` (divided by n) at
  C = c_fac * C0, c_fac in {10, 1, 0.1}, C0 the Frobenius norm of the stacked per-sample
  gradients at x* (a quirk: not the largest per-sample norm). We clip only the data term
  and try those three levels plus C in {1, 0.3, 0.1, 0.03, 0.01} x G, G the largest
  per-sample gradient norm at x*, and report the best C per budget: picking C on the data
  (and on the outcome) is optimistic for the baseline and not itself private.

Usage: ``python reproductions/rgm_ridge.py [--json FILE] [--iterations T]
[--budgets 1,2,4,8] [--quick]`` (``--quick``: 3 seeds instead of 5).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from privlab.accounting import (
    RDPAccountant,
    RelativeGaussianEvent,
    SelfComposedEvent,
    calibrate,
    calibrate_noise_multiplier,
)
from privlab.data import load_dataset
from privlab.errors import PrivlabError
from privlab.mechanisms.relative_gaussian import ridge_sensitivity

LAM = 3e-2
DELTA = 1e-5
ITERATIONS = 40
BUDGETS = (1.0, 2.0, 4.0, 8.0)
AUTHORS_C_FACTORS = (10.0, 1.0, 0.1)
G_FACTORS = (1.0, 0.3, 0.1, 0.03, 0.01)
K_MAX = 1e6  # largest noise multiplier tried; the floor is epsilon there


# -- data -----------------------------------------------------------------------------------


def _rows_in_unit_ball(X: np.ndarray) -> np.ndarray:
    return X / np.maximum(1.0, np.linalg.norm(X, axis=1))[:, None]


def breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    """z-scored features (privlab's loader), rows scaled to norm <= 1, labels in {-1, +1}."""
    ds = load_dataset("breast_cancer")
    X = _rows_in_unit_ball(ds.X.numpy().astype(np.float64))
    return X, 2.0 * ds.y.numpy().astype(np.float64) - 1.0


def synthetic(n: int = 2000, d: int = 20, noise: float = 0.05, seed: int = 0):
    """Gaussian rows scaled to norm <= 1, y = X w* + noise (||w*|| = 1), clipped to [-1, 1]."""
    rng = np.random.default_rng(seed)
    X = _rows_in_unit_ball(rng.normal(size=(n, d)))
    w = rng.normal(size=d)
    w /= np.linalg.norm(w)
    y = np.clip(X @ w + noise * rng.normal(size=n), -1.0, 1.0)
    return X, y


DATASETS = {"breast_cancer": breast_cancer, "synthetic": synthetic}


# -- the ridge problem ----------------------------------------------------------------------


class Ridge:
    def __init__(self, X: np.ndarray, y: np.ndarray, lam: float = LAM):
        self.X, self.y, self.lam = X, y, lam
        self.n, self.d = X.shape
        self.A = X.T @ X / self.n + lam * np.eye(self.d)
        self.b = X.T @ y / self.n
        self.x_star = np.linalg.solve(self.A, self.b)
        self.f_star = self.loss(self.x_star)
        self.step = 0.5 / float(np.linalg.eigvalsh(self.A).max())

    def loss(self, x: np.ndarray) -> float:
        r = self.X @ x - self.y
        return float(r @ r / (2 * self.n) + self.lam * x @ x / 2)

    def excess(self, x: np.ndarray) -> float:
        # 0.5 (x - x*)^T A (x - x*) equals f(x) - f(x*) exactly; no cancellation error
        e = x - self.x_star
        return float(0.5 * e @ self.A @ e)

    def gradient(self, x: np.ndarray) -> np.ndarray:
        return self.A @ x - self.b

    def per_sample(self, x: np.ndarray) -> np.ndarray:
        """``[n, d]`` gradients of the data term, ``x_i (x_i^T x - y_i)``."""
        return self.X * (self.X @ x - self.y)[:, None]

    def clip_levels(self) -> dict[str, float]:
        h = self.per_sample(self.x_star)
        frob = float(np.linalg.norm(h + self.lam * self.x_star))  # authors' C0, per-sample scale
        g = float(np.linalg.norm(h, axis=1).max())
        levels = {f"{c:g} x C0": c * frob for c in AUTHORS_C_FACTORS}
        levels.update({f"{c:g} x G": c * g for c in G_FACTORS})
        return levels


# -- gradient descent -----------------------------------------------------------------------


def run_gd(problem: Ridge, iterations: int, noisy_gradient=None) -> float:
    x = np.zeros(problem.d)
    for _ in range(iterations):
        g = problem.gradient(x) if noisy_gradient is None else noisy_gradient(x)
        x = x - problem.step * g
    return problem.excess(x)


def rgm_gradient(problem: Ridge, k: float, delta: float, r: float, rng):
    def noisy(x):
        g = problem.gradient(x)
        std = k * (delta * np.linalg.norm(g) + r)
        return g + std * rng.normal(size=problem.d)

    return noisy


def clipped_gradient(problem: Ridge, clip: float, sigma: float, rng):
    def noisy(x):
        h = problem.per_sample(x)
        norms = np.linalg.norm(h, axis=1)
        h = h * np.minimum(1.0, clip / np.maximum(norms, 1e-300))[:, None]
        g = h.sum(axis=0) / problem.n + problem.lam * x
        return g + (sigma * clip / problem.n) * rng.normal(size=problem.d)

    return noisy


# -- accounting -----------------------------------------------------------------------------


def rgm_epsilon(k: float, delta_rel: float, r: float, d: int, iterations: int) -> float:
    event = SelfComposedEvent(RelativeGaussianEvent(k, delta_rel, r, d), iterations)
    return RDPAccountant().compose(event).get_epsilon(DELTA)


def gaussian_epsilon(sigma: float, iterations: int) -> float:
    from privlab.accounting import GaussianEvent

    event = SelfComposedEvent(GaussianEvent(sigma), iterations)
    return RDPAccountant().compose(event).get_epsilon(DELTA)


def calibrate_rgm(target: float, delta_rel: float, r: float, d: int, iterations: int):
    """Noise multiplier k meeting ``target``, or None when below the RDP floor."""

    def make(k: float):
        return SelfComposedEvent(RelativeGaussianEvent(k, delta_rel, r, d), iterations)

    try:
        return calibrate(make, target, DELTA, max_param=K_MAX)
    except PrivlabError:
        return None


# -- the experiment -------------------------------------------------------------------------


def _mean(values: list[float]) -> float:
    return float(np.mean(values))


def run(
    budgets=BUDGETS,
    iterations: int = ITERATIONS,
    seeds: int = 5,
    datasets=tuple(DATASETS),
) -> dict:
    """All numbers, as a JSON-able dict (``results``: one row per dataset and budget)."""
    sigmas = {eps: calibrate_noise_multiplier(eps, DELTA, 1.0, iterations) for eps in budgets}
    out = {
        "config": {
            "lam": LAM,
            "delta": DELTA,
            "iterations": iterations,
            "seeds": seeds,
            "budgets": list(budgets),
            "adjacency": "remove one sample, denominator kept at n ((x_j, y_j) -> (0, 0))",
        },
        "datasets": {},
        "results": [],
    }
    for name in datasets:
        problem = Ridge(*DATASETS[name]())
        delta_rel, r = ridge_sensitivity(problem.X, problem.y, LAM)
        floor = rgm_epsilon(K_MAX, delta_rel, r, problem.d, iterations)
        levels = problem.clip_levels()
        nonprivate = run_gd(problem, iterations)
        out["datasets"][name] = {
            "n": problem.n,
            "d": problem.d,
            "Delta": delta_rel,
            "R": r,
            "step": problem.step,
            "f_star": problem.f_star,
            "rgm_epsilon_floor": floor,
            "clip_levels": levels,
            "initial_excess": problem.excess(np.zeros(problem.d)),
            "nonprivate_excess": nonprivate,
        }
        for eps in budgets:
            row = {"dataset": name, "epsilon": eps, "nonprivate_excess": nonprivate}
            k = calibrate_rgm(eps, delta_rel, r, problem.d, iterations)
            row["rgm_k"] = k
            row["rgm_reachable"] = k is not None
            if k is None:
                row["rgm_epsilon"] = row["rgm_excess"] = row["rgm_excess_std"] = None
            else:
                row["rgm_epsilon"] = rgm_epsilon(k, delta_rel, r, problem.d, iterations)
                runs = [
                    run_gd(problem, iterations, rgm_gradient(problem, k, delta_rel, r, rng))
                    for rng in (np.random.default_rng([s, 0]) for s in range(seeds))
                ]
                row["rgm_excess"], row["rgm_excess_std"] = _mean(runs), float(np.std(runs))
            sigma = sigmas[eps]
            row["clip_sigma"] = sigma
            row["clip_epsilon"] = gaussian_epsilon(sigma, iterations)
            by_level = {}
            for label, c in levels.items():
                runs = [
                    run_gd(problem, iterations, clipped_gradient(problem, c, sigma, rng))
                    for rng in (np.random.default_rng([s, 1]) for s in range(seeds))
                ]
                by_level[label] = {"C": c, "excess": _mean(runs), "excess_std": float(np.std(runs))}
            best = min(by_level, key=lambda lab: by_level[lab]["excess"])
            row["clip_by_level"] = by_level
            row["clip_best_level"] = best
            row["clip_best_C"] = by_level[best]["C"]
            row["clip_excess"] = by_level[best]["excess"]
            authors = [f"{c:g} x C0" for c in AUTHORS_C_FACTORS]
            best_authors = min(authors, key=lambda lab: by_level[lab]["excess"])
            row["clip_authors_best_level"] = best_authors
            row["clip_authors_excess"] = by_level[best_authors]["excess"]
            out["results"].append(row)
    return out


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.3g}"


def table(out: dict) -> str:
    lines = [
        "| dataset | epsilon | excess RGM | excess clipped GD (best C) | best C "
        "| clipped GD, authors' C levels only | non-private |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in out["results"]:
        if row["rgm_reachable"]:
            rgm = f"{row['rgm_excess']:.3g} ± {row['rgm_excess_std']:.2g}"
        else:
            floor = out["datasets"][row["dataset"]]["rgm_epsilon_floor"]
            rgm = f"unreachable (floor {floor:.3g})"
        lines.append(
            f"| {row['dataset']} | {row['epsilon']:g} | {rgm} | {_fmt(row['clip_excess'])} "
            f"| {row['clip_best_level']} = {row['clip_best_C']:.3g} "
            f"| {_fmt(row['clip_authors_excess'])} ({row['clip_authors_best_level']}) "
            f"| {_fmt(row['nonprivate_excess'])} |"
        )
    notes = [
        f"- {name}: n={info['n']}, d={info['d']}, Delta={info['Delta']:.4g}, "
        f"R={info['R']:.4g}, step={info['step']:.4g}, f(0) - f* = {info['initial_excess']:.3g}, "
        "RGM epsilon floor "
        f"(k={K_MAX:g}) = {info['rgm_epsilon_floor']:.4g}"
        for name, info in out["datasets"].items()
    ]
    return "\n".join(lines + [""] + notes)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write all numbers to this file")
    parser.add_argument("--iterations", type=int, default=ITERATIONS)
    parser.add_argument("--budgets", default=",".join(f"{b:g}" for b in BUDGETS))
    parser.add_argument("--quick", action="store_true", help="3 seeds instead of 5")
    args = parser.parse_args(argv)
    budgets = [float(b) for b in args.budgets.split(",") if b.strip()]
    out = run(budgets, args.iterations, seeds=3 if args.quick else 5)
    print(
        f"Private ridge GD (lam={LAM:g}, T={args.iterations}, delta={DELTA:g}); "
        "excess loss f(x_T) - f(x*), mean ± std over seeds\n"
    )
    print(table(out))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2, allow_nan=True)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
