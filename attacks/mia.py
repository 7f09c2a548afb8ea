"""Membership inference score functions: higher score = more likely a member.

Every function takes per-example signals (``privlab.attacks.signals``) of the target
model and, for the reference-model attacks, of ``M`` reference models with the boolean
``reference_keep[M, N]`` (example n in model m's training set), as numpy arrays or torch
tensors, and returns float64 numpy scores ``[N]``. Thresholding a score gives a
membership decision; ``privlab.attacks.metrics`` turns scores into ROC, AUC and TPR at
low FPR.

``ATTACKER`` says who can run each attack: ``"peer"`` needs only what a curious peer has
(the model it received, its own data, public data, models it trains itself without the
target examples); ``"oracle"`` needs models trained IN on the target examples, or their
membership labels, which no peer has: an upper bound on leakage, not a realistic attack.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy.special import log_ndtr
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

from privlab.errors import check

ATTACKER: dict[str, str] = {
    "loss": "peer",
    "population": "peer",
    "lira-online": "oracle",
    "lira-offline": "peer",
    "rmia-online": "oracle",
    "rmia-offline": "peer",
    "trajectory": "oracle",
}
"""Who can run each attack: "peer" (a curious node) or "oracle" (needs IN models or labels)."""

VARIANCES = ("per_example", "global", "auto")
AUTO_VARIANCE_MIN_MODELS = 32
"""``variance="auto"`` fits an example's own spread from at least this many IN (or OUT)
references, and uses the global one below (LeakPro's ``fix_var_threshold``)."""
SIGMA_FLOOR = 1e-30
"""Smallest standard deviation LiRA divides by (references that all agree)."""


def _array(values, field: str, ndim: int) -> np.ndarray:
    """``values`` (numpy or torch) as a finite float64 array of ``ndim`` dimensions."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.float64)
    check(array.ndim == ndim, field, f"a {ndim}-D array", array.shape)
    check(bool(np.isfinite(array).all()), field, "finite everywhere", "non-finite values")
    return array


def _references(values, keep, num_examples: int, field: str) -> tuple[np.ndarray, np.ndarray]:
    """Reference signals ``[M, N]`` and their boolean keep matrix, shapes checked."""
    signals = _array(values, field, 2)
    check(
        signals.shape[1] == num_examples >= 1 and signals.shape[0] >= 1,
        field,
        f"of shape [M >= 1, N >= 1] with N = {num_examples}, the number of target examples",
        signals.shape,
    )
    if isinstance(keep, torch.Tensor):
        keep = keep.cpu().numpy()
    keep = np.asarray(keep)
    check(keep.shape == signals.shape, "reference_keep", f"of shape {signals.shape}", keep.shape)
    check(keep.dtype == np.bool_, "reference_keep", "a boolean array", keep.dtype)
    return signals, keep


def _probabilities(values, field: str, ndim: int) -> np.ndarray:
    array = _array(values, field, ndim)
    check(bool(((array >= 0) & (array <= 1)).all()), field, "probabilities in [0, 1]", "outside")
    return array


def _require(keep: np.ndarray, at_least: int, side: str) -> None:
    """Refuse an example with fewer than ``at_least`` references where ``keep`` (the
    ``side``, IN or OUT, of the keep matrix)."""
    fewest = int(keep.sum(axis=0).min())
    check(
        fewest >= at_least,
        "reference_keep",
        f"at least {at_least} {side} reference model(s) for every example",
        f"an example with {fewest}",
    )


def loss_scores(target_loss) -> np.ndarray:
    """LOSS attack (Yeom, Giacomelli, Fredrikson & Jha, CSF 2018): score ``-loss`` of the
    target model on each example ``[N]``; members have lower loss. Attacker: peer."""
    return -_array(target_loss, "target_loss", 1)


def population_scores(target_loss, population_loss) -> np.ndarray:
    """Attack-P (Ye, Maddi, Murakonda, Bindschaedler & Shokri, CCS 2022): the fraction of
    population examples (known non-members) on which the target model's loss is at least
    its loss on the example, ``|{z : loss(z) >= loss(x)}| / |Z|``.

    Thresholding this score at ``1 - alpha`` is the paper's test at the alpha-quantile of
    the population losses, so the threshold controls the FPR. On one target model it
    ranks examples as ``loss_scores`` does. Attacker: peer.
    """
    target = _array(target_loss, "target_loss", 1)
    population = np.sort(_array(population_loss, "population_loss", 1))
    check(len(population) >= 1, "population_loss", "non-empty", 0)
    at_least = len(population) - np.searchsorted(population, target, side="left")
    return at_least / len(population)


def _gaussian_fit(
    signals: np.ndarray, side: np.ndarray, variance: str
) -> tuple[np.ndarray, np.ndarray]:
    """Per-example location (median) and scale ``[N]`` of the signals where ``side``.

    Scales: ``per_example`` the standard deviation of the example's own references;
    ``global`` that of every reference signal of the side pooled over all examples (as
    the reference code and LeakPro compute it, between-example spread included);
    ``auto`` the example's own with at least ``AUTO_VARIANCE_MIN_MODELS`` references,
    the global one otherwise.
    """
    masked = np.where(side, signals, np.nan)
    location = np.nanmedian(masked, axis=0)
    own = np.nanstd(masked, axis=0)
    pooled = np.full_like(own, np.std(signals[side]))
    if variance == "per_example":
        scale = own
    elif variance == "global":
        scale = pooled
    else:
        scale = np.where(side.sum(axis=0) >= AUTO_VARIANCE_MIN_MODELS, own, pooled)
    return location, np.maximum(scale, SIGMA_FLOOR)


def _log_normal_pdf(x: np.ndarray, location: np.ndarray, scale: np.ndarray) -> np.ndarray:
    z = (x - location) / scale
    return -0.5 * z * z - np.log(scale) - 0.5 * np.log(2 * np.pi)


def lira_scores(
    target_conf,
    reference_conf,
    reference_keep,
    *,
    online: bool = True,
    variance: str = "auto",
) -> np.ndarray:
    """LiRA (Carlini, Chien, Nasr, Song, Terzis & Tramèr, S&P 2022, Algorithm 1).

    ``target_conf[N]`` and ``reference_conf[M, N]`` are logit-scaled confidences
    (``signals.scaled_logit``). Per example, Gaussians are fitted to the references
    trained with it (IN) and without it (OUT): location the median, scale the standard
    deviation (numpy's, ddof 0), as the authors' code does. Scores:

    * online: ``log N(phi; mu_in, s_in^2) - log N(phi; mu_out, s_out^2)``;
    * offline: the one-sided test ``log Phi((phi - mu_out) / s_out)`` (how far above the
      OUT distribution), using OUT references only.

    ``variance``: ``per_example`` (needs >= 2 references per example and side),
    ``global`` (one scale per side, the spread of all its reference signals; the paper's
    advice with few reference models) or ``auto`` (per example where an example has >= 32
    references of that side, global elsewhere). Scales below ``SIGMA_FLOOR`` are raised
    to it. Attacker: online is oracle (IN models of the target examples), offline is peer.
    """
    check(variance in VARIANCES, "variance", f"one of {list(VARIANCES)}", variance)
    phi = _array(target_conf, "target_conf", 1)
    signals, keep = _references(reference_conf, reference_keep, len(phi), "reference_conf")
    smallest = 2 if variance == "per_example" else 1
    _require(~keep, smallest, "OUT")
    out_location, out_scale = _gaussian_fit(signals, ~keep, variance)
    if not online:
        return log_ndtr((phi - out_location) / out_scale)
    _require(keep, smallest, "IN")
    in_location, in_scale = _gaussian_fit(signals, keep, variance)
    return _log_normal_pdf(phi, in_location, in_scale) - _log_normal_pdf(
        phi, out_location, out_scale
    )


def _mean_where(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-example mean ``[N]`` of ``values[M, N]`` over the models where ``mask``."""
    return np.where(mask, values, 0.0).sum(axis=0) / mask.sum(axis=0)


def rmia_scores(
    target_prob,
    reference_prob,
    reference_keep,
    population_target_prob,
    population_reference_prob,
    *,
    online: bool = True,
    offline_a: float = 0.3,
    gamma: float = 1.0,
) -> np.ndarray:
    """RMIA (Zarifzadeh, Liu & Shokri, ICML 2024): the fraction of population examples z
    that x dominates, ``|{z : LR(x, z) > gamma}| / |Z|`` with
    ``LR(x, z) = (p(x) / Pr(x)) / (p(z) / Pr(z))``.

    ``p`` is the target model's true-class probability (``signals.true_class_probability``)
    on x (``target_prob[N]``) and on the population (``population_target_prob[Z]``, known
    non-members of every model); ``Pr(.)`` its average over reference models:

    * online: ``Pr(x) = (mean_IN(x) + mean_OUT(x)) / 2``, the plain mean over references
      when x is IN for half of them (the balanced design of ``shadow``); equal weights
      keep the 1/2 prior when it is not. ``Pr(z)`` is the mean over all references.
    * offline (OUT references only): ``Pr(x) = ((1 + a) mean_OUT(x) + 1 - a) / 2``, from
      the paper's linear approximation ``mean_IN ~ a mean_OUT + 1 - a``; the same formula
      gives ``Pr(z)``. ``a = offline_a``: 0.3 is Privacy Meter's value when it does not
      tune ``a`` on a paired model.

    The score has resolution ``1 / |Z|``; ties are left as they are. Attacker: online is
    oracle, offline is peer.
    """
    check(0 <= offline_a <= 1, "offline_a", "in [0, 1]", offline_a)
    check(gamma > 0, "gamma", "> 0", gamma)
    p_x = _probabilities(target_prob, "target_prob", 1)
    ref_x, keep = _references(reference_prob, reference_keep, len(p_x), "reference_prob")
    ref_x = _probabilities(ref_x, "reference_prob", 2)
    p_z = _probabilities(population_target_prob, "population_target_prob", 1)
    check(len(p_z) >= 1, "population_target_prob", "non-empty", 0)
    ref_z = _probabilities(population_reference_prob, "population_reference_prob", 2)
    check(
        ref_z.shape == (len(ref_x), len(p_z)),
        "population_reference_prob",
        f"of shape [{len(ref_x)}, {len(p_z)}]",
        ref_z.shape,
    )
    _require(~keep, 1, "OUT")
    mean_out = _mean_where(ref_x, ~keep)
    if online:
        _require(keep, 1, "IN")
        prior_x = (_mean_where(ref_x, keep) + mean_out) / 2
        prior_z = ref_z.mean(axis=0)
    else:
        prior_x = ((1 + offline_a) * mean_out + 1 - offline_a) / 2
        prior_z = ((1 + offline_a) * ref_z.mean(axis=0) + 1 - offline_a) / 2
    ratio_x, ratio_z = p_x / prior_x, p_z / prior_z
    # LR(x, z) > gamma  <=>  gamma * ratio_z < ratio_x: count z strictly below
    dominated = np.searchsorted(np.sort(gamma * ratio_z), ratio_x, side="left")
    return dominated / len(p_z)


class TrajectoryClassifier:
    """Zip-DL's classifier attack (Biswas, Frey, Gaudel, Kermarrec, Lerévérend, Pires,
    Sharma & Taïani, "Low-Cost Privacy-Preserving Decentralized Learning", PoPETs 2025,
    arXiv 2403.11795; artifact ``attacks/classifier_attacker.py``): each example's loss
    trajectory ``[T]`` over the models a victim sent in ``T`` rounds goes to a small MLP
    that outputs the probability that the example is in the victim's training set.

    Hyper-parameters (ours where the paper's code differs): features are
    ``log(max(loss, 1e-12))`` per round, standardised per round (losses of members and
    non-members differ by orders of magnitude); scikit-learn ``MLPClassifier`` with
    hidden layers (64, 32) and ReLU (ZIP-DL's ``SimpleAttacker``), Adam at learning
    rate 1e-3, L2 penalty 1e-4, until the training loss improves by less than 1e-4 for 10
    epochs or after ``max_iter`` epochs (no early stopping on held-out rows: fitted per
    victim, the training sets can be small); the smaller class oversampled to the size
    of the larger (ZIP-DL weighs its loss by class instead).
    Attacker: oracle as ZIP-DL runs it (fitted on part of the victim's labelled training
    and test examples); fitted on trajectories of models whose members the attacker knows
    (its own), then applied to the victim's, it is a peer attack.
    """

    def __init__(
        self, *, hidden: tuple[int, ...] = (64, 32), max_iter: int = 200, seed: int = 0
    ) -> None:
        self.seed = seed
        self.scaler = StandardScaler()
        self.classifier = MLPClassifier(
            hidden_layer_sizes=hidden,
            activation="relu",
            solver="adam",
            learning_rate_init=1e-3,
            alpha=1e-4,
            max_iter=max_iter,
            random_state=seed,
        )

    @staticmethod
    def _features(trajectories) -> np.ndarray:
        losses = _array(trajectories, "trajectories", 2)
        check(bool((losses >= 0).all()), "trajectories", "losses >= 0", "negative values")
        return np.log(np.maximum(losses, 1e-12))

    def fit(self, trajectories, is_member) -> TrajectoryClassifier:
        """Fit on loss trajectories ``[N, T]`` with membership labels ``[N]``."""
        features = self._features(trajectories)
        labels = np.asarray(is_member, dtype=bool).reshape(-1)
        check(len(labels) == len(features), "is_member", f"of length {len(features)}", len(labels))
        members = int(labels.sum())
        check(
            0 < members < len(labels), "is_member", "holding both members and non-members", members
        )
        features, labels = self._balanced(features, labels)
        with warnings.catch_warnings():  # reaching max_iter is the documented stop
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.classifier.fit(self.scaler.fit_transform(features), labels)
        return self

    def _balanced(self, features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The rows plus rows of the smaller class drawn again (with replacement, from
        the seed) until both classes count alike."""
        small = labels.sum() < len(labels) / 2
        minority = np.flatnonzero(labels == small)
        extra = len(labels) - 2 * len(minority)
        drawn = np.random.default_rng(self.seed).choice(minority, extra, replace=True)
        rows = np.concatenate([np.arange(len(labels)), drawn])
        return features[rows], labels[rows]

    def scores(self, trajectories) -> np.ndarray:
        """Member probability ``[N]`` of each loss trajectory ``[N, T]``."""
        features = self.scaler.transform(self._features(trajectories))
        return self.classifier.predict_proba(features)[:, 1]
