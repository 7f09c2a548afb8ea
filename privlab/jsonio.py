"""Strict JSON: everything privlab writes parses with any standard JSON parser.

Python's ``json`` writes ``Infinity`` and ``NaN``, which strict parsers (JavaScript's
``JSON.parse``, ``jq``, Go, Rust's serde) reject. privlab writes a non-finite number as
the string ``"inf"``, ``"-inf"`` or ``"nan"`` instead: the value stays explicit, and
Python's ``float()`` reads it back.
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite(value: Any) -> Any:
    """``value`` with every non-finite float (nested in dicts, lists, tuples) as a string."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


def dumps(value: Any, **options: Any) -> str:
    """``json.dumps`` that never writes ``Infinity`` or ``NaN`` (see module docstring)."""
    return json.dumps(finite(value), allow_nan=False, **options)
