"""One run of a ``privlab compare`` sweep: train, measure the attack, write ``result.json``.

``execute(spec, root)`` trains ``spec.config`` into ``root/<runs|tuning>/<run_id>/`` (a
plain run folder), attacks it from the observer's point of view (evaluation runs only)
and writes ``result.json`` there atomically (a temporary file, then ``os.replace``), so a
sweep resumes from whatever finished. A run that raises or diverges is a result too,
with its ``error``; a run stopped by Ctrl-C writes nothing and runs again next time.

The measured attack (``measure``) is ``privlab attack mia`` on the run folder (the
sweep's method, LOSS by default: Yeom, Giacomelli, Fredrikson & Jha, CSF 2018; its
report goes to ``attacks/mia-<method>/`` without the plots), with two adaptations,
recorded in ``attack_target``:

* chunked messages (Shatter's virtual nodes) are completed with the attacker's own
  model (``completion=own``, the Shatter artifact's completion) unless the sweep sets a
  completion;
* CESAR shows a curious receiver masked integers only, which the run-folder attack
  refuses. What CESAR leaves the curious node is its own model, the aggregate of what
  its neighbours contributed: ``own_model_mia`` attacks that final model against every
  node whose messages it received (LOSS, or ``calibrated`` against the initial model
  every node starts from: Watson, Guo, Cormode & Sablayrolles, ICLR 2022, Eq. 2).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

from privlab.errors import PrivlabError
from privlab.jsonio import dumps
from privlab.sweep import AttackSpec, RunSpec

RESULT = "result.json"
RECEIVED = "models the curious party received"
CHUNKS = "chunks the curious party received, completed with its own model"
OWN_MODEL = "the curious node's own final model (it sees only masked integers)"


def init_worker(threads: int) -> None:
    """Set up a sweep worker process: Ctrl-C reaches its runs only (a run stops after
    its round; the parent stops the sweep), idle OpenMP threads sleep, ``threads`` torch
    threads."""
    from privlab.threads import configure_threads, prepare_environment

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    prepare_environment()
    configure_threads(threads)


def execute(spec: RunSpec, root: str | Path) -> dict[str, Any]:
    """Run ``spec`` into ``root`` and return its result (``status`` "finished",
    "failed" or, not written, "interrupted")."""
    from privlab.config import parse_config
    from privlab.experiment import DivergedWarning, build, divergence_message, train

    folder = Path(root) / spec.folder / spec.run_id
    shutil.rmtree(folder, ignore_errors=True)  # what an interrupted attempt left
    record = base_record(spec)
    started = time.perf_counter()
    try:
        config = parse_config(spec.config)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DivergedWarning)
            results = train(build(config, run_dir=folder), progress=False)
        results.save(folder)
        summary = results.summary
        if summary["interrupted"]:
            return {**record, "status": "interrupted"}
        record.update(run_measures(summary))
        if "diverged" in summary:
            raise RuntimeError(divergence_message(summary["diverged"], config))
        if spec.attack is not None:
            attack_started = time.perf_counter()
            record.update(measure(folder, spec.attack, spec.seed))
            record["attack_time"] = time.perf_counter() - attack_started
    except KeyboardInterrupt:
        return {**record, "status": "interrupted"}
    except Exception as error:  # a failed run is a result; the sweep goes on
        record.update(status="failed", error=_one_line(error), traceback=traceback.format_exc())
    record["run_time"] = time.perf_counter() - started
    write_result(folder / RESULT, record)
    return record


def base_record(spec: RunSpec) -> dict[str, Any]:
    """What identifies a run in its result: ids, parameters, config and attack."""
    return {
        "run_id": spec.run_id,
        "kind": spec.kind,
        "mechanism": spec.mechanism,
        "parameters": spec.parameters,
        "seed": spec.seed,
        "lr": spec.config["training"]["lr"],
        "tuned": dict(spec.tuned),
        "config": spec.config,
        "attack": None if spec.attack is None else spec.attack.to_dict(),
        "status": "finished",
        "error": None,
    }


def run_measures(summary: dict[str, Any]) -> dict[str, Any]:
    """Accuracy, claimed epsilons, bytes and training time from a run's ``summary.json``.

    ``epsilon``: the largest per-node epsilon of the run's ledger (the guarantee every
    node gets) where a mechanism claims DP, else NaN; ``network_epsilon``: the largest
    epsilon of the first curious party over the other nodes (``network_privacy``,
    Muffliato and Zip-DL on static graphs), else NaN."""
    accuracy = (summary.get("final_accuracy") or {}).get("mean", math.nan)
    privacy = (summary.get("privacy") or {}).get("epsilon") or {}
    parties = (summary.get("network_privacy") or {}).get("parties") or {}
    network = next(iter(parties.values()), {}).get("epsilon", {})
    return {
        "test_accuracy": accuracy,
        "epsilon": float(privacy.get("max", math.nan)),
        "network_epsilon": float(network.get("max", math.nan)),
        "bytes_sent": summary["total_bytes"],
        "wall_time": summary["wall_time_s"],
        "completed_rounds": summary["completed_rounds"],
    }


def measure(run_dir: str | Path, attack: AttackSpec, seed: int) -> dict[str, Any]:
    """The sweep's membership attack on the finished run in ``run_dir``: AUC with its
    interval and TPR at 1% FPR, pooled over every attack instance. The attack's
    ``seed`` option (which members and non-members) defaults to the run's seed, and its
    ``exchange`` to 0, the first exchange of each round: the sender's own model (for
    Muffliato, its freshly noised model, before any averaging hides it)."""
    from privlab.attacks.metrics import ResolutionWarning
    from privlab.attacks.run_data import NO_MODEL
    from privlab.attacks.runner import RUN_ATTACKS, default_out
    from privlab.results import load_run

    options = {"seed": seed, **attack.options}
    results = load_run(run_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResolutionWarning)
        if results.config["protocol"]["name"] in NO_MODEL:
            summary, target = own_model_mia(run_dir, attack.method, options), OWN_MODEL
        else:
            target = RECEIVED
            if "completion" not in options and _sends_chunks(results):
                options["completion"], target = "own", CHUNKS
            options.setdefault("exchange", 0)
            runner = RUN_ATTACKS["mia"]()
            runner.check(attack.method, options)
            report = runner.run(results, attack.method, attack.rounds, options, False)
            report.figures.clear()  # drawing them costs more than the attack
            report.write(default_out(run_dir, "mia", attack.method))
            summary = report.summary
    low, high = summary["auc_ci"]
    return {
        "mia_auc": summary["auc"],
        "mia_auc_low": low,
        "mia_auc_high": high,
        "mia_tpr_at_1pct_fpr": summary["tpr_at_fpr"]["0.01"]["tpr"],
        "attack_method": attack.method,
        "attack_target": target,
    }


def _sends_chunks(results) -> bool:
    log = results.observations
    return log is not None and len(log) > 0 and log.observations[0].indices is not None


def own_model_mia(run_dir: str | Path, method: str, options: dict[str, Any]) -> dict[str, Any]:
    """Membership inference on the curious node's own final model (see the module
    docstring): one instance per victim (every node whose messages the party received),
    pooled; ``options`` may hold ``party``, ``samples_per_victim``, ``match_labels``,
    ``seed``. A coalition's model is the mean of its nodes' final models. Returns
    ``MembershipEvaluation.summary()`` of the pooled scores."""
    import torch

    from privlab.attacks.metrics import evaluate_membership, pooled
    from privlab.attacks.run_data import AttackContext, membership_samples
    from privlab.attacks.signals import model_logits, per_example_loss

    context = AttackContext.from_run(run_dir)
    party = context.party(options.get("party"))
    own = context.party_nodes(party)
    if not own:
        raise PrivlabError(f"party {party} holds no model of its own to attack")
    senders = {int(v) for o in context.observations.iter_party(party) for v in o.true_sender}
    models = torch.stack([context.final[list(own)].mean(dim=0), context.initial])
    evaluations = []
    for victim in sorted(senders - set(own)):
        sample = membership_samples(
            context,
            victim,
            num=options.get("samples_per_victim", 200),
            seed=options.get("seed", 0),
            match_labels=options.get("match_labels", True),
        )
        x, y = context.samples(sample.indices)
        loss = per_example_loss(model_logits(context.model, models, x), y).numpy()
        scores = -loss[0] if method == "loss" else loss[1] - loss[0]
        evaluations.append(evaluate_membership(scores, sample.is_member))
    return pooled(evaluations).summary()


def write_result(path: Path, record: dict[str, Any]) -> None:
    """Write ``record`` as strict JSON to ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(dumps(record, indent=2) + "\n")
    os.replace(temporary, path)


def read_result(path: Path) -> dict[str, Any] | None:
    """The result at ``path``, or None when there is none (or it cannot be read)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, (ValueError, RuntimeError)):  # privlab's own messages
        return text
    return f"{type(error).__name__}: {text}"
