"""Checks of a ``privlab compare`` sweep (``privlab.sweep``) before any run.

Each check raises one ``PrivlabError`` line naming the sweep field: unknown keys, empty
grids, seeds, and every expanded run config (``privlab.config.parse_config``, then its
protocol and gradient mechanism built as ``privlab.experiment.build`` builds them), and
the measured attack's method and options.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from privlab.config import ExperimentConfig, parse_config
from privlab.errors import PrivlabError, check, fields_named, is_integer

OWN_MODEL_METHODS = ("loss", "calibrated")
"""Methods of the attack on a curious node's own model (``privlab.compare_run``)."""
SET_BY_THE_SWEEP = ("seed", "name", "attacks")


def no_unknown_keys(raw: Mapping[str, Any], valid: Sequence[str], where: str) -> None:
    """Refuse a key of ``raw`` (the section ``where``) that is not in ``valid``."""
    unknown = [k for k in raw if k not in valid]
    if unknown:
        raise PrivlabError(f"unknown key {unknown[0]!r} in {where} (valid: {', '.join(valid)})")


def check_keys(items: Mapping[str, Any], where: str) -> None:
    """Dotted config keys (``training.lr``), none of those the sweep sets itself."""
    for key in items:
        ok = isinstance(key, str) and bool(key) and "=" not in key
        check(ok, where, "dotted config keys such as training.lr", key)
        check(key not in SET_BY_THE_SWEEP, f"{where}.{key}", "set by the sweep", key)


def grid_of(value: Any, where: str) -> dict[str, list]:
    """A grid: dotted keys to non-empty lists of values."""
    check(isinstance(value, Mapping), where, "a mapping of dotted keys to lists of values", value)
    check_keys(value, where)
    for key, values in value.items():
        ok = isinstance(values, list) and bool(values)
        check(ok, f"{where}.{key}", "a non-empty list of values", values)
    return {key: list(values) for key, values in value.items()}


def seeds_of(value: Any) -> tuple[int, ...]:
    """The evaluation seeds: a non-empty list of distinct integers."""
    valid = "a non-empty list of distinct integers in [0, 2**63)"
    check(isinstance(value, list) and bool(value), "seeds", valid, value)
    ok = all(is_integer(s) and 0 <= s < 2**63 for s in value) and len(set(value)) == len(value)
    check(ok, "seeds", valid, value)
    return tuple(value)


def rounds_of(value: Any) -> tuple[int, ...] | None:
    """The attacked rounds: null (every round) or a non-empty list of rounds >= 1."""
    if value is None:
        return None
    ok = isinstance(value, list) and bool(value)
    ok = ok and all(is_integer(r) and r >= 1 for r in value)
    check(ok, "attack.rounds", "null (every round) or a list of rounds >= 1", value)
    return tuple(value)


def check_run_config(raw: dict[str, Any]) -> ExperimentConfig:
    """``raw`` parsed, with its protocol and gradient mechanism built once; the measured
    attack needs an observer."""
    config = parse_config(raw)
    build_components(config)
    if config.observer is None:
        raise PrivlabError(
            "base.observer: the measured attack needs a curious party, e.g. "
            "observer: {curious_nodes: [0]}"
        )
    return config


def build_components(config: ExperimentConfig) -> None:
    """Build the protocol and gradient mechanism as ``privlab.experiment.build`` does, so
    a bad option is reported before any run."""
    import privlab.mechanisms  # noqa: F401  (registers the protocols)
    from privlab.gradient import GRADIENT_MECHANISMS
    from privlab.protocol import PROTOCOLS

    sections = (
        ("protocol", config.protocol, PROTOCOLS),
        ("gradient", config.gradient, GRADIENT_MECHANISMS),
    )
    for section, component, registry in sections:
        if component is None:
            continue
        options = component.options
        with fields_named({k: f"{section}.{k}" for k in (*options, "name")}):
            registry.with_options(component.name, options)(**options)


def check_attack(
    config: ExperimentConfig, method: str, options: Mapping[str, Any], where: str
) -> None:
    """The measured attack can run on ``config``'s runs: on CESAR (no model in the
    messages) a method of ``OWN_MODEL_METHODS``; elsewhere a valid ``privlab attack
    mia`` method with valid options."""
    from privlab.attacks.decentralized import ReceivedModelMIA
    from privlab.attacks.run_data import COMPLETIONS, NO_MODEL
    from privlab.attacks.runner import RUN_ATTACKS

    if config.protocol.name in NO_MODEL:
        check(
            method in OWN_MODEL_METHODS,
            "attack.method",
            f"one of {', '.join(OWN_MODEL_METHODS)} for {where} ({config.protocol.name}: "
            "the curious node's own model is attacked)",
            method,
        )
        return
    try:
        RUN_ATTACKS["mia"]().check(method, options)
        completion = options.get("completion")
        valid = f"one of {', '.join(COMPLETIONS)}"
        check(completion is None or completion in COMPLETIONS, "completion", valid, completion)
        kept = {k: v for k, v in options.items() if k not in ("party", "victims")}
        ReceivedModelMIA(method=method, **kept)
    except (PrivlabError, TypeError) as error:
        raise PrivlabError(f"{where}.attack.options: {error}") from None
