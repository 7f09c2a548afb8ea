"""Isolating a victim's local update from the models a curious node observes.

A gradient inversion attack in decentralized learning needs the victim's own update,
but a neighbour only sees models that mix it with others' (Pasquini, Raynal and Troncoso,
IEEE S&P 2023). Two ways to get it back:

* :func:`isolate_update`, exact from two consecutive messages of the victim when the
  attackers know everything the victim averaged in between;
* :func:`least_squares_updates`, when every observation is a known linear combination
  of the nodes' unknowns (El Mrini, Cyffers and Bellet, ICML 2024): least squares, with a
  report of which nodes the observations determine.
"""

from __future__ import annotations

import torch

from privlab.errors import check, is_real

RECONSTRUCTIBLE_TOLERANCE = 1e-6
"""A node counts as reconstructible when ``1 - P_ii`` is below this (``P`` the row-space
projector of the knowledge matrix)."""


def isolate_update(
    sent_before: torch.Tensor,
    sent_after: torch.Tensor,
    inbox: torch.Tensor,
    inbox_weights: torch.Tensor,
    self_weight: float,
) -> torch.Tensor:
    """The victim's local update ``[D]`` of round t+1 from its messages of rounds t and t+1.

    privlab's D-PSGD (``mechanisms/gossip.py``) trains, then averages, and sends the
    trained model: node v sends ``m_v^t = x_v^t + u_v^t`` (``u_v^t`` its local update,
    e.g. ``-lr g`` for one SGD step) and then starts round t+1 from
    ``x_v^{t+1} = W_vv m_v^t + sum_u W_vu m_u^t``. Hence
    ``u_v^{t+1} = m_v^{t+1} - W_vv m_v^t - sum_u W_vu m_u^t``.

    ``sent_before``/``sent_after`` are ``m_v^t`` and ``m_v^{t+1}``, ``inbox[k, D]`` the
    models every neighbour u sent v in round t, ``inbox_weights[k]`` the weights ``W_vu``
    and ``self_weight`` ``W_vv`` of round t's plan (Metropolis-Hastings by default,
    ``1 / (max(deg_v, deg_u) + 1)``: known from the degrees sent as metadata). The
    result is exact, whatever v's local training did (several steps, momentum, DP
    noise), only when the attackers know every model in v's round-t inbox: they are all
    of v's neighbours (e.g. its only one; Pasquini et al. 2023's passive attack) or
    eavesdrop on all of v's links. Otherwise use :func:`least_squares_updates` over
    several rounds.
    """
    check(sent_before.dim() == 1, "sent_before", "a 1-D [D] tensor", tuple(sent_before.shape))
    dim = sent_before.shape[0]
    check(sent_after.shape == (dim,), "sent_after", f"of shape [{dim}]", tuple(sent_after.shape))
    check(
        inbox.dim() == 2 and inbox.shape[1] == dim,
        "inbox",
        f"of shape [k, {dim}]",
        tuple(inbox.shape),
    )
    check(
        inbox_weights.shape == inbox.shape[:1],
        "inbox_weights",
        f"of shape [{inbox.shape[0]}]",
        tuple(inbox_weights.shape),
    )
    check(is_real(self_weight), "self_weight", "a real number", self_weight)
    averaged = self_weight * sent_before + inbox_weights.to(inbox.dtype) @ inbox
    return sent_after - averaged


def least_squares_updates(
    knowledge: torch.Tensor,
    observations: torch.Tensor,
    rcond: float = 1e-10,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each node's unknown ``[n, D]`` from ``observations = knowledge @ unknowns``, and
    which nodes the observations determine.

    El Mrini, Cyffers and Bellet 2024 (the gossip and decentralized GD attacks): an
    attacker stacks what it learns as
    rows of a knowledge matrix ``K[R, n]``, each observation ``y_r[D]`` being the linear
    combination ``sum_i K[r, i] z_i`` of the nodes' unknowns (their initial values in
    gossip averaging; their updates in decentralized GD, once the attackers' own
    contributions are subtracted). The minimum-norm least-squares solution is computed
    in float64 through the SVD of ``K``, singular values below ``rcond`` times the
    largest counting as zero (the rank decision El Mrini et al. make with row echelon
    forms, made stable).

    Node i is reconstructible when its unit vector ``e_i`` lies in the row space of
    ``K``: then ``z_i`` is a fixed combination of the observations and the solution is
    exact (for noiseless observations). Other rows of the result are the minimum-norm
    estimate, not the node's value (two nodes with collinear columns get a share of
    their combination): read them with the returned flag. The flag tests
    ``1 - P_ii < RECONSTRUCTIBLE_TOLERANCE`` for the projector ``P`` on the row space.
    """
    check(knowledge.dim() == 2, "knowledge", "a 2-D [R, n] matrix", tuple(knowledge.shape))
    check(min(knowledge.shape) >= 1, "knowledge", "non-empty", tuple(knowledge.shape))
    rows = knowledge.shape[0]
    check(
        observations.dim() == 2 and observations.shape[0] == rows,
        "observations",
        f"of shape [{rows}, D]",
        tuple(observations.shape),
    )
    check(is_real(rcond) and 0 < rcond < 1, "rcond", "in (0, 1)", rcond)
    matrix = knowledge.detach().double()
    check(bool(torch.isfinite(matrix).all()), "knowledge", "finite", "non-finite entries")
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    rank = int((s > rcond * s.max()).sum()) if s.numel() and s.max() > 0 else 0
    u, s, vh = u[:, :rank], s[:rank], vh[:rank]
    solution = vh.T @ ((u.T @ observations.detach().double()) / s.unsqueeze(1))
    projector_diagonal = vh.square().sum(dim=0)
    reconstructible = (1 - projector_diagonal) < RECONSTRUCTIBLE_TOLERANCE
    return solution.to(observations.dtype), reconstructible
