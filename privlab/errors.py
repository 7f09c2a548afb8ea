"""Errors users see: one clear message naming the field and what is valid."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from numbers import Integral, Real


class PrivlabError(ValueError):
    """Invalid input to privlab; the message names the field and the valid range.

    It subclasses ``ValueError`` so callers that validate privacy parameters the
    usual Python way (``except ValueError``) keep working.
    """


class UnknownNameError(PrivlabError, KeyError):
    """A name looked up in a registry does not exist; the message lists the valid names."""

    def __init__(self, kind: str, name: str, valid: Iterable[str]):
        self.kind, self.name, self.valid = kind, name, sorted(valid)
        super().__init__(f"unknown {kind} {name!r}; valid: {', '.join(self.valid)}")

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


def check(condition: bool, field: str, valid: str, value: object) -> None:
    """Raise ``PrivlabError`` saying ``field`` must be ``valid`` unless ``condition`` holds."""
    if not condition:
        raise PrivlabError(f"{field} must be {valid}, got {value!r}")


def check_positive_finite(value: object, field: str) -> float:
    """``value`` as a float when it is a real number > 0 and finite, else a ``PrivlabError``."""
    check(is_real(value) and math.isfinite(value) and value > 0, field, "> 0 and finite", value)
    return float(value)


def is_integer(value: object) -> bool:
    """An integral number that is not a bool (``True`` would otherwise pass as 1)."""
    return isinstance(value, Integral) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    """A real number that is not a bool."""
    return isinstance(value, Real) and not isinstance(value, bool)


_BARE_FIELD = re.compile(r"^([A-Za-z_]\w*)(?= must )")
_UNKNOWN_OPTIONS = re.compile(r"^(unknown options? )(.*?)( for )")


@contextmanager
def fields_named(paths: Mapping[str, str]) -> Iterator[None]:
    """Re-raise a ``PrivlabError`` that names a bare option (``degree must be ...``,
    ``unknown option 'degree'``) with its config path (``topology.degree``), so every
    message names a field the way the config file spells it."""
    try:
        yield
    except PrivlabError as error:
        message = str(error)
        qualified = _BARE_FIELD.sub(lambda m: paths.get(m[1], m[1]), message)
        qualified = _UNKNOWN_OPTIONS.sub(
            lambda m: m[1] + re.sub(r"'(\w+)'", lambda q: repr(paths.get(q[1], q[1])), m[2]) + m[3],
            qualified,
        )
        if qualified == message:
            raise
        raise PrivlabError(qualified) from None
