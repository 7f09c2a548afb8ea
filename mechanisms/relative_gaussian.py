"""Relative Gaussian mechanism for full-batch gradient descent on every node.

Hendrikx, Mangold, Bellet, "The Relative Gaussian Mechanism and its Application to
Private Gradient Descent", AISTATS 2024 (arXiv:2308.15250). If a node's full-batch
gradient has the *affine relative L2 sensitivity*

    ||g_D(x) - g_D'(x)|| <= Delta ||g_D(x)|| + R     for all parameters x,

for every neighbouring data set D' of the node's data D, releasing
``g + N(0, s^2 I_D)`` with ``s = k (Delta ||g|| + R)`` is the Relative Gaussian
mechanism; its Renyi DP (``privlab.accounting.relative_gaussian``) depends on k, Delta
and the dimension D. With Delta = 0 it is the Gaussian mechanism of sensitivity R and
noise multiplier k.

Each step every node computes its gradient on its whole data (mean loss), receives noise
from its own random stream and emits one ``RelativeGaussianEvent(k, Delta_i, R_i, D)``.

Where Delta and R come from: options (one float for every node, or one value per node),
or, when both are left out and the model is privlab's ``logreg`` (a Flatten and one
Linear layer), ``logreg_sensitivity`` computed per node from the node's features (Delta =
0: the Gaussian mechanism of sensitivity R). This module computes them for two models:

* ``logreg_sensitivity``: privlab's ``logreg`` model (multinomial logistic regression,
  mean cross-entropy), per node, from the node's features;
* ``ridge_sensitivity``: ridge regression, the authors' formula.

For any other model (``mlp``, ``cnn``) the user must supply a bound they can prove.

Not copied from the authors' code (``HadrienHx/RGM``, ``noisers.py``): there, Delta > 1
silently disables the noiser and the parameters stop moving; here Delta >= 1 is an
error (the noise could then not bound the change of the output's variance, and the RDP
is infinite at every order > 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from privlab.accounting.events import PrivacyEvent, RelativeGaussianEvent
from privlab.context import RoundContext
from privlab.errors import PrivlabError, check, check_positive_finite, is_real
from privlab.gradient import GRADIENT_MECHANISMS, GradientMechanism
from privlab.sampling import Batch

__all__ = ["RelativeGaussian", "logreg_sensitivity", "ridge_sensitivity"]

PURPOSE = "relative-gaussian"
DELTA_RANGE = (
    "in [0, 1) (with Delta >= 1 the noise cannot bound how much the output's noise level "
    "changes between neighbours, so the RDP is infinite; the authors' code silently stops "
    "updating instead)"
)
LOGREG_HINT = (
    "give both relative_sensitivity and absolute_sensitivity (floats, or one value per "
    "node) as a bound you can prove for your model, or neither with model 'logreg' (then "
    "they are computed per node by logreg_sensitivity)"
)

Sensitivity = float | Sequence[float] | torch.Tensor | np.ndarray


def _check_delta(value: object, field: str = "relative_sensitivity") -> None:
    ok = is_real(value) and math.isfinite(value) and 0.0 <= value < 1.0
    check(ok, field, DELTA_RANGE, value)


def _check_r(value: object, field: str = "absolute_sensitivity") -> None:
    check(is_real(value) and math.isfinite(value) and value >= 0.0, field, ">= 0 and finite", value)


def _values(value: Sensitivity, field: str, check_one) -> float | tuple[float, ...]:
    """A float, or a tuple of per-node floats, each validated by ``check_one``."""
    if isinstance(value, torch.Tensor | np.ndarray):
        value = value.tolist()
    if isinstance(value, Sequence) and not isinstance(value, str):
        check(len(value) > 0, field, "a float or a non-empty sequence of per-node floats", value)
        for i, v in enumerate(value):
            check_one(v, f"{field}[{i}]")
        return tuple(float(v) for v in value)
    check_one(value, field)
    return float(value)


@GRADIENT_MECHANISMS.register("relative-gaussian")
class RelativeGaussian(GradientMechanism):
    """Relative Gaussian mechanism (Hendrikx, Mangold, Bellet, AISTATS 2024) on full batches.

    ``noise_multiplier`` k > 0; ``relative_sensitivity`` Delta in [0, 1) and
    ``absolute_sensitivity`` R >= 0, each a float for every node or a sequence of one
    value per node (e.g. from ``logreg_sensitivity``). Both are required: see the module
    docstring. Node i's gradient g_i (the mean loss gradient over all its samples) gets
    ``N(0, s_i^2 I)`` with ``s_i = k (Delta_i ||g_i|| + R_i)`` from its own stream.

    The constants are fixed for the run: the guarantee is for neighbours of the data they
    were computed for (the same noise rule is applied to D and D'). Constants computed
    from the node's own data (as ``logreg_sensitivity`` and the authors' ridge code do)
    treat the data's feature-norm bound and the node's size as public.
    """

    def __init__(
        self,
        noise_multiplier: float = 4.0,
        relative_sensitivity: Sensitivity | None = None,
        absolute_sensitivity: Sensitivity | None = None,
    ):
        check_positive_finite(noise_multiplier, "noise_multiplier")
        if (relative_sensitivity is None) != (absolute_sensitivity is None):
            missing = "relative_sensitivity" if relative_sensitivity is None else ""
            missing = missing or "absolute_sensitivity"
            raise PrivlabError(f"relative-gaussian needs {missing} too: {LOGREG_HINT}")
        self.noise_multiplier = float(noise_multiplier)
        self.relative_sensitivity = self.absolute_sensitivity = None
        if relative_sensitivity is not None:
            self.relative_sensitivity = _values(
                relative_sensitivity, "relative_sensitivity", _check_delta
            )
            self.absolute_sensitivity = _values(
                absolute_sensitivity, "absolute_sensitivity", _check_r
            )

    def _per_node(self, value: float | tuple[float, ...], field: str, n: int) -> torch.Tensor:
        device = self.context.device
        if isinstance(value, tuple):
            check(len(value) == n, field, f"a float or {n} per-node values", f"{len(value)} values")
            return torch.tensor(value, dtype=torch.float64, device=device)
        return torch.full((n,), value, dtype=torch.float64, device=device)

    def setup(self, context: RoundContext) -> None:
        super().setup(context)
        n = context.num_nodes
        if self.relative_sensitivity is None:
            self.deltas, self.radii = self._logreg_sensitivity(context)
        else:
            self.deltas = self._per_node(self.relative_sensitivity, "relative_sensitivity", n)
            self.radii = self._per_node(self.absolute_sensitivity, "absolute_sensitivity", n)
        self._deltas32, self._radii32 = self.deltas.float(), self.radii.float()
        self.events = self._events_by_sensitivity(context.dim)
        sizes, padded = context.node_sizes, context.node_indices
        check(bool((sizes >= 1).all()), "node sizes", ">= 1 for full-batch gradients", sizes)
        real = torch.arange(padded.shape[1], device=padded.device).unsqueeze(0) < sizes.unsqueeze(1)
        # padding reads the node's first sample (a valid index) with weight 0
        self._indices = torch.where(real, padded, padded[:, :1])
        self._weights = real / sizes.unsqueeze(1).to(torch.float32)

    @staticmethod
    def _logreg_sensitivity(context: RoundContext) -> tuple[torch.Tensor, torch.Tensor]:
        """``logreg_sensitivity`` of every node, when the model is a logistic regression."""
        model = context.model
        layers = [m for m in model.children()] if isinstance(model, nn.Sequential) else []
        is_logreg = [type(m) for m in layers] == [nn.Flatten, nn.Linear]
        if not is_logreg or context.features is None:
            raise PrivlabError(
                f"relative-gaussian computes its sensitivity for model 'logreg' only: {LOGREG_HINT}"
            )
        deltas, radii = logreg_sensitivity(
            context.features, context.node_indices, context.node_sizes
        )
        return deltas.to(torch.float64), radii.to(torch.float64)

    def _events_by_sensitivity(self, dim: int) -> list[tuple[PrivacyEvent, torch.Tensor | None]]:
        """One event per distinct (Delta, R), with its nodes (None: every node)."""
        pairs = torch.stack([self.deltas, self.radii], dim=1)
        unique, group = torch.unique(pairs, dim=0, return_inverse=True)
        events = []
        for g, (delta, r) in enumerate(unique.tolist()):
            event = RelativeGaussianEvent(self.noise_multiplier, delta, r, dim)
            nodes = None if len(unique) == 1 else (group == g).nonzero().flatten()
            events.append((event, nodes))
        return events

    def batch(self, round: int, step: int, nodes: torch.Tensor) -> Batch:
        """Every node's whole data, weights ``1 / m_i`` (0 on padding): the mean loss."""
        return Batch(self._indices[nodes], self._weights[nodes])

    def noise_std(self, grads: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        """``[k]`` per-node noise std ``k (Delta_i ||g_i|| + R_i)``."""
        norms = grads.norm(dim=1)
        return self.noise_multiplier * (self._deltas32[nodes] * norms + self._radii32[nodes])

    def privatize(
        self, grads: torch.Tensor, round: int, step: int, nodes: torch.Tensor
    ) -> torch.Tensor:
        """Add ``N(0, s_i^2 I)`` to node i's gradient, from the node's own stream."""
        std = self.noise_std(grads, nodes)
        noise = self.context.streams.normal(PURPOSE, round, step, nodes.tolist(), grads.shape[1])
        return grads.add_(noise.mul_(std.unsqueeze(1)))

    def account(self, round: int, step: int) -> None:
        for event, nodes in self.events:
            self.context.emit_event(event, nodes)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "noise_multiplier": self.noise_multiplier,
            "relative_sensitivity": _jsonable(self.relative_sensitivity, self.deltas),
            "absolute_sensitivity": _jsonable(self.absolute_sensitivity, self.radii),
        }


def _jsonable(value: float | tuple[float, ...] | None, used: torch.Tensor) -> object:
    """The option as given, or what was computed per node (min and max) when not given."""
    if value is None:
        return {"computed_for": "logreg", "min": float(used.min()), "max": float(used.max())}
    return list(value) if isinstance(value, tuple) else value


# -- sensitivities ------------------------------------------------------------------------


def logreg_sensitivity(
    X: torch.Tensor,
    node_indices: torch.Tensor,
    node_sizes: torch.Tensor,
    relative: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-node (Delta ``[n]``, R ``[n]``) of privlab's ``logreg`` full-batch gradient.

    ``X`` the dataset's features (flattened per sample), ``node_indices`` / ``node_sizes``
    as ``FederatedData.padded_node_indices()`` gives them (padding ignored).

    Model: logits ``W x + b``, loss the node's mean cross-entropy over its m samples. The
    gradient of sample j w.r.t. (W, b) is ``(p_j - e_{y_j}) (x_j, 1)^T``, of norm
    ``||p - e_y|| sqrt(||x_j||^2 + 1)``, and ``||p - e_y||^2 = (1 - p_y)^2 + sum_{c != y}
    p_c^2 <= 2 (1 - p_y)^2 < 2``, so ``||g_j|| < G := sqrt(2) max_j sqrt(||x_j||^2 + 1)``
    at every parameter point.

    Adjacency: add/remove one sample of the node (m -> m - 1 or m + 1), with any added
    sample's norm at most the node's largest (this norm bound, like m, is treated as
    public; give a data-independent bound yourself for a strict guarantee).

    * Removing j: ``g_D - g_{D-j} = (g_j - mean_{k != j} g_k) / m``
      ``= (g_j - g_D) / (m - 1)``.
    * Adding z: ``g_D - g_{D+z} = (g_D - g_z) / (m + 1)``.

    ``relative=False`` (default): by the first form, ``||.|| <= 2 G / m`` (and
    ``2 G / (m + 1)`` for an addition): Delta = 0, ``R = 2 G / m``, the Gaussian
    mechanism. ``relative=True``: by the second form, ``||.|| <= (||g_D|| + G) / (m - 1)``:
    Delta = ``1 / (m - 1)``, ``R = G / (m - 1)``, needs m >= 3. The gradient is not affine
    in the parameters, so there is no Delta that shrinks with the data like ridge's; the
    relative form only trades half the noise near a stationary point for Delta's
    dimension-dependent RDP term (``alpha D Delta^2``), rarely worth it for large D.
    """
    X = torch.as_tensor(X).reshape(len(X), -1).to(torch.float64)
    sizes = torch.as_tensor(node_sizes).to(torch.int64)
    padded = torch.as_tensor(node_indices).to(torch.int64)
    check(bool((sizes >= 1).all()), "node sizes", ">= 1", sizes.tolist())
    real = torch.arange(padded.shape[1], device=padded.device).unsqueeze(0) < sizes.unsqueeze(1)
    norms = (X.pow(2).sum(dim=1) + 1.0).sqrt()
    per_sample = torch.where(real, norms[padded.clamp(min=0)], 0.0)
    G = math.sqrt(2.0) * per_sample.max(dim=1).values
    m = sizes.to(torch.float64)
    if not relative:
        return torch.zeros_like(m), 2.0 * G / m
    check(bool((sizes >= 3).all()), "node sizes", ">= 3 for the relative form", sizes.tolist())
    return 1.0 / (m - 1.0), G / (m - 1.0)


def ridge_sensitivity(
    X: np.ndarray, y: np.ndarray, lam: float, remove_mean: bool = False
) -> tuple[float, float]:
    """(Delta, R) of the ridge gradient ``g_D(x) = A x - b``, the authors' formula.

    ``A = X^T X / n + lam I``, ``b = X^T y / n`` (n samples, rows x_i):
    ``Delta = max_i ||x_i|| ||A^{-1} x_i|| / n`` and ``R = Delta ||b|| + max_i ||x_i y_i|| / n``
    (``noisers.py``: ``get_delta``, ``get_R_star``, HadrienHx/RGM 953a4314).

    Adjacency: sample j removed *with the denominator kept at n* (equivalently, (x_j, y_j)
    replaced by (0, 0)), so ``g_D(x) - g_D'(x) = (x_j x_j^T x - x_j y_j) / n``. Writing
    ``x = A^{-1}(g_D(x) + b)`` and using A symmetric,
    ``|x_j^T A^{-1}(g + b)| <= ||A^{-1} x_j|| (||g|| + ||b||)``, hence
    ``||g_D(x) - g_D'(x)|| <= Delta ||g_D(x)|| + R`` for every x. The constants come
    from D itself (a data-dependent bound, as in the authors' code). Under removal with
    the denominator going to n - 1 the change is ``(h_j - mean h) / (n - 1)`` and this
    bound does not apply as is.

    ``remove_mean=True`` reproduces the code's default exactly: Delta uses
    ``x_i - mean(X)`` in place of x_i (A and b unchanged). We could not derive that
    variant for any adjacency, so it is off by default. The code's ``filter_outliers``
    with its default quantile 1 changes nothing and is not reproduced.
    """
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float).reshape(-1)
    check(X.ndim == 2 and len(X) == len(y) and len(y) >= 1, "X, y", "[n, d] and [n]", X.shape)
    check(is_real(lam) and math.isfinite(lam) and lam > 0, "lam", "> 0 and finite", lam)
    n, d = X.shape
    A = X.T @ X / n + lam * np.eye(d)
    b = X.T @ y / n
    centered = X - X.mean(axis=0) if remove_mean else X
    solved = np.linalg.solve(A, centered.T).T  # rows A^{-1} x_i
    delta = float(np.max(np.linalg.norm(centered, axis=1) * np.linalg.norm(solved, axis=1)) / n)
    r = delta * float(np.linalg.norm(b)) + float(np.max(np.linalg.norm(X * y[:, None], axis=1)) / n)
    return delta, r
