"""Small explicit name -> factory registries (datasets, models, topologies, protocols);
registries with a base class also load a user's class by location (``privlab.plugins``)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Generic, TypeVar

from privlab.errors import PrivlabError, UnknownNameError
from privlab.plugins import is_spec, load_component

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories; an unknown name raises an error listing the valid ones."""

    def __init__(self, kind: str, base: type | None = None):
        self.kind, self.base = kind, base
        self._entries: dict[str, T] = {}
        self._renamed: dict[str, str] = {}

    def rename(self, old: str, new: str, why: str = "") -> None:
        """Make the retired name ``old`` an error that names ``new`` (and ``why``)."""
        self._renamed[old] = f"{self.kind} {old!r} is now called {new!r}" + (
            f" ({why})" if why else ""
        )

    def register(self, name: str, *, force: bool = False) -> Callable[[T], T]:
        """Decorator registering ``name``; re-registering needs ``force=True``.

        The key is the component's one name: a registered class gets it as its ``name``
        attribute, so the two cannot drift apart.
        """

        def add(entry: T) -> T:
            if name in self._entries and not force:
                raise PrivlabError(f"{self.kind} {name!r} is already registered (use force=True)")
            self._entries[name] = entry
            if isinstance(entry, type):
                entry.name = name
            return entry

        return add

    def __getitem__(self, name: str) -> T:
        """The entry ``name``; with a ``base``, ``path/file.py:Class`` or
        ``package.module:Class`` loads a user's class instead (``privlab.plugins``)."""
        if self.base is not None and is_spec(name) and name not in self._entries:
            return load_component(name, self.base, self.kind)
        try:
            return self._entries[name]
        except KeyError:
            if name in self._renamed:
                raise PrivlabError(self._renamed[name]) from None
            raise UnknownNameError(self.kind, name, self._entries) from None

    def with_options(
        self, name: str, options: Mapping[str, object], reserved: Iterable[str] = ()
    ) -> T:
        """The entry ``name``, after checking that it takes every key of ``options`` as a
        keyword (``reserved`` parameters are supplied by privlab, not by the user)."""
        entry = self[name]
        valid = sorted(set(inspect.signature(entry).parameters) - set(reserved))
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise PrivlabError(
                f"unknown option{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))} "
                f"for {self.kind} {name!r}; "
                f"valid: {', '.join(valid) or 'none'}"
            )
        return entry

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def names(self) -> list[str]:
        return sorted(self._entries)
