"""CESAR-style secure aggregation with sparsification (privlab's construction).

Source: Biswas, Kermarrec, Pires, Sharma, Vujasinovic, "Secure Aggregation Meets
Sparsification in Decentralized Learning" (arXiv 2405.07708). Only the abstract and two
summaries were available (pairwise masking over two-hop neighbourhoods, a masking
threshold against collusion, random subsampling and TopK). What follows is privlab's
own "CESAR-style" construction from those facts and standard pairwise-mask secure
aggregation (Bonawitz et al., CCS 2017), as specified in ``shared/design/CESAR.md``;
it is not the paper's protocol, whose details are unknown.
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import torch
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from privlab.context import RoundContext
from privlab.devices import MovedOnce
from privlab.errors import PrivlabError, check, is_integer
from privlab.mechanisms.sparsification import (
    METADATA_BYTES,
    Sparsifier,
    check_sparsifier,
    edge_weight,
    pack,
    renormalised,
)
from privlab.plan import CommPlan
from privlab.protocol import INDEX_BYTES, PROTOCOLS, Messages, Protocol

LABEL = b"privlab-cesar-v1"
"""The protocol label bound into every pair seed (HKDF info)."""
PUBLIC_KEY_BYTES = 32
"""Bytes of an X25519 public key on the wire."""
RING_BITS = 64
_MOD = 1 << RING_BITS
_HALF = 1 << (RING_BITS - 1)


def encode(values: torch.Tensor, frac_bits: int) -> torch.Tensor:
    """Fixed point: ``round(values * 2^frac_bits)`` as int64 (float64 arithmetic, round half
    to even). The caller checks the range; ``.view(uint64)`` is the two's complement ring
    element of Z_(2^64)."""
    return torch.round(values.to(torch.float64) * 2.0**frac_bits).to(torch.int64)


def decode(total: np.ndarray, frac_bits: int) -> torch.Tensor:
    """Ring elements ``uint64`` read as two's complement, divided by ``2^frac_bits``."""
    return torch.from_numpy(total.view(np.int64).astype(np.float64) / 2.0**frac_bits)


def mask_stream(seed: bytes, round: int, count: int) -> np.ndarray:
    """``count`` uint64 masks: ChaCha20 keystream under ``seed`` (32 bytes) with the round
    in the nonce (block counter 0, nonce = round as 8 bytes little-endian + 4 zero bytes),
    read as little-endian unsigned 64-bit integers."""
    nonce = struct.pack("<I", 0) + struct.pack("<q", int(round)) + b"\0" * 4
    encryptor = Cipher(algorithms.ChaCha20(seed, nonce), mode=None).encryptor()
    stream = encryptor.update(b"\0" * (8 * count))
    return np.frombuffer(stream, dtype="<u8").astype(np.uint64)


def pair_seed(shared_secret: bytes, receiver: int, i: int, j: int) -> bytes:
    """32-byte seed of the pair ``i < j`` for ``receiver``: HKDF-SHA256 of their X25519
    shared secret, info = ``LABEL || receiver || i || j`` (int64 little-endian)."""
    info = LABEL + struct.pack("<qqq", receiver, i, j)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared_secret)


@PROTOCOLS.register("cesar")
class Cesar(Protocol):
    """CESAR-style secure aggregation with sparsification ("CESAR-style": privlab's
    construction, see ``shared/design/CESAR.md``; the paper's exact protocol is unknown).

    Options: ``fraction`` (in (0, 1]) and ``sparsifier`` (``random``,
    ``independent-random``, ``topk``; see ``privlab.mechanisms.sparsification``),
    ``threshold`` t >= 1 (masking threshold; t > number of colluders), ``frac_bits`` f
    (fixed-point fractional bits, default 24).

    Exchanges of a round:

    0. Key agreement. Each node has an X25519 key pair. For receiver v and each pair
       i < j of v's senders, i and j agree on a secret with X25519 (public keys relayed
       by v, assumed honest-but-curious and faithful) and derive a 32-byte seed with
       HKDF-SHA256, info binding (v, i, j) and a protocol label. Done once per receiver
       neighbourhood (round 1 on a static topology; again when v's senders change):
       on edge a -> b, 32 bytes of a's public key when b's neighbourhood is (re)keyed,
       plus 32 bytes per other neighbour of a whose key a relays when a's is; counted as
       ``metadata_bytes``, payload empty. Other rounds send no message.
    1. (``independent-random`` and ``topk`` only) Index announcement: each sender tells
       v the index set it would like to send, and v relays to each sender the others'
       sets (v sees every set: this is TopK's leakage). The announced set is the
       message's ``indices`` (so the observation log records what v sees, and counts
       4 bytes per index); the relayed sets are metadata, 4 bytes per index.
    2. (last) Masked payload. Coordinate c of u goes to v only if at least t *other*
       senders of v also want c; otherwise it is withheld. u encodes
       ``w_vu x_u[c]`` (Metropolis-Hastings weight, known from the two degrees) in
       Z_(2^64) with f fractional bits, adds ``+m`` for each partner j > u and ``-m``
       for each partner j < u, where the pair's masks are its ChaCha20 keystream for
       the round (nonce = round) read as uint64, assigned in increasing coordinate order
       to the coordinates both send. v sums the masked values mod 2^64 (the masks
       cancel), decodes only the aggregate and averages each coordinate over itself
       and its senders of c with renormalised weights,
       ``x_v[c] <- (W_vv x_v[c] + dec(sum_u enc(W_vu x_u[c]))) / (W_vv + sum_u W_vu)``,
       keeping its own value where nobody sent. Bytes: 8 per masked value, 4 per index,
       an 8-byte header.

    Overflow is an error: every encoded value must satisfy
    ``|enc| <= (2^63 - 1) // in_degree(v)``, so the receiver's sum cannot wrap.

    Assumptions: honest-but-curious nodes, no dropouts (no secret sharing of seeds as in
    Bonawitz et al.), symmetric plans, a receiver relays keys and index sets faithfully.
    For the simulation's determinism every private key is derived from the seed tree
    (``streams.node_seeds("cesar-keys", 0, 0, nodes)`` hashed with SHA-256): a 63-bit
    seed, not a secret. A real deployment draws private keys from OS randomness
    (``X25519PrivateKey.generate()``).

    Devices: the key agreement, the ChaCha20 mask streams and the uint64 ring arithmetic
    are host code, so CESAR computes on the CPU whatever the run's device: ``send`` takes
    the state there and sends CPU messages, ``receive`` returns the new state on the
    run's device. Only what the engine holds (the models, the training) is on the GPU.
    """

    def __init__(
        self,
        fraction: float = 0.1,
        sparsifier: str = "random",
        threshold: int = 1,
        frac_bits: int = 24,
    ):
        check_sparsifier(fraction, sparsifier)
        check(is_integer(threshold) and threshold >= 1, "threshold", "an integer >= 1", threshold)
        check(
            is_integer(frac_bits) and 0 <= frac_bits <= 52,
            "frac_bits",
            "an integer in [0, 52]",
            frac_bits,
        )
        self.fraction, self.kind = float(fraction), sparsifier
        self.threshold, self.frac_bits = int(threshold), int(frac_bits)
        self.sparsifier = Sparsifier(sparsifier, fraction)
        self.exchanges = 2 if sparsifier == "random" else 3
        self._announced: tuple[int, torch.Tensor] | None = None  # (round, want[E, D])
        self._plan_on_cpu = MovedOnce(torch.device("cpu"))

    def initial_state(self, params: torch.Tensor) -> torch.Tensor:
        self.sparsifier.sent(params.cpu())
        return params

    # -- keys ---------------------------------------------------------------------------

    def setup(self, context: RoundContext) -> None:
        super().setup(context)
        n = context.num_nodes
        most = int(context.topology.plan(1).in_degree().max())
        check(
            self.threshold <= most - 1,
            "threshold",
            f"at most {most - 1}, the largest in-degree minus one (a coordinate is "
            "aggregated only when that many other senders share it)",
            self.threshold,
        )
        seeds = context.streams.node_seeds("cesar-keys", 0, 0, range(n))
        self._private = [
            X25519PrivateKey.from_private_bytes(
                hashlib.sha256(LABEL + b"key" + int(s).to_bytes(8, "little")).digest()
            )
            for s in seeds
        ]
        self.public_keys = [
            key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw) for key in self._private
        ]
        self._seeds: dict[tuple[int, int, int], bytes] = {}
        self._keyed: dict[int, tuple[int, ...]] = {}

    def _agree(self, receiver: int, senders: list[int]) -> None:
        """X25519 + HKDF for every pair of ``senders`` of ``receiver`` (both sides)."""
        for a, i in enumerate(senders):
            for j in senders[a + 1 :]:
                secret = self._private[i].exchange(
                    X25519PublicKey.from_public_bytes(self.public_keys[j])
                )
                other = self._private[j].exchange(
                    X25519PublicKey.from_public_bytes(self.public_keys[i])
                )
                if secret != other:  # pragma: no cover - X25519 is symmetric
                    raise PrivlabError("cesar: X25519 key agreement failed")
                self._seeds[(receiver, i, j)] = pair_seed(secret, receiver, i, j)

    def pair_seed(self, receiver: int, i: int, j: int) -> bytes:
        """The agreed seed of the pair {i, j} for ``receiver``."""
        return self._seeds[(receiver, min(i, j), max(i, j))]

    def _key_exchange(self, plan: CommPlan) -> Messages:
        n = plan.num_nodes
        forward = set(zip(plan.src.tolist(), plan.dst.tolist()))
        if forward != {(b, a) for a, b in forward}:
            raise PrivlabError("protocol 'cesar' needs a symmetric plan (keys are relayed)")
        changed = torch.zeros(n, dtype=torch.bool)
        for v in range(n):
            senders = plan.src[plan.dst == v].tolist()
            if self._keyed.get(v) != tuple(senders):
                self._agree(v, senders)
                self._keyed[v] = tuple(senders)
                changed[v] = True
        degree = plan.in_degree()
        metadata = PUBLIC_KEY_BYTES * (
            changed[plan.dst].long() + changed[plan.src].long() * (degree[plan.src] - 1)
        )
        keep = metadata > 0
        return Messages(
            plan.src[keep],
            plan.dst[keep],
            torch.zeros(int(keep.sum()), 0),
            metadata_bytes=metadata[keep],
        )

    # -- sparsification and masking -------------------------------------------------------

    def shared(self, want: torch.Tensor, plan: CommPlan) -> torch.Tensor:
        """``sent[E, D]``: the wanted coordinates that at least ``threshold`` other senders
        to the same receiver also want."""
        count = torch.zeros(plan.num_nodes, want.shape[1], dtype=torch.int64)
        count.index_add_(0, plan.dst, want.long())
        return want & (count[plan.dst] >= self.threshold + 1)

    def _index_exchange(self, want: torch.Tensor, plan: CommPlan) -> Messages:
        """Edge a -> b carries a's wanted set for receiver b (its ``indices``, what the
        observation log keeps) and, as metadata, the sets of a's other senders that a
        relays to b (4 bytes per index)."""
        announced = want.sum(dim=1)
        per_receiver = torch.zeros(plan.num_nodes, dtype=torch.int64)
        per_receiver.index_add_(0, plan.dst, announced)
        reverse = torch.zeros(plan.num_nodes * plan.num_nodes, dtype=torch.int64)
        reverse[plan.src * plan.num_nodes + plan.dst] = announced  # |want(b -> a)| at [b, a]
        relayed = per_receiver[plan.src] - reverse[plan.dst * plan.num_nodes + plan.src]
        indices, _ = pack(want, want)
        return Messages(
            plan.src,
            plan.dst,
            torch.zeros(plan.num_edges, 0),
            indices=indices,
            metadata_bytes=INDEX_BYTES * relayed,
        )

    def masked(self, state: torch.Tensor, plan: CommPlan, round: int) -> tuple:
        """``(sent[E, D], encoded[E, D] int64, wire[E, D] uint64)``: what each edge sends,
        its plaintext fixed-point values and its masked values (0 where not sent)."""
        want = self._wants(state, plan, round)
        sent = self.shared(want, plan)
        values = plan.weight.to(torch.float64).unsqueeze(1) * state[plan.src].to(torch.float64)
        values = torch.where(sent, values, torch.zeros_like(values))
        bound = (2**63 - 1) // plan.in_degree().clamp(min=1)[plan.dst]
        scaled = values.abs() * 2.0**self.frac_bits
        if not bool(torch.isfinite(scaled).all()) or bool((scaled >= bound.unsqueeze(1)).any()):
            worst = float(scaled.max())
            raise PrivlabError(
                f"cesar: fixed-point overflow: |w * x| * 2^frac_bits reaches {worst:.3g}, "
                f"beyond the ring's safe range {int(bound.min()):.3g} (2^63 / in-degree); "
                "lower frac_bits or bound the models"
            )
        encoded = encode(values, self.frac_bits)
        wire = encoded.numpy().view(np.uint64).copy()
        sent_np = sent.numpy()
        src, dst = plan.src.tolist(), plan.dst.tolist()
        start = 0
        with np.errstate(over="ignore"):
            while start < len(dst):  # edges sorted by (dst, src): one receiver at a time
                v, end = dst[start], start
                while end < len(dst) and dst[end] == v:
                    end += 1
                for a in range(start, end):
                    for b in range(a + 1, end):  # src[a] < src[b]: a adds +m, b adds -m
                        coords = np.flatnonzero(sent_np[a] & sent_np[b])
                        if len(coords) == 0:
                            continue
                        mask = mask_stream(self.pair_seed(v, src[a], src[b]), round, len(coords))
                        wire[a, coords] += mask
                        wire[b, coords] -= mask
                start = end
        return sent, encoded, wire

    def send(self, state: torch.Tensor, plan: CommPlan, round: int, exchange: int) -> Messages:
        """CPU messages, whatever ``state``'s device (see the class)."""
        return self._send(state.cpu(), self._plan_on_cpu(plan), round, exchange)

    def _send(self, state: torch.Tensor, plan: CommPlan, round: int, exchange: int) -> Messages:
        if exchange == 0:
            return self._key_exchange(plan)
        if exchange < self.exchanges - 1:
            want = self.sparsifier.want(state, plan, round, self.context.streams).cpu()
            return self._index_exchange(want, plan)
        sent, _, wire = self.masked(state, plan, round)
        want_count = self._wants(state, plan, round).sum(dim=1)
        sent_count = sent.sum(dim=1)
        n = plan.num_nodes
        wanted = torch.zeros(n).index_add_(0, plan.src, want_count.float())
        shared = torch.zeros(n).index_add_(0, plan.src, sent_count.float())
        self.context.emit_metric("cesar_shared_fraction", shared / wanted.clamp(min=1))
        indices, payload = pack(sent, torch.from_numpy(wire.view(np.int64)))
        self.sparsifier.sent(state)
        return Messages(plan.src, plan.dst, payload, indices=indices, metadata_bytes=METADATA_BYTES)

    # -- aggregation ---------------------------------------------------------------------

    def aggregate(
        self, messages: Messages, plan: CommPlan, num_nodes: int, dim: int
    ) -> tuple[np.ndarray, torch.Tensor]:
        """``(total[n, D] uint64, weights[n, D] float64)``: each receiver's sum mod 2^64
        of the masked values per coordinate, and the sum of the senders' weights."""
        valid, flat = messages.flat_positions(dim)
        total = np.zeros(num_nodes * dim, dtype=np.uint64)
        np.add.at(total, flat.numpy(), messages.payload.numpy().view(np.uint64)[valid.numpy()])
        weight = edge_weight(plan, messages.src, messages.dst).to(torch.float64)
        weight = weight.unsqueeze(1).expand_as(messages.indices)[valid]
        weights = torch.zeros(num_nodes * dim, dtype=torch.float64)
        weights.index_add_(0, flat, weight)
        return total.reshape(num_nodes, dim), weights.view(num_nodes, dim)

    def _wants(self, state: torch.Tensor, plan: CommPlan, round: int) -> torch.Tensor:
        """``want[E, D]``: the sets announced this round (TopK), else each edge's own."""
        if self._announced is not None and self._announced[0] == round:
            return self._announced[1]
        return self.sparsifier.want(state, plan, round, self.context.streams).cpu()

    def receive(
        self, state: torch.Tensor, messages: Messages, plan: CommPlan, round: int, exchange: int
    ) -> torch.Tensor:
        """The new state on ``state``'s device, computed on the CPU (see the class)."""
        new = self._receive(state.cpu(), messages, self._plan_on_cpu(plan), round, exchange)
        return new.to(state.device)

    def _receive(
        self, state: torch.Tensor, messages: Messages, plan: CommPlan, round: int, exchange: int
    ) -> torch.Tensor:
        if exchange < self.exchanges - 1:
            if messages.indices is not None and messages.width == 0:  # the announced sets
                want = torch.zeros(len(messages), state.shape[1], dtype=torch.bool)
                valid = messages.indices >= 0
                rows = torch.arange(len(messages)).unsqueeze(1).expand_as(valid)
                want[rows[valid], messages.indices[valid]] = True
                self._announced = (round, want)
            return state
        n, dim = state.shape
        total, weights = self.aggregate(messages, plan, n, dim)
        self_weight = plan.self_weight.to(torch.float64).unsqueeze(1)
        return renormalised(state, self_weight, decode(total, self.frac_bits), weights)

    def receive_node(
        self,
        node: int,
        own: torch.Tensor,
        inbox: Messages,
        plan: CommPlan,
        round: int,
        exchange: int,
    ) -> torch.Tensor:
        if exchange < self.exchanges - 1:
            return own
        weight_of = plan.weights_into(node)
        total = [0] * own.shape[0]
        weights = [0.0] * own.shape[0]
        for sender, indices, payload in zip(
            inbox.src.tolist(), inbox.indices.tolist(), inbox.payload.tolist()
        ):
            for index, value in zip(indices, payload):
                if index >= 0:
                    total[index] = (total[index] + value) % _MOD
                    weights[index] += weight_of[sender]
        signed = [t - _MOD if t >= _HALF else t for t in total]
        aggregate = torch.tensor(signed, dtype=torch.float64) / 2.0**self.frac_bits
        return renormalised(
            own,
            float(plan.self_weight[node]),
            aggregate,
            torch.tensor(weights, dtype=torch.float64),
        )

    def describe(self) -> dict:
        return {
            "name": self.name,
            "fraction": self.fraction,
            "sparsifier": self.kind,
            "threshold": self.threshold,
            "frac_bits": self.frac_bits,
        }
