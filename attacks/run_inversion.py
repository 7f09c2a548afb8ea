"""Gradient inversion of a victim's first update, read from a run's observation log.

Every node starts from the same initial model ``x0`` (rebuilt from the run's config), so
the model a victim sends after round 1's single local SGD step is
``x0 - lr (g + weight_decay x0)``: a curious receiver isolates the victim's gradient
``g`` exactly from it (the first momentum step equals the plain one). Later rounds start
from the victim's averaged model, which one receiver does not know
(``privlab.attacks.updates`` isolates those updates when the attackers see the victim's
whole inbox); this attack reads round 1 only, and needs ``training.local_steps: 1`` and no
gradient mechanism (whose noise and Poisson batches the ground truth would not follow).

Messages that carry part of the model (Shatter chunks, sparsified D-PSGD) are attacked
mask-aware: only their coordinates enter the attack. The ground-truth batch, for scoring
only, is the victim's round-1 batch drawn from the run's seed tree as the engine drew it
(``privlab.sampling.shuffle_batches``); ``gradient_residual`` in the instances checks it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import nn
from tqdm import tqdm

from privlab.attacks.images import image_grid, psnr, ssim
from privlab.attacks.inversion import (
    GradientInversion,
    invert_linear_observed,
    recover_labels_idlg,
)
from privlab.attacks.report import AttackReport
from privlab.attacks.run_data import NO_MODEL, AttackContext
from privlab.errors import PrivlabError, check, is_integer
from privlab.rng import NodeStreams
from privlab.sampling import shuffle_batches

ROUND = 1
FIRST_EXCHANGE = 0
"""The exchange whose messages carry the victims' own trained models (plus whatever noise
the protocol adds: Zip-DL, Muffliato's first gossip step); later exchanges of a round
(Muffliato) carry averages, from which one receiver cannot isolate a single update."""
METHODS = {"analytic": "peer", "cosine": "peer"}
"""``analytic``: exact inversion through the first fully connected layer with a bias
(Phong et al. 2018), mask-aware. ``cosine``: Inverting Gradients (Geiping et al. 2020),
cosine objective with a TV prior and signed Adam."""


def invert_run(
    context: AttackContext,
    method: str,
    *,
    party: str | None = None,
    victims: Iterable[int] | None = None,
    max_messages: int = 16,
    iterations: int = 300,
    restarts: int = 1,
    tv: float = 1e-3,
    seed: int = 0,
    progress: bool = False,
) -> tuple[pd.DataFrame, list[torch.Tensor], list[torch.Tensor]]:
    """Attack up to ``max_messages`` round-1 messages ``party`` received; returns the
    instances (victim, coordinates seen, labels used, PSNR, SSIM, ...), the ground-truth
    images and the reconstructions."""
    for field, value in (("max_messages", max_messages), ("iterations", iterations)):
        check(is_integer(value) and value >= 1, field, "an integer >= 1", value)
    check(is_integer(restarts) and restarts >= 1, "restarts", "an integer >= 1", restarts)
    lr, weight_decay = _check_run(context)
    if method == "analytic":
        batch = context.config.training.batch_size
        check(
            batch == 1,
            "training.batch_size",
            "1 for analytic inversion (it solves for one image; use cosine for batches)",
            batch,
        )
    party = context.party(party)
    chosen = None if victims is None else {int(v) for v in victims}
    own = set(context.party_nodes(party))
    x0 = context.initial.double()
    rows, truths, images = [], [], []
    bar = tqdm(total=max_messages, desc="messages", disable=not (progress and sys.stderr.isatty()))
    for observation in context.observations.iter_party(party):
        if observation.round != ROUND or observation.exchange != FIRST_EXCHANGE:
            continue
        for e in range(len(observation)):
            victim = int(observation.true_sender[e])
            if victim in own or (chosen is not None and victim not in chosen):
                continue
            if len(rows) >= max_messages:
                break
            coords = _coordinates(observation, e, context.spec.dim)
            gradient = -(observation.payload[e, : len(coords)].double() - x0[coords]) / lr
            gradient -= weight_decay * x0[coords]
            truth, truth_labels = _truth(context, victim)
            labels, known = _labels(context, gradient, coords, truth_labels)
            if method == "analytic":
                image, recovered = _analytic(context, gradient, coords)
            else:
                image = _optimise(context, gradient, coords, labels, iterations, restarts, tv, seed)
                recovered = float("nan")  # every pixel is estimated; none is solved for
            truths.append(truth)
            images.append(image)
            bar.update()
            rows.append(
                {
                    "victim": victim,
                    "sender": int(observation.sender[e]),
                    "coordinates_seen": len(coords) / context.spec.dim,
                    "labels": "known" if known else "idlg",
                    "label_correct": bool(
                        torch.equal(labels.sort().values, truth_labels.sort().values)
                    ),
                    "pixels_recovered": recovered,
                    "psnr": psnr(image.clamp(0, 1), truth),
                    "ssim": ssim(image.clamp(0, 1), truth),
                    "gradient_residual": _residual(context, gradient, coords, truth, truth_labels),
                }
            )
    bar.close()
    if not rows:
        raise PrivlabError(f"party {party} received no round-1 message to invert")
    return pd.DataFrame(rows), truths, images


def _check_run(context: AttackContext) -> tuple[float, float]:
    name = context.protocol_name
    if name in NO_MODEL:
        raise PrivlabError(NO_MODEL[name].replace("membership", "inversion"))
    check(context.protocol.trains, "protocol", "one that trains models", name)
    training = context.config.training
    check(
        training.local_steps == 1, "training.local_steps", "1 for inversion", training.local_steps
    )
    check(
        context.config.gradient is None,
        "gradient",
        "absent for inversion (its ground truth is the plain SGD batch)",
        context.config.gradient and context.config.gradient.name,
    )
    observed = context.observations.threat_model.rounds
    check(observed is None or ROUND in observed, "observer.rounds", "to include round 1", observed)
    return training.lr, training.weight_decay


def _coordinates(observation, e: int, dim: int) -> torch.Tensor:
    if observation.indices is None:
        return torch.arange(dim)
    row = observation.indices[e]
    return row[row >= 0]


def _truth(context: AttackContext, victim: int) -> tuple[torch.Tensor, torch.Tensor]:
    padded, sizes = context.data.padded_node_indices()
    batch = shuffle_batches(
        padded,
        sizes,
        context.config.training.batch_size,
        NodeStreams(context.config.seed),
        ROUND,
        0,
        torch.tensor([victim]),
    )
    return context.samples(batch.indices[0].numpy())


def _loss_gradient(context: AttackContext, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    model = context.model
    params = context.spec.unflatten(context.initial.clone().requires_grad_(True))
    out = torch.func.functional_call(model, params, (x,))
    loss = nn.functional.cross_entropy(out, y)
    grads = torch.autograd.grad(loss, list(params.values()))
    return torch.cat([g.reshape(-1) for g in grads]).double()


def _residual(context, gradient, coords, truth, labels) -> float:
    expected = _loss_gradient(context, truth, labels)[coords]
    return float((expected - gradient).abs().max() / expected.abs().max().clamp(min=1e-12))


def _layer(context: AttackContext, which: int) -> tuple[slice, slice, tuple[int, int]]:
    """The flat slices of the weight and bias of the first (0) or last (-1) linear layer."""
    linears = [m for m in context.model.modules() if isinstance(m, nn.Linear)]
    if not linears or linears[which].bias is None:
        raise PrivlabError("model must have a fully connected layer with a bias for this attack")
    layer = linears[which]
    starts, start = {}, 0
    for param in context.model.parameters():
        starts[id(param)] = start
        start += param.numel()
    w0, b0 = starts[id(layer.weight)], starts[id(layer.bias)]
    shape = tuple(layer.weight.shape)
    return slice(w0, w0 + layer.weight.numel()), slice(b0, b0 + layer.bias.numel()), shape


def _scatter(
    values: torch.Tensor, coords: torch.Tensor, dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    full = torch.zeros(dim, dtype=torch.float64)
    seen = torch.zeros(dim, dtype=torch.bool)
    full[coords], seen[coords] = values, True
    return full, seen


def _labels(context, gradient, coords, truth_labels) -> tuple[torch.Tensor, bool]:
    """iDLG labels when the batch is one sample and the last layer's weights are all seen;
    otherwise the true labels, assumed known (said in the instances)."""
    weight, _, shape = _layer(context, -1)
    full, seen = _scatter(gradient, coords, context.spec.dim)
    if len(truth_labels) == 1 and bool(seen[weight].all()):
        return recover_labels_idlg(full[weight].view(shape)), False
    return truth_labels, True


def _analytic(context, gradient, coords) -> tuple[torch.Tensor, float]:
    weight, bias, shape = _layer(context, 0)
    full, seen = _scatter(gradient, coords, context.spec.dim)
    x, recovered = invert_linear_observed(
        full[weight].view(shape), full[bias], seen[weight].view(shape), seen[bias]
    )
    image = torch.where(recovered, x, 0.5).float().view(1, *context.data.dataset.input_shape)
    return image, float(recovered.float().mean())


def _optimise(context, gradient, coords, labels, iterations, restarts, tv, seed) -> torch.Tensor:
    attack = GradientInversion(
        objective="cosine",
        tv=tv,
        iterations=iterations,
        restarts=restarts,
        seed=seed,
        coordinates=None if len(coords) == context.spec.dim else coords,
    )
    result = attack.run(
        context.model,
        context.initial,
        gradient.float(),
        labels,
        tuple(context.data.dataset.input_shape),
    )
    return result.images.detach()


def inversion_report(
    context: AttackContext,
    method: str,
    options: Mapping[str, Any],
    threat_model: dict[str, Any],
    *,
    progress: bool = False,
    grid_columns: int = 8,
) -> AttackReport:
    """``invert_run`` as an ``AttackReport`` with a grid of truths over reconstructions."""
    instances, truths, images = invert_run(context, method, **options, progress=progress)
    finite = instances["psnr"].replace(np.inf, np.nan)
    summary = {
        "messages": len(instances),
        "psnr_mean": float(finite.mean()) if finite.notna().any() else float("inf"),
        "psnr_median": float(instances["psnr"].median()),
        "ssim_mean": float(instances["ssim"].mean()),
        "coordinates_seen_mean": float(instances["coordinates_seen"].mean()),
        "label_accuracy": float(instances["label_correct"].mean()),
        "round": ROUND,
    }
    if method == "analytic":
        summary["pixels_recovered_mean"] = float(instances["pixels_recovered"].mean())
    figure = _grid(truths[:grid_columns], images[:grid_columns])
    return AttackReport(
        "inversion", method, METHODS[method], threat_model, summary, instances, {"images": figure}
    )


def _grid(truths: list[torch.Tensor], images: list[torch.Tensor]) -> Figure:
    return image_grid([torch.cat(truths), torch.cat(images).clamp(0, 1)], ["truth", "attack"])
