"""What an attack of a run leaves behind: ``attack.json``, ``attack.csv`` and its plots.

``attack.json`` is ``{"attack", "method", "attacker", "threat_model", "summary",
"instances": "attack.csv"}``: ``attacker`` says what the attack assumes ("peer": what a
curious node holds; "oracle": more, such as membership labels or every node's data),
``summary`` its headline numbers with their confidence intervals, and ``attack.csv`` one
row per attack instance (a victim at a round, a message, a run).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from privlab.jsonio import dumps

REPORT = "attack.json"
INSTANCES = "attack.csv"


@dataclass
class AttackReport:
    """One attack of one run: its headline numbers, instances and figures."""

    attack: str
    method: str
    attacker: str
    threat_model: dict[str, Any]
    summary: dict[str, Any]
    instances: pd.DataFrame
    figures: dict[str, Figure] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "attack": self.attack,
            "method": self.method,
            "attacker": self.attacker,
            "threat_model": self.threat_model,
            "summary": self.summary,
            "instances": INSTANCES,
        }

    def write(self, out: str | Path) -> Path:
        """Write ``attack.json``, ``attack.csv`` and ``<figure>.png`` into ``out``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.instances.to_csv(out / INSTANCES, index=False)
        for name, figure in self.figures.items():
            figure.savefig(out / f"{name}.png", dpi=120, bbox_inches="tight")
        (out / REPORT).write_text(dumps(self.to_dict(), indent=2, default=_plain) + "\n")
        return out / REPORT


def _plain(value: Any) -> Any:
    """numpy scalars and arrays as plain Python numbers and lists."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to attack.json")
