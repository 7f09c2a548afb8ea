"""Attack table: membership, linkability and source localization against each protocol.

One leaky setting for every membership row: digits on 8 nodes (half of the data held out
for testing, 40% of the rest as the non-member pool, about 23 training samples per node),
an MLP with one hidden layer of 32, SGD (lr 0.1, momentum 0.9, batches of 8, 30 local
steps per round), 12 rounds, the default topology (random 4-regular), node 0 curious.
12 rounds rather than 4 so that the curious node receives enough models (about 1000
non-member scores) to resolve the TPR at 1% FPR; LOSS AUC under D-PSGD is then about 0.69
(0.72 at 4 rounds).

* Membership (``privlab attack mia``): the curious neighbour attacks every model it
  receives (Muffliato: the first exchange of each round, the victim's freshly noised
  model, and the last, after K - 1 averagings; Shatter: chunks completed
  with its own model, ``completion=own``), methods ``loss`` (Yeom et al., CSF 2018) and
  ``calibrated`` (Watson et al., ICLR 2022, with the attacker's own model as reference),
  AUC with its 95% interval and TPR at 1% FPR. DP-SGD rows report the per-node epsilon
  (mean over nodes, RDP accountant, delta 1e-5). CESAR is refused by the attack: the
  curious node sees only masked integers.
* Linkability under Shatter (Biswas et al., PoPETs 2025, section 6): which real node sent
  each received chunk, top-1 and top-5 accuracy against the chance level, completion
  ``mask-aware`` and ``own``, on the same Shatter runs as the membership rows.
* Source localization under muted gossip (Bellet, Guerraoui & Hendrikx, DISC 2020) with
  privlab's continuous-time simulator: first-spy top-1 accuracy on the complete graph
  (n = 100, 10% curious nodes, 500 runs per s), and on a ring of 20 with curious nodes
  0 and 10 both first spy and maximum likelihood by simulation (200 simulated runs per
  candidate). ``s`` is privlab's ``mute``: the probability that a node stays active
  after a push (s = 0: each informed node pushes once).
* Inversion: ``inversion_rows``, the first update of a batch-1 victim under d-psgd and shatter.

    python reproductions/attack_table.py [--rounds 12] [--quick] [--json FILE]

``--quick``: methods ``loss`` only, 200 source runs.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import networkx as nx
import numpy as np

from privlab.attacks import source
from privlab.attacks.metrics import ResolutionWarning
from privlab.attacks.runner import run_attack
from privlab.config import parse_config
from privlab.errors import PrivlabError
from privlab.experiment import build, train
from privlab.intervals import clopper_pearson
from privlab.mechanisms.muted_gossip import simulate

ROUNDS = 12
MUTES = (0.0, 0.25, 0.5, 0.75, 1.0)
SHATTER_K = (1, 4, 16)
LINK_COMPLETIONS = ("mask-aware", "own")


def dp_sgd(noise_multiplier: float) -> dict:
    return {"name": "dp-sgd", "noise_multiplier": noise_multiplier, "max_grad_norm": 1.0}


D_PSGD = {"name": "d-psgd"}
MUFFLIATO = {"name": "muffliato", "noise_multiplier": 0.01, "gossip_steps": 4, "chebyshev": True}
# label -> (protocol, gradient mechanism or None, mia options)
MIA_SETTINGS: dict[str, tuple[dict, dict | None, dict]] = {
    "d-psgd": (D_PSGD, None, {}),
    "d-psgd + dp-sgd sigma=0.5": (D_PSGD, dp_sgd(0.5), {}),
    "d-psgd + dp-sgd sigma=1": (D_PSGD, dp_sgd(1.0), {}),
    "d-psgd + dp-sgd sigma=2": (D_PSGD, dp_sgd(2.0), {}),
    "muffliato (noise 0.01, K=4, chebyshev), first exchange": (
        MUFFLIATO,
        None,
        {"exchange": 0},
    ),
    "muffliato (noise 0.01, K=4, chebyshev), last exchange": (MUFFLIATO, None, {}),
    "zipdl (noise 1.0)": ({"name": "zipdl", "noise_multiplier": 1.0}, None, {}),
    **{
        f"shatter k={k}": (
            {"name": "shatter", "virtual_nodes": k, "degree": 3},
            None,
            {"completion": "own"},
        )
        for k in SHATTER_K
    },
    "cesar (random 0.3, threshold 1)": (
        {"name": "cesar", "fraction": 0.3, "sparsifier": "random", "threshold": 1},
        None,
        {},
    ),
}


def experiment(protocol: dict, gradient: dict | None, rounds: int) -> dict:
    config = {
        "nodes": 8,
        "rounds": rounds,
        "eval_every": rounds,
        "data": {"dataset": "digits", "test_fraction": 0.5, "nonmember_fraction": 0.4},
        "model": {"name": "mlp", "hidden": [32]},
        "protocol": protocol,
        "training": {"lr": 0.1, "momentum": 0.9, "batch_size": 8, "local_steps": 30},
        "observer": {"curious_nodes": [0]},
    }
    if gradient is not None:
        config["gradient"] = gradient
    return config


def train_into(config: dict, folder: Path) -> dict:
    """Train ``config``, write its run folder and return its summary."""
    results = train(build(parse_config(config), run_dir=folder), progress=False)
    results.save(folder)
    return results.summary


# -- membership ------------------------------------------------------------------------


def mia_summary(run_dir: Path, method: str, options: dict) -> dict:
    report, _ = run_attack(
        run_dir, "mia", method, options=options, out=run_dir / "attacks" / f"mia-{method}"
    )
    s = report.summary
    tpr = s["tpr_at_fpr"]["0.01"]
    return {
        "auc": s["auc"],
        "auc_ci": list(s["auc_ci"]),
        "tpr_at_1pct_fpr": tpr["tpr"],
        "tpr_ci": list(tpr["ci"]),
        "tpr_resolved": tpr["resolved"],
    }


def mia_row(label: str, run_dir: Path, methods: tuple[str, ...], rounds: int) -> dict:
    protocol, gradient, options = MIA_SETTINGS[label]
    summary = train_into(experiment(protocol, gradient, rounds), run_dir)
    row = {
        "protocol": label,
        "config": {"protocol": protocol, "gradient": gradient},
        "accuracy": summary["final_accuracy"]["mean"],
        "epsilon": (summary.get("privacy") or {}).get("epsilon", {}).get("mean"),
        "mia_options": options,
    }
    for method in methods:
        try:
            row[method] = mia_summary(run_dir, method, options)
        except PrivlabError as error:
            row[method] = {"refused": str(error)}
    return row


# -- linkability -----------------------------------------------------------------------


def linkability_rows(runs: dict[str, Path]) -> list[dict]:
    rows = []
    for k in SHATTER_K:
        for completion in LINK_COMPLETIONS:
            run_dir = runs[f"shatter k={k}"]
            report, _ = run_attack(
                run_dir,
                "linkability",
                options={"completion": completion},
                out=run_dir / "attacks" / f"linkability-{completion}",
            )
            s = report.summary
            row = {"k": k, "completion": completion, "messages": s["messages"]}
            for top in ("1", "5"):
                hit = s["top"][top]
                row[f"top{top}"] = hit["accuracy"]
                row[f"top{top}_ci"] = list(hit["ci"])
                row[f"top{top}_chance"] = hit["baseline"]
            rows.append(row)
    return rows


# -- source localization ---------------------------------------------------------------


def accuracy_with_ci(hits: np.ndarray) -> dict:
    successes = int(hits.sum())
    return {"top1": successes / len(hits), "top1_ci": list(clopper_pearson(successes, len(hits)))}


def complete_graph_row(mute: float, runs: int) -> dict:
    """First spy on the complete graph of 100 nodes, 10% curious (redrawn per run)."""
    result = simulate(100, mute, runs, curious=0.1, seed=0)
    observations = source.from_simulation(result)
    truth = np.array([o.source for o in observations])
    honest = 100 - int(result.num_curious[0])
    return {
        "graph": "complete n=100, f=0.1",
        "s": mute,
        "runs": runs,
        "chance": 1 / honest,
        "first_spy": accuracy_with_ci(source.first_spy(observations) == truth),
    }


def ring_row(mute: float, runs: int) -> dict:
    """First spy and maximum likelihood by simulation on a ring of 20, curious 0 and 10."""
    ring, curious = nx.cycle_graph(20), [0, 10]
    result = simulate(20, mute, runs, curious=curious, graph=ring, seed=1)
    observations = source.from_simulation(result, graph=ring)
    truth = np.array([o.source for o in observations])
    scores = source.maximum_likelihood_by_simulation(
        ring, curious, observations, mute=mute, runs=200, seed=2
    )
    ml = source.evaluate_source(scores, truth, ring)
    return {
        "graph": "ring n=20, curious {0, 10}",
        "s": mute,
        "runs": runs,
        "chance": 1 / (20 - len(curious)),
        "first_spy": accuracy_with_ci(source.first_spy(observations) == truth),
        "maximum_likelihood": {"top1": ml["top1_accuracy"], "top1_ci": list(ml["top1_ci"])},
    }


def source_rows(runs: int) -> list[dict]:
    return [complete_graph_row(s, runs) for s in MUTES] + [ring_row(s, runs) for s in MUTES]


# -- inversion ---------------------------------------------------------------------------

INVERSION_SETTINGS = {
    "d-psgd": D_PSGD,
    "shatter k=4": {"name": "shatter", "virtual_nodes": 4, "degree": 3},
    "shatter k=16": {"name": "shatter", "virtual_nodes": 16, "degree": 3},
}


def inversion_rows(folder: Path, cosine_messages: int = 4) -> list[dict]:
    """PSNR/SSIM of the victims' first single-sample update (batch 1, one local step,
    round 1) inverted by the curious node: ``analytic`` (first layer, mask-aware on
    chunks) on every message, ``cosine`` (Inverting Gradients, 300 iterations) on
    ``cosine_messages`` of them."""
    rows = []
    for i, (label, protocol) in enumerate(INVERSION_SETTINGS.items()):
        config = experiment(protocol, None, 1)
        config["training"] = {"lr": 0.1, "momentum": 0.9, "batch_size": 1, "local_steps": 1}
        run_dir = folder / f"inversion{i}"
        train_into(config, run_dir)
        for method, options in (
            ("analytic", {"max_messages": 64}),
            ("cosine", {"max_messages": cosine_messages, "iterations": 300}),
        ):
            report, _ = run_attack(run_dir, "inversion", method, options=options)
            s = report.summary
            rows.append(
                {
                    "protocol": label,
                    "method": method,
                    "messages": s["messages"],
                    "coordinates_seen": s["coordinates_seen_mean"],
                    "pixels_recovered": s.get("pixels_recovered_mean"),
                    "psnr_median": s["psnr_median"],
                    "ssim_mean": s["ssim_mean"],
                }
            )
    return rows


# -- the table -------------------------------------------------------------------------


def _fraction(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _ci(low_high: list[float]) -> str:
    return f"[{low_high[0]:.2f}, {low_high[1]:.2f}]"


def _mia_cells(result: dict) -> list[str]:
    """The AUC and TPR@1% cells of one method."""
    tpr = f"{result['tpr_at_1pct_fpr']:.3f}" + ("" if result["tpr_resolved"] else "*")
    return [f"{result['auc']:.3f} {_ci(result['auc_ci'])}", tpr]


def _mia_line(row: dict, methods: list[str]) -> str:
    eps = "" if row["epsilon"] is None else f"{row['epsilon']:.3g}"
    refused = [row[m]["refused"] for m in methods if "refused" in row[m]]
    if refused:  # the attack refuses the protocol whatever the method
        cells = [f"refused: {refused[0]}"] + [""] * (2 * len(methods) - 1)
    else:
        cells = [cell for m in methods for cell in _mia_cells(row[m])]
    return "| " + " | ".join([row["protocol"], f"{row['accuracy']:.3f}", eps, *cells]) + " |"


def table(out: dict) -> str:
    methods = out["setting"]["methods"]
    header = "| protocol | test acc. | epsilon |" + "".join(
        f" {m} AUC [95% CI] | {m} TPR@1% |" for m in methods
    )
    lines = [
        f"Membership inference by the curious neighbour ({out['setting']['rounds']} rounds)",
        "",
        header,
        "|" + "---|" * (3 + 2 * len(methods)),
        *(_mia_line(row, methods) for row in out["mia"]),
    ]
    lines += [
        "",
        "Linkability under Shatter (lowest loss, oracle)",
        "",
        "| k | completion | messages | top-1 [95% CI] | chance | top-5 [95% CI] | chance |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in out["linkability"]:
        lines.append(
            f"| {r['k']} | {r['completion']} | {r['messages']} | {r['top1']:.3f} "
            f"{_ci(r['top1_ci'])} | {r['top1_chance']:.3f} | {r['top5']:.3f} "
            f"{_ci(r['top5_ci'])} | {r['top5_chance']:.3f} |"
        )
    lines += [
        "",
        "Source localization under muted gossip (top-1 accuracy, s = stay-active probability)",
        "",
        "| graph | s | runs | chance | first spy [95% CI] | maximum likelihood [95% CI] |",
        "|---|---|---|---|---|---|",
    ]
    for r in out["source"]:
        spy = r["first_spy"]
        ml = r.get("maximum_likelihood")
        ml_cell = "" if ml is None else f"{ml['top1']:.3f} {_ci(ml['top1_ci'])}"
        lines.append(
            f"| {r['graph']} | {r['s']:g} | {r['runs']} | {r['chance']:.3f} | "
            f"{spy['top1']:.3f} {_ci(spy['top1_ci'])} | {ml_cell} |"
        )
    lines += [
        "",
        "Inversion of a victim's first update (batch 1, one local step) by the curious node",
        "",
        "| protocol | method | messages | coordinates seen | pixels recovered "
        "| PSNR dB (median) | SSIM |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in out["inversion"]:
        lines.append(
            f"| {r['protocol']} | {r['method']} | {r['messages']} | {r['coordinates_seen']:.2f} "
            f"| {_fraction(r['pixels_recovered'])} | {r['psnr_median']:.1f} "
            f"| {r['ssim_mean']:.3f} |"
        )
    lines += ["", "* TPR at 1% FPR unresolved (fewer than 1000 non-member scores)."]
    return "\n".join(lines)


def run_all(rounds: int, methods: tuple[str, ...], source_runs: int, folder: Path) -> dict:
    runs = {label: folder / f"run{i}" for i, label in enumerate(MIA_SETTINGS)}
    mia = [mia_row(label, runs[label], methods, rounds) for label in MIA_SETTINGS]
    return {
        "setting": {
            "rounds": rounds,
            "methods": list(methods),
            "config": experiment(D_PSGD, None, rounds),
        },
        "mia": mia,
        "linkability": linkability_rows(runs),
        "source": source_rows(source_runs),
        "inversion": inversion_rows(folder),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--quick", action="store_true", help="loss only, 200 source runs")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    methods = ("loss",) if args.quick else ("loss", "calibrated")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore", ResolutionWarning)  # marked with * in the table
        out = run_all(args.rounds, methods, 200 if args.quick else 500, Path(folder))
    out["runtime_s"] = round(time.perf_counter() - started, 1)
    print(table(out))
    print(f"\n{out['runtime_s']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
