"""Linkability: which real node sent the model, or the chunk, a curious party received?

The attack of Shatter (Biswas, Even, Kermarrec, Massoulié, Pires, Sharma & de Vos,
"Noiseless Privacy-Preserving Decentralized Learning", PoPETs 2025; artifact
``sacs-epfl/shatter``, ``attacks/LinkabilityAttack.py``), also run by Zip-DL (Biswas et
al., PoPETs 2025, ``perform_attacks.py: run_linkability_attack``): complete the received
chunk to a whole model, evaluate its mean loss on every candidate node's training set,
and name the candidate with the lowest loss. Scored as top-k accuracy against the true
sender, beside the random guess ``k / candidates``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
import torch

from privlab.attacks.run_data import (
    COMPLETIONS,
    AttackContext,
    ReceivedModel,
    by_round,
    received_models,
)
from privlab.attacks.signals import model_logits, per_example_loss
from privlab.errors import PrivlabError, check, is_integer, is_real
from privlab.intervals import clopper_pearson
from privlab.rng import numpy_generator


@dataclass(frozen=True)
class TopKAccuracy:
    """How often the true sender was among the ``k`` best-ranked candidates:
    ``accuracy = successes / trials`` with its Clopper-Pearson (1934) interval ``ci``, and
    the random guess ``baseline = min(1, k / candidates)``."""

    k: int
    accuracy: float
    ci: tuple[float, float]
    baseline: float
    successes: int
    trials: int


@dataclass(frozen=True)
class Linkability:
    """The loss-based linkability attack (Biswas et al., PoPETs 2025, Shatter §6; the
    artifact's ``LinkabilityAttack``) on every model or chunk a curious party received.

    For each received message (one pseudonym of one round), the completed model's mean
    cross-entropy is evaluated on each candidate's training set (``samples_per_candidate``
    of them at random, None: all); candidates are ranked by it, lowest first. With
    ``completion="mask-aware"`` they are ranked by the mean loss change
    ``loss(completed) - loss(own)`` instead, which cancels the coordinates outside the
    chunk and each candidate's own difficulty under the attacker's model.
    ``completion`` is required for chunks (see
    ``privlab.attacks.decentralized.received_models``, which also defines the attacker's
    own model and which ``exchange`` is attacked).

    Candidates are every real node but the party's own; messages from the party's own
    nodes are skipped. **Attacker: oracle**, as in the Shatter artifact: it is assumed to
    hold every candidate's training data. On protocols that do not hide the sender
    (D-PSGD, Epidemic Learning) linkability is trivial from the sender label; the attack
    ignores the label and is scored all the same (``sender_hidden`` says which case).
    """

    completion: str | None = None
    top: tuple[int, ...] = (1, 5)
    exchange: int = -1
    samples_per_candidate: int | None = None
    confidence: float = 0.95
    seed: int = 0
    attacker: ClassVar[str] = "oracle"

    def __post_init__(self) -> None:
        if self.completion is not None:
            valid = f"one of {', '.join(COMPLETIONS)}"
            check(self.completion in COMPLETIONS, "completion", valid, self.completion)
        top = tuple(self.top)
        check(
            len(top) >= 1 and all(is_integer(k) and k >= 1 for k in top),
            "top",
            "a non-empty sequence of integers >= 1",
            self.top,
        )
        object.__setattr__(self, "top", tuple(sorted(set(int(k) for k in top))))
        if self.samples_per_candidate is not None:
            check(
                is_integer(self.samples_per_candidate) and self.samples_per_candidate >= 1,
                "samples_per_candidate",
                "an integer >= 1 or None (all)",
                self.samples_per_candidate,
            )
        check(
            is_real(self.confidence) and 0 < self.confidence < 1,
            "confidence",
            "in (0, 1)",
            self.confidence,
        )

    def run(
        self,
        context: AttackContext,
        party: str | None = None,
        rounds: Iterable[int] | None = None,
        *,
        progress: bool = False,
    ) -> LinkabilityResult:
        """Link every message ``party`` received in ``rounds`` (None: every recorded one);
        a progress bar of rounds on a terminal with ``progress``."""
        party = context.party(party)
        own_nodes = set(context.party_nodes(party))
        candidates = np.array([v for v in range(context.num_nodes) if v not in own_nodes])
        data = _CandidateData.of(context, candidates, self.samples_per_candidate, self.seed)
        models = received_models(
            context, party, rounds, exchange=self.exchange, completion=self.completion
        )
        rows = []
        for in_round in by_round(context, models, rounds, progress=progress):
            rows.extend(self._link(context, in_round, data))
        if not rows:
            raise PrivlabError(f"party {party} received no message to link in the chosen rounds")
        table = pd.DataFrame(rows)
        return LinkabilityResult(
            party=party,
            completion=self.completion,
            candidates=tuple(int(v) for v in candidates),
            sender_hidden=bool((table["sender"] != table["victim"]).any()),
            instances=table,
            top={k: self._accuracy(table, k, len(candidates)) for k in self.top},
        )

    def _link(
        self, context: AttackContext, group: list[ReceivedModel], data: _CandidateData
    ) -> list[dict]:
        """One row per message of a round: the true sender's rank among the candidates."""
        params = torch.stack([received.params for received in group] + [group[0].own])
        losses = data.mean_losses(context, params)
        if self.completion == "mask-aware":
            losses = losses[:-1] - losses[-1]
        rows = []
        for received, loss in zip(group, losses):
            order = np.argsort(loss, kind="stable")
            rank = 1 + int(np.flatnonzero(data.candidates[order] == received.victim)[0])
            row = {
                "party": received.party,
                "round": received.round,
                "exchange": received.exchange,
                "message": received.message,
                "sender": received.sender,
                "victim": received.victim,
                "coverage": received.coverage,
                "predicted": int(data.candidates[order[0]]),
                "rank": rank,
            }
            rows.append(row | {f"top{k}": rank <= k for k in self.top})
        return rows

    def _accuracy(self, table: pd.DataFrame, k: int, candidates: int) -> TopKAccuracy:
        trials = len(table)
        successes = int(table[f"top{k}"].sum())
        return TopKAccuracy(
            k=k,
            accuracy=successes / trials,
            ci=clopper_pearson(successes, trials, self.confidence),
            baseline=min(1.0, k / candidates),
            successes=successes,
            trials=trials,
        )


@dataclass(frozen=True, eq=False)
class _CandidateData:
    """Every candidate's training samples, concatenated, with the candidate of each."""

    candidates: np.ndarray
    owner: np.ndarray
    x: torch.Tensor
    y: torch.Tensor

    @classmethod
    def of(
        cls, context: AttackContext, candidates: np.ndarray, per_candidate: int | None, seed: int
    ) -> _CandidateData:
        rows, owner = [], []
        for position, node in enumerate(candidates):
            indices = context.data.node_indices[node]
            if per_candidate is not None and len(indices) > per_candidate:
                rng = numpy_generator(seed, "linkability-samples", int(node))
                indices = np.sort(rng.choice(indices, size=per_candidate, replace=False))
            rows.append(indices)
            owner.append(np.full(len(indices), position))
        x, y = context.samples(np.concatenate(rows))
        return cls(candidates, np.concatenate(owner), x, y)

    def mean_losses(self, context: AttackContext, params: torch.Tensor) -> np.ndarray:
        """Mean loss ``[m, candidates]`` of each model ``params[m, D]`` on each
        candidate's samples."""
        loss = per_example_loss(model_logits(context.model, params, self.x), self.y).numpy()
        sizes = np.bincount(self.owner, minlength=len(self.candidates))
        return np.stack(
            [np.bincount(self.owner, weights=row, minlength=len(sizes)) / sizes for row in loss]
        )


@dataclass(frozen=True, eq=False)
class LinkabilityResult:
    """What ``Linkability.run`` found: one row per linked message in ``instances``
    (round, exchange, message, sender pseudonym, true sender ``victim``, coverage, the
    top-ranked candidate ``predicted``, the true sender's ``rank`` from 1, and
    ``top<k>`` booleans), and the top-k accuracies ``top`` with their baselines."""

    party: str
    completion: str | None
    candidates: tuple[int, ...]
    sender_hidden: bool
    instances: pd.DataFrame
    top: dict[int, TopKAccuracy]

    def _mean_by(self, by: str) -> pd.DataFrame:
        columns = [f"top{k}" for k in self.top]
        grouped = self.instances.groupby(by)
        table = grouped[columns].mean()
        table.insert(0, "instances", grouped.size())
        return table.reset_index()

    def per_victim(self) -> pd.DataFrame:
        """Shatter's per-client view: top-k accuracy over each true sender's messages."""
        return self._mean_by("victim")

    def per_round(self) -> pd.DataFrame:
        """Shatter's per-iteration view: top-k accuracy over each round's messages."""
        return self._mean_by("round")

    def summary(self) -> dict:
        """JSON-able headline numbers."""
        return {
            "attacker": Linkability.attacker,
            "party": self.party,
            "completion": self.completion,
            "candidates": len(self.candidates),
            "sender_hidden": self.sender_hidden,
            "messages": len(self.instances),
            "mean_rank": float(self.instances["rank"].mean()),
            "top": {
                str(k): {
                    "accuracy": t.accuracy,
                    "ci": list(t.ci),
                    "baseline": t.baseline,
                    "successes": t.successes,
                    "trials": t.trials,
                }
                for k, t in self.top.items()
            },
        }
