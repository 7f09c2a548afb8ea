"""Typed experiment configuration: YAML in, validated dataclass-like models out.

Every section rejects unknown keys. Component sections (``model``, ``topology``,
``protocol``, ``gradient``) take a ``name`` plus that component's own options as sibling keys, e.g.
``topology: {name: regular, degree: 4}``; an option the named component does not take
is reported by ``privlab.experiment`` when it is built.
Any invalid value becomes one ``PrivlabError`` line naming the field and the valid range.

Values are strict: numbers must be finite, an integer field takes no ``true`` or ``3.0``,
a YAML mapping with the same key twice is refused. ``ExperimentConfig()`` is the one
default experiment, the same as the packaged ``default`` config; a config without a
``name`` is named after what it runs (``d-psgd-regular4``, ``epidemic-el-oracle4``).
Rounds are numbered from 1: round ``t`` is the ``t``-th round of training; ``metrics.csv``
row ``round = 0`` is the evaluation before training.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from privlab.devices import check_device_name
from privlab.errors import PrivlabError

_STRICT = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class _Section(BaseModel):
    model_config = _STRICT


class _Component(BaseModel):
    """A named component whose extra keys are its options."""

    model_config = ConfigDict(**{**_STRICT, "extra": "allow"})
    name: str

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class DataConfig(_Section):
    dataset: str = "digits"
    root: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    partition: str = "iid"
    alpha: float = Field(0.5, gt=0)
    shards_per_node: int = Field(2, ge=1)
    test_fraction: float = Field(0.2, ge=0, lt=1)
    nonmember_fraction: float = Field(0.2, ge=0, lt=1)


class ModelConfig(_Component):
    name: str = "mlp"


class TopologyConfig(_Component):
    name: str = "regular"
    weights: Literal["metropolis", "uniform"] = "metropolis"


class ProtocolConfig(_Component):
    name: str = "d-psgd"


class GradientConfig(_Component):
    """A gradient mechanism (``privlab.gradient``) and its options, e.g.
    ``{name: dp-sgd, noise_multiplier: 1.0, max_grad_norm: 1.0}``."""


class PrivacyConfig(_Section):
    """How privacy events are accounted: ``accountant`` rdp or pld, at ``delta``."""

    accountant: Literal["rdp", "pld"] = "rdp"
    delta: float = 1e-5

    @field_validator("delta")
    @classmethod
    def _a_probability(cls, delta: float) -> float:
        if not 0 < delta < 1:
            raise ValueError(f"privacy.delta must be in (0, 1), got {delta!r}")
        return delta


class TrainingConfig(_Section):
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(16, ge=1)
    local_steps: int = Field(4, ge=1)


Link = Annotated[list[int], Field(min_length=2, max_length=2)]


class ObserverConfig(_Section):
    curious_nodes: list[int] = Field(default_factory=list)
    colluding: bool = False
    eavesdropped_links: list[Link] = Field(default_factory=list)
    rounds: list[int] | None = Field(None, min_length=1)


class AttackConfig(_Section):
    """One attack ``privlab run`` evaluates on the finished run (``privlab attack``):
    ``attack`` (mia, linkability, inversion, source), ``method`` (default: the attack's
    first), ``rounds`` (default: every recorded round) and the attack's ``options``. Its
    report goes to ``RUN_DIR/attacks/<attack>-<method>/``."""

    attack: str
    method: str | None = None
    rounds: list[int] | None = Field(None, min_length=1)
    options: dict[str, Any] = Field(default_factory=dict)


class EvaluationConfig(_Section):
    """What an evaluation covers (every ``eval_every`` rounds): ``test_accuracy`` and
    ``train_loss`` of ``nodes`` nodes (null: every node) on ``test_samples`` test samples
    (null: the whole test set). Both are fixed samples drawn once from the seed, the same
    at every evaluation and on either engine; a value above what the run has means all.
    ``consensus_distance`` always covers every node. One evaluation costs about nodes x
    test samples forward passes: the default of 256 nodes evaluates every node of a
    network up to 256 nodes (``privlab.engine.EVAL_NODES``) and bounds larger ones."""

    nodes: int | None = 256
    test_samples: int | None = None

    @field_validator("nodes", "test_samples")
    @classmethod
    def _at_least_one(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and value < 1:
            raise ValueError(
                f"evaluation.{info.field_name} must be an integer >= 1 or null (all), got {value!r}"
            )
        return value


class ExperimentConfig(_Section):
    """One experiment: data, model, topology, protocol, training, and who observes.

    ``ExperimentConfig()`` is the default experiment (the packaged ``default`` config):
    digits on 16 nodes, an MLP 64-32, D-PSGD on a random 4-regular graph, 30 rounds of
    4 local SGD steps (lr 0.1, momentum 0.9, batch 16). ``device`` says where the engine
    computes: ``cpu`` (default), ``auto`` (a GPU when torch sees one), ``cuda``,
    ``cuda:K`` (``privlab.devices``).
    """

    name: str = ""
    seed: int = Field(0, ge=0, lt=2**63)
    nodes: int = Field(16, ge=2)
    rounds: int = Field(30, ge=1)
    eval_every: int = Field(5, ge=1)
    engine: str = "vectorized"
    device: str = "cpu"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(hidden=[64, 32]))
    topology: TopologyConfig = Field(default_factory=lambda: TopologyConfig(degree=4))
    protocol: ProtocolConfig = Field(default_factory=ProtocolConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    gradient: GradientConfig | None = None
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    observer: ObserverConfig | None = None
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    attacks: list[AttackConfig] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _a_name_not_a_path(cls, name: str) -> str:
        """A run name becomes a folder name: 1 to 100 characters, no ``/``, ``\\`` or
        control characters, not ``.`` or ``..``, not starting with ``-``."""
        path_like = name in (".", "..") or name.startswith("-")
        if len(name) > 100 or path_like or any(c in "/\\" or ord(c) < 32 for c in name):
            raise ValueError(
                "name must be a name, not a path (no '/' or '\\', not '.' or '..', "
                f"no leading '-'), at most 100 characters, got {_short(name)}"
            )
        return name

    @field_validator("device")
    @classmethod
    def _a_device(cls, device: str) -> str:
        return check_device_name(device)

    @model_validator(mode="after")
    def _observed_rounds_exist(self) -> ExperimentConfig:
        if self.observer is not None and self.observer.rounds is not None:
            for r in self.observer.rounds:
                if not 1 <= r <= self.rounds:
                    raise ValueError(
                        f"observer.rounds must be rounds in [1, {self.rounds}] "
                        f"(rounds count from 1), got {r}"
                    )
        return self

    @model_validator(mode="after")
    def _attacks_have_an_observer(self) -> ExperimentConfig:
        if self.attacks and self.observer is None:
            raise ValueError(
                "attacks need an observer section (who is curious), e.g. "
                "observer: {curious_nodes: [0]}"
            )
        return self

    def model_post_init(self, context: Any) -> None:
        if not self.name:  # frozen: set once, before anyone can see the config
            object.__setattr__(self, "name", default_name(self))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def default_name(config: ExperimentConfig) -> str:
    """A run name from what runs: protocol, topology and its degree or fanout."""
    options = config.topology.options
    size = options.get("degree", options.get("fanout", ""))
    protocol = config.protocol.name.rpartition(":")[2]  # a user's class: its name only
    return f"{protocol}-{config.topology.name}{size}"


def parse_config(raw: dict[str, Any]) -> ExperimentConfig:
    """Validate a plain dict; errors become one ``PrivlabError`` naming the field."""
    try:
        return ExperimentConfig.model_validate(_mapping(raw))
    except ValidationError as error:
        raise PrivlabError(_first_error(error)) from None


class _Loader(yaml.SafeLoader):
    """YAML with 1.2 number syntax: ``1e-3`` is a float (YAML 1.1 reads it as a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _no_duplicate_keys(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicate_keys)


def load_yaml(text: str, what: str) -> Any:
    """Parse YAML ``text``; a syntax error or a repeated key becomes a ``PrivlabError``
    naming ``what``."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as error:
        detail = " ".join(str(error).split())
        raise PrivlabError(f"{what} is not valid YAML: {detail}") from None


def read_yaml_file(path: str | Path, what: str = "config file") -> Any:
    """Parse the YAML file at ``path``; a missing, unreadable or binary file is one
    ``PrivlabError`` naming it."""
    path = Path(path)
    label = f"{what} {str(path)!r}"
    if not path.is_file():
        raise PrivlabError(f"{label} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise PrivlabError(f"{label} is not a text (UTF-8 YAML) file") from None
    except OSError as error:
        raise PrivlabError(f"{label} cannot be read: {error.strerror}") from None
    if "\x00" in text:
        raise PrivlabError(f"{label} is not a text (UTF-8 YAML) file")
    return load_yaml(text, label)


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML config file and apply ``key.sub=value`` overrides."""
    return parse_config(apply_overrides(_mapping(read_yaml_file(path)), overrides or []))


# A component's options belong to its name: --set topology.name=ring on a config whose
# topology has a degree drops the degree (the keys listed here are kept).
_RENAMES_RESET = {
    ("topology", "name"): ("weights",),
    ("model", "name"): (),
    ("protocol", "name"): (),
    ("gradient", "name"): (),
    ("data", "dataset"): (
        "root",
        "partition",
        "alpha",
        "shards_per_node",
        "test_fraction",
        "nonmember_fraction",
    ),
}


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted keys from ``key=value`` strings; values are parsed as YAML.

    Changing a component's name (``topology.name``, ``model.name``, ``protocol.name``,
    ``data.dataset``) resets that component's options, so ``--set topology.name=ring``
    works on a config whose topology has a ``degree``; later ``--set``s add options.
    """
    raw = _deep_copy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise PrivlabError(f"--set expects key=value, got {item!r}")
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.get(part)
            if child is None:  # an absent or empty (null) section
                child = node[part] = {}
            if not isinstance(child, dict):
                raise PrivlabError(f"--set {key}: {part!r} is not a section")
            node = child
        parsed = load_yaml(value, f"--set {key}")
        kept = _RENAMES_RESET.get((parents[0], leaf)) if len(parents) == 1 else None
        if kept is not None and node.get(leaf) != parsed:
            for option in [k for k in node if k not in kept]:
                del node[option]
        node[leaf] = parsed
    return raw


def _mapping(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise PrivlabError(f"config must be a mapping of keys to values, got {type(raw).__name__}")
    return raw


def _deep_copy(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in raw.items()}


def _first_error(error: ValidationError) -> str:
    detail = error.errors()[0]
    field = ".".join(str(part) for part in detail["loc"]) or "config"
    kind = detail["type"]
    if kind == "extra_forbidden":
        return f"unknown config key {field!r}"
    if kind == "value_error":  # privlab's own checks, worded with the field and range
        return str(detail["ctx"]["error"])
    message = detail["msg"][0].lower() + detail["msg"][1:]
    return f"{field}: {message}, got {_short(detail.get('input'))}"


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
