"""Each node's batch of a local step, drawn from its own random stream.

Two samplers, both without replacement and both keyed per node (``NodeStreams``), so a
block of nodes draws the same batches alone as with the others:

* ``shuffle_batches``: a uniform subset of fixed size ``min(batch_size, node size)``;
* ``poisson_batches``: every sample of node i is in the batch independently with
  probability ``q_i`` (Poisson sampling, the assumption of DP-SGD's accounting; Abadi et
  al., CCS 2016). Batch sizes vary; they are carried as 0/1 weights, never refilled.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from privlab.rng import NodeStreams


@dataclass(frozen=True)
class Batch:
    """Every node's batch: global sample indices ``[n, B]`` and per-sample loss weights.

    Node i's loss is ``sum_b weights[i, b] * loss(indices[i, b])``; padding positions have
    weight 0 (and a valid index, so the forward pass stays finite). ``weights`` is None
    when every position is a real sample of weight ``1 / B`` (the plain mean).
    """

    indices: torch.Tensor
    weights: torch.Tensor | None = None


def shuffle_batches(
    padded_indices: torch.Tensor,
    sizes: torch.Tensor,
    batch_size: int,
    streams: NodeStreams,
    round: int,
    step: int,
    nodes: torch.Tensor,
) -> Batch:
    """A uniform batch from each node's own data, drawn without replacement.

    ``padded_indices[n, m]`` holds each node's global sample indices (right-padded),
    ``sizes[n]`` how many are real; ``nodes[k]`` says which rows to draw for. Node i draws
    ``min(batch_size, sizes[i])`` distinct samples: a batch larger than a node's data is
    the node's whole data, each sample once (never refilled by resampling). The batch
    width is ``B = min(batch_size, m)``; positions past a node's draw are padding of
    weight 0, the others weigh ``1 / min(batch_size, sizes[i])``, so the loss is the mean
    over the node's real samples. Without padding ``weights`` is None.
    """
    padded, own = padded_indices[nodes], sizes[nodes]
    k, m = padded.shape
    positions = torch.arange(m, device=padded.device)
    width = min(batch_size, m)
    keys = streams.uniform_bits("batch", round, step, nodes.tolist(), m)  # 2^24 x uniform
    if int(own.min()) < m:  # padding sorts last
        keys[positions.unsqueeze(0) >= own.unsqueeze(1)] = 2**25
    # the width smallest keys in increasing order, ties to the lower position (what a
    # stable argsort gives), by a partial sort of exact integer keys
    ranked = keys.mul_(m).add_(positions)
    positions = torch.topk(ranked, width, dim=1, largest=False, sorted=True).indices
    if int(own.min()) >= batch_size:
        return Batch(padded.gather(1, positions))
    drawn = own.clamp(max=batch_size).unsqueeze(1)
    real = torch.arange(width, device=padded.device).unsqueeze(0) < drawn
    positions = torch.where(real, positions, 0)  # padding reads the node's first sample
    return Batch(padded.gather(1, positions), real / drawn.to(torch.float32))


def poisson_batches(
    padded_indices: torch.Tensor,
    sizes: torch.Tensor,
    rates: torch.Tensor,
    streams: NodeStreams,
    round: int,
    step: int,
    nodes: torch.Tensor,
) -> Batch:
    """Poisson-sampled batches: node i keeps each of its samples with probability ``rates[i]``.

    The kept samples come first in each row; the width is the largest batch drawn (at
    least 1), and ``weights`` are 1 on kept samples and 0 on padding (an empty batch is a
    row of padding). The loss is thus the *sum* over the batch, as DP-SGD needs.
    """
    padded, own, rate = padded_indices[nodes], sizes[nodes], rates[nodes]
    m = padded.shape[1]
    draws = streams.uniform("batch", round, step, nodes.tolist(), m)
    columns = torch.arange(m, device=padded.device)
    kept = (draws < rate.unsqueeze(1)) & (columns.unsqueeze(0) < own.unsqueeze(1))
    counts = kept.sum(dim=1)
    width = max(1, int(counts.max()))
    positions = (~kept).to(torch.int8).argsort(dim=1, stable=True)[:, :width]
    real = columns[:width].unsqueeze(0) < counts.unsqueeze(1)
    positions = torch.where(real, positions, 0)
    return Batch(padded.gather(1, positions), real.to(torch.float32))
