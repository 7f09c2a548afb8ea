"""Training many reference (shadow) models at once: privlab's vectorized engine against
a plain per-model torch loop, in the same run.

``--models`` (default 64) MLPs 64-``--hidden``-10 on digits (``--hidden`` default 32),
each on its half of a 1,000-digit pool, ``--epochs`` epochs (default 20) of batch 32
(16 SGD steps an epoch, lr 0.1, momentum 0.9), from each model's own initialisation:

* vectorized: ``privlab.attacks.shadow.train_reference_models`` (all models in one
  batched gradient call per step, under the ``local`` protocol);
* one by one: each model alone, ``torch.optim.SGD`` on an ``nn.Module``, the same number
  of steps on uniform batches of its half: what one writes without privlab;
* loop engine: ``train_reference_models(engine="loop")``, privlab's per-node reference
  engine (the same models as the vectorized one, node by node).

The three are timed interleaved, rep by rep (``--reps``, default 3), medians reported;
``speedup`` = one-by-one median / vectorized median, ``speedup_vs_loop_engine`` likewise.
Prints a table and, with ``--json FILE``, writes the medians. ``--threads N|auto`` as
``privlab --threads``.

    python benchmarks/bench_shadow.py --json benchmarks/results/shadow.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from functools import partial
from pathlib import Path

from privlab.threads import configure_threads, prepare_environment, thread_report

POOL, BATCH, LR, MOMENTUM = 1000, 32, 0.1, 0.9


def engine_seconds(engine: str, model, data, pool, models: int, epochs: int) -> float:
    from privlab.attacks.shadow import train_reference_models

    start = time.perf_counter()
    train_reference_models(
        model, data, pool, num_models=models, epochs=epochs, batch_size=BATCH, lr=LR, engine=engine
    )
    return time.perf_counter() - start


def one_by_one_seconds(model, data, pool, models: int, epochs: int) -> float:
    """Each model trained alone by a plain torch loop, the same steps on the same halves."""
    import copy

    import torch
    import torch.nn.functional as F

    from privlab.attacks.shadow import balanced_halves, independent_initialisations
    from privlab.state import ParamSpec

    keep = balanced_halves(len(pool), models)
    initial = independent_initialisations(model, models)
    spec = ParamSpec.of(model)
    steps = math.ceil(math.ceil(len(pool) / 2) / BATCH)
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for m in range(models):
        net = copy.deepcopy(model)
        spec.load(net, initial[m])
        optimizer = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
        half = torch.from_numpy(pool[keep[m]])
        X, y = data.X[half], data.y[half]
        for _ in range(epochs * steps):
            batch = torch.randperm(len(half), generator=generator)[:BATCH]
            optimizer.zero_grad()
            F.cross_entropy(net(X[batch]), y[batch]).backward()
            optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", default=None)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    prepare_environment()
    configure_threads(args.threads)

    import numpy as np

    from privlab.data import load_dataset
    from privlab.models import build_model

    data = load_dataset("digits")
    pool = np.arange(POOL)
    model = build_model("mlp", data.input_shape, data.num_classes, hidden=[args.hidden])
    runs = {
        "vectorized": partial(engine_seconds, "vectorized"),
        "one by one": one_by_one_seconds,
        "loop engine": partial(engine_seconds, "loop"),
    }
    for warm_up in runs.values():  # imports and first calls
        warm_up(model, data, pool, 2, 1)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.reps):
        for name, run in runs.items():
            times[name].append(run(model, data, pool, args.models, args.epochs))
    median = {name: statistics.median(values) for name, values in times.items()}
    speedup = {name: seconds / median["vectorized"] for name, seconds in median.items()}
    print(
        f"threads: {thread_report()['threads']}; {args.models} MLPs 64-{args.hidden}-10 on "
        f"digits, {args.epochs} epochs; median of {args.reps}"
    )
    print(f"{'training':>12} {'seconds':>9} {'per model ms':>13} {'x vectorized':>13}")
    for name, seconds in median.items():
        per_model = 1e3 * seconds / args.models
        print(f"{name:>12} {seconds:>9.2f} {per_model:>13.1f} {speedup[name]:>13.1f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "benchmark": (
                f"{args.models} reference MLPs 64-{args.hidden}-10 on digits halves of a "
                f"{POOL}-digit pool, {args.epochs} epochs of batch {BATCH}: "
                "vectorized engine vs a plain per-model torch loop (speedup) and vs "
                "the LoopEngine"
            ),
            "machine": platform.processor() or platform.machine(),
            "threads": thread_report(),
            "models": args.models,
            "seconds": median,
            "speedup": speedup["one by one"],
            "speedup_vs_loop_engine": speedup["loop engine"],
        }
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
