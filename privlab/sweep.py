"""The sweep config of ``privlab compare``: parse, validate and expand it into runs.

A sweep compares privacy mechanisms on the same data and topology: every mechanism at
every point of its parameter grid, at every seed. YAML (or the same mapping in Python)::

    name: leaky                   # optional; default: the sweep file's name
    base: attacks.yaml            # a run config: a path relative to this file, or a mapping
    seeds: [0, 1, 2]              # evaluation seeds (each run's experiment seed)
    tune_seed: 1000               # the seed of the tuning runs (default 1000, not a seed)
    tune: {training.lr: [0.03, 0.1, 0.3]}   # default tuning grid of every mechanism
    attack: {method: loss, options: {}, rounds: null}   # the measured MIA
    mechanisms:
      - name: dp-sgd                              # the label in summary.csv and the plots
        set: {gradient: {name: dp-sgd, max_grad_norm: 1.0}}   # dotted overrides of base
        grid: {gradient.noise_multiplier: [0.5, 1.0, 2.0]}    # cartesian product: points
        tune: {training.lr: [0.03, 0.1]}          # replaces the sweep's tune; {}: none
        attack: {options: {completion: own}}      # merged over the sweep's attack options

A run's config is ``base``, then the caller's overrides (``--set``), then the mechanism's
``set``, its grid point, its tuned values, the seed and a name; each dotted key is applied
by ``privlab.config.apply_overrides`` (so ``protocol.name: zipdl`` drops d-psgd's
options). The base's own ``attacks:`` list is dropped: the sweep measures its ``attack``.

**Tuning** (a decision, for fairness): at each grid point of each mechanism every
combination of its ``tune`` grid trains once on ``tune_seed``, and the combination of
highest final test accuracy (first one on ties; diverged runs excluded) is used for
all evaluation seeds of that point. Selection reads the test split of the tuning seed's
own partition: the split is disjoint from that run's training data but, on a small data
set, overlaps the training and test data of the evaluation seeds, so it is not a
held-out validation set in the strict sense (the data API has no validation split).

**The measured attack** (``attack``, a decision): LOSS membership inference (Yeom,
Giacomelli, Fredrikson & Jha, CSF 2018) by the observer of the base config (its first
party) on every model it received in every recorded round, as ``privlab attack mia``;
Shatter's chunks are completed with the attacker's own model unless the options set a
``completion``, and CESAR, whose messages are masked integers, is attacked on the
curious node's own final model (``privlab.compare_run``). The attack's ``seed`` option
defaults to the run's seed. Tuning runs are not attacked.

**Validation** happens before any run: every expanded config (each grid point with each
tuned combination) goes through ``privlab.config.parse_config`` and its protocol and
gradient mechanism are built, the attack method and options are checked. Every error
is one ``PrivlabError`` line naming the field, e.g.
``mechanisms[2].grid.gradient.noise_multiplier: ...``.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from privlab.config import apply_overrides, parse_config, read_yaml_file
from privlab.errors import PrivlabError, check, is_integer
from privlab.sweep_checks import (
    check_attack,
    check_keys,
    check_run_config,
    grid_of,
    no_unknown_keys,
    rounds_of,
    seeds_of,
)

DEFAULT_TUNE_SEED = 1000
SWEEP_KEYS = ("name", "base", "seeds", "tune_seed", "tune", "attack", "mechanisms")
MECHANISM_KEYS = ("name", "set", "grid", "tune", "attack")
ATTACK_KEYS = ("method", "options", "rounds")
NO_PARAMETERS = "-"
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]+")


@dataclass(frozen=True)
class AttackSpec:
    """The measured membership inference: a ``privlab attack mia`` method and options."""

    method: str = "loss"
    options: Mapping[str, Any] = field(default_factory=dict)
    rounds: tuple[int, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        rounds = None if self.rounds is None else list(self.rounds)
        return {"method": self.method, "options": dict(self.options), "rounds": rounds}


@dataclass(frozen=True)
class Mechanism:
    """One ``mechanisms`` entry: dotted overrides, a grid and a tuning grid."""

    name: str
    set: Mapping[str, Any]
    grid: Mapping[str, list]
    tune: Mapping[str, list]
    attack_options: Mapping[str, Any]

    def points(self) -> list[dict[str, Any]]:
        """The cartesian product of the grid (one empty point without a grid)."""
        return _product(self.grid)

    def tune_choices(self) -> list[dict[str, Any]]:
        """The cartesian product of the tuning grid (one empty choice: no tuning)."""
        return _product(self.tune)


@dataclass(frozen=True)
class Point:
    """A mechanism at one grid point; ``label`` is the ``parameters`` column."""

    mechanism: Mechanism
    values: Mapping[str, Any]
    label: str
    slug: str


@dataclass(frozen=True)
class RunSpec:
    """One run of the sweep: what a worker needs (picklable) and where it goes.

    ``kind`` is "tuning" or "evaluation"; ``config`` the validated experiment config as
    a plain dict; ``attack`` the measured attack (None for tuning runs)."""

    run_id: str
    kind: str
    mechanism: str
    parameters: str
    seed: int
    tuned: Mapping[str, Any]
    config: dict[str, Any]
    attack: AttackSpec | None

    @property
    def folder(self) -> str:
        return "tuning" if self.kind == "tuning" else "runs"


@dataclass(frozen=True)
class Sweep:
    """A validated sweep (build it with ``load_sweep``)."""

    name: str
    base: dict[str, Any]
    seeds: tuple[int, ...]
    tune_seed: int
    attack: AttackSpec
    mechanisms: tuple[Mechanism, ...]

    def points(self) -> list[Point]:
        """Every mechanism at every grid point, in the sweep's order."""
        return [_point(m, values) for m in self.mechanisms for values in m.points()]

    def config(self, point: Point, tuned: Mapping[str, Any], seed: int) -> dict[str, Any]:
        """The raw experiment config of ``point`` with ``tuned`` values at ``seed``."""
        m = point.mechanism
        raw = self.base
        for items in (m.set, point.values, tuned):
            raw = _apply(raw, items)
        raw = apply_overrides(raw, [f"seed={seed}", "attacks=[]"])
        return raw

    def tuning_runs(self, point: Point) -> list[RunSpec]:
        """The tuning runs of ``point`` (none when its mechanism tunes nothing)."""
        if not point.mechanism.tune:
            return []
        return [
            self._spec(point, tuned, self.tune_seed, "tuning")
            for tuned in point.mechanism.tune_choices()
        ]

    def evaluation_runs(self, point: Point, tuned: Mapping[str, Any]) -> list[RunSpec]:
        """The runs of ``point`` at every seed, with the chosen ``tuned`` values."""
        return [self._spec(point, tuned, seed, "evaluation") for seed in self.seeds]

    def attack_of(self, mechanism: Mechanism) -> AttackSpec:
        options = {**self.attack.options, **mechanism.attack_options}
        return AttackSpec(self.attack.method, options, self.attack.rounds)

    def _spec(self, point: Point, tuned: Mapping[str, Any], seed: int, kind: str) -> RunSpec:
        run_id = point.slug
        if kind == "tuning":
            run_id += "--" + _slug(_label(tuned)) + f"--tune-seed{seed}"
        else:
            run_id += f"--seed{seed}"
        raw = apply_overrides(self.config(point, tuned, seed), [f"name={run_id[:100]}"])
        config = parse_config(raw).to_dict()
        attack = self.attack_of(point.mechanism) if kind == "evaluation" else None
        name = point.mechanism.name
        return RunSpec(run_id, kind, name, point.label, seed, dict(tuned), config, attack)

    def to_dict(self) -> dict[str, Any]:
        """The resolved sweep (the base inline), for ``compare.json``."""
        return {
            "name": self.name,
            "base": self.base,
            "seeds": list(self.seeds),
            "tune_seed": self.tune_seed,
            "attack": self.attack.to_dict(),
            "mechanisms": [
                {
                    "name": m.name,
                    "set": dict(m.set),
                    "grid": dict(m.grid),
                    "tune": dict(m.tune),
                    "attack": {"options": dict(m.attack_options)},
                }
                for m in self.mechanisms
            ],
        }


# ------------------------------------------------------------------------------ loading


def load_sweep(source: str | Path | Mapping[str, Any], overrides: Sequence[str] = ()) -> Sweep:
    """Parse and validate a sweep: a YAML file or a mapping (a base path in a mapping is
    relative to the current folder). ``overrides`` (``key=value``, as ``privlab run
    --set``) apply to the base config of every run. Raises ``PrivlabError`` naming the
    field of the first problem; nothing runs before the whole sweep is valid."""
    if isinstance(source, Mapping):
        raw, folder, default_name = dict(source), Path("."), "sweep"
    else:
        path = Path(source)
        raw = read_yaml_file(path, "sweep file")
        folder, default_name = path.parent, path.stem
    check(isinstance(raw, Mapping), "sweep", "a mapping of keys to values", type(raw).__name__)
    no_unknown_keys(raw, SWEEP_KEYS, "sweep")
    name = raw.get("name", default_name)
    check(isinstance(name, str) and bool(_slug(name)), "name", "a non-empty name", name)
    base = _base(raw.get("base"), folder, overrides)
    seeds = seeds_of(raw.get("seeds"))
    tune_seed = raw.get("tune_seed", DEFAULT_TUNE_SEED)
    check(is_integer(tune_seed) and tune_seed >= 0, "tune_seed", "an integer >= 0", tune_seed)
    check(tune_seed not in seeds, "tune_seed", "a seed that is not an evaluation seed", tune_seed)
    tune = grid_of(raw.get("tune", {}), "tune")
    sweep = Sweep(
        name=_slug(name),
        base=base,
        seeds=seeds,
        tune_seed=tune_seed,
        attack=_attack(raw.get("attack", {})),
        mechanisms=_mechanisms(raw.get("mechanisms"), tune),
    )
    _validate(sweep)
    return sweep


def _base(value: Any, folder: Path, overrides: Sequence[str]) -> dict[str, Any]:
    if isinstance(value, str):
        path = Path(value) if Path(value).is_absolute() else folder / value
        try:
            value = read_yaml_file(path)
        except PrivlabError as error:
            raise PrivlabError(f"base: {error}") from None
    check(
        isinstance(value, Mapping),
        "base",
        "a run config: a mapping, or the path of a YAML file relative to the sweep file",
        value,
    )
    try:
        return apply_overrides(dict(value), list(overrides))
    except PrivlabError as error:
        raise PrivlabError(f"base: {error}") from None


def _attack(value: Any) -> AttackSpec:
    from privlab.attacks.decentralized import METHODS

    check(isinstance(value, Mapping), "attack", "a mapping {method, options, rounds}", value)
    no_unknown_keys(value, ATTACK_KEYS, "attack")
    method = value.get("method", "loss")
    check(method in METHODS, "attack.method", f"one of {', '.join(METHODS)}", method)
    options = value.get("options", {})
    check(isinstance(options, Mapping), "attack.options", "a mapping", options)
    return AttackSpec(method, dict(options), rounds_of(value.get("rounds")))


def _mechanisms(value: Any, default_tune: dict[str, list]) -> tuple[Mechanism, ...]:
    check(
        isinstance(value, list) and bool(value),
        "mechanisms",
        "a non-empty list of entries {name, set, grid, tune, attack}",
        value,
    )
    out = []
    for i, entry in enumerate(value):
        where = f"mechanisms[{i}]"
        check(isinstance(entry, Mapping), where, "a mapping {name, set, grid, tune, attack}", entry)
        no_unknown_keys(entry, MECHANISM_KEYS, where)
        name = entry.get("name")
        check(isinstance(name, str) and bool(_slug(name)), f"{where}.name", "a name", name)
        overrides = entry.get("set", {})
        check(isinstance(overrides, Mapping), f"{where}.set", "a mapping of dotted keys", overrides)
        check_keys(overrides, f"{where}.set")
        tune = grid_of(entry["tune"], f"{where}.tune") if "tune" in entry else default_tune
        attack = entry.get("attack", {})
        check(isinstance(attack, Mapping), f"{where}.attack", "a mapping {options}", attack)
        no_unknown_keys(attack, ("options",), f"{where}.attack")
        options = attack.get("options", {})
        check(isinstance(options, Mapping), f"{where}.attack.options", "a mapping", options)
        grid = grid_of(entry.get("grid", {}), f"{where}.grid")
        out.append(Mechanism(name, dict(overrides), grid, tune, dict(options)))
    slugs = [_slug(m.name) for m in out]
    for i, slug in enumerate(slugs):
        check(
            slug not in slugs[:i], f"mechanisms[{i}].name", "a name no other entry has", out[i].name
        )
    return tuple(out)


# ---------------------------------------------------------------------------- validation


def _validate(sweep: Sweep) -> None:
    """Every expanded config parses and builds its components; run ids are distinct."""
    ids: dict[str, str] = {}
    for i, m in enumerate(sweep.mechanisms):
        attack = sweep.attack_of(m)
        for values in m.points():
            point = _point(m, values)
            for tuned in m.tune_choices():
                try:
                    check_run_config(sweep.config(point, tuned, sweep.tune_seed))
                except PrivlabError as error:
                    where = _locate(str(error), i, m, point, tuned)
                    raise PrivlabError(f"{where}: {error}") from None
            run_id = point.slug
            check(run_id not in ids, f"mechanisms[{i}].grid", "points with distinct ids", run_id)
            ids[run_id] = m.name
        config = parse_config(sweep.config(_point(m, m.points()[0]), {}, sweep.tune_seed))
        check_attack(config, attack.method, attack.options, f"mechanisms[{i}]")


def _locate(message: str, i: int, m: Mechanism, point: Point, tuned: Mapping[str, Any]) -> str:
    """The sweep field an error of an expanded config comes from: the grid, tune or set
    key the message names, else the mechanism at its point."""
    for section, keys in (("grid", point.values), ("tune", tuned), ("set", m.set)):
        for key in sorted(keys, key=len, reverse=True):
            if key in message:
                return f"mechanisms[{i}].{section}.{key}"
    label = "" if point.label == NO_PARAMETERS else f" at {point.label}"
    return f"mechanisms[{i}] ({m.name}{label})"


# ------------------------------------------------------------------------------ helpers


def _apply(raw: dict[str, Any], items: Mapping[str, Any]) -> dict[str, Any]:
    """``raw`` with each dotted ``key: value`` of ``items`` set (``apply_overrides``)."""
    overrides = [f"{key}={json.dumps(value, default=str)}" for key, value in items.items()]
    return apply_overrides(raw, overrides)


def _product(grid: Mapping[str, list]) -> list[dict[str, Any]]:
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*grid.values())]


def _point(m: Mechanism, values: Mapping[str, Any]) -> Point:
    label = _label(values)
    slug = _slug(m.name) + ("" if not values else "--" + _slug(label))
    return Point(m, dict(values), label, slug)


def format_value(value: Any) -> str:
    """A grid value as the ``parameters`` column writes it (``0.5``, ``true``, ``[32]``)."""
    if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"), default=str)
    return repr(value) if isinstance(value, float) else str(value)


def _label(values: Mapping[str, Any]) -> str:
    """``noise_multiplier=0.5, virtual_nodes=4``: each key by its last part unless two
    keys share it; ``NO_PARAMETERS`` for none."""
    if not values:
        return NO_PARAMETERS
    last = [key.rsplit(".", 1)[-1] for key in values]
    names = [k if last.count(s) > 1 else s for k, s in zip(values, last)]
    return ", ".join(f"{n}={format_value(v)}" for n, v in zip(names, values.values()))


def _slug(text: str) -> str:
    """A folder-safe, readable form of ``text``."""
    return _UNSAFE.sub("_", str(text).replace(", ", "_")).strip("_")
