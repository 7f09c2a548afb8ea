"""``DistributedEngine``: one experiment split over the processes of ``torch.distributed``.

Nodes are partitioned in contiguous blocks, one per rank (``block_bounds``). Each rank
trains its own block in one batched call, exactly as ``VectorizedEngine`` trains all
nodes, and draws only its own nodes' random numbers (batches, noise: the per-node
streams of ``privlab.rng``). Each exchange, every rank runs the protocol's ``send`` and
keeps the messages whose sender it owns; the messages on edges that cross blocks go to
the receiver's rank (``all_to_all``), and nothing else travels. ``receive`` then gives
every rank its own nodes' new state. A rank's copy of the other blocks is stale and
never read for its own nodes: a decentralized protocol computes a node's state from the
node's own state and inbox only, which is what makes this exact.

When which messages exist depends on the state (muted gossip pushes from its active
nodes), ranks disagree about the other blocks' messages; the engine notices (a count and
a hash per rank, gathered each exchange) and then sends each wanted message whole, with
its edge, instead of filling in a list every rank already knows.

On a GPU (``device: cuda`` or ``auto``), rank r computes on GPU ``LOCAL_RANK`` (r when
spawned by ``--procs``) modulo the GPUs visible, and the messages and models travel over
NCCL; control data stays on the CPU over gloo (``privlab.launch.backend``).

Control data is small and gathered every round (per-node bytes and losses, a
divergence flag); the models are gathered only at evaluations and at the end, to rank
0, which records observations, metrics and the ledger and writes the run folder like any
other run. Collectives time out after ``timeout`` seconds: a rank that dies or stops
answering ends the run with an error naming it instead of a silent hang.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from privlab.devices import resolve_device
from privlab.engine import ENGINES, VectorizedEngine
from privlab.errors import PrivlabError
from privlab.plan import CommPlan
from privlab.protocol import Messages
from privlab.rng import splitmix64


class PeerFailure(PrivlabError):
    """Another rank died or stopped answering; the run stops and keeps what finished."""


def block_bounds(num_nodes: int, world: int) -> list[tuple[int, int]]:
    """Contiguous blocks ``[lo, hi)`` of nodes, one per rank, sizes differing by at most 1."""
    base, extra = divmod(num_nodes, world)
    bounds, lo = [], 0
    for rank in range(world):
        hi = lo + base + (rank < extra)
        bounds.append((lo, hi))
        lo = hi
    return bounds


@ENGINES.register("distributed")
class DistributedEngine(VectorizedEngine):
    """``VectorizedEngine`` on this rank's block of nodes (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        if not dist.is_available() or not dist.is_initialized():
            raise PrivlabError(
                "engine 'distributed' needs torch.distributed: run with privlab run "
                "--procs P, or under torchrun"
            )
        super().__init__(*args, **kwargs)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        if self.world > self.num_nodes:
            raise PrivlabError(
                f"--procs must be at most the {self.num_nodes} nodes, got {self.world}"
            )
        self.bounds = block_bounds(self.num_nodes, self.world)
        self.lo, self.hi = self.bounds[self.rank]
        self.block = torch.arange(self.lo, self.hi)
        self.context.streams.normal_block = (self.lo, self.hi)  # its own nodes' noise only
        self.owner = torch.cat(
            [torch.full((hi - lo,), r, dtype=torch.int64) for r, (lo, hi) in enumerate(self.bounds)]
        ).to(self.device)
        self._owners = {self.device: self.owner}
        self.bytes_between_ranks = 0
        # every rank knows what rank 0's observer records, to send it there
        self._threat = None if self.observer is None else self.observer.threat_model
        if self.rank != 0:
            self.observer = None  # rank 0 records what the curious parties see

    def _device(self, device: str | torch.device) -> torch.device:
        """The configured device; on GPUs, this rank's local GPU (``LOCAL_RANK``). NCCL
        takes one process per GPU, so more processes on a machine than its GPUs, or a
        GPU named for all of them (``cuda:K``), is refused."""
        resolved = resolve_device(device)
        if resolved.type != "cuda":
            return resolved
        here = int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size()))
        gpus = torch.cuda.device_count()
        if here > 1 and (str(device) not in ("auto", "cuda") or here > gpus):
            raise PrivlabError(
                f"a distributed run on GPUs takes one process per GPU: {here} processes on "
                f"this machine, {gpus} GPUs visible, device {str(device)!r}; use "
                f"--procs {min(here, gpus)} with device: cuda, or device: cpu"
            )
        if here > 1:
            resolved = torch.device("cuda", int(os.environ.get("LOCAL_RANK", dist.get_rank())))
        torch.cuda.set_device(resolved)
        return resolved

    # -- training: this rank's block only ------------------------------------------------

    @property
    def trained_nodes(self) -> torch.Tensor:
        return self.block

    # -- exchanges: only messages on edges that cross blocks travel --------------------

    def _deliver(self, messages: Messages, round: int, exchange: int) -> Messages:
        """``messages`` with every edge into this rank's block (and, on rank 0, every
        edge its observer records) carrying what its sender's rank computed. Messages
        that are their senders' whole rows travel once per (sender, receiving rank);
        messages of indices only (announced index sets, which receivers relay to their
        other senders) go to every rank."""
        owner = self._owner(messages.src.device)  # CESAR's messages stay on the CPU
        src_rank, dst_rank = owner[messages.src], owner[messages.dst]
        wanted = [dst_rank == r for r in range(self.world)]
        if messages.width == 0:  # index sets announced (CESAR's TopK), relayed two hops on
            wanted = [torch.ones_like(dst_rank, dtype=torch.bool)] * self.world
        observed = self._observed(messages)
        if observed is not None:
            wanted[0] = wanted[0] | observed
        if not self._edges_agree(messages, src_rank):
            return self._deliver_own(messages, src_rank == self.rank, wanted)

        def rows_from(sender: int, receiver: int) -> torch.Tensor:
            if sender == receiver:
                return torch.zeros(0, dtype=torch.int64, device=src_rank.device)
            edges = ((src_rank == sender) & wanted[receiver]).nonzero().flatten()
            if messages.rows is not None:  # one row per sender, not per edge
                return torch.unique(messages.src[edges])
            return edges

        outgoing = [rows_from(self.rank, r) for r in range(self.world)]
        incoming = [rows_from(r, self.rank) for r in range(self.world)]
        if messages.rows is not None:
            rows = self._swap(messages.rows, outgoing, incoming)
            return Messages.of_rows(
                rows,
                messages.src,
                messages.dst,
                sender_label=messages.sender_label,
                receiver_label=messages.receiver_label,
                metadata_bytes=messages.metadata_bytes,
            )
        payload = self._swap(messages.payload, outgoing, incoming)
        indices = None
        if messages.indices is not None:
            indices = self._swap(messages.indices, outgoing, incoming)
        return Messages(
            messages.src,
            messages.dst,
            payload,
            indices=indices,
            sender_label=messages.sender_label,
            receiver_label=messages.receiver_label,
            metadata_bytes=messages.metadata_bytes,
        )

    def _owner(self, device: torch.device) -> torch.Tensor:
        """The rank of each node ``[n]``, on ``device`` (where a protocol's messages are)."""
        if device not in self._owners:
            self._owners[device] = self.owner.to(device)
        return self._owners[device]

    def _edges_agree(self, messages: Messages, src_rank: torch.Tensor) -> bool:
        """Whether every rank's messages name, for each rank's senders, the edges that
        rank sends, in its order: so when which messages exist follows the plan, not
        when it follows the state (muted gossip pushes from the active nodes, and a
        rank's copy of other blocks is stale). One count and one order-sensitive hash
        (SplitMix64 of each edge and its position, summed) per rank, gathered; every
        rank takes the same path."""
        keys = messages.src * self.num_nodes + messages.dst
        seen = torch.zeros(self.world, 2, dtype=torch.int64, device=keys.device)
        for rank in range(self.world):
            mine = keys[src_rank == rank]
            position = torch.arange(len(mine), device=keys.device)
            mixed = splitmix64(mine * self.num_nodes**2 + position)  # wraps: still a hash
            seen[rank, 0], seen[rank, 1] = len(mine), mixed.sum()
        truth = [torch.empty(2, dtype=torch.int64, device=keys.device) for _ in self.bounds]
        self._collective(dist.all_gather, truth, seen[self.rank].contiguous())
        agree = torch.tensor([int(torch.equal(seen, torch.stack(truth)))])
        self._collective(dist.all_reduce, agree, op=dist.ReduceOp.MIN)
        return bool(agree)

    def _deliver_own(
        self, messages: Messages, own: torch.Tensor, wanted: list[torch.Tensor]
    ) -> Messages:
        """Delivery when ranks disagree on which messages exist: each rank sends the
        messages of its own senders that another rank wants (edges into its block, or
        observed), whole, and keeps those of its senders plus what it received, in rank
        order (the senders' order, as the protocol sent them; the messages between two
        other ranks' nodes, which nothing here reads, are left out)."""
        fields = {
            "src": messages.src,
            "dst": messages.dst,
            "payload": messages.payload,
            "indices": messages.indices,
            "sender_label": messages.sender_label,
            "receiver_label": messages.receiver_label,
            "metadata_bytes": messages.metadata_bytes,
        }
        fields = {k: v for k, v in fields.items() if isinstance(v, torch.Tensor)}
        outgoing = [
            torch.zeros(0, dtype=torch.int64, device=own.device)
            if r == self.rank
            else (own & wanted[r]).nonzero().flatten()
            for r in range(self.world)
        ]
        sizes = torch.tensor([len(rows) for rows in outgoing])
        incoming = torch.empty_like(sizes)
        self._collective(dist.all_to_all_single, incoming, sizes)
        received = {
            name: self._exchange(tensor, outgoing, incoming.tolist())
            for name, tensor in fields.items()
        }
        pieces: dict[str, list[torch.Tensor]] = {name: [] for name in fields}
        counts = incoming.tolist()
        starts = [sum(counts[:r]) for r in range(self.world)]
        mine = own.nonzero().flatten()
        for r in range(self.world):
            for name, tensor in fields.items():
                if r == self.rank:
                    pieces[name].append(tensor[mine])
                else:
                    pieces[name].append(received[name][starts[r] : starts[r] + counts[r]])
        joined = {name: torch.cat(parts) for name, parts in pieces.items()}
        metadata = joined.get("metadata_bytes", messages.metadata_bytes)
        return Messages(
            joined["src"],
            joined["dst"],
            joined["payload"],
            indices=joined.get("indices"),
            sender_label=joined.get("sender_label"),
            receiver_label=joined.get("receiver_label"),
            metadata_bytes=metadata,
        )

    def _exchange(
        self, tensor: torch.Tensor, outgoing: list[torch.Tensor], incoming: list[int]
    ) -> torch.Tensor:
        """The rows ``outgoing[r]`` of ``tensor`` sent to each rank r, and what each rank
        sent here (``incoming[r]`` rows from rank r), in rank order."""
        send = torch.cat([tensor[rows] for rows in outgoing]).contiguous()
        size = (sum(incoming), *tensor.shape[1:])
        recv = torch.empty(size, dtype=tensor.dtype, device=tensor.device)
        self._collective(
            dist.all_to_all_single, recv, send, incoming, [len(rows) for rows in outgoing]
        )
        self.bytes_between_ranks += send.numel() * send.element_size()
        return recv

    def _observed(self, messages: Messages) -> torch.Tensor | None:
        """The edges rank 0's observer records (None without one)."""
        threat = self._threat
        if threat is None:
            return None
        where = messages.src.device
        curious = torch.tensor(sorted(threat.curious_nodes), dtype=torch.int64, device=where)
        links = torch.tensor(
            [s * self.num_nodes + d for s, d in threat.eavesdropped_links],
            dtype=torch.int64,
            device=where,
        )
        by_node = torch.isin(messages.dst, curious)
        return by_node | torch.isin(messages.src * self.num_nodes + messages.dst, links)

    def _swap(
        self, tensor: torch.Tensor, outgoing: list[torch.Tensor], incoming: list[torch.Tensor]
    ) -> torch.Tensor:
        """``tensor`` with the rows ``incoming[r]`` replaced by what rank r sends from its
        rows ``outgoing[self.rank]`` (one ``all_to_all`` of the rows that cross)."""
        recv = self._exchange(tensor, outgoing, [len(rows) for rows in incoming])
        out = tensor.clone()
        rows = torch.cat(incoming)
        if len(rows):
            out[rows] = recv
        return out

    def _receive(
        self, params: torch.Tensor, messages: Messages, plan: CommPlan, round: int, exchange: int
    ) -> None:
        """The protocol's receive for this rank's block; the other blocks keep the values
        of the last synchronization (what ``receive`` made of their partial inboxes is
        meaningless, and could overflow a protocol's checks)."""
        new = self.protocol.receive(params, messages, plan, round, exchange)
        if new.data_ptr() != params.data_ptr():
            new[: self.lo] = params[: self.lo]
            new[self.hi :] = params[self.hi :]
        self._params = new

    def _sent_bytes(self, messages: Messages) -> dict[str, torch.Tensor]:
        """Bytes each node sent, counted by the rank that owns it and summed over ranks."""
        own = self._owner(messages.src.device)[messages.src] == self.rank
        counted = messages.select(own).bytes_by_sender(self.num_nodes)
        for size in counted.values():
            self._collective(dist.all_reduce, size)
        return counted

    # -- what rank 0 needs: gathered rows, the whole state at evaluations ---------------

    def _every_node(self, values: torch.Tensor) -> torch.Tensor:
        """Every node's value ``[n]`` from each rank's ``[block]`` (control data)."""
        full = torch.zeros(self.num_nodes, dtype=values.dtype, device=values.device)
        full[self.lo : self.hi] = values.detach()
        self._collective(dist.all_reduce, full)
        return full

    def synchronize(self) -> None:
        """Gather every block so that each rank holds the whole current state."""
        blocks = [self._params[lo:hi].contiguous() for lo, hi in self.bounds]
        for r, block in enumerate(blocks):
            self._collective(dist.broadcast, block, src=r)
            self._params[self.bounds[r][0] : self.bounds[r][1]] = block

    def evaluate(self) -> dict[str, torch.Tensor]:
        self.synchronize()
        return super().evaluate()

    def report(self) -> dict:
        """Processes, blocks and the bytes of messages sent between ranks over the run
        (summed over ranks: one all-reduce, so every rank must call it)."""
        total = torch.tensor([self.bytes_between_ranks], dtype=torch.int64)
        self._collective(dist.all_reduce, total)
        return {"processes": self.world, "blocks": self.bounds, "bytes_between_ranks": int(total)}

    def agree_to_stop(self, requested: bool) -> bool:
        """Any rank's Ctrl-C stops every rank after the same round (one all-reduce)."""
        flag = torch.tensor([int(requested)])
        self._collective(dist.all_reduce, flag, op=dist.ReduceOp.MAX)
        return bool(flag)

    def non_finite_nodes(self) -> int:
        """Nodes of every block whose parameters are not finite (one all-reduce)."""
        own = ~torch.isfinite(self._params[self.lo : self.hi]).all(dim=1)
        count = torch.tensor([int(own.sum())])
        self._collective(dist.all_reduce, count)
        return int(count)

    def _collective(self, operation, *args, **kwargs) -> None:
        try:
            operation(*args, **kwargs)
        except RuntimeError as error:
            raise PeerFailure(
                f"rank {self.rank}: a peer rank failed or stopped answering during "
                f"{operation.__name__} ({str(error).splitlines()[0]})"
            ) from None
