"""Per-node (and per observer/source pair) privacy ledgers over a run.

Each round the engine hands the ledger what the components emitted (``Emissions``):
events per node and events per (observer, source) pair. Composition across steps and
rounds is adaptive sequential composition, kept separately for each node: a node's
epsilon bounds what the whole run reveals about the records of that node's own data
(neighbouring datasets differ in one record of that node). A pair's epsilon bounds what
the observer learns about the source's records. The composed ledger is converted with
the configured accountant: Renyi DP (Mironov, "Renyi Differential Privacy", CSF 2017) or
privacy loss distributions (Koskela, Jalko, Honkela, AISTATS 2020; Doroshenko et al.,
"Connect the Dots", PETS 2022).

Scale: nodes (and pairs) point to interned *distinct* ledgers (tuples of
``(event id, count)``); a round updates them with array ops plus one Python step per
distinct (ledger, event) transition, and epsilon is computed once per distinct ledger,
then scattered back. 100 000 nodes sharing a few ledgers cost a few accountant calls.
The bookkeeping is numpy on the CPU (small integer index work), whatever the device of
the emitted id tensors.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from privlab.accounting.calibrate import make_accountant
from privlab.accounting.events import (
    ComposedEvent,
    PrivacyEvent,
    SelfComposedEvent,
    event_from_dict,
    event_to_dict,
)
from privlab.context import Emissions
from privlab.errors import PrivlabError, is_real

__all__ = ["PrivacyLedger"]

ACCOUNTANT_NAMES = ("rdp", "pld")

Ledger = tuple[tuple[int, int], ...]
"""A distinct ledger: sorted ``(event id, count)`` entries with count >= 1."""


class _LedgerTable:
    """Slots (nodes or pairs), each pointing to an interned distinct ledger (id 0: empty)."""

    def __init__(self, size: int) -> None:
        self.slot = np.zeros(size, dtype=np.int64)
        self.ledgers: list[Ledger] = [()]
        self.ids: dict[Ledger, int] = {(): 0}
        self.recorded = False
        self._limit = 1024
        self.epsilon_cache: dict[Ledger, float] = {}

    def intern(self, ledger: Ledger) -> int:
        index = self.ids.get(ledger)
        if index is None:
            index = self.ids[ledger] = len(self.ledgers)
            self.ledgers.append(ledger)
        return index

    def _extend(self, ledger_id: int, event_id: int, count: int) -> int:
        entries = dict(self.ledgers[ledger_id])
        entries[event_id] = entries.get(event_id, 0) + count
        return self.intern(tuple(sorted(entries.items())))

    def add(self, event_id: int, positions: np.ndarray | None) -> None:
        """One more ``event`` for each slot in ``positions`` (None: every slot)."""
        self.recorded = True
        if positions is None:
            uniq, inverse = _unique(self.slot)
            new = [self._extend(lid, event_id, 1) for lid in uniq.tolist()]
            self.slot = np.array(new, dtype=np.int64)[inverse]
        elif positions.size:
            pos, mult = _unique_counts(positions)
            base = int(mult.max()) + 1
            keys, inverse = _unique(self.slot[pos] * base + mult)
            new = [self._extend(k // base, event_id, k % base) for k in keys.tolist()]
            self.slot[pos] = np.array(new, dtype=np.int64)[inverse]
        self._compact()

    def _compact(self) -> None:
        """Forget ledgers no slot points to any more (each round leaves the old ones)."""
        if len(self.ledgers) <= self._limit:
            return
        live, inverse = _unique(np.concatenate([np.zeros(1, dtype=np.int64), self.slot]))
        self.ledgers = [self.ledgers[i] for i in live.tolist()]  # live[0] == 0: empty
        self.ids = {ledger: i for i, ledger in enumerate(self.ledgers)}
        self.slot = inverse[1:].copy()
        self._limit = 4 * len(self.ledgers) + 1024

    def grow(self, extra: int) -> None:
        self.slot = np.concatenate([self.slot, np.zeros(extra, dtype=np.int64)])


class PrivacyLedger:
    """Composes emitted privacy events per node and per (observer, source) pair.

    ``accountant``: ``"rdp"`` or ``"pld"``; ``delta``: the delta epsilon is reported at.
    Epsilons are recomputed only after new events were recorded.
    """

    def __init__(self, num_nodes: int, accountant: str = "rdp", delta: float = 1e-5) -> None:
        if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 1:
            raise PrivlabError(f"num_nodes must be a positive integer, got {num_nodes!r}")
        if not isinstance(accountant, str) or accountant not in ACCOUNTANT_NAMES:
            valid = ", ".join(repr(a) for a in ACCOUNTANT_NAMES)
            raise PrivlabError(f"privacy.accountant must be one of {valid}, got {accountant!r}")
        if not is_real(delta) or not 0.0 < delta < 1.0:
            raise PrivlabError(f"privacy.delta must be in (0, 1), got {delta!r}")
        self.num_nodes = num_nodes
        self.accountant = accountant
        self.delta = float(delta)
        self._events: list[PrivacyEvent] = []
        self._event_ids: dict[PrivacyEvent, int] = {}
        self._supported: set[PrivacyEvent] = set()
        self._nodes = _LedgerTable(num_nodes)
        self._pairs = _LedgerTable(0)
        self._pair_keys = np.zeros(0, dtype=np.int64)  # observer * n + source, sorted
        self._version = 0
        self._epsilon: tuple[int, torch.Tensor | None] | None = None
        self._pair_epsilon: tuple[int, dict[tuple[int, int], float]] | None = None

    # -- recording ---------------------------------------------------------------------

    def _check(self, event: PrivacyEvent) -> None:
        """Raise the accountant's UnsupportedEventError (or PrivlabError) for ``event``."""
        if not isinstance(event, PrivacyEvent):
            raise PrivlabError(f"emitted events must be PrivacyEvent, got {event!r}")
        if event not in self._supported:
            make_accountant(self.accountant).compose(event)  # validates, records nothing here
            self._supported.add(event)

    def _ids(self, ids: Any, what: str) -> np.ndarray:
        """Node ids (a tensor on any device, an array or a list) as int64 numpy ``[k]``."""
        if isinstance(ids, torch.Tensor):
            ids = ids.detach().cpu().numpy()
        array = np.asarray(ids).reshape(-1)
        if array.size == 0:
            return np.zeros(0, dtype=np.int64)
        if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
            raise PrivlabError(f"{what} must be integer node ids, got dtype {array.dtype}")
        array = array.astype(np.int64, copy=False)
        n = self.num_nodes
        if not (0 <= int(array.min()) and int(array.max()) < n):
            raise PrivlabError(f"{what} must be node ids in [0, {n})")
        return array

    def _event_id(self, event: PrivacyEvent) -> int:
        index = self._event_ids.get(event)
        if index is None:
            index = self._event_ids[event] = len(self._events)
            self._events.append(event)
        return index

    def record(self, emissions: Emissions) -> None:
        """Compose one round's node and pair events. Everything is validated first: on
        an error (e.g. the accountant's ``UnsupportedEventError``) nothing is recorded."""
        node_events = []
        for event, nodes in emissions.node_events:
            self._check(event)
            node_events.append((event, None if nodes is None else self._ids(nodes, "nodes")))
        pair_events = []
        for event, observers, sources in emissions.pair_events:
            self._check(event)
            obs, src = self._ids(observers, "observers"), self._ids(sources, "sources")
            if obs.shape != src.shape:
                raise PrivlabError("pair events need observers and sources of equal length")
            pair_events.append((event, obs * self.num_nodes + src))
        for event, nodes in node_events:
            self._nodes.add(self._event_id(event), nodes)
        for event, keys in pair_events:
            self._pairs.add(self._event_id(event), self._pair_positions(keys))
        if node_events or pair_events:
            self._version += 1

    def _pair_positions(self, keys: np.ndarray) -> np.ndarray:
        """Slots of pair ``keys`` in the pair table, adding the pairs not seen yet."""
        known = self._pair_keys
        uniq = _sorted_unique(keys)
        pos = np.searchsorted(known, uniq)
        hit = np.zeros(uniq.size, dtype=bool)
        if known.size:
            hit = known[np.minimum(pos, known.size - 1)] == uniq
        missing = uniq[~hit]
        if missing.size:
            merged = np.concatenate([known, missing])
            order = np.argsort(merged, kind="stable")
            self._pair_keys = merged[order]
            self._pairs.grow(missing.size)
            self._pairs.slot = self._pairs.slot[order]
        return np.searchsorted(self._pair_keys, keys)

    # -- results -----------------------------------------------------------------------

    @property
    def claims_dp(self) -> bool:
        """Whether any event was recorded (a run without DP mechanisms records none)."""
        return self._nodes.recorded or self._pairs.recorded

    def _ledger_epsilon(self, ledger: Ledger) -> float:
        if not ledger:
            return 0.0
        accountant = make_accountant(self.accountant)
        for event_id, count in ledger:
            accountant.compose(self._events[event_id], count)
        return float(accountant.get_epsilon(self.delta))

    def _table_epsilon(self, table: _LedgerTable) -> np.ndarray:
        """Epsilon per slot, computed once per distinct ledger and scattered back."""
        live, inverse = _unique(table.slot)
        cache, fresh = table.epsilon_cache, {}
        for lid in live.tolist():
            ledger = table.ledgers[lid]
            fresh[ledger] = cache[ledger] if ledger in cache else self._ledger_epsilon(ledger)
        table.epsilon_cache = fresh  # keep only the ledgers still in use
        values = [fresh[table.ledgers[lid]] for lid in live.tolist()]
        return np.array(values, dtype=np.float64)[inverse]

    def epsilon(self) -> torch.Tensor | None:
        """Epsilon ``[n]`` (float64) of each node at ``self.delta`` so far; None when no
        node event was recorded. A node without events gets 0, one with a
        ``NoPrivacyEvent`` gets inf."""
        if self._epsilon is None or self._epsilon[0] != self._version:
            value = None
            if self._nodes.recorded:
                value = torch.from_numpy(self._table_epsilon(self._nodes))
            self._epsilon = (self._version, value)
        value = self._epsilon[1]
        return None if value is None else value.clone()

    def pair_epsilon(self) -> dict[tuple[int, int], float]:
        """``(observer, source) -> epsilon`` of every pair with events; empty if none."""
        if self._pair_epsilon is None or self._pair_epsilon[0] != self._version:
            result: dict[tuple[int, int], float] = {}
            if self._pair_keys.size:
                values = self._table_epsilon(self._pairs).tolist()
                n = self.num_nodes
                result = {(k // n, k % n): v for k, v in zip(self._pair_keys.tolist(), values)}
            self._pair_epsilon = (self._version, result)
        return dict(self._pair_epsilon[1])

    def _as_event(self, ledger: Ledger) -> ComposedEvent:
        return ComposedEvent(tuple(SelfComposedEvent(self._events[e], c) for e, c in ledger))

    def events(self, node: int) -> PrivacyEvent:
        """Node ``node``'s ledger as one (re-accountable) event: a ``ComposedEvent`` of
        ``SelfComposedEvent(event, count)``; an empty ``ComposedEvent`` without events."""
        if isinstance(node, bool) or not isinstance(node, int) or not 0 <= node < self.num_nodes:
            raise PrivlabError(f"node must be in [0, {self.num_nodes}), got {node!r}")
        return self._as_event(self._nodes.ledgers[int(self._nodes.slot[node])])

    def summary(self) -> dict[str, Any] | None:
        """JSON-able ``{"accountant", "delta", "epsilon": {"mean", "max", "per_node"}}``
        (plus ``"pair_epsilon": {"mean", "max", "num_pairs"}`` with pair events); None
        when nothing was recorded. ``"epsilon"`` is None with pair events only."""
        if not self.claims_dp:
            return None
        out: dict[str, Any] = {"accountant": self.accountant, "delta": self.delta}
        eps = self.epsilon()
        out["epsilon"] = None if eps is None else _stats(eps.tolist(), per_node=True)
        pairs = self.pair_epsilon()
        if pairs:
            out["pair_epsilon"] = _stats(list(pairs.values()), per_node=False)
        return out

    # -- serialisation -----------------------------------------------------------------

    @staticmethod
    def _groups(table: _LedgerTable) -> list[tuple[Ledger, np.ndarray]]:
        """(ledger, slots holding it) for each non-empty ledger in use."""
        order = np.argsort(table.slot, kind="stable")
        ordered = table.slot[order]
        starts = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))
        groups = []
        if not order.size:
            return groups
        for lid, slots in zip(ordered[starts].tolist(), np.split(order, starts[1:])):
            if table.ledgers[lid]:
                groups.append((table.ledgers[lid], slots))
        return groups

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dump: ``events`` (``event_to_dict`` of each distinct event), and
        the per-node / per-pair ledgers grouped by identical ledger: ``{"nodes": [...],
        "entries": [[event index, count], ...]}`` (``"pairs": [[o, s], ...]`` for pairs).
        Nodes absent from ``node_ledgers`` have no events. Inverse: :meth:`from_dict`."""
        n = self.num_nodes
        node_groups = [
            {"nodes": slots.tolist(), "entries": [list(e) for e in ledger]}
            for ledger, slots in self._groups(self._nodes)
        ]
        pair_groups = []
        for ledger, slots in self._groups(self._pairs):
            keys = self._pair_keys[slots].tolist()
            pairs = [[k // n, k % n] for k in keys]
            pair_groups.append({"pairs": pairs, "entries": [list(e) for e in ledger]})
        return {
            "accountant": self.accountant,
            "delta": self.delta,
            "num_nodes": n,
            "recorded": {"nodes": self._nodes.recorded, "pairs": self._pairs.recorded},
            "events": [event_to_dict(e) for e in self._events],
            "node_ledgers": node_groups,
            "pair_ledgers": pair_groups,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrivacyLedger:
        """Rebuild a ledger written by :meth:`to_dict`."""
        ledger = cls(data["num_nodes"], data["accountant"], data["delta"])
        for entry in data["events"]:
            event = event_from_dict(entry)
            ledger._check(event)
            ledger._event_id(event)

        def parse(entries: list[list[int]]) -> Ledger:
            parsed = tuple(sorted((int(e), int(c)) for e, c in entries))
            for e, c in parsed:
                if not (0 <= e < len(ledger._events) and c >= 1):
                    raise PrivlabError(f"invalid ledger entry [{e}, {c}]")
            return parsed

        for group in data["node_ledgers"]:
            nodes = ledger._ids(group["nodes"], "nodes")
            ledger._nodes.slot[nodes] = ledger._nodes.intern(parse(group["entries"]))
        for group in data["pair_ledgers"]:
            pairs = np.asarray(group["pairs"], dtype=np.int64).reshape(-1, 2)
            obs, src = ledger._ids(pairs[:, 0], "observers"), ledger._ids(pairs[:, 1], "sources")
            positions = ledger._pair_positions(obs * ledger.num_nodes + src)
            ledger._pairs.slot[positions] = ledger._pairs.intern(parse(group["entries"]))
        recorded = data.get("recorded", {})
        ledger._nodes.recorded = bool(recorded.get("nodes", bool(data["node_ledgers"])))
        ledger._pairs.recorded = bool(recorded.get("pairs", bool(data["pair_ledgers"])))
        return ledger

    def __repr__(self) -> str:
        return (
            f"PrivacyLedger({self.num_nodes} nodes, {self.accountant!r}, delta={self.delta:g}, "
            f"{len(self._events)} distinct events)"
        )


def _stats(values: list[float], per_node: bool) -> dict[str, Any]:
    finite_or_inf = [float(v) for v in values]
    out: dict[str, Any] = {
        "mean": math.fsum(finite_or_inf) / len(finite_or_inf) if finite_or_inf else 0.0,
        "max": max(finite_or_inf, default=0.0),
    }
    if per_node:
        out["per_node"] = finite_or_inf
    else:
        out["num_pairs"] = len(finite_or_inf)
    return out


def _dense(keys: np.ndarray) -> int | None:
    """``max + 1`` of non-negative ``keys`` when counting them in a table is cheap."""
    bound = int(keys.max()) + 1
    return bound if bound <= max(4 * keys.size, 1 << 16) else None


def _unique(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct values of non-negative ``keys`` and each key's index among them
    (``np.unique(keys, return_inverse=True)``, without sorting for small keys)."""
    if keys.size == 0:
        return keys.astype(np.int64), np.zeros(0, dtype=np.int64)
    bound = _dense(keys)
    if bound is None:
        order = np.argsort(keys, kind="stable")
        ordered = keys[order]
        starts = np.concatenate([[True], ordered[1:] != ordered[:-1]])
        inverse = np.empty(keys.size, dtype=np.int64)
        inverse[order] = np.cumsum(starts) - 1
        return ordered[starts], inverse
    uniq = np.flatnonzero(np.bincount(keys, minlength=bound))
    lookup = np.empty(bound, dtype=np.int64)
    lookup[uniq] = np.arange(uniq.size)
    return uniq, lookup[keys]


def _unique_counts(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct values of non-negative ``keys`` and how often each occurs."""
    if keys.size == 0:
        return keys.astype(np.int64), np.zeros(0, dtype=np.int64)
    bound = _dense(keys)
    if bound is None:
        ordered = np.sort(keys)
        starts = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))
        return ordered[starts], np.diff(np.append(starts, ordered.size))
    counts = np.bincount(keys, minlength=bound)
    uniq = np.flatnonzero(counts)
    return uniq, counts[uniq]


def _sorted_unique(keys: np.ndarray) -> np.ndarray:
    """Sorted distinct values (by sorting: numpy's hash-based unique is slow for 1e6 keys)."""
    ordered = np.sort(keys)
    return ordered[np.concatenate([[True], ordered[1:] != ordered[:-1]])] if keys.size else ordered
