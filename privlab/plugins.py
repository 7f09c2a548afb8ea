"""A user's own component, named by where it lives instead of by a registered name.

``path/to/file.py:ClassName`` loads the class from a Python file (a relative path is
taken from the current directory), ``package.module:ClassName`` from an importable
module. The class must subclass the registry's base (``Protocol``, ``GradientMechanism``)
and define every method the base leaves abstract; anything else is one ``PrivlabError``
naming the spec and what is wrong. A loaded class behaves like a built-in one: its
options are checked against its ``__init__``, and a mechanism that claims DP sends its
privacy events to the ledger.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from types import ModuleType

from privlab.errors import PrivlabError


def is_spec(name: str) -> bool:
    """Whether ``name`` names a component by location (``where:ClassName``)."""
    return ":" in name


def load_component(spec: str, base: type, kind: str) -> type:
    """The class ``spec`` names, checked against ``base`` (see the module docstring)."""
    where, _, class_name = spec.rpartition(":")
    if not where or not class_name.isidentifier():
        raise PrivlabError(
            f"{kind} {spec!r} must be path/to/file.py:ClassName or package.module:ClassName"
        )
    module = _module(where, spec, kind)
    found = getattr(module, class_name, None)
    if not inspect.isclass(found):
        classes = sorted(n for n, v in vars(module).items() if inspect.isclass(v))
        raise PrivlabError(
            f"{kind} {spec!r}: {where} has no class {class_name!r}"
            + (f"; classes there: {', '.join(classes)}" if classes else "")
        )
    if not issubclass(found, base):
        raise PrivlabError(
            f"{kind} {spec!r}: {class_name} must subclass {base.__module__}.{base.__name__}"
        )
    missing = sorted(getattr(found, "__abstractmethods__", ()))
    if missing:
        raise PrivlabError(
            f"{kind} {spec!r}: {class_name} must define {', '.join(missing)} "
            f"(required by {base.__name__})"
        )
    if "name" not in vars(found):
        found.name = spec
    return found


def _module(where: str, spec: str, kind: str) -> ModuleType:
    if where.endswith(".py"):
        return _file_module(Path(where), spec, kind)
    try:
        return importlib.import_module(where)
    except ImportError as error:
        raise PrivlabError(f"{kind} {spec!r}: cannot import {where}: {error}") from None


def _file_module(path: Path, spec: str, kind: str) -> ModuleType:
    path = path.expanduser().resolve()
    if not path.is_file():
        raise PrivlabError(f"{kind} {spec!r}: file {path} does not exist")
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    name = f"privlab_user_{path.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    loader_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module  # before executing: dataclasses and pickling look it up
    try:
        loader_spec.loader.exec_module(module)
    except Exception as error:  # the user's file: any failure is bad input, said once
        del sys.modules[name]
        raise PrivlabError(
            f"{kind} {spec!r}: running {path.name} failed: {type(error).__name__}: {error}"
        ) from None
    return module
