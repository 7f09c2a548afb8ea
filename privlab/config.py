"""Typed experiment configuration: YAML in, validated dataclass-like models out.

Every section rejects unknown keys. Component sections (``data``, ``model``,
``topology``, ``protocol``) take a ``name`` plus that component's own options as
sibling keys, e.g. ``topology: {name: regular, degree: 4}``; an option the named
component does not take is reported by ``privlab.experiment`` when it is built.
Any invalid value becomes one ``PrivlabError`` line naming the field and the valid range.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from privlab.errors import PrivlabError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Component(BaseModel):
    """A named component whose extra keys are its options."""

    model_config = ConfigDict(extra="allow", frozen=True)
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
    name: str = "dpsgd"


class TrainingConfig(_Section):
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(16, ge=1)
    local_steps: int = Field(1, ge=1)


class ObserverConfig(_Section):
    curious_nodes: list[int] = Field(default_factory=list)
    colluding: bool = False
    eavesdropped_links: list[tuple[int, int]] = Field(default_factory=list)
    rounds: list[int] | None = None


class ExperimentConfig(_Section):
    """One experiment: data, model, topology, protocol, training, and who observes."""

    name: str = "experiment"
    seed: int = Field(0, ge=0)
    nodes: int = Field(16, ge=2)
    rounds: int = Field(30, ge=1)
    eval_every: int = Field(5, ge=1)
    engine: Literal["vectorized", "loop"] = "vectorized"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(hidden=[64, 32]))
    topology: TopologyConfig = Field(default_factory=lambda: TopologyConfig(degree=4))
    protocol: ProtocolConfig = Field(default_factory=ProtocolConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    observer: ObserverConfig | None = None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


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


def load_yaml(text: str, what: str) -> Any:
    """Parse YAML ``text``; a syntax error becomes a ``PrivlabError`` naming ``what``."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as error:
        detail = " ".join(str(error).split())
        raise PrivlabError(f"{what} is not valid YAML: {detail}") from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML config file and apply ``key.sub=value`` overrides."""
    path = Path(path)
    if not path.is_file():
        raise PrivlabError(f"config file {str(path)!r} does not exist")
    raw = load_yaml(path.read_text(), f"config file {str(path)!r}")
    return parse_config(apply_overrides(_mapping(raw), overrides or []))


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted keys from ``key=value`` strings; values are parsed as YAML."""
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
        node[leaf] = load_yaml(value, f"--set {key}")
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
    if detail["type"] == "extra_forbidden":
        return f"unknown config key {field!r}"
    message = detail["msg"][0].lower() + detail["msg"][1:]
    return f"{field}: {message}, got {detail.get('input')!r}"
