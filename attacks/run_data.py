"""What an attacker of a finished run needs, rebuilt from its run folder.

A run folder holds the config, the observation log and the final models, not the data or
the initial model. ``AttackContext.from_run`` rebuilds those from the config exactly as
``privlab.experiment.build`` does (the same seed streams "dataset", "partition", "model"),
without building the engine: the dataset and its partition (each node's training set,
the disjoint non-member pool, the test set), the model architecture with its initial
parameters (every node starts from it), and the protocol that ran.

``received_models`` turns the observation log into the whole models a curious party
received (chunks completed, the attacker's own model estimated); ``membership_samples``
draws the members and non-members on which a victim's models are attacked. Both are
what the attacks of ``privlab.attacks.decentralized`` and ``privlab.attacks.linkability``
consume (and are re-exported by the former).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

import privlab.mechanisms  # noqa: F401  (registers the protocols)
from privlab.config import ExperimentConfig, parse_config
from privlab.errors import PrivlabError, check, is_integer
from privlab.experiment import federated_data
from privlab.models import build_model
from privlab.observe import ObservationLog, ThreatModel
from privlab.partition import FederatedData
from privlab.protocol import PROTOCOLS, Protocol
from privlab.results import Results, load_run
from privlab.rng import derive_seed, numpy_generator
from privlab.state import ParamSpec

EAVESDROPPER = "eavesdropper"
COMPLETIONS = ("own", "zeros", "mask-aware")
NO_MODEL = {
    "cesar": (
        "protocol cesar shows a curious receiver only masked integers (ring elements); "
        "membership needs a model: attack the aggregate instead"
    ),
}


@dataclass(frozen=True, eq=False)
class AttackContext:
    """A run as its attacker sees it, plus the ground truth that scores the attack.

    ``observations`` is what the threat model's parties received (``privlab.observe``);
    ``data`` gives each node's training set (``node_indices``, membership ground truth
    and, for a curious node, its own data), the non-member pool and the test set;
    ``model`` holds the initial parameters ``initial`` (laid out by ``spec``); ``final``
    are every node's parameters ``[n, D]`` after round ``final_round`` (its state, for a
    protocol that does not train); ``protocol`` is the protocol of the run, built from
    its config but not set up (``name``, ``exchanges``, ``trains``).
    """

    source: str
    config: ExperimentConfig
    data: FederatedData
    model: nn.Module
    spec: ParamSpec
    initial: torch.Tensor
    final: torch.Tensor
    final_round: int
    observations: ObservationLog
    protocol: Protocol

    @classmethod
    def from_run(cls, run: Results | str | Path) -> AttackContext:
        """Rebuild the attacker's context of ``run`` (a ``Results`` or a run folder).

        Raises ``PrivlabError`` when the run has no observation log (no ``observer``
        section) or no final models (it diverged or was aborted), or when the rebuilt
        model does not match the logged one.
        """
        from_folder = isinstance(run, (str, Path))
        source = f"run folder {run}" if from_folder else f"run {run.config.get('name')!r}"
        results = load_run(run) if from_folder else run
        if results.observations is None:
            raise PrivlabError(f"{source} has no observation log: rerun with an observer section")
        if results.models is None:
            raise PrivlabError(
                f"{source} kept no final models (it diverged or was aborted): rerun it to the end"
            )
        config = parse_config(results.config)
        data = federated_data(config)  # as the run built it
        model = initial_model(config, data)
        spec = ParamSpec.of(model)
        options = config.protocol.options
        protocol = PROTOCOLS.with_options(config.protocol.name, options)(**options)
        final = results.models["params"]
        width = spec.dim if protocol.trains else final.shape[1]
        if results.observations.dim != spec.dim or tuple(final.shape) != (data.num_nodes, width):
            raise PrivlabError(
                f"{source}: the rebuilt model has {spec.dim} parameters, but the run logged "
                f"{results.observations.dim} and kept final states of shape "
                f"{tuple(final.shape)}: was its config edited?"
            )
        return cls(
            source=source,
            config=config,
            data=data,
            model=model,
            spec=spec,
            initial=spec.flatten(model),
            final=final,
            final_round=int(results.models["round"]),
            observations=results.observations,
            protocol=protocol,
        )

    @property
    def protocol_name(self) -> str:
        return self.protocol.name

    @property
    def threat_model(self) -> ThreatModel:
        return self.observations.threat_model

    @property
    def num_nodes(self) -> int:
        return self.data.num_nodes

    @property
    def parties(self) -> list[str]:
        """The observing parties, by name (``node:3``, ``coalition:1,2``, ``eavesdropper``)."""
        return self.observations.parties

    def party(self, party: str | None) -> str:
        """``party`` checked against the log's parties; None means the first one."""
        if party is None:
            return self.parties[0]
        if party not in self.parties:
            raise PrivlabError(f"party must be one of {', '.join(self.parties)}, got {party!r}")
        return party

    def party_nodes(self, party: str) -> tuple[int, ...]:
        """The real nodes that make up ``party`` (none for the eavesdropper)."""
        party = self.party(party)
        if party == EAVESDROPPER:
            return ()
        return tuple(int(v) for v in party.split(":", 1)[1].split(","))

    def own_indices(self, party: str) -> np.ndarray:
        """The training samples of the party's nodes: the data the attacker holds."""
        nodes = self.party_nodes(party)
        if not nodes:
            return np.empty(0, dtype=np.int64)
        return np.sort(np.concatenate([self.data.node_indices[v] for v in nodes]))

    def samples(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and labels of the dataset rows ``indices``."""
        index = torch.from_numpy(np.array(indices, dtype=np.int64))  # a writable copy
        return self.data.dataset.X[index], self.data.dataset.y[index]

    def labels(self, indices: np.ndarray) -> np.ndarray:
        """Labels of the dataset rows ``indices`` (numpy int64)."""
        return self.data.dataset.y.numpy()[np.asarray(indices, dtype=np.int64)]


def initial_model(config: ExperimentConfig, data: FederatedData) -> nn.Module:
    """The run's model with the initial parameters every node starts from."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(config.seed, "model"))
        dataset = data.dataset
        return build_model(
            config.model.name, dataset.input_shape, dataset.num_classes, **config.model.options
        )


# ----------------------------------------------------------------------- received models


@dataclass(frozen=True, eq=False)
class ReceivedModel:
    """One message a curious party received, as a whole model.

    ``sender`` is what the party was told (a pseudonym where the protocol hides it);
    ``victim`` is the true sender (ground truth, for scoring and choosing victims only);
    ``message`` is the row of the message in the party's observation of that exchange.
    ``params[D]`` is the payload completed to a whole model, ``own[D]`` the attacker's own
    model at the start of the round as estimated from what it received before (see
    ``received_models``), ``coverage`` the fraction of coordinates the message carried.
    """

    party: str
    round: int
    exchange: int
    message: int
    sender: int
    victim: int
    params: torch.Tensor
    own: torch.Tensor
    coverage: float


def by_round(
    context: AttackContext,
    models: Iterator[ReceivedModel],
    rounds: Iterable[int] | None = None,
    *,
    progress: bool = False,
) -> Iterator[list[ReceivedModel]]:
    """``models`` grouped by round, with a progress bar of rounds on a terminal."""
    recorded = context.observations.rounds()
    total = len(recorded if rounds is None else set(recorded) & {int(r) for r in rounds})
    groups = (list(group) for _, group in groupby(models, key=lambda m: m.round))
    show = progress and sys.stderr.isatty()
    yield from tqdm(groups, total=total, desc="rounds", unit="round", disable=not show, leave=False)


def received_models(
    context: AttackContext,
    party: str | None = None,
    rounds: Iterable[int] | None = None,
    *,
    exchange: int = -1,
    completion: str | None = None,
) -> Iterator[ReceivedModel]:
    """The models ``party`` (default: the log's first party) received, round by round.

    ``exchange`` picks which exchange of each round (from 0; negative counts from the
    end). The default, the last one, is the only one of D-PSGD, Epidemic Learning,
    Zip-DL and Shatter; for Muffliato's K gossip steps it is step K, the victim's
    iterate after K - 1 averagings of the noisy models, while ``exchange=0`` is its own
    freshly noised model, not yet averaged with anyone's. Messages whose true
    sender is one of the party's own nodes are skipped (as the Shatter artifact skips
    its own chunks).

    **The attacker's own model** (``own``), which the log does not hold, is estimated
    (a decision): at the start of round t it is the per-coordinate mean of the values
    the party received at that exchange in its latest recorded round before t, which is
    the attacker's own aggregate without its own contribution. Before the first recorded
    round it is the initial model (exact when that round is round 1: every node starts
    from it); coordinates no message has carried yet keep the initial value.

    **Chunks** (messages with indices: Shatter, sparsified D-PSGD) are completed to a
    whole model by ``completion``: ``own`` fills the other coordinates with the
    attacker's own model (the Shatter artifact's completion), ``zeros`` with zeros (the
    ROG gradient-inversion completion of the same artifact), ``mask-aware`` as ``own``;
    attacks then compare the completed model with ``own`` itself, so that only the
    chunk's coordinates count (see ``ReceivedModelMIA``). A run that sends chunks is
    refused without a completion; CESAR (masked integers) and protocols whose state is
    not a model are refused.
    """
    party = context.party(party)
    resolved = _resolve_exchange(context, exchange)
    _check_model_visible(context)
    if completion is not None:
        check(
            completion in COMPLETIONS, "completion", f"one of {', '.join(COMPLETIONS)}", completion
        )
    log = context.observations
    if completion is None and len(log) and log.observations[0].indices is not None:
        raise PrivlabError(
            f"protocol {context.protocol_name} sends chunks (parts of the model, with "
            "indices): membership needs a whole model; pass completion='own', 'zeros' or "
            "'mask-aware'"
        )
    wanted = None if rounds is None else {int(r) for r in rounds}
    return _received(context, party, resolved, completion, wanted)


def _received(
    context: AttackContext,
    party: str,
    exchange: int,
    completion: str | None,
    wanted: set[int] | None,
) -> Iterator[ReceivedModel]:
    own_nodes = set(context.party_nodes(party))
    own = context.initial.clone()
    for observation in context.observations.iter_party(party):
        if observation.exchange != exchange or len(observation) == 0:
            continue
        if wanted is None or observation.round in wanted:
            base = torch.zeros_like(own) if completion == "zeros" else own
            rows = zip(observation.sender.tolist(), observation.true_sender.tolist())
            for message, (sender, victim) in enumerate(rows):
                if victim in own_nodes:
                    continue
                indices = None if observation.indices is None else observation.indices[message]
                params, coverage = _complete(observation.payload[message], indices, base)
                yield ReceivedModel(
                    party,
                    observation.round,
                    exchange,
                    message,
                    sender,
                    victim,
                    params,
                    own,
                    coverage,
                )
        own = _received_mean(observation.payload, observation.indices, own)


def _resolve_exchange(context: AttackContext, exchange: int) -> int:
    count = context.protocol.exchanges
    check(
        is_integer(exchange) and -count <= exchange < count,
        "exchange",
        f"an integer in [{-count}, {count - 1}] (protocol {context.protocol_name} has "
        f"{count} exchange(s) per round)",
        exchange,
    )
    return int(exchange) % count


def _check_model_visible(context: AttackContext) -> None:
    name = context.protocol_name
    if name in NO_MODEL:
        raise PrivlabError(NO_MODEL[name])
    if not context.protocol.trains:
        raise PrivlabError(
            f"protocol {name} does not train: its messages are not models, and membership "
            "needs a model"
        )


def _complete(
    payload: torch.Tensor, indices: torch.Tensor | None, base: torch.Tensor
) -> tuple[torch.Tensor, float]:
    """The message as a whole model: ``base`` overwritten at the coordinates it carries."""
    if indices is None:
        return payload.to(base.dtype), 1.0
    valid = indices >= 0
    full = base.clone()
    full[indices[valid]] = payload[valid].to(base.dtype)
    return full, float(valid.sum()) / base.numel()


def _received_mean(
    payload: torch.Tensor, indices: torch.Tensor | None, previous: torch.Tensor
) -> torch.Tensor:
    """Per-coordinate mean of the received values; ``previous`` where none was received."""
    if indices is None:
        return payload.double().mean(dim=0).to(previous.dtype)
    valid = indices >= 0
    coords = indices[valid]
    total = torch.zeros(previous.numel(), dtype=torch.float64)
    total.index_add_(0, coords, payload[valid].double())
    count = torch.zeros(previous.numel(), dtype=torch.float64)
    count.index_add_(0, coords, torch.ones(len(coords), dtype=torch.float64))
    mean = (total / count.clamp(min=1)).to(previous.dtype)
    return torch.where(count > 0, mean, previous)


# ------------------------------------------------------------------- membership samples


@dataclass(frozen=True, eq=False)
class MembershipSample:
    """Dataset rows ``indices[N]`` and their membership ``is_member[N]`` for one victim."""

    victim: int
    indices: np.ndarray
    is_member: np.ndarray


def membership_samples(
    context: AttackContext, victim: int, *, num: int, seed: int, match_labels: bool = True
) -> MembershipSample:
    """Members and non-members on which to attack ``victim``'s models.

    Members: ``num`` of the victim's training samples drawn at random (all of them when
    it has fewer). Non-members: as many samples of the run's non-member pool (disjoint
    from every node's training set, never trained on).

    With ``match_labels`` the non-members have the members' labels, class by class: on a
    non-IID partition a victim's model fits its own classes better than the others, so
    unmatched non-members (drawn from every class) are scored as non-members because of
    their label, not because of membership; that label-skew artefact inflates the AUC
    even of an untrained model. Where the pool has fewer samples of a class than the
    members, members of that class are dropped at random to keep the two sides matched
    and of equal size. Without it, non-members are drawn uniformly from the pool.
    Draws come from the stream ``("membership-samples", victim)`` of ``seed``.
    """
    check(is_integer(num) and num >= 1, "num", "an integer >= 1", num)
    check(
        is_integer(victim) and 0 <= victim < context.num_nodes,
        "victim",
        f"a node in [0, {context.num_nodes})",
        victim,
    )
    rng = numpy_generator(seed, "membership-samples", victim)
    members = context.data.node_indices[victim]
    members = np.sort(rng.choice(members, size=min(num, len(members)), replace=False))
    pool = context.data.nonmember_indices
    check(len(pool) > 0, "data.nonmember_fraction", "> 0 (the run has no non-member pool)", 0)
    if match_labels:
        members, nonmembers = _label_matched(context, members, pool, rng)
    else:
        size = min(len(members), len(pool))
        members = np.sort(rng.choice(members, size=size, replace=False))
        nonmembers = np.sort(rng.choice(pool, size=size, replace=False))
    indices = np.concatenate([members, nonmembers])
    is_member = np.concatenate([np.ones(len(members), bool), np.zeros(len(nonmembers), bool)])
    return MembershipSample(int(victim), indices, is_member)


def _label_matched(
    context: AttackContext, members: np.ndarray, pool: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    member_labels, pool_labels = context.labels(members), context.labels(pool)
    kept, drawn = [], []
    for label in np.unique(member_labels):
        of_class = members[member_labels == label]
        candidates = pool[pool_labels == label]
        size = min(len(of_class), len(candidates))
        kept.append(rng.choice(of_class, size=size, replace=False))
        drawn.append(rng.choice(candidates, size=size, replace=False))
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(drawn))
