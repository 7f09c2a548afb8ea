"""What a run's curious parties learn about every other node: exact network privacy.

For a protocol whose round is a linear Gaussian view (``Protocol.network_model``:
Muffliato, Zip-DL), each party's view of one round is a Gaussian mechanism on every other
node's value (``privlab.accounting.network``), mu-GDP per source. Rounds draw fresh noise,
so R rounds compose to ``sqrt(R) mu``-GDP (Dong, Roth & Su, JRSS-B 2022, Corollary 3.3),
converted to epsilon at the run's delta exactly (Balle & Wang 2018).

The model behind it (as ``privlab budget network``): one record of a node's data moves
that node's model by at most 1 in L2 per round, so the protocol's ``noise_multiplier`` is
the noise in units of that sensitivity. Scale it to your update's sensitivity (e.g. lr C
/ batch under per-sample clipping) for a guarantee about records.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from privlab.accounting.network import gdp_epsilon, pairwise_network_mu
from privlab.observe import ThreatModel
from privlab.protocol import Protocol
from privlab.topology import Topology

ASSUMES = (
    "one record moves its node's model by at most 1 (L2) per round: noise_multiplier is "
    "the noise in units of that sensitivity; rounds compose as Gaussian DP"
)


def network_privacy(
    protocol: Protocol, topology: Topology, threat: ThreatModel | None, rounds: int, delta: float
) -> dict[str, Any] | None:
    """Per party: epsilon over the other nodes (min, mean, max) and the worst source, after
    ``rounds`` rounds; None when the protocol has no network model or nobody observes."""
    model = protocol.network_model()
    if model is None or threat is None or not threat.curious_nodes or rounds < 1:
        return None
    if getattr(topology, "dynamic", False):
        return {"skipped": "the exact view is computed for static topologies only"}
    mechanism, steps, noise = model
    W = topology.plan(1).mixing_matrix("dense").double().numpy()
    curious = sorted(threat.curious_nodes)
    parties = (
        {"coalition:" + ",".join(map(str, curious)): curious}
        if threat.colluding
        else {f"node:{v}": [v] for v in curious}
    )
    out: dict[str, Any] = {
        "mechanism": mechanism,
        "rounds": rounds,
        "delta": delta,
        "assumes": ASSUMES,
        "parties": {
            name: _party(mechanism, W, members, steps, noise, rounds, delta)
            for name, members in parties.items()
        },
    }
    if threat.eavesdropped_links:
        out["eavesdropper"] = "not accounted (the exact view covers curious nodes)"
    return out


def _party(
    mechanism: str,
    W: np.ndarray,
    members: list[int],
    steps: int,
    noise: float,
    rounds: int,
    delta: float,
) -> dict[str, Any]:
    per_round = pairwise_network_mu(mechanism, W, members, steps, noise)
    epsilon = {
        source: gdp_epsilon(math.sqrt(rounds) * entry["mu"], delta)
        for source, entry in per_round.items()
    }
    worst = max(epsilon, key=epsilon.get)
    values = list(epsilon.values())
    return {
        "epsilon": {"min": min(values), "mean": float(np.mean(values)), "max": max(values)},
        "worst_source": worst,
        "mu_per_round": {"max": max(e["mu"] for e in per_round.values())},
    }
