"""``privlab demo``: D-PSGD and Epidemic Learning side by side on the embedded digits data.

Four runs on 16 nodes from the packaged default config: D-PSGD on a ring and on a
random 4-regular graph (Metropolis-Hastings weights), Epidemic Learning with fanout 4
in its two variants (EL-Oracle, EL-Local). Prints a results table and writes one run
folder per variant, ``comparison.csv`` and ``comparison.png``. A demo replaces its own
previous output (and nothing else) in its folder, so it runs any number of times.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from privlab.config import apply_overrides, load_yaml, parse_config
from privlab.experiment import run
from privlab.results import Results, remove_entries

VARIANTS: dict[str, dict] = {
    "d-psgd-ring": {"protocol": {"name": "d-psgd"}, "topology": {"name": "ring"}},
    "d-psgd-regular4": {
        "protocol": {"name": "d-psgd"},
        "topology": {"name": "regular", "degree": 4},
    },
    "el-oracle4": {
        "protocol": {"name": "epidemic"},
        "topology": {"name": "el-oracle", "fanout": 4},
    },
    "el-local4": {"protocol": {"name": "epidemic"}, "topology": {"name": "el-local", "fanout": 4}},
}


def demo_config(variant: str, rounds: int) -> dict:
    """The packaged default config, switched to one demo variant."""
    from privlab.cli import packaged_config

    raw = load_yaml(packaged_config("default").read_text(), "the default config")
    raw.update(VARIANTS[variant], name=variant)
    return apply_overrides(raw, [f"rounds={rounds}", "eval_every=2"])


DEMO_FILES = ("comparison.csv", "comparison.png", *VARIANTS)


def clear_previous_demo(out: Path) -> bool:
    """Remove what an earlier demo wrote in ``out`` (only that); whether there was any."""
    return remove_entries(out, DEMO_FILES)


def run_demo(out: Path, rounds: int = 30, progress: bool = True) -> tuple[pd.DataFrame, bool]:
    """Run the four variants, save them under ``out``, print and return the table, and
    whether Ctrl-C cut it short (the variants that finished are kept, and the table and
    the plot say the demo was interrupted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, runs, interrupted = [], [], False
    for variant in VARIANTS:
        results = run(parse_config(demo_config(variant, rounds)), progress=progress)
        results.save(out / variant)
        runs.append(results)
        rows.append(_row(variant, results, rounds))
        interrupted = results.summary["interrupted"]
        if interrupted:
            break
    table = pd.DataFrame(rows)
    table.to_csv(out / "comparison.csv", index=False)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for results in runs:
        results.plot(("test_accuracy",), ax=axes[0])
        results.plot(("consensus_distance",), ax=axes[1])
    axes[0].legend(fontsize=8)
    status = " (INTERRUPTED: partial)" if interrupted else ""
    fig.suptitle(
        f"digits, 16 nodes, {rounds} rounds{status}; line = mean over nodes, band = min to max",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(out / "comparison.png", dpi=120)
    plt.close(fig)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if interrupted:
        print(f"\ninterrupted: {len(runs)} of {len(VARIANTS)} runs, the last one partial")
    print(f"\nrun folders, comparison.csv and comparison.png in {out}/")
    print("(seconds are this machine's wall time and vary with the machine and its load)")
    return table, interrupted


def _row(variant: str, results: Results, rounds: int) -> dict:
    accuracy = results.final("test_accuracy")
    return {
        "run": variant,
        "rounds": f"{results.summary['completed_rounds']}/{rounds}",
        "acc_mean": accuracy.mean(),
        "acc_min": accuracy.min(),
        "consensus": results.final("consensus_distance").mean(),
        "MB_sent": results.summary["total_bytes"] / 1e6,
        "seconds": results.summary["wall_time_s"],
    }
