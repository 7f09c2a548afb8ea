"""Membership inference on the models a curious party receives in decentralized learning.

A curious node logs every message it receives (``privlab.observe``) and attacks each
neighbour's model, per victim and per round, as the seed papers do:

* Shatter (Biswas, Even, Kermarrec, Massoulié, Pires, Sharma & de Vos, PoPETs 2025;
  artifact ``sacs-epfl/shatter``, ``LOSSCIFARTestSet.py``, ``eval/evaluate_attack.py``):
  LOSS on every received (chunk-completed) model; ROC-AUC per attack instance, then
  mean and spread per victim and per round (``per_victim``, ``per_round``);
* Zip-DL (Biswas, Frey, Gaudel, Kermarrec, Lerévérend, Pires, Sharma & Taïani, PoPETs
  2025, §6.1 and App. A.7): LOSS on the noisy models received from a neighbour, AUC
  averaged over victims at each saved round, then over the saved rounds
  (``mean_over_rounds``); and the loss-trajectory classifier.

The oracle reference-model attacks (LiRA, Carlini et al., S&P 2022; RMIA, Zarifzadeh et
al., ICML 2024) bound what a received model leaks: the attacker trains models IN and OUT
of the very samples it attacks, which no peer can.

Pasquini, Raynal & Troncoso (S&P 2023) and El Mrini, Cyffers & Bellet (ICML 2024) show
why the received model is the natural target: after "train, then average", a
neighbour's message is its model right after its local steps on its own data.

Members are the victim's training samples, non-members come from the run's non-member
pool, disjoint from every training set (``membership_samples``). Ground truth (the true
sender) chooses the victim and scores the attack; it is never an input of a score.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import groupby

import numpy as np
import pandas as pd
import torch

from privlab.attacks.metrics import (
    DEFAULT_FPRS,
    MembershipEvaluation,
    ResolutionWarning,
    evaluate_membership,
    pooled,
)
from privlab.attacks.mia import (
    ATTACKER,
    TrajectoryClassifier,
    lira_scores,
    loss_scores,
    population_scores,
    rmia_scores,
)
from privlab.attacks.run_data import (
    AttackContext,
    MembershipSample,
    ReceivedModel,
    by_round,
    membership_samples,
    received_models,
)
from privlab.attacks.shadow import ReferenceModels, train_reference_models
from privlab.attacks.signals import (
    model_logits,
    per_example_loss,
    scaled_logit,
    true_class_probability,
)
from privlab.errors import PrivlabError, check, is_integer, is_real
from privlab.rng import derive_seed, numpy_generator

__all__ = [
    "AGGREGATES",
    "METHODS",
    "DecentralizedMIAResult",
    "MembershipSample",
    "ReceivedModel",
    "ReceivedModelMIA",
    "membership_samples",
    "received_models",
]

METHODS: dict[str, str] = {
    "loss": ATTACKER["loss"],
    "population": ATTACKER["population"],
    "calibrated": "peer",
    "rmia-offline": ATTACKER["rmia-offline"],
    "trajectory": ATTACKER["trajectory"],
    "lira-online": "oracle",
    "lira-offline": "oracle",
    "rmia-online": "oracle",
}
"""Who can run each method: "peer" (a curious node) or "oracle" (needs membership labels)."""
AGGREGATES = ("pooled", "last", "mean", "max")
NEEDS_OWN_DATA = ("population", "rmia-offline")
REFERENCE_METHODS = ("lira-online", "lira-offline", "rmia-online")


# ------------------------------------------------------------------------------- attack


@dataclass(frozen=True)
class ReceivedModelMIA:
    """Membership inference on every model a curious party receives, per victim and round.

    Methods (``method``; ``attacker`` says who can run it):

    * ``loss`` (Yeom et al., CSF 2018; Shatter's and Zip-DL's attack): score ``-loss``
      of the received model. Peer.
    * ``population`` (Attack-P, Ye et al., CCS 2022): the fraction of the attacker's own
      training samples (its population Z, ``population`` of them) on which the received
      model's loss is at least the example's. Peer; needs the attacker's data.
    * ``calibrated`` (difficulty calibration, Watson, Guo, Cormode & Sablayrolles, ICLR
      2022, Eq. 2, with the attacker's own model as the reference model): score
      ``loss(own) - loss(received)``, ``own`` as estimated by ``received_models``. Peer.
    * ``rmia-offline`` (RMIA, Zarifzadeh, Liu & Shokri, ICML 2024, offline, one reference
      model): the reference is the attacker's own model, the population Z its own
      training samples, ``a = offline_a``. Peer; needs the attacker's data.
    * ``trajectory`` (Zip-DL's classifier attack, ``mia.TrajectoryClassifier``): each
      sample's loss over the rounds in which the victim's model was received (the mean
      over that round's messages), one classifier per victim fitted on a random
      ``train_fraction`` of its members and non-members with their membership labels and
      scored on the rest, both halves drawn per class of membership. Oracle: the attacker
      is assumed to know the membership of part of the victim's data, as in Zip-DL.
    * ``lira-online`` / ``lira-offline`` (LiRA, Carlini, Chien, Nasr, Song, Terzis &
      Tramèr, S&P 2022, Algorithm 1, ``mia.lira_scores``): the received model's
      ``scaled_logit`` against Gaussians fitted to the reference models' (IN and OUT;
      offline: OUT only), ``variance="auto"`` (one global scale per side under 32
      references per side). Oracle, offline included: the references are trained on the
      victim's attacked samples (each OUT model of x still trains on half of the others).
    * ``rmia-online`` (RMIA, Zarifzadeh, Liu & Shokri, ICML 2024, online,
      ``mia.rmia_scores``, gamma 1): the received model's ``true_class_probability``
      against the references', with the population Z a random sample of ``population``
      examples of the run's test split (disjoint from every training set) that the
      references also train on (each z IN for half of them). Oracle.

    **Reference models** of those three (``train_references``): per victim, once,
    ``reference_models`` models of the run's architecture (independent initialisations)
    on random halves of the pool (the victim's attacked samples, plus Z for RMIA; every
    example IN for exactly half of them: ``shadow.train_reference_models``), reused for
    every round's received model. Training is the run's local SGD (``training.lr``,
    ``momentum``, ``batch_size``; no weight decay, no DP noise) for ``reference_epochs``
    epochs; None (a decision: as many steps as the victim took) picks the fewest epochs
    that reach ``final_round x local_steps`` steps, the victim's local steps over the
    whole run, since the references serve every round.

    ``completion`` (see ``received_models``) completes chunks; with ``mask-aware`` the
    loss signal of ``loss``, ``population`` and ``calibrated`` becomes the change
    ``loss(completed) - loss(own)``, whose coordinates outside the chunk cancel, so only
    the chunk's coordinates count (``calibrated`` is then unchanged; ``rmia-offline``
    already divides by the own model and equals ``own``; ``trajectory`` and the
    reference-model methods score the whole completed model and refuse it).

    ``aggregate`` makes attack instances from the per-message scores: ``pooled`` one
    instance per received message (per victim and round; per chunk for Shatter);
    ``last`` only those of each victim's last round; ``mean`` / ``max`` one instance per
    victim, its per-sample scores averaged / maximised over its messages. ``trajectory``
    takes ``pooled`` only (its instances are already per victim).

    Each victim is attacked on ``membership_samples(context, victim,
    num=samples_per_victim, seed=seed, match_labels=match_labels)``.
    """

    method: str = "loss"
    aggregate: str = "pooled"
    completion: str | None = None
    exchange: int = -1
    samples_per_victim: int = 200
    match_labels: bool = True
    population: int = 200
    train_fraction: float = 0.5
    offline_a: float = 0.3
    reference_models: int = 16
    reference_epochs: int | None = None
    fprs: tuple[float, ...] = DEFAULT_FPRS
    confidence: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.method in METHODS, "method", f"one of {', '.join(METHODS)}", self.method)
        check(
            self.aggregate in AGGREGATES,
            "aggregate",
            f"one of {', '.join(AGGREGATES)}",
            self.aggregate,
        )
        if self.method == "trajectory":
            check(
                self.aggregate == "pooled",
                "aggregate",
                "'pooled' for method 'trajectory' (its instances are already per victim)",
                self.aggregate,
            )
            check(
                self.completion != "mask-aware",
                "completion",
                "'own' or 'zeros' for method 'trajectory' (it classifies plain losses)",
                self.completion,
            )
        if self.method in REFERENCE_METHODS:
            check(
                self.completion != "mask-aware",
                "completion",
                f"'own' or 'zeros' for method {self.method!r} (it scores whole models)",
                self.completion,
            )
        check(
            is_integer(self.reference_models)
            and self.reference_models >= 2
            and self.reference_models % 2 == 0,
            "reference_models",
            "an even integer >= 2",
            self.reference_models,
        )
        check(
            self.reference_epochs is None
            or (is_integer(self.reference_epochs) and self.reference_epochs >= 1),
            "reference_epochs",
            "None or an integer >= 1",
            self.reference_epochs,
        )
        check(
            is_integer(self.samples_per_victim) and self.samples_per_victim >= 1,
            "samples_per_victim",
            "an integer >= 1",
            self.samples_per_victim,
        )
        check(
            is_integer(self.population) and self.population >= 1,
            "population",
            ">= 1",
            self.population,
        )
        check(
            is_real(self.train_fraction) and 0 < self.train_fraction < 1,
            "train_fraction",
            "in (0, 1)",
            self.train_fraction,
        )

    @property
    def attacker(self) -> str:
        """Who can run the method: "peer" or "oracle" (``METHODS``)."""
        return METHODS[self.method]

    def run(
        self,
        context: AttackContext,
        party: str | None = None,
        rounds: Iterable[int] | None = None,
        victims: Iterable[int] | None = None,
        *,
        progress: bool = False,
    ) -> DecentralizedMIAResult:
        """Attack every model ``party`` received in ``rounds`` (None: every recorded
        round) from ``victims`` (None: every sender but the party's own nodes); a
        progress bar of rounds on a terminal with ``progress``."""
        party = context.party(party)
        population = self._population(context, party)
        chosen = None if victims is None else {int(v) for v in victims}
        samples: dict[int, _Inputs] = {}
        references: dict[int, _References | None] = {}
        signals: list[_Signal] = []
        models = received_models(
            context, party, rounds, exchange=self.exchange, completion=self.completion
        )
        for in_round in by_round(context, models, rounds, progress=progress):
            by_victim: dict[int, list[ReceivedModel]] = {}
            for received in in_round:
                if chosen is None or received.victim in chosen:
                    by_victim.setdefault(received.victim, []).append(received)
            for victim, group in by_victim.items():
                if victim not in samples:
                    samples[victim] = _Inputs.of(context, self._sample(context, victim))
                    references[victim] = self._references(context, victim, samples[victim])
                signals.extend(
                    self._signals(context, group, samples[victim], population, references[victim])
                )
        if not signals:
            raise PrivlabError(
                f"party {party} received no model to attack in the chosen rounds and victims"
            )
        return self._result(party, self._instances(signals))

    # -- scores -----------------------------------------------------------------------

    def _sample(self, context: AttackContext, victim: int) -> MembershipSample:
        return membership_samples(
            context,
            victim,
            num=self.samples_per_victim,
            seed=self.seed,
            match_labels=self.match_labels,
        )

    def _population(self, context: AttackContext, party: str) -> _Inputs | None:
        """The population Z: a sample of the attacker's own training data
        (``NEEDS_OWN_DATA``), of the run's test split (``rmia-online``), else None."""
        if self.method == "rmia-online":
            return _Inputs.of(context, self._test_population(context))
        if self.method not in NEEDS_OWN_DATA:
            return None
        own = context.own_indices(party)
        if len(own) == 0:
            raise PrivlabError(
                f"method {self.method} needs the attacker's own data, and party {party} holds "
                "none: use loss or calibrated"
            )
        rng = numpy_generator(self.seed, "attacker-population")
        rows = np.sort(rng.choice(own, size=min(self.population, len(own)), replace=False))
        return _Inputs.of(context, MembershipSample(-1, rows, np.zeros(len(rows), bool)))

    def _test_population(self, context: AttackContext) -> MembershipSample:
        test = context.data.test_indices
        check(
            len(test) > 0,
            "data.test_fraction",
            f"> 0 (method {self.method} draws its population from the test split)",
            0,
        )
        rng = numpy_generator(self.seed, "test-population")
        rows = np.sort(rng.choice(test, size=min(self.population, len(test)), replace=False))
        return MembershipSample(-1, rows, np.zeros(len(rows), bool))

    def train_references(self, context: AttackContext, victim: int) -> ReferenceModels:
        """The reference models ``run`` trains for ``victim`` (see the class docstring):
        its pool is the victim's attacked samples, then (``rmia-online``) the population
        Z; seed: stream ("reference-models", victim) of ``seed``."""
        check(
            self.method in REFERENCE_METHODS,
            "method",
            f"one of {', '.join(REFERENCE_METHODS)} to train reference models",
            self.method,
        )
        pool = self._sample(context, victim).indices
        if self.method == "rmia-online":
            pool = np.concatenate([pool, self._test_population(context).indices])
        training = context.config.training
        return train_reference_models(
            context.model,
            context.data.dataset,
            pool,
            num_models=self.reference_models,
            epochs=self._reference_epochs(context, len(pool)),
            batch_size=training.batch_size,
            lr=training.lr,
            momentum=training.momentum,
            seed=derive_seed(self.seed, "reference-models", victim),
        )

    def _references(
        self, context: AttackContext, victim: int, inputs: _Inputs
    ) -> _References | None:
        """The victim's reference models with their signals (reference methods only)."""
        if self.method not in REFERENCE_METHODS:
            return None
        trained = self.train_references(context, victim)
        return _References.of(context, trained, self._output, len(inputs.sample.indices))

    def _reference_epochs(self, context: AttackContext, pool_size: int) -> int:
        """``reference_epochs``, or the fewest epochs of ``train_reference_models`` (of
        ``ceil(ceil(P / 2) / batch_size)`` steps) reaching the victim's local steps."""
        if self.reference_epochs is not None:
            return self.reference_epochs
        training = context.config.training
        per_epoch = math.ceil(math.ceil(pool_size / 2) / training.batch_size)
        return max(1, math.ceil(context.final_round * training.local_steps / per_epoch))

    @property
    def _output(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The signal a reference-model method scores: LiRA's scaled logit, RMIA's
        true-class probability."""
        return true_class_probability if self.method == "rmia-online" else scaled_logit

    def _reference_signals(
        self,
        context: AttackContext,
        group: list[ReceivedModel],
        inputs: _Inputs,
        population: _Inputs | None,
        references: _References,
    ) -> list[_Signal]:
        """LiRA or RMIA scores of one round's models from one victim."""
        params = torch.stack([received.params for received in group])
        target = inputs.output(context, params, self._output)
        if population is not None:
            on_population = population.output(context, params, self._output)
        out = []
        for i, received in enumerate(group):
            if self.method == "rmia-online":
                values = rmia_scores(
                    target[i], references.on_samples, references.keep, on_population[i],
                    references.on_population, online=True,
                )  # fmt: skip
            else:
                values = lira_scores(
                    target[i], references.on_samples, references.keep,
                    online=self.method == "lira-online", variance="auto",
                )  # fmt: skip
            out.append(_Signal(received, inputs.sample, np.asarray(values, dtype=np.float64)))
        return out

    def _signals(
        self,
        context: AttackContext,
        group: list[ReceivedModel],
        inputs: _Inputs,
        population: _Inputs | None,
        references: _References | None,
    ) -> list[_Signal]:
        """The per-sample scores (for ``trajectory``, losses) of one round's models from
        one victim; the last row of every signal array is the attacker's own model."""
        if references is not None:
            return self._reference_signals(context, group, inputs, population, references)
        params = torch.stack([received.params for received in group] + [group[0].own])
        loss, prob = inputs.signals(context, params, self.method == "rmia-offline")
        z_loss, z_prob = (None, None)
        if population is not None:
            z_loss, z_prob = population.signals(context, params, self.method == "rmia-offline")
        out = []
        for i, received in enumerate(group):
            delta = loss[i] - loss[-1]
            signal = delta if self.completion == "mask-aware" else loss[i]
            if self.method == "loss":
                values = loss_scores(signal)
            elif self.method == "calibrated":
                values = -delta
            elif self.method == "trajectory":
                values = loss[i]
            elif self.method == "population":
                z_delta = z_loss[i] - z_loss[-1]
                z_signal = z_delta if self.completion == "mask-aware" else z_loss[i]
                values = population_scores(signal, z_signal)
            else:
                no_member = np.zeros((1, loss.shape[1]), dtype=bool)
                values = rmia_scores(
                    prob[i], prob[-1:], no_member, z_prob[i], z_prob[-1:], online=False,
                    offline_a=self.offline_a,
                )  # fmt: skip
            out.append(_Signal(received, inputs.sample, np.asarray(values, dtype=np.float64)))
        return out

    # -- instances --------------------------------------------------------------------

    def _instances(self, signals: list[_Signal]) -> list[_Instance]:
        if self.method == "trajectory":
            return [self._trajectory(group) for group in _by_victim(signals)]
        if self.aggregate == "pooled":
            return [_Instance.of_message(s) for s in signals]
        if self.aggregate == "last":
            last = {}
            for s in signals:
                last[s.received.victim] = max(last.get(s.received.victim, 0), s.received.round)
            return [
                _Instance.of_message(s)
                for s in signals
                if s.received.round == last[s.received.victim]
            ]
        reduce = np.mean if self.aggregate == "mean" else np.max
        return [
            _Instance.of_victim(group, reduce(np.stack([s.values for s in group]), axis=0))
            for group in _by_victim(signals)
        ]

    def _trajectory(self, group: list[_Signal]) -> _Instance:
        """Fit the trajectory classifier on part of one victim's samples, score the rest."""
        rounds = groupby(
            sorted(group, key=lambda s: s.received.round), key=lambda s: s.received.round
        )
        trajectories = np.stack(
            [np.mean([s.values for s in signals], axis=0) for _, signals in rounds], axis=1
        )
        sample = group[0].sample
        train = _split(sample.is_member, self.train_fraction, self.seed, sample.victim)
        classifier = TrajectoryClassifier(seed=self.seed)
        classifier.fit(trajectories[train], sample.is_member[train])
        scores = classifier.scores(trajectories[~train])
        return _Instance.of_victim(group, scores, keep=~train)

    def _result(self, party: str, instances: list[_Instance]) -> DecentralizedMIAResult:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResolutionWarning)
            evaluations = [
                evaluate_membership(
                    i.scores, i.is_member, fprs=self.fprs, confidence=self.confidence
                )
                for i in instances
            ]
        rows = [i.row() | _metrics(e) for i, e in zip(instances, evaluations)]
        table = pd.DataFrame(rows)
        for column in ("round", "message", "sender"):
            table[column] = table[column].astype("Int64")
        return DecentralizedMIAResult(
            method=self.method,
            attacker=self.attacker,
            party=party,
            aggregate=self.aggregate,
            completion=self.completion,
            instances=table,
            evaluations=evaluations,
            pooled=pooled(evaluations, records=[i.records for i in instances]),
        )


@dataclass(frozen=True, eq=False)
class _Inputs:
    """A membership sample with its inputs and labels, gathered once."""

    sample: MembershipSample
    x: torch.Tensor
    y: torch.Tensor

    @classmethod
    def of(cls, context: AttackContext, sample: MembershipSample) -> _Inputs:
        return cls(sample, *context.samples(sample.indices))

    def output(
        self,
        context: AttackContext,
        params: torch.Tensor,
        signal: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> np.ndarray:
        """``signal`` (of logits and labels) of the models ``params[m, D]``, ``[m, N]``."""
        return signal(model_logits(context.model, params, self.x), self.y).numpy()

    def signals(
        self, context: AttackContext, params: torch.Tensor, probabilities: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Losses (and true-class probabilities) ``[m, N]`` of the models ``params[m, D]``."""
        logits = model_logits(context.model, params, self.x)
        loss = per_example_loss(logits, self.y).numpy()
        prob = true_class_probability(logits, self.y).numpy() if probabilities else None
        return loss, prob


@dataclass(frozen=True, eq=False)
class _References:
    """One victim's reference models as the scores need them: their signal on its
    attacked samples ``on_samples[M, N]`` with ``keep[M, N]``, and on the population
    ``on_population[M, Z]`` (the pool's last ``Z`` examples; None without one)."""

    keep: np.ndarray
    on_samples: np.ndarray
    on_population: np.ndarray | None

    @classmethod
    def of(
        cls,
        context: AttackContext,
        trained: ReferenceModels,
        signal: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        num_samples: int,
    ) -> _References:
        """``signal`` of ``trained`` on its pool, whose first ``num_samples`` examples
        are the attacked samples."""
        x, y = context.samples(trained.pool)
        on_pool = signal(model_logits(context.model, trained.params, x), y).numpy()
        on_population = on_pool[:, num_samples:] if num_samples < len(trained.pool) else None
        return cls(trained.keep[:, :num_samples], on_pool[:, :num_samples], on_population)


@dataclass(frozen=True, eq=False)
class _Signal:
    received: ReceivedModel
    sample: MembershipSample
    values: np.ndarray


@dataclass(frozen=True, eq=False)
class _Instance:
    """Scores of one attack instance, and what identifies it in the instance table."""

    party: str
    victim: int
    round: int | None
    exchange: int
    message: int | None
    sender: int | None
    coverage: float
    scores: np.ndarray
    is_member: np.ndarray
    records: np.ndarray  # the dataset row of each score

    @classmethod
    def of_message(cls, s: _Signal) -> _Instance:
        r = s.received
        return cls(
            r.party, r.victim, r.round, r.exchange, r.message, r.sender, r.coverage,
            s.values, s.sample.is_member, s.sample.indices,
        )  # fmt: skip

    @classmethod
    def of_victim(
        cls, group: list[_Signal], scores: np.ndarray, keep: np.ndarray | None = None
    ) -> _Instance:
        first, sample = group[0].received, group[0].sample
        chosen = slice(None) if keep is None else keep
        return cls(
            first.party, first.victim, None, first.exchange, None, None,
            float(np.mean([s.received.coverage for s in group])),
            scores, sample.is_member[chosen], sample.indices[chosen],
        )  # fmt: skip

    def row(self) -> dict:
        return {
            "party": self.party,
            "victim": self.victim,
            "round": self.round,
            "exchange": self.exchange,
            "message": self.message,
            "sender": self.sender,
            "coverage": self.coverage,
            "members": int(self.is_member.sum()),
            "nonmembers": int((~self.is_member).sum()),
        }


def _by_victim(signals: list[_Signal]) -> list[list[_Signal]]:
    groups: dict[int, list[_Signal]] = {}
    for s in signals:
        groups.setdefault(s.received.victim, []).append(s)
    return [groups[v] for v in sorted(groups)]


def _split(is_member: np.ndarray, fraction: float, seed: int, victim: int) -> np.ndarray:
    """A random ``fraction`` of the members and of the non-members (a boolean mask)."""
    rng = numpy_generator(seed, "trajectory-split", victim)
    train = np.zeros(len(is_member), dtype=bool)
    for side in (is_member, ~is_member):
        rows = np.flatnonzero(side)
        size = round(fraction * len(rows))
        check(
            2 <= size <= len(rows) - 2,
            "samples_per_victim",
            "large enough for 2 members and 2 non-members on each side of the split",
            len(rows),
        )
        train[rng.choice(rows, size=size, replace=False)] = True
    return train


def _metrics(evaluation: MembershipEvaluation) -> dict:
    out = {
        "auc": evaluation.auc,
        "auc_low": evaluation.auc_ci[0],
        "auc_high": evaluation.auc_ci[1],
        "balanced_accuracy": evaluation.balanced_accuracy,
        "advantage": evaluation.advantage,
    }
    return out | {f"tpr@{key}": rate.tpr for key, rate in evaluation.tpr_at_fpr.items()}


# ------------------------------------------------------------------------------ results


@dataclass(frozen=True, eq=False)
class DecentralizedMIAResult:
    """What ``ReceivedModelMIA.run`` found.

    ``instances``: one row per attack instance (party, victim, round, exchange, message,
    sender pseudonym, coverage, class sizes, AUC with its DeLong interval, balanced
    accuracy, advantage, ``tpr@<fpr>``), ``evaluations`` the matching
    ``MembershipEvaluation`` (with the scores), ``pooled`` the evaluation of all
    instances' scores concatenated (the ROC to read TPR at low FPR from).
    """

    method: str
    attacker: str
    party: str
    aggregate: str
    completion: str | None
    instances: pd.DataFrame
    evaluations: list[MembershipEvaluation] = field(repr=False)
    pooled: MembershipEvaluation = field(repr=False)

    def _metric_columns(self) -> list[str]:
        return ["auc"] + [c for c in self.instances.columns if c.startswith("tpr@")]

    def _spread(self, by: str) -> pd.DataFrame:
        table = self.instances.dropna(subset=[by])
        if table.empty:
            raise PrivlabError(
                f"per-{by} aggregation needs per-round instances: aggregate 'pooled' or 'last'"
            )
        stats = {"instances": ("auc", "size"), "auc_std": ("auc", "std")}
        for column in self._metric_columns():
            stats[f"{column}_mean"] = (column, "mean")
            stats[f"{column}_max"] = (column, "max")
        return table.groupby(by).agg(**stats).reset_index()

    def per_victim(self) -> pd.DataFrame:
        """Shatter's per-client view: AUC and TPRs, mean, max and AUC std over each
        victim's instances."""
        return self._spread("victim")

    def per_round(self) -> pd.DataFrame:
        """Shatter's per-iteration view: the same statistics over the victims of each round."""
        return self._spread("round")

    def mean_over_rounds(self) -> float:
        """Zip-DL's figure: AUC averaged over victims at each round, then over rounds."""
        return float(self.per_round()["auc_mean"].mean())

    def summary(self) -> dict:
        """JSON-able headline numbers."""
        per_victim = self.per_victim()
        out = {
            "method": self.method,
            "attacker": self.attacker,
            "party": self.party,
            "aggregate": self.aggregate,
            "completion": self.completion,
            "instances": len(self.instances),
            "victims": int(self.instances["victim"].nunique()),
            "pooled": self.pooled.summary(),
            "auc_mean_over_victims": float(per_victim["auc_mean"].mean()),
            "auc_max_over_victims": float(per_victim["auc_max"].max()),
        }
        if self.instances["round"].notna().any():
            out["auc_mean_over_rounds"] = self.mean_over_rounds()
        return out
