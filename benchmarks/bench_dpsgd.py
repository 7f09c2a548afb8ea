"""One DP-SGD round of D-PSGD: privlab's vectorized engine vs Opacus node by node, in one run.

What one round is, for every contender: each of the n nodes Poisson-samples a batch of its
own data (expected size 16: rate ``min(1, 16 / m_i)`` for a node with m_i records), takes
one DP-SGD step (per-sample clipping to norm 1.0, Gaussian noise with multiplier 1.0, sum
divided by the expected batch size, SGD with lr 0.05), then every node averages with its
neighbours on a random 4-regular graph (Metropolis-Hastings weights, ``x <- W x``).
Data: digits (test fraction 0.1), iid partition; the MLP path is 64-32-10 (D = 2410),
n in 16, 64, 256; the vmap path is privlab's default small CNN (``model: cnn``,
Conv3x3(16)-GroupNorm-ReLU-MaxPool, Conv3x3(32)-..., Linear; D = 6186 on 1x8x8 digits),
n in 16, 64. All contenders share one privlab build: the same graph, W, partition and
per-node data (``engine.node_indices`` / ``node_sizes``, ``engine.X`` / ``engine.y``).

Timed, each a full round (``engine.run_round`` for privlab):

* ``privlab_dp_s``: the vectorized engine with ``gradient: {name: dp-sgd,
  noise_multiplier: 1.0, max_grad_norm: 1.0, sampling: poisson}`` (ghost norms on the MLP
  path, ``vmap`` per-sample gradients on the CNN path);
* ``privlab_nodp_s``: the same engine and config without ``gradient`` (shuffled batches
  of 16, no clipping, no noise); ``dp_overhead`` = privlab_dp_s / privlab_nodp_s;
* ``privlab_loop_dp_s``: the per-node ``LoopEngine`` with dp-sgd (the reference: one
  autograd pass per sample), timed on only ``--loop-reps`` reps; MLP path only (null for
  the CNN), and skipped (null) above ``--loop-max-nodes`` nodes;
* ``opacus_hooks_s`` / ``opacus_ghost_s``: Opacus, one model per node made private with
  ``PrivacyEngine().make_private(..., grad_sample_mode="hooks" | "ghost")`` (ghost returns
  a ``DPLossFastGradientClipping`` criterion whose ``backward`` runs both passes); each
  node's optimizer has ``expected_batch_size = q_i * m_i`` as in privlab. Per node: a
  Poisson mask over its records (``torch.rand(m) < q``, cheaper than iterating Opacus's
  ``DPDataLoader``, which favours Opacus), forward, backward, ``DPOptimizer.step``; then
  the gossip: all models flattened to ``P[n, D]``, ``W @ P`` (the same CSR product
  privlab uses), copied back. The Opacus models are built before timing. A mode that
  fails to build or run is recorded as ``"unsupported (ErrorType)"``.

The Opacus contenders and the LoopEngine run on the CPU only (moving Opacus's per-node
models, optimizers and noise to a GPU is more than a ``.to(device)``: it would be another
benchmark).

``speedup_vs_opacus`` = min(opacus_hooks_s, opacus_ghost_s) / privlab_dp_s (Opacus at its
best). Targets: speedup_vs_opacus >= 15 at 64 nodes (MLP) and dp_overhead <= 2.5 on the
MLP path; the table says whether each is met.

Timing is interleaved: in every rep each contender runs one round (in an order rotated
from rep to rep), so machine drift hits all alike; the JSON holds medians (and the
25th / 75th percentiles). ``--threads N|auto`` sets torch's threads as ``privlab
--threads`` does (default: ``PRIVLAB_THREADS``, else auto), for Opacus too. The defaults
(9 reps after 1 warm-up, loop engine on 2 reps) take about 2.5 minutes on a shared 2-core
machine.

Devices (``--device LIST``, comma-separated, default ``auto``): the CPU is always timed
(all the contenders above). ``auto`` adds ``cuda`` when torch sees a GPU (otherwise it
prints "no GPU visible: CPU only"); ``cuda`` or ``cuda:K`` adds that GPU, and exits with
status 2 and one line when it is not there; ``cpu`` adds nothing. On each added device d
the two vectorized contenders, ``privlab_dp`` and ``privlab_nodp``, run from the same
configs with ``device: <d>`` as two more contenders in the same interleaved rotation. The
table gains ``<d> DP``, ``<d> non-DP`` (medians, ms) and ``<d> vs cpu`` (CPU privlab_dp /
device privlab_dp) before the targets, which stay the CPU's; ``results[n]["devices"][d]``
(``cnn[n]["devices"][d]`` on the CNN path) holds ``privlab_dp_s``, ``privlab_nodp_s``
(with ``_p25_p75`` and ``_reps``), ``dp_overhead``, ``dp_speedup_vs_cpu`` and
``nodp_speedup_vs_cpu``. A GPU is synchronized (``torch.cuda.synchronize``) before each
reading of the clock, warm-up rounds included, so its times cover the queued kernels and
none of its work overlaps the next contender's. When a GPU is timed the JSON's
``machine`` gains ``devices`` (those timed) and ``gpus`` (``{d: name}``, from
``torch.cuda.get_device_name``); a CPU-only run writes the same keys as before.

    python benchmarks/bench_dpsgd.py --json benchmarks/results/dpsgd.json
    python benchmarks/bench_dpsgd.py --nodes 16,64 --reps 9 --no-cnn
    python benchmarks/bench_dpsgd.py --device cpu  # CPU only even where a GPU is seen
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from gpu_timing import clock, extra_devices, gpu_names

from privlab.errors import PrivlabError
from privlab.threads import configure_threads, prepare_environment, thread_report

if TYPE_CHECKING:
    import torch

# privlab.config, privlab.devices and privlab.experiment import torch: they are imported
# inside the functions, after prepare_environment() has set OMP_WAIT_POLICY.

NOISE_MULTIPLIER = 1.0
MAX_GRAD_NORM = 1.0
BATCH_SIZE = 16
LR = 0.05
SPEEDUP_TARGET = 15.0  # at SPEEDUP_TARGET_NODES nodes, MLP path
SPEEDUP_TARGET_NODES = 64
OVERHEAD_TARGET = 2.5  # MLP path
MODELS = {
    "mlp": {"name": "mlp", "hidden": [32]},  # 64-32-10: D = 2410
    "cnn": {"name": "cnn"},  # channels (16, 32), GroupNorm(4): D = 6186 on 1x8x8
}
CONTENDERS = ("privlab_dp", "privlab_nodp", "privlab_loop_dp", "opacus_hooks", "opacus_ghost")
ON_DEVICES = ("privlab_dp", "privlab_nodp")
"""The contenders also timed on each device that ``--device`` adds."""


def config(nodes: int, model: str, engine: str, dp: bool, device: str = "cpu") -> dict:
    out = {
        "name": f"bench-dpsgd-{model}-{engine}-{nodes}",
        "nodes": nodes,
        "engine": engine,
        "device": device,
        "data": {"dataset": "digits", "test_fraction": 0.1, "nonmember_fraction": 0.0},
        "model": MODELS[model],
        "topology": {"name": "regular", "degree": 4},
        "protocol": {"name": "d-psgd"},
        "training": {"lr": LR, "batch_size": BATCH_SIZE, "local_steps": 1},
    }
    if dp:
        out["gradient"] = {
            "name": "dp-sgd",
            "noise_multiplier": NOISE_MULTIPLIER,
            "max_grad_norm": MAX_GRAD_NORM,
            "sampling": "poisson",
        }
    return out


class OpacusRound:
    """One D-PSGD round with one Opacus-private model per node (see the module docstring)."""

    def __init__(self, experiment, mode: str):
        import torch
        from opacus import PrivacyEngine
        from torch import nn
        from torch.utils.data import DataLoader, TensorDataset

        engine = experiment.engine
        self.torch = torch
        self.mixing = engine.topology.plan(1).mixing_matrix("csr")
        self.nodes = []
        for node in range(engine.num_nodes):
            size = int(engine.node_sizes[node])
            indices = engine.node_indices[node, :size]
            x, y = engine.X[indices], engine.y[indices]
            model = copy.deepcopy(experiment.model)
            optimizer = torch.optim.SGD(model.parameters(), lr=LR)
            loader = DataLoader(TensorDataset(x, y), batch_size=BATCH_SIZE)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # secure_mode and accountant notices
                made = PrivacyEngine().make_private(
                    module=model,
                    optimizer=optimizer,
                    criterion=nn.CrossEntropyLoss(),
                    data_loader=loader,  # only read for its size; never iterated
                    noise_multiplier=NOISE_MULTIPLIER,
                    max_grad_norm=MAX_GRAD_NORM,
                    poisson_sampling=True,
                    grad_sample_mode=mode,
                )
            if mode == "ghost":
                module, dp_optimizer, criterion, _ = made
            else:
                (module, dp_optimizer, _), criterion = made, nn.CrossEntropyLoss()
            rate = min(1.0, BATCH_SIZE / size)
            dp_optimizer.expected_batch_size = rate * size  # privlab's q * m, not int(m / len)
            self.nodes.append((module, dp_optimizer, criterion, x, y, rate))
        self.params = [list(module.parameters()) for module, *_ in self.nodes]

    def __call__(self, round: int) -> None:
        from privlab.plan import sparse_matmul

        torch = self.torch
        for module, optimizer, criterion, x, y, rate in self.nodes:
            keep = torch.rand(len(x)) < rate
            if not keep.any():  # P = (1 - q)^m, below 1e-7 here: keep the run alive
                keep[0] = True
            optimizer.zero_grad()
            loss = criterion(module(x[keep]), y[keep])
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            stacked = torch.stack([torch.cat([p.reshape(-1) for p in ps]) for ps in self.params])
            mixed = sparse_matmul(self.mixing, stacked)
            for row, ps in zip(mixed, self.params):
                for p, value in zip(ps, row.split([p.numel() for p in ps])):
                    p.copy_(value.view_as(p))


def contenders(
    nodes: int, model: str, with_loop: bool, devices: list[str]
) -> tuple[dict[str, Callable[[int], object]], dict[str, str], dict[str, torch.device]]:
    """The round functions to time, ``"unsupported (ErrorType)"`` for those that failed,
    and the device of each privlab engine (the ``ON_DEVICES`` on ``devices`` are named
    ``"<contender> <device>"``)."""
    from privlab.config import parse_config
    from privlab.experiment import build

    dp = build(parse_config(config(nodes, model, "vectorized", True)))
    engines = {
        "privlab_dp": dp.engine,
        "privlab_nodp": build(parse_config(config(nodes, model, "vectorized", False))).engine,
    }
    for device in devices:
        for name in ON_DEVICES:
            made = config(nodes, model, "vectorized", name == "privlab_dp", device)
            engines[f"{name} {device}"] = build(parse_config(made)).engine
    if with_loop:
        engines["privlab_loop_dp"] = build(parse_config(config(nodes, model, "loop", True))).engine
    rounds: dict[str, Callable[[int], object]] = {
        name: engine.run_round for name, engine in engines.items()
    }
    places = {name: engine.device for name, engine in engines.items()}
    failed = {}
    for mode in ("hooks", "ghost"):
        try:
            rounds[f"opacus_{mode}"] = OpacusRound(dp, mode)
        except Exception as error:  # noqa: BLE001 - any failure means "unsupported"
            failed[f"opacus_{mode}"] = f"unsupported ({type(error).__name__}: {error})"[:200]
    return rounds, failed, places


def measure(
    nodes: int,
    model: str,
    reps: int,
    warmup: int,
    loop_reps: int,
    loop_max: int,
    devices: list[str],
) -> dict:
    with_loop = model == "mlp" and nodes <= loop_max and loop_reps > 0
    rounds, failed, places = contenders(nodes, model, with_loop, devices)
    times: dict[str, list[float]] = {name: [] for name in rounds}
    for rep in range(warmup + reps):
        names = list(rounds)
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            if name == "privlab_loop_dp" and rep >= warmup + loop_reps:
                continue
            start = clock(places.get(name))
            try:
                rounds[name](rep + 1)
            except Exception as error:  # noqa: BLE001 - an Opacus mode that cannot run
                if not name.startswith("opacus"):
                    raise
                failed[name] = f"unsupported ({type(error).__name__}: {error})"[:200]
                del rounds[name]
                continue
            elapsed = clock(places.get(name)) - start  # a warm-up's GPU work ends here too
            if rep >= warmup:
                times[name].append(elapsed)
    out = _summary(times, rounds, failed)
    for device in devices:
        out.setdefault("devices", {})[device] = _device_summary(out, times, device)
    return out


def _summary(times: dict[str, list[float]], rounds: dict, failed: dict[str, str]) -> dict:
    """The CPU contenders' medians, quartiles and ratios (module docstring)."""
    out: dict = {}
    for name in CONTENDERS:
        key = f"{name}_s"
        if name in failed:
            out[key] = failed[name]
        elif name in rounds and times[name]:
            out[key] = statistics.median(times[name])
            out[f"{name}_p25_p75"] = _quartiles(times[name])
            out[f"{name}_reps"] = len(times[name])
        else:
            out[key] = None
    opacus = [out[k] for k in ("opacus_hooks_s", "opacus_ghost_s") if isinstance(out[k], float)]
    out["speedup_vs_opacus"] = min(opacus) / out["privlab_dp_s"] if opacus else None
    out["dp_overhead"] = out["privlab_dp_s"] / out["privlab_nodp_s"]
    return out


def _device_summary(cpu: dict, times: dict[str, list[float]], device: str) -> dict:
    """``ON_DEVICES``'s figures on ``device``, and their speedups over the CPU's."""
    out: dict = {}
    for name in ON_DEVICES:
        values = times[f"{name} {device}"]
        out[f"{name}_s"] = statistics.median(values)
        out[f"{name}_p25_p75"] = _quartiles(values)
        out[f"{name}_reps"] = len(values)
    out["dp_overhead"] = out["privlab_dp_s"] / out["privlab_nodp_s"]
    out["dp_speedup_vs_cpu"] = cpu["privlab_dp_s"] / out["privlab_dp_s"]
    out["nodp_speedup_vs_cpu"] = cpu["privlab_nodp_s"] / out["privlab_nodp_s"]
    return out


def _quartiles(values: list[float]) -> list[float]:
    if len(values) < 2:
        return [values[0], values[0]]
    q = statistics.quantiles(values, n=4)
    return [q[0], q[2]]


def _ms(value) -> str:
    if isinstance(value, float):
        return f"{value * 1e3:.1f}"
    return "n/a" if value is None else value.split(" ")[0]  # "unsupported"


def _targets(model: str, n: int, r: dict) -> dict:
    """Which targets apply to this row and whether they are met."""
    out = {}
    if model == "mlp":
        out["dp_overhead"] = r["dp_overhead"] <= OVERHEAD_TARGET
        if n == SPEEDUP_TARGET_NODES:
            out["speedup_vs_opacus"] = (
                r["speedup_vs_opacus"] is not None and r["speedup_vs_opacus"] >= SPEEDUP_TARGET
            )
    return out


def _widths(device: str) -> tuple[int, int, int]:
    """Widths of a device's DP, non-DP and vs-cpu columns: their headers' lengths."""
    return len(device) + 3, len(device) + 7, len(device) + 7


def print_header(model: str, devices: list[str]) -> None:
    print(f"\n{model.upper()} path, medians in ms per round")
    extra = "".join(
        f" {d + ' DP':>{a}} {d + ' non-DP':>{b}} {d + ' vs cpu':>{c}}"
        for d in devices
        for a, b, c in [_widths(d)]
    )
    print(
        f"{'n':>5} {'privlab DP':>11} {'non-DP':>8} {'overhead':>9} {'loop DP':>9} "
        f"{'Opacus hooks':>13} {'Opacus ghost':>13} {'speedup':>8}{extra}  targets"
    )
    for d in devices:
        print(f"  {d} vs cpu = CPU privlab DP / {d} privlab DP")


def _device_columns(r: dict) -> str:
    """The columns of each added device (empty on a CPU-only run)."""
    return "".join(
        f" {_ms(g['privlab_dp_s']):>{a}} {_ms(g['privlab_nodp_s']):>{b}} "
        f"{g['dp_speedup_vs_cpu']:>{c - 1}.1f}x"
        for d, g in r.get("devices", {}).items()
        for a, b, c in [_widths(d)]
    )


def print_row(n: int, r: dict, targets: dict) -> None:
    loop = _ms(r["privlab_loop_dp_s"])
    if isinstance(r["privlab_loop_dp_s"], float):
        loop += f"({r['privlab_loop_dp_reps']})"
    speedup = "n/a" if r["speedup_vs_opacus"] is None else f"{r['speedup_vs_opacus']:.1f}x"
    marks = []
    if "dp_overhead" in targets:
        marks.append(
            f"overhead<={OVERHEAD_TARGET}: {'met' if targets['dp_overhead'] else 'MISSED'}"
        )
    if "speedup_vs_opacus" in targets:
        met = "met" if targets["speedup_vs_opacus"] else "MISSED"
        marks.append(f"speedup>={SPEEDUP_TARGET:g}: {met}")
    print(
        f"{n:>5} {_ms(r['privlab_dp_s']):>11} {_ms(r['privlab_nodp_s']):>8} "
        f"{r['dp_overhead']:>8.2f}x {loop:>9} {_ms(r['opacus_hooks_s']):>13} "
        f"{_ms(r['opacus_ghost_s']):>13} {speedup:>8}{_device_columns(r)}  "
        f"{'; '.join(marks) or '-'}",
        flush=True,
    )


def _sizes(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=_sizes, default=[16, 64, 256], help="MLP sizes: 16,64,256")
    parser.add_argument("--cnn-nodes", type=_sizes, default=[16, 64], help="CNN sizes: 16,64")
    parser.add_argument("--no-cnn", action="store_true", help="skip the CNN (vmap) path")
    parser.add_argument("--reps", type=int, default=9, help="timed reps per contender")
    parser.add_argument("--warmup", type=int, default=1, help="untimed reps first")
    parser.add_argument("--loop-reps", type=int, default=2, help="timed reps of the loop engine")
    parser.add_argument(
        "--loop-max-nodes", type=int, default=256, help="skip the loop engine above this"
    )
    parser.add_argument("--threads", help="torch threads: N >= 1 or auto (default: as privlab)")
    parser.add_argument(
        "--device",
        default="auto",
        help="devices, comma-separated: auto (cpu, plus cuda when torch sees a GPU), cpu, "
        "cuda, cuda:K; the CPU is always timed, the vectorized engine on the others "
        "(default: auto)",
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    prepare_environment()
    specs = [part.strip() for part in args.device.split(",") if part.strip()]
    try:
        devices = extra_devices(specs)
    except PrivlabError as error:
        parser.exit(2, f"{parser.prog}: --device: {error}\n")
    configure_threads(args.threads)
    threads = thread_report()
    # Opacus's hooks on a model whose input needs no gradient: harmless, once per call site
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    print(f"torch threads: {threads['threads']} ({threads['chosen_by']})")
    if "auto" in specs and not devices:
        print("no GPU visible: CPU only")
    gpus = gpu_names(devices)
    for device, name in gpus.items():
        print(f"{device}: {name} (privlab DP and non-DP; Opacus and the loop engine on the CPU)")
    print(
        f"{args.reps} timed reps after {args.warmup} warm-up, interleaved; loop engine on "
        f"{args.loop_reps} reps (count in parentheses), MLP only, n <= {args.loop_max_nodes}"
    )
    started = time.perf_counter()
    sections = [("mlp", args.nodes)] + ([] if args.no_cnn else [("cnn", args.cnn_nodes)])
    results: dict[str, dict] = {}
    met: dict[str, bool] = {}
    for model, sizes in sections:
        print_header(model, devices)
        results[model] = {}
        for n in sizes:
            r = measure(
                n, model, args.reps, args.warmup, args.loop_reps, args.loop_max_nodes, devices
            )
            targets = _targets(model, n, r)
            r["targets_met"] = targets
            met |= {f"{model} n={n} {name}": ok for name, ok in targets.items()}
            results[model][str(n)] = r
            print_row(n, r, targets)
    elapsed = time.perf_counter() - started
    print(f"\ntargets: {sum(met.values())} of {len(met)} met; {elapsed:.0f} s in all")
    for name, ok in met.items():
        if not ok:
            print(f"  MISSED: {name}")
    if args.json:
        write_json(args, results, met, elapsed, threads, devices, gpus)


def write_json(
    args: argparse.Namespace,
    results: dict,
    met: dict[str, bool],
    elapsed: float,
    threads: dict,
    devices: list[str],
    gpus: dict[str, str],
) -> None:
    import opacus

    from privlab.results import versions

    args.json.parent.mkdir(parents=True, exist_ok=True)
    machine = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
    }
    if devices:
        machine |= {"devices": ["cpu", *devices], "gpus": gpus}
    payload = {
        "benchmark": (
            "one DP-SGD D-PSGD round (digits, expected batch 16, 4-regular, local_steps 1, "
            "noise 1.0, clip 1.0, poisson): privlab vectorized vs loop vs Opacus per node"
        ),
        "machine": machine,
        "threads": threads,
        "versions": versions() | {"opacus": opacus.__version__},
        "settings": {
            "reps": args.reps,
            "warmup": args.warmup,
            "loop_reps": args.loop_reps,
            "loop_max_nodes": args.loop_max_nodes,
        },
        "targets": {
            "speedup_vs_opacus": f">= {SPEEDUP_TARGET:g} at {SPEEDUP_TARGET_NODES} nodes (MLP)",
            "dp_overhead": f"<= {OVERHEAD_TARGET:g} (MLP)",
            "met": met,
        },
        "elapsed_s": elapsed,
        "results": results.get("mlp", {}),
        "cnn": results.get("cnn", {}),
    }
    args.json.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
