"""The round plan: who may send to whom in one round, with the mixing weights.

``CommPlan`` is what a topology (or a protocol that builds its own plan) hands the
engine for a round; ``csr_matrix`` is the one builder of the sparse matrices gossip
multiplies with (the mixing matrix W, a protocol's inbox weights).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse
import torch

from privlab.errors import check, is_integer


def csr_matrix(
    rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]
) -> torch.Tensor:
    """A torch CSR matrix with ``M[rows[k], cols[k]] = values[k]`` (duplicates add up when
    multiplied). Entries may come in any order; they are sorted by (row, col) unless they
    already are."""
    if len(rows) > 1:
        key = rows * shape[1] + cols
        if not bool((key[1:] >= key[:-1]).all()):
            order = torch.argsort(key, stable=True)
            rows, cols, values = rows[order], cols[order], values[order]
    crow = torch.searchsorted(
        rows, torch.arange(shape[0] + 1, dtype=rows.dtype, device=rows.device)
    )
    with warnings.catch_warnings():  # torch's one-time "CSR support is in beta" notice
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, cols, values, shape, check_invariants=False)


def sparse_matmul(matrix: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """``matrix @ dense`` for a torch CSR ``matrix``: SciPy's CSR kernel on CPU (4x faster
    than ``torch.sparse.mm`` there for gossip-sized products, measured at n = 1024),
    torch's on other devices or when gradients must flow."""
    if dense.device.type != "cpu" or dense.requires_grad:
        return torch.sparse.mm(matrix, dense)
    arrays = (matrix.values(), matrix.col_indices(), matrix.crow_indices())
    scipy_matrix = scipy.sparse.csr_matrix(tuple(a.numpy() for a in arrays), shape=matrix.shape)
    return torch.from_numpy(scipy_matrix @ dense.numpy())


@dataclass(frozen=True, eq=False)
class CommPlan:
    """Who may send to whom in one round, and the mixing weights.

    Directed edges are unique, carry no self edge, and are sorted by (dst, src). The
    receiver ``dst`` puts ``weight`` on the model of ``src`` and ``self_weight`` on its own,
    so one gossip step is ``W @ P`` (Lian et al., 2017, Algorithm 1). Topologies build
    plans on the CPU; the engine moves them to its device (``to``). The tensors are
    shared (a static topology returns one cached plan): treat them as read-only.
    :meth:`from_edges` builds a plan from edges in any order.
    """

    num_nodes: int
    src: torch.Tensor
    dst: torch.Tensor
    weight: torch.Tensor
    self_weight: torch.Tensor

    def __post_init__(self) -> None:
        n, e = self.num_nodes, self.src.numel()
        check(is_integer(n) and n >= 1, "num_nodes", ">= 1 (an integer)", n)
        for field, tensor, dtype, size in (
            ("src", self.src, torch.int64, e),
            ("dst", self.dst, torch.int64, e),
            ("weight", self.weight, torch.float32, e),
            ("self_weight", self.self_weight, torch.float32, n),
        ):
            found = f"{tensor.dtype} of shape {tuple(tensor.shape)}"
            check(
                tensor.dtype == dtype and tensor.shape == (size,),
                field,
                f"a {dtype} tensor of shape ({size},)",
                found,
            )
        if e == 0:
            return
        low, high = (
            int(torch.minimum(self.src, self.dst).min()),
            int(torch.maximum(self.src, self.dst).max()),
        )
        check(low >= 0 and high < n, "src/dst", f"node ids in [0, {n})", (low, high))
        self_edges = int((self.src == self.dst).sum())
        check(self_edges == 0, "src/dst", "free of self edges (use self_weight)", self_edges)
        key = self.dst * n + self.src
        check(
            bool((key[1:] > key[:-1]).all()),
            "src/dst",
            "unique edges sorted by (dst, src) (build with CommPlan.from_edges)",
            "unsorted",
        )

    @classmethod
    def from_edges(
        cls,
        num_nodes: int,
        src: torch.Tensor | np.ndarray,
        dst: torch.Tensor | np.ndarray,
        weight: torch.Tensor | np.ndarray,
        self_weight: torch.Tensor | np.ndarray,
    ) -> CommPlan:
        """A plan from directed edges in any order; they are sorted by (dst, src)."""
        src_t = torch.as_tensor(src, dtype=torch.int64).reshape(-1)
        dst_t = torch.as_tensor(dst, dtype=torch.int64).reshape(-1)
        weight_t = torch.as_tensor(weight, dtype=torch.float32).reshape(-1)
        order = torch.argsort(dst_t * num_nodes + src_t)
        self_t = torch.as_tensor(self_weight, dtype=torch.float32).reshape(-1).clone()
        return cls(num_nodes, src_t[order], dst_t[order], weight_t[order], self_t)

    @property
    def device(self) -> torch.device:
        return self.src.device

    def to(self, device: torch.device) -> CommPlan:
        """This plan on ``device`` (itself when it is there already)."""
        if self.device == device:
            return self
        moved = (t.to(device) for t in (self.src, self.dst, self.weight, self.self_weight))
        return CommPlan(self.num_nodes, *moved)

    @property
    def num_edges(self) -> int:
        """Number of directed edges (an undirected edge counts twice)."""
        return self.src.numel()

    def mixing_matrix(
        self, layout: str = "csr", dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """W with W[dst, src] = weight and W[i, i] = self_weight[i], so the gossip step is W @ P
        for a stacked parameter matrix P[n, D]. layout "csr" (torch.sparse_csr) or "dense".

        The CSR matrix stores every diagonal entry, even a zero one: nnz = E + n.
        """
        n = self.num_nodes
        diag = torch.arange(n, device=self.device)
        if layout == "dense":
            matrix = torch.zeros(n, n, dtype=dtype, device=self.device)
            matrix[self.dst, self.src] = self.weight.to(dtype)
            matrix[diag, diag] = self.self_weight.to(dtype)
            return matrix
        check(layout == "csr", "layout", "'csr' or 'dense'", layout)
        rows, cols = torch.cat([self.dst, diag]), torch.cat([self.src, diag])
        values = torch.cat([self.weight, self.self_weight]).to(dtype)
        return csr_matrix(rows, cols, values, (n, n))

    def csr(self) -> torch.Tensor:
        """``mixing_matrix("csr")``, built once per plan (a static topology's plan is shared
        by every round, so gossip builds W once)."""
        matrix = self.__dict__.get("_csr")
        if matrix is None:
            matrix = self.mixing_matrix("csr")
            object.__setattr__(self, "_csr", matrix)
        return matrix

    def weights_into(self, node: int) -> dict[int, float]:
        """``{sender: W[node, sender]}`` over the edges into ``node`` (for reference code)."""
        to_node = self.dst == node
        return dict(zip(self.src[to_node].tolist(), self.weight[to_node].tolist()))

    def in_degree(self) -> torch.Tensor:
        """Number of senders to each node, int64 [n]."""
        return torch.bincount(self.dst, minlength=self.num_nodes)

    def out_degree(self) -> torch.Tensor:
        """Number of receivers of each node, int64 [n]."""
        return torch.bincount(self.src, minlength=self.num_nodes)

    def neighbors_in(self, node: int) -> list[int]:
        """Sorted senders to ``node`` (a slow helper for reference code)."""
        check(
            is_integer(node) and 0 <= node < self.num_nodes,
            "node",
            f"in [0, {self.num_nodes})",
            node,
        )
        return self.src[self.dst == node].tolist()
