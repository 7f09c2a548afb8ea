"""The attack boundary: a ``ThreatModel`` says who is curious, an ``Observer`` records what
they receive, an ``ObservationLog`` keeps it for attacks.

The log streams to disk so that memory stays bounded however long the run: observations
are buffered and written as a chunk file whenever the buffer exceeds ``chunk_bytes``
(into the given folder, or into a private temporary folder when none is given). A folder
holds ``header.json`` (threat model, sizes, and each chunk's file, rounds, message count
and bytes) and ``chunk-NNNNNN.pt`` files of plain tensors (``torch.load(...,
weights_only=True)``). ``ObservationLog.load`` reads the header only; chunks are read when
accessed, one at a time.
"""

from __future__ import annotations

import bisect
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, overload

import torch

from privlab.errors import PrivlabError, check

if TYPE_CHECKING:
    from privlab.protocol import Messages

CHUNK_BYTES = 64 * 2**20
"""Default bytes of observations buffered in memory before they are written as a chunk."""
HEADER = "header.json"
FORMAT = 2
"""Version 2: observations record their exchange and virtual receiver."""


@dataclass(frozen=True)
class ThreatModel:
    """Who is curious, and when they look.

    ``curious_nodes`` see every message addressed to them; ``colluding`` pools them into
    one party, otherwise each is its own party. ``eavesdropped_links`` (directed
    ``(src, dst)`` pairs) are seen by one external eavesdropper. ``rounds`` restricts
    recording to those rounds (None: every round).
    """

    curious_nodes: tuple[int, ...] = ()
    colluding: bool = False
    eavesdropped_links: tuple[tuple[int, int], ...] = ()
    rounds: tuple[int, ...] | None = None

    def validate(self, num_nodes: int) -> None:
        check(
            len(set(self.curious_nodes)) == len(self.curious_nodes),
            "observer.curious_nodes",
            "distinct nodes",
            self.curious_nodes,
        )
        check(
            len(set(self.eavesdropped_links)) == len(self.eavesdropped_links),
            "observer.eavesdropped_links",
            "distinct links",
            self.eavesdropped_links,
        )
        for node in self.curious_nodes:
            check(0 <= node < num_nodes, "observer.curious_nodes", f"in [0, {num_nodes})", node)
        for s, d in self.eavesdropped_links:
            check(
                0 <= s < num_nodes and 0 <= d < num_nodes and s != d,
                "observer.eavesdropped_links",
                f"pairs of distinct nodes in [0, {num_nodes})",
                (s, d),
            )
        check(
            bool(self.curious_nodes or self.eavesdropped_links),
            "observer",
            "given at least one curious node or eavesdropped link",
            None,
        )

    def parties(self) -> list[str]:
        """Names of the observing parties, in log order."""
        names: list[str] = []
        if self.colluding and self.curious_nodes:
            names.append("coalition:" + ",".join(map(str, sorted(self.curious_nodes))))
        else:
            names.extend(f"node:{v}" for v in sorted(self.curious_nodes))
        if self.eavesdropped_links:
            names.append("eavesdropper")
        return names

    def to_dict(self) -> dict:
        """Plain lists and scalars (JSON-able)."""
        return {
            "curious_nodes": list(self.curious_nodes),
            "colluding": self.colluding,
            "eavesdropped_links": [list(link) for link in self.eavesdropped_links],
            "rounds": None if self.rounds is None else list(self.rounds),
        }

    @classmethod
    def from_dict(cls, raw: dict) -> ThreatModel:
        """The inverse of ``to_dict``."""
        return cls(
            curious_nodes=tuple(raw["curious_nodes"]),
            colluding=raw["colluding"],
            eavesdropped_links=tuple(tuple(link) for link in raw["eavesdropped_links"]),
            rounds=None if raw["rounds"] is None else tuple(raw["rounds"]),
        )


def threat_model_from(
    curious_nodes: Iterable[int] = (),
    colluding: bool = False,
    eavesdropped_links: Iterable[Sequence[int]] = (),
    rounds: Iterable[int] | None = None,
) -> ThreatModel:
    """Build a ``ThreatModel`` from plain lists (as they come from a config file)."""
    return ThreatModel(
        curious_nodes=tuple(sorted({int(v) for v in curious_nodes})),
        colluding=bool(colluding),
        eavesdropped_links=tuple(sorted({(int(s), int(d)) for s, d in eavesdropped_links})),
        rounds=None if rounds is None else tuple(sorted({int(r) for r in rounds})),
    )


@dataclass(frozen=True)
class Observation:
    """What the parties saw in one exchange of one round: one row per message observed.

    ``exchange`` numbers the round's exchanges from 0. ``sender`` is what the party was
    told (a pseudonym where the protocol hides the sender); ``true_sender`` is ground
    truth, for scoring attacks, never an input to them. ``receiver`` is the real node that
    received the message, ``virtual_receiver`` which of its virtual nodes did (None when
    the protocol has no virtual nodes).
    """

    round: int
    party: torch.Tensor
    receiver: torch.Tensor
    sender: torch.Tensor
    true_sender: torch.Tensor
    payload: torch.Tensor
    indices: torch.Tensor | None
    exchange: int = 0
    virtual_receiver: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.party.shape[0])


def _payload_bytes(o: Observation) -> int:
    """Bytes of the payload and indices (what the log's ``nbytes`` counts)."""
    return o.payload.nbytes + (0 if o.indices is None else o.indices.nbytes)


def _memory_bytes(o: Observation) -> int:
    """Bytes of every tensor an observation holds."""
    return _payload_bytes(o) + sum(t.nbytes for t in (o.party, o.receiver, o.sender, o.true_sender))


def _of_party(o: Observation, pid: int) -> Observation:
    """The rows of ``o`` that party number ``pid`` saw (possibly none)."""
    keep = o.party == pid
    return Observation(
        o.round,
        o.party[keep],
        o.receiver[keep],
        o.sender[keep],
        o.true_sender[keep],
        o.payload[keep],
        None if o.indices is None else o.indices[keep],
        o.exchange,
        None if o.virtual_receiver is None else o.virtual_receiver[keep],
    )


@dataclass(frozen=True)
class _Chunk:
    """A chunk file as the header describes it: enough to answer sizes without reading it."""

    file: str
    rounds: list[int]
    messages: int
    nbytes: int

    @classmethod
    def write(cls, path: Path, observations: Sequence[Observation]) -> _Chunk:
        """Write ``observations`` to ``path`` and describe the file."""
        raw = {"observations": [vars(o) for o in observations]}
        _replace(path, lambda tmp: torch.save(raw, tmp))
        return cls(
            path.name,
            [o.round for o in observations],
            sum(len(o) for o in observations),
            sum(_payload_bytes(o) for o in observations),
        )


class ObservationLog:
    """Everything the threat model's parties received, round by round.

    Observations are buffered in memory and written as a chunk file whenever the buffer
    exceeds ``chunk_bytes``: into ``directory`` (cleared of an earlier log's files at the
    first write, so building a run writes nothing), or, when None, into a private
    temporary folder created at the first spill and removed with the log.
    ``observations`` is a lazy sequence over the chunks and the buffer.
    """

    def __init__(
        self,
        threat_model: ThreatModel,
        num_nodes: int,
        dim: int,
        observations: Iterable[Observation] = (),
        *,
        directory: str | Path | None = None,
        chunk_bytes: int = CHUNK_BYTES,
    ):
        self.threat_model, self.num_nodes, self.dim = threat_model, num_nodes, dim
        self.chunk_bytes = chunk_bytes
        self._directory = None if directory is None else Path(directory)
        self._tempdir: tempfile.TemporaryDirectory | None = None
        self._chunks: list[_Chunk] = []
        self._buffer: list[Observation] = []
        self._buffer_bytes = 0
        self._cache: tuple[str, list[Observation]] | None = None
        self._prepared = False  # the folder is cleared at the first write, not before
        for observation in observations:
            self.append(observation)

    # -- sizes ----------------------------------------------------------------------------

    @property
    def parties(self) -> list[str]:
        return self.threat_model.parties()

    @property
    def directory(self) -> Path | None:
        """The folder the chunks are written to (None while everything is in memory)."""
        return self._directory

    @property
    def observations(self) -> Sequence[Observation]:
        """Every observation, in recording order (chunks are read when accessed)."""
        return _Observations(self)

    def __len__(self) -> int:
        return sum(c.messages for c in self._chunks) + sum(len(o) for o in self._buffer)

    def rounds(self) -> list[int]:
        return [r for c in self._chunks for r in c.rounds] + [o.round for o in self._buffer]

    def nbytes(self) -> int:
        """Bytes of the recorded payloads and indices (the whole log, on disk or not)."""
        return sum(c.nbytes for c in self._chunks) + sum(_payload_bytes(o) for o in self._buffer)

    def memory_bytes(self) -> int:
        """Bytes of observations held in memory now (the buffer and the cached chunk)."""
        cached = 0 if self._cache is None else sum(_memory_bytes(o) for o in self._cache[1])
        return self._buffer_bytes + cached

    # -- reading --------------------------------------------------------------------------

    def iter_party(self, party: str) -> Iterator[Observation]:
        """The observations of one party (by name), round by round, a chunk at a time."""
        if party not in self.parties:
            raise PrivlabError(f"unknown party {party!r}; valid: {', '.join(self.parties)}")
        pid = self.parties.index(party)
        return (_of_party(o, pid) for o in self.observations)

    def for_party(self, party: str) -> list[Observation]:
        """The observations of one party (by name), round by round."""
        return list(self.iter_party(party))

    # -- writing --------------------------------------------------------------------------

    def append(self, observation: Observation) -> None:
        """Add one round's observation; spill the buffer to disk once over ``chunk_bytes``."""
        self._buffer.append(observation)
        self._buffer_bytes += _memory_bytes(observation)
        if self._buffer_bytes > self.chunk_bytes:
            self._spill()

    def flush(self) -> None:
        """Write the buffer to the log's folder, if it has one, so the folder is complete."""
        if self._directory is not None:
            self._spill()

    def truncate(self, last_round: int) -> None:
        """Drop every observation of a round after ``last_round``, on disk too."""
        self._buffer = [o for o in self._buffer if o.round <= last_round]
        self._buffer_bytes = sum(_memory_bytes(o) for o in self._buffer)
        kept, dropped = [], []
        for chunk in self._chunks:
            if max(chunk.rounds) <= last_round:
                kept.append(chunk)
            elif min(chunk.rounds) <= last_round:
                rest = [o for o in self._read(chunk) if o.round <= last_round]
                kept.append(_Chunk.write(self._directory / chunk.file, rest))
            else:
                dropped.append(chunk)
        self._chunks, self._cache = kept, None
        if self._prepared:
            self._write_header(self._directory, kept)
        for chunk in dropped:
            (self._directory / chunk.file).unlink()

    def save(self, folder: str | Path) -> None:
        """Write the log to ``folder``: the header and the chunk files.

        A log streaming into ``folder`` only flushes; otherwise its chunks are copied there.
        """
        target = Path(folder)
        if self._directory is not None and target.resolve() == self._directory.resolve():
            self._prepare()
            self.flush()
            self._write_header(target, self._chunks)
            return
        _clear(target)
        for chunk in self._chunks:
            shutil.copyfile(self._directory / chunk.file, target / chunk.file)
        chunks = list(self._chunks)
        if self._buffer:
            chunks.append(_Chunk.write(target / self._next_chunk_name(), self._buffer))
        self._write_header(target, chunks)

    @classmethod
    def load(cls, path: str | Path) -> ObservationLog:
        """Open a log folder written by ``save`` (lazily), or read an old single-file log."""
        path = Path(path)
        if path.is_file():
            return cls._load_file(path)
        header = json.loads((path / HEADER).read_text())
        if header["format"] != FORMAT:
            raise PrivlabError(f"{path}: observation log format {header['format']} unknown")
        log = cls(ThreatModel.from_dict(header["threat_model"]), header["num_nodes"], header["dim"])
        log._directory, log._prepared = path, True
        log._chunks = [_Chunk(**c) for c in header["chunks"]]
        return log

    @classmethod
    def _load_file(cls, path: Path) -> ObservationLog:
        """Read the single-file format of privlab before streaming logs."""
        raw = torch.load(path, weights_only=True)
        threat = ThreatModel.from_dict(raw["threat_model"])
        observations = (Observation(**o) for o in raw["observations"])
        return cls(threat, raw["num_nodes"], raw["dim"], observations)

    # -- internals ------------------------------------------------------------------------

    def _prepare(self) -> None:
        """Create the log's folder (a private temporary one when it has none), removing
        what an earlier log left there; nothing is written before the first spill."""
        if self._prepared:
            return
        if self._directory is None:
            self._tempdir = tempfile.TemporaryDirectory(prefix="privlab-observations-")
            self._directory = Path(self._tempdir.name)
        _clear(self._directory)
        self._prepared = True

    def _spill(self) -> None:
        if not self._buffer:
            return
        self._prepare()
        path = self._directory / self._next_chunk_name()
        self._chunks.append(_Chunk.write(path, self._buffer))
        self._buffer, self._buffer_bytes = [], 0
        self._write_header(self._directory, self._chunks)

    def _next_chunk_name(self) -> str:
        used = [int(Path(c.file).stem.removeprefix("chunk-")) for c in self._chunks]
        return f"chunk-{max(used, default=-1) + 1:06d}.pt"

    def _write_header(self, folder: Path, chunks: list[_Chunk]) -> None:
        """Describe the log and ``chunks`` in ``folder/header.json``."""
        header = {
            "format": FORMAT,
            "threat_model": self.threat_model.to_dict(),
            "num_nodes": self.num_nodes,
            "dim": self.dim,
            "chunks": [vars(c) for c in chunks],
        }
        _replace(folder / HEADER, lambda tmp: tmp.write_text(json.dumps(header)))

    def _read(self, chunk: _Chunk) -> list[Observation]:
        """The observations of one chunk file (the last one read stays cached)."""
        if self._cache is None or self._cache[0] != chunk.file:
            self._cache = None  # release the previous chunk before reading the next
            raw = torch.load(self._directory / chunk.file, weights_only=True)
            self._cache = (chunk.file, [Observation(**o) for o in raw["observations"]])
        return self._cache[1]


class _Observations(Sequence[Observation]):
    """A read-only view of a log's observations: chunks then buffer, read on access."""

    def __init__(self, log: ObservationLog):
        self._log = log
        self._starts = [0]
        for chunk in log._chunks:
            self._starts.append(self._starts[-1] + len(chunk.rounds))

    def __len__(self) -> int:
        return self._starts[-1] + len(self._log._buffer)

    @overload
    def __getitem__(self, index: int) -> Observation: ...

    @overload
    def __getitem__(self, index: slice) -> list[Observation]: ...

    def __getitem__(self, index: int | slice) -> Observation | list[Observation]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(f"observation {index} out of range ({len(self)} recorded)")
        index %= len(self)
        if index >= self._starts[-1]:
            return self._log._buffer[index - self._starts[-1]]
        c = bisect.bisect_right(self._starts, index) - 1
        return self._log._read(self._log._chunks[c])[index - self._starts[c]]

    def __iter__(self) -> Iterator[Observation]:
        for chunk in self._log._chunks:
            yield from self._log._read(chunk)
        yield from self._log._buffer


def _clear(folder: Path) -> None:
    """Create ``folder``, removing the header and chunk files (or half-written ones, ``.tmp``)
    an earlier log left there."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in [*folder.glob(HEADER + "*"), *folder.glob("chunk-*.pt*")]:
        stale.unlink(missing_ok=True)


def _replace(path: Path, write: Callable[[Path], object]) -> None:
    """Write ``path`` through a temporary file, so a crash never leaves it half written."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


class Observer:
    """Records what a threat model's parties receive into an ``ObservationLog``.

    With a ``directory``, the log streams there in chunks of about ``chunk_bytes``;
    without, it stays in memory up to ``chunk_bytes`` and spills to a temporary folder.
    """

    def __init__(
        self,
        threat_model: ThreatModel,
        num_nodes: int,
        dim: int,
        *,
        directory: str | Path | None = None,
        chunk_bytes: int = CHUNK_BYTES,
    ):
        threat_model.validate(num_nodes)
        self.threat_model = threat_model
        self.log = ObservationLog(
            threat_model, num_nodes, dim, directory=directory, chunk_bytes=chunk_bytes
        )
        self._num_nodes = num_nodes
        self._rounds = None if threat_model.rounds is None else set(threat_model.rounds)
        self._curious = torch.tensor(sorted(threat_model.curious_nodes), dtype=torch.int64)
        self._links = torch.tensor(
            [s * num_nodes + d for s, d in threat_model.eavesdropped_links], dtype=torch.int64
        )
        party_of_node = torch.full((num_nodes,), -1, dtype=torch.int64)
        for i, v in enumerate(sorted(threat_model.curious_nodes)):
            party_of_node[v] = 0 if threat_model.colluding else i
        self._party_of_node = party_of_node
        self._eavesdropper = len(threat_model.parties()) - 1

    def watches(self, round: int) -> bool:
        return self._rounds is None or round in self._rounds

    def record(self, round: int, exchange: int, messages: Messages) -> None:
        """Keep the messages the parties see in this exchange (copies, so later rounds
        cannot alter them).

        A message to a curious node on an eavesdropped link is recorded once per party.
        The log is on the CPU, whatever the device of the messages.
        """
        if not self.watches(round):
            return
        src, dst = messages.src.cpu(), messages.dst.cpu()
        by_node = torch.isin(dst, self._curious)
        by_link = torch.isin(src * self._num_nodes + dst, self._links)
        parts = [(by_node, self._party_of_node[dst[by_node]])]
        if self.threat_model.eavesdropped_links:
            parts.append((by_link, torch.full((int(by_link.sum()),), self._eavesdropper)))
        rows = [(mask, party) for mask, party in parts if bool(mask.any())]
        if not rows:
            return
        self.log.append(_stack_observation(round, exchange, messages, rows))

    def flush(self) -> None:
        """Write what is buffered to the log's folder (call at evaluation points and the end)."""
        self.log.flush()


def _stack_observation(
    round: int, exchange: int, messages: Messages, rows: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> Observation:
    seen = [messages.select(mask) for mask, _ in rows]

    def gather(part) -> torch.Tensor | None:
        values = [part(m) for m in seen]
        return None if values[0] is None else torch.cat(values).cpu()  # a copy

    return Observation(
        round=round,
        party=torch.cat([party for _, party in rows]),
        receiver=gather(lambda m: m.dst),
        sender=gather(lambda m: m.seen_sender),
        true_sender=gather(lambda m: m.src),
        payload=gather(lambda m: m.payload),
        indices=gather(lambda m: m.indices),
        exchange=exchange,
        virtual_receiver=gather(lambda m: m.receiver_label),
    )
