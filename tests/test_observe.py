"""The observation log streams to disk in chunks, reads back lazily, and truncates."""

from __future__ import annotations

import gc
import json
from dataclasses import dataclass, fields
from pathlib import Path

import pytest
import torch
from conftest import make_engine
from toy_protocols import PseudonymousChunks

from privlab.mechanisms import DecentralizedSGD
from privlab.observe import Observation, ObservationLog, Observer, threat_model_from

CHUNK = 100_000
"""Bytes per chunk: the parties see 44 kB a round, so chunks hold 3 rounds (4 chunks + 2 left)."""
ROUNDS = 14


@dataclass
class Recording:
    """One engine run seen by three observers: in memory, streamed to a folder, spilled."""

    memory: ObservationLog
    streamed: ObservationLog
    spilled: ObservationLog
    peak_bytes: int
    folder: Path


class Tee:
    """Feeds each round's messages to several observers; tracks the streamed log's memory."""

    def __init__(self, *observers: Observer):
        self.observers, self.peak_bytes = observers, 0

    def record(self, round: int, exchange: int, messages) -> None:
        for observer in self.observers:
            observer.record(round, exchange, messages)
        self.peak_bytes = max(self.peak_bytes, self.observers[1].log.memory_bytes())


@pytest.fixture(
    scope="module", params=[DecentralizedSGD, PseudonymousChunks], ids=["whole", "chunks"]
)
def recording(request, tmp_path_factory) -> Recording:
    engine = make_engine("vectorized", request.param())
    plan = engine.topology.plan(0)
    link = (int(plan.src[0]), int(plan.dst[0]))
    threat = threat_model_from(curious_nodes=[2, 5], eavesdropped_links=[link])
    n, dim = engine.num_nodes, engine.spec.dim
    folder = tmp_path_factory.mktemp("run") / "observations"
    tee = Tee(
        Observer(threat, n, dim, chunk_bytes=2**40),
        Observer(threat, n, dim, directory=folder, chunk_bytes=CHUNK),
        Observer(threat, n, dim, chunk_bytes=CHUNK),
    )
    engine.observer = tee
    for t in range(ROUNDS):
        engine.run_round(t)
    tee.observers[1].flush()
    memory, streamed, spilled = (o.log for o in tee.observers)
    return Recording(memory, streamed, spilled, tee.peak_bytes, folder)


def assert_same(a: ObservationLog, b: ObservationLog) -> None:
    """Every field of every observation is equal, whole and per party."""
    assert (a.threat_model, a.num_nodes, a.dim) == (b.threat_model, b.num_nodes, b.dim)
    assert a.rounds() == b.rounds() and len(a) == len(b) and a.nbytes() == b.nbytes()
    assert len(a.observations) == len(b.observations)
    for x, y in zip(a.observations, b.observations):
        assert_same_observation(x, y)
    for party in a.parties:
        for x, y in zip(a.for_party(party), b.iter_party(party), strict=True):
            assert_same_observation(x, y)


def assert_same_observation(x: Observation, y: Observation) -> None:
    for f in fields(Observation):
        u, v = getattr(x, f.name), getattr(y, f.name)
        assert torch.equal(u, v) if isinstance(u, torch.Tensor) else u == v, f.name


def rebuild(log: ObservationLog, **options) -> ObservationLog:
    """A new log holding ``log``'s observations (recorded again through ``append``)."""
    return ObservationLog(log.threat_model, log.num_nodes, log.dim, log.observations, **options)


def chunk_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("chunk-*.pt"))


def header(folder: Path) -> dict:
    return json.loads((folder / "header.json").read_text())


def test_streaming_writes_chunks_and_keeps_memory_bounded(recording):
    memory, streamed = recording.memory, recording.streamed
    assert memory.rounds() == list(range(ROUNDS)) and memory.directory is None
    assert memory.memory_bytes() > 5 * CHUNK  # what the run would hold without streaming
    assert recording.peak_bytes < 2 * CHUNK
    files = chunk_files(recording.folder)
    assert len(files) == 5 and [c["file"] for c in header(recording.folder)["chunks"]] == files
    on_disk = [torch.load(recording.folder / f, weights_only=True) for f in files]
    assert sum(len(raw["observations"]) for raw in on_disk) == ROUNDS
    assert streamed.memory_bytes() == 0  # flushed, nothing read back yet
    assert streamed.nbytes() == memory.nbytes() and len(streamed) == len(memory)


def test_lazily_loaded_log_equals_the_in_memory_log(recording):
    loaded = ObservationLog.load(recording.folder)
    assert loaded.memory_bytes() == 0
    assert_same(recording.memory, loaded)
    assert 0 < loaded.memory_bytes() < 2 * CHUNK  # one chunk cached at a time
    assert_same_observation(loaded.observations[-1], recording.memory.observations[ROUNDS - 1])
    for x, y in zip(loaded.observations[3:9:2], recording.memory.observations[3:9:2], strict=True):
        assert_same_observation(x, y)
    with pytest.raises(IndexError):
        loaded.observations[ROUNDS]


def test_truncate_drops_rounds_in_memory_on_disk_and_after_reload(recording, tmp_path):
    folder, memory = tmp_path / "observations", recording.memory
    log = rebuild(memory, directory=folder, chunk_bytes=CHUNK)
    assert log.memory_bytes() > 0  # the last rounds are still buffered
    chunks = header(folder)["chunks"]
    straddled = next(c for c in chunks[1:] if len(c["rounds"]) > 1)
    last = straddled["rounds"][0]
    log.truncate(last)
    assert log.rounds() == list(range(last + 1)) and log.memory_bytes() == 0
    after = header(folder)["chunks"]
    assert after[:-1] == chunks[: len(after) - 1]
    assert after[-1]["file"] == straddled["file"] and after[-1]["rounds"] == [last]
    assert chunk_files(folder) == [c["file"] for c in after] and len(after) < len(chunks)
    reloaded = ObservationLog.load(folder)
    assert reloaded.rounds() == list(range(last + 1))
    for x, y in zip(reloaded.observations, memory.observations[: last + 1], strict=True):
        assert_same_observation(x, y)
    kept_rows = sum(len(o) for o in memory.observations[: last + 1])
    assert len(reloaded) == kept_rows and reloaded.nbytes() < memory.nbytes()


def test_truncate_a_buffered_log_then_save_in_place(recording, tmp_path):
    folder = tmp_path / "observations"
    log = rebuild(recording.memory, directory=folder, chunk_bytes=CHUNK)
    on_disk = [r for c in header(folder)["chunks"] for r in c["rounds"]]
    buffered = log.rounds()[len(on_disk) :]
    assert len(buffered) == 2
    log.truncate(buffered[0])
    assert log.rounds() == on_disk + buffered[:1] and log.memory_bytes() > 0
    log.save(folder)
    assert log.memory_bytes() == 0
    reloaded = ObservationLog.load(folder)
    assert reloaded.rounds() == on_disk + buffered[:1]
    assert_same_observation(reloaded.observations[-1], recording.memory.observations[buffered[0]])


def test_old_single_file_format_still_loads(recording, tmp_path):
    memory = recording.memory
    path = tmp_path / "observations.pt"
    torch.save(
        {
            "threat_model": memory.threat_model.to_dict(),
            "num_nodes": memory.num_nodes,
            "dim": memory.dim,
            "observations": [vars(o) for o in memory.observations],
        },
        path,
    )
    assert_same(memory, ObservationLog.load(path))


def test_save_to_another_folder_copies_and_in_place_only_flushes(recording, tmp_path):
    source, described = chunk_files(recording.folder), header(recording.folder)
    recording.streamed.save(tmp_path / "copy")
    assert chunk_files(tmp_path / "copy") == source and header(tmp_path / "copy") == described
    assert_same(recording.memory, ObservationLog.load(tmp_path / "copy"))
    recording.streamed.save(recording.folder)
    assert chunk_files(recording.folder) == source and header(recording.folder) == described
    recording.spilled.save(tmp_path / "spilled")
    assert_same(recording.memory, ObservationLog.load(tmp_path / "spilled"))


def test_without_a_directory_the_log_spills_to_a_temporary_folder(recording):
    memory, spilled = recording.memory, recording.spilled
    assert spilled.directory is not None and len(chunk_files(spilled.directory)) == 4
    assert 0 < spilled.memory_bytes() <= CHUNK  # the rounds since the last spill
    for party in memory.parties:
        for x, y in zip(memory.for_party(party), spilled.for_party(party), strict=True):
            assert_same_observation(x, y)
    log = rebuild(memory, chunk_bytes=CHUNK)
    temporary = log.directory
    assert temporary is not None and chunk_files(temporary)
    del log
    gc.collect()
    assert not temporary.exists()
