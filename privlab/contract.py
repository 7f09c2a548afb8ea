"""What the engine checks of a protocol every exchange, so that a protocol breaking the
contract (a user's, typically) is named with the round and exchange where it happened,
instead of failing later in an unrelated place or training on garbage."""

from __future__ import annotations

import torch

from privlab.errors import PrivlabError
from privlab.protocol import Messages, Protocol


def broken(protocol: Protocol, round: int, exchange: int, what: str) -> PrivlabError:
    return PrivlabError(
        f"protocol {protocol.name!r} broke the contract in round {round}, exchange "
        f"{exchange}: {what}"
    )


def check_sent(
    protocol: Protocol, messages: object, num_nodes: int, round: int, exchange: int
) -> None:
    """``send`` returned ``Messages`` between existing nodes with finite payloads (a
    payload of the senders' rows is the state itself, checked after ``receive``)."""
    if not isinstance(messages, Messages):
        raise broken(
            protocol,
            round,
            exchange,
            f"send returned {type(messages).__name__}, not privlab.protocol.Messages",
        )
    for end in ("src", "dst"):
        nodes = getattr(messages, end)
        if len(nodes) and (int(nodes.min()) < 0 or int(nodes.max()) >= num_nodes):
            raise broken(
                protocol, round, exchange, f"messages.{end} names nodes outside [0, {num_nodes})"
            )
    if messages.rows is None and not all_finite(messages.payload):
        raise broken(protocol, round, exchange, "send put non-finite values in a payload")


def check_received(
    protocol: Protocol, before: torch.Tensor, after: object, round: int, exchange: int
) -> None:
    """``receive`` returned a state of the same shape, on the same device, finite wherever
    the state it was given was finite (a state already non-finite is training's
    divergence, not this)."""
    if not isinstance(after, torch.Tensor) or after.shape != before.shape:
        shape = tuple(after.shape) if isinstance(after, torch.Tensor) else type(after).__name__
        raise broken(
            protocol, round, exchange, f"receive returned {shape}, expected {tuple(before.shape)}"
        )
    if after.device != before.device:
        raise broken(
            protocol,
            round,
            exchange,
            f"receive returned a state on {after.device}, the run is on {before.device} "
            "(create tensors on state.device)",
        )
    if not all_finite(after) and all_finite(before):
        raise broken(protocol, round, exchange, "receive returned non-finite values")


def all_finite(values: torch.Tensor) -> bool:
    """Whether every entry is finite: first by the sum (one fast pass, finite unless an
    entry is not or the sum overflows), then exactly; integers always are."""
    if not values.is_floating_point():
        return True
    if bool(torch.isfinite(values.sum())):
        return True
    return bool(torch.isfinite(values).all())
