"""Gradient inversion: recover a victim's training inputs from its gradient or model update.

Three families, cheapest first:

* label recovery from the last layer's gradient (iDLG, Zhao, Mopuri and Bilen 2020;
  a bias-count rule for batches);
* exact analytic inversion of a fully connected layer with a bias (Phong, Aono, Hayashi,
  Wang and Moriai 2018; Geiping, Bauermeister, Droege and Moeller 2020);
* optimisation attacks, :class:`GradientInversion`: find inputs whose gradient (DLG, Zhu,
  Liu and Han 2019; Inverting Gradients, Geiping et al. 2020) or whose K-step local SGD
  update (Geiping et al. 2020, federated averaging; Dimitrov, Balunovic, Konstantinov and
  Vechev 2022, "Data leakage in federated averaging") matches the observed one.

Models are flat ``[D]`` parameter vectors laid out by :class:`privlab.state.ParamSpec`; the
victim's loss is the mean cross-entropy of its batch, as in :mod:`privlab.training`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from privlab.errors import PrivlabError, check, is_integer, is_real
from privlab.state import ParamSpec

OBJECTIVES = ("cosine", "l2")
OPTIMIZERS = ("adam-signed", "lbfgs")
OBSERVED_KINDS = ("gradient", "update")
LBFGS_INNER_ITERATIONS = 20
"""Inner iterations of one L-BFGS step; the box projection happens between steps."""
LR_DECAY_POINTS = (3 / 8, 5 / 8, 7 / 8)
"""Fractions of the run where signed Adam's learning rate drops by 10x (Geiping et al. 2020)."""


def recover_labels_idlg(last_weight_grad: torch.Tensor) -> torch.Tensor:
    """The label of a batch of one from the gradient ``[C, H]`` of the last linear weight.

    iDLG (Zhao, Mopuri and Bilen 2020, Sec. 3): with softmax cross-entropy, row ``c`` of
    the gradient is ``(p_c - 1{c = y}) h`` for the penultimate features ``h``; when ``h``
    is non-negative (after ReLU, sigmoid, max-pooling) only the true class's row has a
    negative sum. Returns ``tensor([argmin_c sum_j grad[c, j]])``. Batch size 1 only.
    """
    check(last_weight_grad.dim() == 2, "last_weight_grad", "a 2-D [C, H] tensor", "")
    return last_weight_grad.sum(dim=1).argmin().reshape(1)


def recover_labels_bias(last_bias_grad: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` labels of a batch (sorted) from the gradient ``[C]`` of the last bias.

    The mean cross-entropy of a batch of ``B = count`` samples has last-bias gradient
    ``g_c = pbar_c - n_c / B``, with ``pbar_c`` the batch mean of the predicted
    probability of class c and ``n_c`` its count: the classes in the batch are the ones
    with negative entries (the "analytic" rule of Geiping's breaching, after iDLG). To
    count repeated labels, pick greedily: take the class with the most negative ``g_c``,
    add ``1 / B`` to it (the one-hot share of one sample), repeat ``count`` times (the
    count-correction of Wainakh et al. 2022, "User-level label leakage").

    Limits: the rule is exact when every ``pbar_c < 1 / B`` (e.g. an untrained model
    with ``B`` below the number of classes); a class the model already predicts with
    batch-mean probability ``>= n_c / B`` is under-counted (a trained model, large
    batches), and the missing picks go to classes of lowest predicted probability.
    """
    check(last_bias_grad.dim() == 1, "last_bias_grad", "a 1-D [C] tensor", "")
    check(is_integer(count) and count >= 1, "count", "an integer >= 1", count)
    remaining = last_bias_grad.detach().double().clone()
    labels = []
    for _ in range(count):
        label = int(remaining.argmin())
        labels.append(label)
        remaining[label] += 1.0 / count
    return torch.tensor(sorted(labels), dtype=torch.int64)


def invert_linear(weight_grad: torch.Tensor, bias_grad: torch.Tensor) -> torch.Tensor:
    """The input ``[I]`` of a linear layer ``y = W x + b`` from its gradients ``[O, I]``, ``[O]``.

    Phong et al. 2018; Geiping et al. 2020 ("any input to a fully connected layer can be
    reconstructed analytically"): for a batch of one, ``dL/dW = (dL/dy) x^T``
    and ``dL/db = dL/dy``, so ``x = dL/dW_i / dL/db_i`` for every row i with a nonzero
    bias gradient. All rows are used at once, as the least-squares fit
    ``x = dW^T db / ||db||^2`` (exact for a batch of one, in float64).

    For a batch of ``B > 1`` the gradients are averages and the result is a mixture
    ``sum_b c_b x_b`` of the batch's inputs with weights ``c_b`` summing to 1 (not any
    single input): separating them needs other attacks.
    """
    check(weight_grad.dim() == 2, "weight_grad", "a 2-D [O, I] tensor", tuple(weight_grad.shape))
    check(
        bias_grad.shape == weight_grad.shape[:1],
        "bias_grad",
        f"of shape [{weight_grad.shape[0]}]",
        tuple(bias_grad.shape),
    )
    db = bias_grad.detach().double()
    energy = float(db.square().sum())
    check(energy > 0, "bias_grad", "nonzero in at least one row", "all zeros")
    return (weight_grad.detach().double().T @ db / energy).to(weight_grad.dtype)


def invert_linear_observed(
    weight_grad: torch.Tensor,
    bias_grad: torch.Tensor,
    weight_seen: torch.Tensor,
    bias_seen: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``invert_linear`` when only some gradient entries are observed (mask-aware: a
    Shatter chunk, a sparsified message): ``(x[I], recovered[I])``.

    Input ``j`` is recovered from the rows ``i`` whose bias gradient and weight gradient
    ``[i, j]`` are both seen, as the least-squares fit over those rows
    ``x_j = sum_i db_i dW_ij / sum_i db_i^2`` (exact for a batch of one); an input no
    such row covers is not recovered (``recovered[j]`` False, ``x_j`` 0).
    """
    check(
        weight_seen.shape == weight_grad.shape and bias_seen.shape == bias_grad.shape,
        "weight_seen",
        "masks of the gradients' shapes",
        tuple(weight_seen.shape),
    )
    db = torch.where(bias_seen, bias_grad.detach().double(), 0.0)
    seen = weight_seen & bias_seen.unsqueeze(1)
    dw = torch.where(seen, weight_grad.detach().double(), 0.0)
    energy = (seen * db.square().unsqueeze(1)).sum(dim=0)
    recovered = energy > 0
    x = torch.where(recovered, (dw * db.unsqueeze(1)).sum(dim=0) / energy.clamp(min=1e-300), 0.0)
    return x.to(weight_grad.dtype), recovered


@dataclass(frozen=True)
class Reconstruction:
    """The best reconstruction over restarts and the objective value of every restart."""

    images: torch.Tensor
    labels: torch.Tensor
    objective_value: float
    restarts_objectives: tuple[float, ...]


@dataclass(frozen=True)
class GradientInversion:
    """Optimisation-based gradient inversion with known labels.

    Minimises ``match(candidate(x), observed) + tv * TV(x)`` over inputs ``x[B, ...]``:

    * ``objective``: ``"cosine"``, ``1 - <c, o> / (||c|| ||o||)`` (Inverting Gradients,
      Geiping et al. 2020, Eq. 4), or ``"l2"``, ``||c - o||^2`` (DLG, Zhu et al. 2019,
      Algorithm 1);
    * ``tv``: weight of total variation, the mean absolute difference of vertically and
      horizontally adjacent pixels (the mean-normalised TV of breaching);
    * ``box``: pixel range; inputs start uniform in it and are clamped to it after every
      step. ``None``: standard normal start, no constraint;
    * ``optimizer``: ``"adam-signed"``, Adam on the sign of the input gradient with the
      learning rate cut 10x at 3/8, 5/8 and 7/8 of the run (Geiping et al. 2020),
      keeping the best iterate; or ``"lbfgs"`` (strong-Wolfe line search, ``iterations``
      inner iterations in steps of 20, box projection between steps; DLG's optimiser);
    * ``restarts``: independent starts from the ``seed``; the one of lowest objective wins;
    * ``observed_kind``: ``"gradient"``, the gradient of the mean loss of the whole batch
      (FedSGD), or ``"update"``, the model difference ``params_after - params_before``
      after ``local_steps`` plain SGD steps of learning rate ``local_lr``. The attack
      unrolls those steps and differentiates through them (Geiping et al. 2020;
      Dimitrov et al. 2022). ``local_steps = 1`` with ``"update"`` treats the update as one
      gradient step on the whole batch (the non-unrolled baseline);
    * ``examples_per_step``: step k trains on the examples ``(k m + j) mod B``,
      ``j < m``, cycling through the batch in order (breaching's local-update schedule).
      ``None`` (default): every step uses the whole batch (local full-batch GD; what
      privlab's engine does when ``batch_size`` covers the node's data, since it draws
      a fresh random batch per step otherwise);
    * ``coordinates``: the flat coordinates of the gradient or update that are observed
      (a Shatter chunk, a sparsified message); ``observed`` then holds just those values.

    The objective value reported is the full minimised objective (matching + TV).
    """

    objective: Literal["cosine", "l2"] = "cosine"
    tv: float = 1e-3
    box: tuple[float, float] | None = (0.0, 1.0)
    optimizer: Literal["adam-signed", "lbfgs"] = "adam-signed"
    iterations: int = 1500
    lr: float = 0.1
    restarts: int = 1
    seed: int = 0
    observed_kind: Literal["gradient", "update"] = "gradient"
    local_steps: int = 1
    local_lr: float | None = None
    examples_per_step: int | None = None
    coordinates: torch.Tensor | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        check(self.objective in OBJECTIVES, "objective", f"one of {OBJECTIVES}", self.objective)
        check(self.optimizer in OPTIMIZERS, "optimizer", f"one of {OPTIMIZERS}", self.optimizer)
        check(
            self.observed_kind in OBSERVED_KINDS,
            "observed_kind",
            f"one of {OBSERVED_KINDS}",
            self.observed_kind,
        )
        check(_finite(self.tv) and self.tv >= 0, "tv", ">= 0 and finite", self.tv)
        check(_finite(self.lr) and self.lr > 0, "lr", "> 0 and finite", self.lr)
        for name in ("iterations", "restarts", "local_steps"):
            value = getattr(self, name)
            check(is_integer(value) and value >= 1, name, "an integer >= 1", value)
        check(is_integer(self.seed), "seed", "an integer", self.seed)
        check(
            self.box is None
            or (len(self.box) == 2 and all(map(_finite, self.box)) and self.box[0] < self.box[1]),
            "box",
            "None or a pair (low, high) with low < high",
            self.box,
        )
        if self.observed_kind == "gradient":
            check(
                self.local_steps == 1,
                "local_steps",
                "1 when observed_kind='gradient'",
                self.local_steps,
            )
        else:
            ok = _finite(self.local_lr) and self.local_lr > 0
            check(ok, "local_lr", "> 0 when observed_kind='update'", self.local_lr)
        per_step = self.examples_per_step
        ok = per_step is None or (is_integer(per_step) and per_step >= 1)
        check(ok, "examples_per_step", "None or an integer >= 1", per_step)
        coords = self.coordinates
        ok = coords is None or (
            isinstance(coords, torch.Tensor)
            and coords.dim() == 1
            and not coords.is_floating_point()
        )
        check(ok, "coordinates", "None or a 1-D integer tensor of flat indices", coords)

    def run(
        self,
        model: nn.Module,
        params_before: torch.Tensor,
        observed: torch.Tensor,
        labels: torch.Tensor,
        input_shape: tuple[int, ...],
    ) -> Reconstruction:
        """Reconstruct the ``len(labels)`` inputs behind ``observed``.

        ``model`` gives the architecture, ``params_before[D]`` the parameters the victim
        started from, ``observed`` the gradient or update (``[D]``, or
        ``[len(coordinates)]``), ``labels[B]`` the batch's labels (known or recovered).
        """
        spec = ParamSpec.of(model)
        target = self._validated_target(spec, params_before, observed, labels)
        shape = tuple(input_shape)
        ok = self.tv == 0 or (len(shape) >= 2 and min(shape[-2:]) >= 2)
        check(ok, "tv", "0 unless inputs are images [..., H, W] with H, W >= 2", self.tv)
        start = {
            name: value.detach().clone().requires_grad_()
            for name, value in spec.unflatten(params_before.detach().float()).items()
        }
        labels = labels.detach().long()

        def objective(x: torch.Tensor) -> torch.Tensor:
            candidate = self._candidate(model, start, x, labels)
            value = self._match(candidate, target)
            return value + self.tv * total_variation(x) if self.tv else value

        generator = torch.Generator().manual_seed(self.seed)
        best_value, best_images, values = math.inf, None, []
        for _ in range(self.restarts):
            x = self._initial(generator, (len(labels), *shape))
            value, images = self._optimise(objective, x)
            values.append(value)
            if best_images is None or value < best_value:
                best_value, best_images = value, images
        return Reconstruction(best_images, labels, best_value, tuple(values))

    def _validated_target(
        self, spec: ParamSpec, params: torch.Tensor, observed: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        check(
            params.shape == (spec.dim,),
            "params_before",
            f"of shape [{spec.dim}]",
            tuple(params.shape),
        )
        expected = spec.dim
        if self.coordinates is not None:
            coords = self.coordinates
            ok = len(coords) >= 1 and int(coords.min()) >= 0 and int(coords.max()) < spec.dim
            check(ok, "coordinates", f"non-empty indices in [0, {spec.dim})", "out of range")
            expected = len(coords)
        check(
            observed.shape == (expected,),
            "observed",
            f"of shape [{expected}]",
            tuple(observed.shape),
        )
        check(bool(torch.isfinite(observed).all()), "observed", "finite", "non-finite values")
        ok = labels.dim() == 1 and len(labels) >= 1
        check(ok, "labels", "a non-empty 1-D tensor", tuple(labels.shape))
        if self.objective == "cosine":
            check(bool(observed.any()), "observed", "nonzero for the cosine objective", "zeros")
        return observed.detach().float()

    def _candidate(
        self,
        model: nn.Module,
        start: dict[str, torch.Tensor],
        x: torch.Tensor,
        labels: torch.Tensor,
    ) -> torch.Tensor:
        """The flat gradient or K-step update the victim would send had it held ``x``."""
        names = list(start)
        if self.observed_kind == "gradient":
            loss = F.cross_entropy(functional_call(model, start, (x,)), labels)
            grads = torch.autograd.grad(loss, list(start.values()), create_graph=True)
            flat = torch.cat([g.reshape(-1) for g in grads])
        else:
            current = start
            for step in range(self.local_steps):
                rows = self._step_rows(step, len(labels))
                logits = functional_call(model, current, (x[rows],))
                loss = F.cross_entropy(logits, labels[rows])
                grads = torch.autograd.grad(loss, list(current.values()), create_graph=True)
                current = {
                    n: p - self.local_lr * g for n, p, g in zip(names, current.values(), grads)
                }
            flat = torch.cat([(current[n] - start[n]).reshape(-1) for n in names])
        return flat if self.coordinates is None else flat[self.coordinates]

    def _step_rows(self, step: int, batch: int) -> torch.Tensor:
        """Indices of the examples local step ``step`` trains on."""
        if self.examples_per_step is None:
            return torch.arange(batch)
        first = step * self.examples_per_step
        return (first + torch.arange(self.examples_per_step)) % batch

    def _match(self, candidate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.objective == "l2":
            return (candidate - target).square().sum()
        tiny = torch.finfo(candidate.dtype).tiny
        return 1 - (candidate @ target) / (candidate.norm() * target.norm() + tiny)

    def _initial(self, generator: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
        if self.box is None:
            return torch.randn(shape, generator=generator)
        low, high = self.box
        return low + (high - low) * torch.rand(shape, generator=generator)

    def _project(self, x: torch.Tensor) -> None:
        if self.box is not None:
            with torch.no_grad():
                x.clamp_(*self.box)

    def _optimise(self, objective, x: torch.Tensor) -> tuple[float, torch.Tensor]:
        """The best (objective value, inputs) one restart reaches from ``x``."""
        x.requires_grad_()
        with torch.enable_grad():
            if self.optimizer == "adam-signed":
                return self._signed_adam(objective, x)
            return self._lbfgs(objective, x)

    def _signed_adam(self, objective, x: torch.Tensor) -> tuple[float, torch.Tensor]:
        optimizer = torch.optim.Adam([x], lr=self.lr)
        milestones = [int(self.iterations * f) for f in LR_DECAY_POINTS]
        schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)
        best = _Best()
        for _ in range(self.iterations):
            loss = objective(x)
            if not best.offer(loss, x):
                return best.result()
            (gradient,) = torch.autograd.grad(loss, x)
            x.grad = gradient.sign_()
            optimizer.step()
            schedule.step()
            self._project(x)
        best.offer(objective(x), x)
        return best.result()

    def _lbfgs(self, objective, x: torch.Tensor) -> tuple[float, torch.Tensor]:
        optimizer = torch.optim.LBFGS(
            [x], lr=self.lr, max_iter=LBFGS_INNER_ITERATIONS, line_search_fn="strong_wolfe"
        )

        def closure() -> torch.Tensor:
            loss = objective(x)
            (x.grad,) = torch.autograd.grad(loss, x)
            return loss

        best = _Best()
        best.offer(objective(x), x)
        for _ in range(math.ceil(self.iterations / LBFGS_INNER_ITERATIONS)):
            optimizer.step(closure)
            self._project(x)
            if not best.offer(objective(x), x):
                break
        return best.result()


class _Best:
    """The lowest finite objective value seen so far and its inputs."""

    def __init__(self) -> None:
        self.value, self.images = math.inf, None

    def offer(self, loss: torch.Tensor, x: torch.Tensor) -> bool:
        """Keep ``x`` if ``loss`` beats the best; False when ``loss`` is not finite."""
        value = float(loss.detach())
        if not math.isfinite(value):
            return False
        if self.images is None or value < self.value:
            self.value, self.images = value, x.detach().clone()
        return True

    def result(self) -> tuple[float, torch.Tensor]:
        if self.images is None:
            raise PrivlabError("the attack objective was not finite at the first iterate")
        return self.value, self.images


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of vertically and horizontally adjacent pixels of
    ``x[..., H, W]`` (anisotropic TV, Rudin, Osher and Fatemi 1992; the mean-normalised
    form breaching uses)."""
    vertical = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    horizontal = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    return vertical + horizontal


def _finite(value: object) -> bool:
    return is_real(value) and math.isfinite(value)
