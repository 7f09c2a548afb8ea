"""Errors users see: one clear message naming the field and what is valid."""

from __future__ import annotations

from collections.abc import Iterable
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


def is_integer(value: object) -> bool:
    """An integral number that is not a bool (``True`` would otherwise pass as 1)."""
    return isinstance(value, Integral) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    """A real number that is not a bool."""
    return isinstance(value, Real) and not isinstance(value, bool)
