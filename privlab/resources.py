"""The memory a run needs, estimated from its config before anything is built.

``estimate(config)`` adds up the big allocations of a run (dataset, node states, batch
activations, evaluation blocks, topology, observer buffer, metrics table) from shapes
alone: the dataset's size comes from ``privlab.data.dataset_shape`` and the model's from
building it on the meta device, so even a config that could never run is estimated in
milliseconds (a model outside the Linear/activation family runs one meta forward pass,
whose first call in a process sets torch up for a few seconds). ``check_fits`` refuses
a run whose estimate exceeds ``FRACTION`` of ``available_memory()`` with one line naming
the largest part and the config field to change. The figures are approximate (within a
factor of about 2 of the measured peak) and err on the high side: temporaries of
different phases are added up.
"""

from __future__ import annotations

import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from privlab.config import ExperimentConfig
from privlab.data import DatasetShape, dataset_shape
from privlab.engine import EVAL_BUDGET, EVAL_SAMPLES
from privlab.errors import PrivlabError, is_real
from privlab.models import activation_sizes, build_model
from privlab.observe import CHUNK_BYTES
from privlab.state import ParamSpec
from privlab.training import is_batchable_sequential

ENV = "PRIVLAB_MEMORY_LIMIT"
"""Environment variable that overrides the available memory (bytes, or e.g. ``8G``)."""
FRACTION = 0.8
"""Share of the available memory a run may use: the rest is left to the system and to
allocations the estimate does not see."""

FLOAT = 4  # bytes of a float32 value
RUNTIME_BYTES = 32 * 2**20
"""Libraries loaded while building and running and the allocator's slack (measured:
scikit-learn's datasets take 13 MiB over ``import privlab.experiment``, which already
loads SciPy for the accountants)."""
LOOP_MODEL_BYTES = 64 * 2**10
"""Python and torch overhead of one ``nn.Module`` plus its optimizer (measured)."""
METRIC_ROW_BYTES = 250
"""One metrics row as a Python tuple and as a pandas row (measured)."""
GRAPH_NODE_BYTES, GRAPH_EDGE_BYTES = 1000, 500
"""networkx graph and mixing plan, per node and per directed edge (measured)."""
MESSAGE_HEADER_BYTES = 32
"""Receiver, sender, true sender and party of one recorded message (int64 each)."""
LOADING_BYTES = {"synthetic": 20, "csv": 20, "npz": 9, "mnist": 2, "fashion_mnist": 2}
"""Temporary bytes per feature value while a dataset loads, beyond its float32 tensor."""
LOADING_BYTES_DEFAULT = 24
PARTITION_BYTES = 40
"""Temporary bytes per sample while the partition is drawn (keys, permutations)."""
SAMPLING_BYTES = 21
"""Temporary bytes per padded index when a batch is drawn (key, argsort, mask)."""


@dataclass(frozen=True)
class Estimate:
    """Bytes a run needs, by part; ``details`` says what each part holds and ``remedies``
    which config fields shrink it. ``disk`` is what the observer writes to the run folder."""

    parts: dict[str, int]
    details: dict[str, str]
    remedies: dict[str, str]
    disk: int

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    @property
    def largest(self) -> str:
        return max(self.parts, key=self.parts.__getitem__)


def estimate(config: ExperimentConfig) -> Estimate:
    """The memory ``config`` needs, without loading its data or allocating its models.

    Raises ``PrivlabError`` for dataset or model options that the loader or the model
    would refuse, with the same message.
    """
    c = config
    data = dataset_shape(c.data.dataset, root=c.data.root, seed=c.seed, **c.data.options)
    with torch.device("meta"):
        model = build_model(c.model.name, data.input_shape, data.num_classes, **c.model.options)
        sizes = activation_sizes(model, torch.empty(1, *data.input_shape))
    run = _Run(c, data, model, sizes)
    parts = [
        run.dataset(),
        run.index_tables(),
        run.node_state(),
        run.batch_activations(),
        run.evaluation(),
        run.topology(),
        run.observer_buffer(),
        run.metrics_table(),
        ("runtime", RUNTIME_BYTES, "of libraries loaded on demand", "other processes' memory"),
    ]
    if c.engine == "loop":
        parts.append(run.loop_models())
    return Estimate(
        parts={name: size for name, size, _, _ in parts},
        details={name: detail for name, _, detail, _ in parts},
        remedies={name: remedy for name, _, _, remedy in parts},
        disk=run.observer_recording(),
    )


def check_fits(estimate: Estimate, available: int | None = None) -> None:
    """Raise ``PrivlabError`` when ``estimate.total`` exceeds ``FRACTION`` of ``available``
    bytes (by default ``available_memory()``)."""
    available = available_memory() if available is None else available
    if estimate.total <= FRACTION * available:
        return
    name = estimate.largest
    raise PrivlabError(
        f"run needs about {format_size(estimate.total)} (largest: {name} "
        f"{estimate.details[name]}, {format_size(estimate.parts[name])}), more than "
        f"{FRACTION:.0%} of the {format_size(available)} available; "
        f"reduce {estimate.remedies[name]} (or set {ENV})"
    )


ON_DEVICE = ("dataset", "index tables", "node state", "batch activations", "evaluation")
"""The parts a run on a GPU keeps in the GPU's memory (the others stay on the host)."""


def check_fits_device(estimate: Estimate, device: torch.device, free: int | None = None) -> None:
    """On a GPU, raise ``PrivlabError`` when the parts of ``ON_DEVICE`` exceed ``FRACTION``
    of its ``free`` bytes (by default what ``torch.cuda.mem_get_info`` reports); on the
    CPU, nothing (``check_fits`` covers it)."""
    if device.type != "cuda":
        return
    free = torch.cuda.mem_get_info(device)[0] if free is None else free
    parts = {name: estimate.parts[name] for name in ON_DEVICE if name in estimate.parts}
    needed = sum(parts.values())
    if needed <= FRACTION * free:
        return
    name = max(parts, key=parts.__getitem__)
    raise PrivlabError(
        f"run needs about {format_size(needed)} on {device} (largest: {name} "
        f"{estimate.details[name]}, {format_size(parts[name])}), more than "
        f"{FRACTION:.0%} of its {format_size(free)} free; reduce {estimate.remedies[name]} "
        "(or use device: cpu)"
    )


class _Run:
    """The shapes of one run; each method returns ``(name, bytes, detail, remedy)``."""

    def __init__(
        self, config: ExperimentConfig, data: DatasetShape, model: torch.nn.Module, sizes: list
    ):
        c = self.config = config
        self.data, self.model, self.sizes = data, model, sizes
        self.n, self.dim = c.nodes, ParamSpec.of(model).dim
        self.features = math.prod(data.input_shape)
        n_samples = data.num_samples
        self.test = round(c.data.test_fraction * n_samples)
        evaluation = c.evaluation  # the nodes and test samples an evaluation covers
        self.evaluated_nodes = min(self.n, evaluation.nodes or self.n)
        self.evaluated_test = min(self.test, evaluation.test_samples or self.test)
        held_out = self.test + round(c.data.nonmember_fraction * n_samples)
        self.train = max(1, n_samples - held_out)
        mean = math.ceil(self.train / self.n)
        if c.data.partition == "shards":
            mean += c.data.shards_per_node
        self.node_size = min(self.train, math.ceil(mean * self._skew()))  # largest node
        synthetic = c.data.dataset == "synthetic"
        self.data_fields = (
            "data.options.num_samples or data.options.dimension" if synthetic else "data.dataset"
        )

    def _skew(self) -> float:
        """Largest over mean node size. Under Dirichlet(alpha) shares the largest of n
        shares is about ``ln(n) / (n alpha)`` (the largest of n Gamma(alpha) draws over
        their sum), so the largest node may hold ``ln(n) / alpha`` times the mean."""
        if self.config.data.partition != "dirichlet":
            return 1.0
        return min(self.n, max(1.0, math.log(self.n) / self.config.data.alpha))

    def dataset(self) -> tuple[str, int, str, str]:
        values = self.data.num_samples * self.features
        resident = values * FLOAT + self.data.num_samples * 8
        loading = values * LOADING_BYTES.get(self.config.data.dataset, LOADING_BYTES_DEFAULT)
        shape = [self.data.num_samples, *self.data.input_shape]
        detail = f"{shape} with its loading temporaries"
        return "dataset", resident + loading, detail, self.data_fields

    def index_tables(self) -> tuple[str, int, str, str]:
        padded = self.n * self.node_size
        evaluated = self.evaluated_nodes * min(EVAL_SAMPLES, self.node_size)
        size = padded * (8 + SAMPLING_BYTES) + evaluated * 12
        size += self.data.num_samples * PARTITION_BYTES
        remedy = f"{self.data_fields} or data.partition"
        return "index tables", size, f"[{self.n}, {self.node_size}] sample indices", remedy

    def node_state(self) -> tuple[str, int, str, str]:
        sgd = self.config.training
        if self.config.engine == "loop":  # initial state, stacked params, two temporaries
            buffers = 4
        else:  # params, initial state, gradients, momentum, two temporaries
            buffers = 5 + (sgd.momentum > 0)
        size = (buffers * self.n + 3) * self.dim * FLOAT  # + the template model
        detail = f"[{self.n}, {self.dim}] x {buffers} buffers"
        return "node state", size, detail, self._model_remedy()

    def batch_activations(self) -> tuple[str, int, str, str]:
        batch = min(self.config.training.batch_size, self.node_size)
        total, widest = sum(self.sizes), max(self.sizes)
        if is_batchable_sequential(self.model):  # saved activations + two deltas
            per_sample = total + 2 * widest
        else:  # vmap(grad): outputs, saved tensors and their gradients
            per_sample = 3 * total
        per_sample += 4 * self.data.num_classes
        rows = 1 if self.config.engine == "loop" else self.n
        size = rows * batch * per_sample * FLOAT
        detail = f"[{rows}, {batch}] samples x {per_sample} values"
        return "batch activations", size, detail, "training.batch_size or nodes"

    def evaluation(self) -> tuple[str, int, str, str]:
        width = max(self.sizes) * FLOAT
        test, nodes = self.evaluated_test, self.evaluated_nodes
        if self.config.engine == "loop":
            block = max(test, min(EVAL_SAMPLES, self.node_size)) * width
        else:
            chunk = max(1, min(test, EVAL_BUDGET // width))
            evaluated = min(EVAL_SAMPLES, self.node_size)
            block = max(
                _block(nodes, chunk, width) * chunk * width,
                _block(nodes, evaluated, width) * evaluated * width,
            )
        size = 3 * block  # input, output and logits of a layer
        size += nodes * self.dim * FLOAT if nodes < self.n else 0  # the evaluated nodes' copy
        remedy = "evaluation.nodes or evaluation.test_samples"
        return "evaluation", size, "one block of nodes x samples", remedy

    def topology(self) -> tuple[str, int, str, str]:
        edges = self.n * _in_degree(self.config, self.n)
        size = int(self.n * GRAPH_NODE_BYTES + edges * GRAPH_EDGE_BYTES)
        return "topology", size, f"{int(edges)} directed edges", "nodes or topology"

    def observer_recording(self) -> int:
        """Bytes the observer records over the whole run."""
        return self._observed_rounds() * self._observed_per_round()

    def observer_buffer(self) -> tuple[str, int, str, str]:
        size = min(self.observer_recording(), CHUNK_BYTES + self._observed_per_round())
        return "observer buffer", size, "observations not yet on disk", "observer"

    def metrics_table(self) -> tuple[str, int, str, str]:
        c = self.config
        evaluations = c.rounds // c.eval_every + 2
        rows = self.n * (c.rounds + 3 * evaluations)
        return "metrics table", rows * METRIC_ROW_BYTES, f"{rows} rows", "nodes or eval_every"

    def loop_models(self) -> tuple[str, int, str, str]:
        copies = 2 + (self.config.training.momentum > 0)  # parameters, gradients, momentum
        size = self.n * (LOOP_MODEL_BYTES + copies * self.dim * FLOAT)
        detail = f"{self.n} modules of {self.dim} parameters"
        return "loop engine models", size, detail, "nodes (or use engine: vectorized)"

    def _observed_per_round(self) -> int:
        observer = self.config.observer
        if observer is None:
            return 0
        messages = len(observer.curious_nodes) * _in_degree(self.config, self.n)
        messages += len(observer.eavesdropped_links)
        return int(messages * (self.dim * FLOAT + MESSAGE_HEADER_BYTES))

    def _observed_rounds(self) -> int:
        observer = self.config.observer
        if observer is None or observer.rounds is None:
            return self.config.rounds
        return len(set(observer.rounds))

    def _model_remedy(self) -> str:
        """The fields that size the model: its widths and, when the first layer's input
        dominates the parameter count, the sample size."""
        c = self.config
        fields = {"mlp": "model.hidden", "cnn": "model.channels"}.get(c.model.name, "model")
        remedy = f"nodes or {fields}"
        largest = max(self.model.parameters(), key=lambda p: p.numel())
        if (
            largest.dim() == 2
            and largest.shape[1] == self.features > largest.shape[0]
            and 2 * largest.numel() >= self.dim
        ):
            input_field = (
                "data.options.dimension" if c.data.dataset == "synthetic" else "data.dataset"
            )
            remedy = f"{input_field}, {remedy}"
        return remedy


def _block(nodes: int, samples: int, width: int) -> int:
    """Nodes per evaluation block, as ``VectorizedEngine`` chooses them."""
    return min(nodes, max(1, EVAL_BUDGET // (samples * width)))


def _in_degree(config: ExperimentConfig, n: int) -> float:
    """Mean number of messages a node receives per round under the configured topology;
    ``n - 1`` (everyone) for a topology it does not know."""
    name, options = config.topology.name, config.topology.options
    log2 = max(1, int(math.log2(n)))

    def option(key: str, default: float) -> float:
        value = options.get(key)
        return value if is_real(value) and 0 < value < n else default

    degrees = {
        "ring": lambda: 2,
        "torus": lambda: 4,
        "complete": lambda: n - 1,
        "regular": lambda: option("degree", log2),
        "small_world": lambda: option("k", 4),
        "erdos_renyi": lambda: option("p", min(1.0, 2 * math.log(n) / n)) * (n - 1),
        "el-oracle": lambda: option("fanout", log2),
        "el-local": lambda: option("fanout", log2),
    }
    return min(n - 1, degrees.get(name, lambda: n - 1)())


# ---------------------------------------------------------------------- available memory


def available_memory(*, proc: Path = Path("/proc"), cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """Bytes this process may still allocate.

    ``PRIVLAB_MEMORY_LIMIT`` when set; else the least of ``MemAvailable`` in
    ``/proc/meminfo`` and the cgroup's limit minus its usage (v2, else v1; reclaimable
    page cache counts as free); else, without ``/proc`` (macOS), the free or total
    physical memory from ``os.sysconf``; ``sys.maxsize`` when nothing tells.
    """
    override = os.environ.get(ENV, "").strip()
    if override:
        return parse_size(override)
    known = [
        m for m in (_meminfo(proc), _cgroup_v2(proc, cgroup), _cgroup_v1(cgroup)) if m is not None
    ]
    if known:
        return min(known)
    return _sysconf_memory() or sys.maxsize


_SIZE = re.compile(r"^(\d+(?:\.\d*)?)\s*([kmgt]?)(?:i?b)?$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes of ``"123"``, ``"512M"``, ``"2G"``, ``"1.5GiB"`` (suffixes are powers of 1024)."""
    match = _SIZE.match(text.strip())
    if match is None or float(match[1]) <= 0:
        raise PrivlabError(
            f"{ENV} must be a positive number of bytes, optionally with a suffix K, M, G or T "
            f"(powers of 1024), e.g. 8G, got {text!r}"
        )
    return int(float(match[1]) * 1024 ** " kmgt".index(match[2].lower() or " "))


def format_size(size: float) -> str:
    """``size`` bytes for people: ``"17.5 GiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} PiB"


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _number(path: Path) -> int | None:
    """The integer a file holds (``memory.max`` holds ``max`` when there is no limit)."""
    text = (_read(path) or "").strip()
    return int(text) if text.isdigit() else None


def _field(text: str | None, key: str) -> int | None:
    """The number after ``key`` on a ``key value`` or ``key: value`` line."""
    match = text and re.search(rf"^{re.escape(key)}:?\s+(\d+)", text, re.MULTILINE)
    return int(match[1]) if match else None


def _meminfo(proc: Path) -> int | None:
    kib = _field(_read(proc / "meminfo"), "MemAvailable")
    return None if kib is None else kib * 1024


def _cgroup_v2(proc: Path, cgroup: Path) -> int | None:
    """Least ``memory.max - (memory.current - inactive_file)`` over this process's cgroup
    and its ancestors."""
    own = _read(proc / "self" / "cgroup") or ""
    match = re.search(r"^0::(/\S*)", own, re.MULTILINE)
    folder = cgroup / (match[1].lstrip("/") if match else "")
    room = []
    for level in (folder, *folder.parents):
        limit, usage = _number(level / "memory.max"), _number(level / "memory.current")
        if limit is not None and usage is not None:
            cache = _field(_read(level / "memory.stat"), "inactive_file") or 0
            room.append(limit - usage + cache)
        if level == cgroup:
            break
    return max(0, min(room)) if room else None


def _cgroup_v1(cgroup: Path) -> int | None:
    folder = cgroup / "memory"
    limit, usage = (
        _number(folder / "memory.limit_in_bytes"),
        _number(folder / "memory.usage_in_bytes"),
    )
    if limit is None or usage is None or limit >= 2**60:  # 2**63 rounded down: no limit
        return None
    cache = _field(_read(folder / "memory.stat"), "total_inactive_file") or 0
    return max(0, limit - usage + cache)


def _sysconf_memory() -> int | None:
    for pages in ("SC_AVPHYS_PAGES", "SC_PHYS_PAGES"):
        try:
            return os.sysconf(pages) * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            continue
    return None
