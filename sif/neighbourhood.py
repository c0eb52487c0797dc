"""Implicit-feedback neighbourhoods (SVD++ and its item-side mirror) for any model with user/item embeddings.

Koren's SVD++ represents a user by ``p_u + |N(u)|^-1/2 sum_{j in N(u)} y_j``: its free vector plus the normalised sum
of a second vector per item it rated (which items a user chose to rate carries information beyond the ratings).
The mirror image does the same for items with the users who rated them. :class:`Neighbourhood` computes that sum
for a batch of ids on one side; :class:`SIFSpace` and the baselines (:class:`sif.baselines.RatingModel`) add it to
the looked-up embeddings before anything else (so g, the interaction function and the penalty see ``p_u + n_u``).

N(.) comes from the TRAINING interactions only (``fit`` builds it; ``refit`` rebuilds it from train + valid).
The neighbour lists are stored as CSR buffers (in the state_dict, so a saved model predicts without the data).

Two exact ways to compute the sums: per batch with ``embedding_bag`` over the batch ids' neighbour lists (work
proportional to the batch's neighbours, one host read of their count per call), or one sparse matrix product over
every row (no host read, work proportional to all interactions). "auto" takes the product on accelerators, and on
the CPU unless the batch's neighbours are fewer than a quarter of all interactions (on ML-100K at batch 1024 the
batch's neighbours outnumber the interactions, and the product with its cached transpose took 4.5 ms forward and
backward per side against 50-76 ms for the bag, measured under load).

Row-wise (``sparse=True``, what ``model.sparse_rows`` sets): the weight is marked with
:func:`nasp.optim.mark_row_sparse` and its gradient is a sparse COO tensor over the neighbours of the batch's
distinct ids only (the bag over the distinct ids, gathered back to the batch), so a step reads and updates
O(batch neighbours) rows and their optimiser state, never the whole table (the product's gradient is dense over
every row, so row-wise neighbourhoods always take the bag). Same semantics as the embedding tables' row-wise
updates: Adagrad and SGD without momentum or weight decay equal the dense path; Adam becomes lazy Adam.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nasp.optim import mark_row_sparse

__all__ = ["Neighbourhood", "neighbour_lists", "make_neighbourhoods", "add_neighbourhoods", "set_neighbours"]


class _CSRMatmul(torch.autograd.Function):
    """``A @ W`` for a constant sparse CSR ``A`` whose transpose is given: both passes are CSR x dense products
    (autograd's own backward of a sparse product converts formats on every call, 10-30x slower on a CPU)."""

    @staticmethod
    def forward(ctx, weight: Tensor, adj: Tensor, adj_t: Tensor) -> Tensor:     # (C, k) -> (R, k)
        ctx.adj_t = adj_t
        return torch.sparse.mm(adj, weight)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return torch.sparse.mm(ctx.adj_t, grad), None, None


def _inv_sqrt_degree(deg: Tensor, dtype: torch.dtype) -> Tensor:
    """|N(x)|^-1/2 per row; rows without neighbours get 1 (their sum is 0 anyway)."""
    return deg.clamp_min(1).to(dtype).rsqrt()


def neighbour_lists(rows: Tensor, cols: Tensor, num_rows: int) -> tuple[Tensor, Tensor]:
    """CSR (indptr (num_rows + 1,), indices (nnz,)) of the distinct (row, col) pairs, cols sorted per row."""
    rows, cols = rows.long().cpu(), cols.long().cpu()
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= num_rows):
        raise ValueError(f"neighbour_lists: row ids must lie in [0, {num_rows})")
    num_cols = int(cols.max()) + 1 if cols.numel() else 1
    key = torch.unique(rows * num_cols + cols)                     # sorted by (row, col), duplicates removed
    r, c = key // num_cols, key % num_cols
    indptr = torch.zeros(num_rows + 1, dtype=torch.long)
    indptr[1:] = torch.cumsum(torch.bincount(r, minlength=num_rows), 0)
    return indptr, c


class Neighbourhood(nn.Module):
    """``forward(ids) -> (B, k)``: ``|N(x)|^-1/2 sum_{j in N(x)} y_j`` for each id x of one side (0 if N(x) is empty).

    num_rows: ids of this side; num_cols: ids of the other side (the rows of ``weight``, shape (num_cols, k));
    indptr/indices: CSR neighbour lists from :func:`neighbour_lists` (None: empty lists, filled later by
    :meth:`set_lists` or ``load_state_dict``). mode: "bag" (per batch), "matmul" (all rows) or "auto" (the rule of
    the module docstring). sparse: row-wise updates of ``weight`` (the module docstring; the bag over the batch's
    distinct ids, so mode "matmul" is refused).
    """

    def __init__(self, num_rows: int, num_cols: int, k: int, indptr: Tensor | None = None,
                 indices: Tensor | None = None, init_std: float = 0.0, generator: torch.Generator | None = None,
                 mode: str = "auto", sparse: bool = False):
        super().__init__()
        if mode not in ("auto", "bag", "matmul"):
            raise ValueError(f"mode must be 'auto', 'bag' or 'matmul', got {mode!r}")
        if sparse and mode == "matmul":
            raise ValueError("row-wise neighbourhoods (sparse=True) take the bag: mode 'matmul' has dense gradients")
        self.mode, self.num_rows, self.num_cols, self.sparse = mode, num_rows, num_cols, bool(sparse)
        if indptr is None:
            indptr, indices = torch.zeros(num_rows + 1, dtype=torch.long), torch.zeros(0, dtype=torch.long)
        if indptr.shape != (num_rows + 1,):
            raise ValueError(f"indptr must have {num_rows + 1} entries, got {tuple(indptr.shape)}")
        self.register_buffer("indptr", indptr.long())
        self.register_buffer("indices", indices.long())
        self.weight = nn.Parameter(torch.zeros(num_cols, k))
        if init_std:
            with torch.no_grad():
                self.weight.copy_(init_std * torch.randn(num_cols, k, generator=generator))
        if self.sparse:
            mark_row_sparse(self.weight)

    def set_lists(self, indptr: Tensor, indices: Tensor) -> None:
        """Replace the neighbour lists (CSR from :func:`neighbour_lists`, e.g. rebuilt from train + valid)."""
        if indptr.shape != (self.num_rows + 1,):
            raise ValueError(f"indptr must have {self.num_rows + 1} entries, got {tuple(indptr.shape)}")
        if indices.numel() and int(indices.max()) >= self.num_cols:
            raise ValueError(f"neighbour ids must lie in [0, {self.num_cols})")
        self.indptr = indptr.long().to(self.indptr.device)
        self.indices = indices.long().to(self.indices.device)
        self._adj_key = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("indptr", "indices"):            # the lists' length is data: take the saved one
            saved = state_dict.get(prefix + name)
            if saved is not None and saved.shape != getattr(self, name).shape:
                setattr(self, name, torch.empty_like(saved, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._adj_key = None

    @property
    def nnz(self) -> int:
        return self.indices.numel()

    def _bag(self, ids: Tensor, lengths: Tensor, total: int) -> Tensor:
        """The sums from the batch ids' own lists; lengths (B,) their list lengths, total = lengths.sum()."""
        starts = self.indptr[ids]                                                         # (B,)
        offsets = torch.cumsum(lengths, 0) - lengths                                      # (B,) exclusive
        seg = torch.repeat_interleave(torch.arange(ids.numel(), device=ids.device), lengths, output_size=total)
        pos = torch.arange(total, device=ids.device) - offsets[seg] + starts[seg]        # (total,)
        sums = F.embedding_bag(self.indices[pos], self.weight, offsets, mode="sum", sparse=self.sparse)   # (B, k)
        return sums * _inv_sqrt_degree(lengths, self.weight.dtype).unsqueeze(-1)

    def _adjacency(self) -> tuple[Tensor, Tensor]:
        """(A, A^T) as sparse CSR matrices with A[x, j] = |N(x)|^-1/2 for j in N(x); cached until the lists change."""
        key = (self.indptr.data_ptr(), self.indptr._version, self.indices.data_ptr(), self.indices._version,
               self.indices.device, self.weight.dtype)           # _version: in-place loads change the lists too
        if getattr(self, "_adj_key", None) != key:
            deg = self.indptr[1:] - self.indptr[:-1]                                      # (num_rows,)
            values = torch.repeat_interleave(_inv_sqrt_degree(deg, self.weight.dtype), deg,
                                             output_size=self.nnz)                        # (nnz,)
            with warnings.catch_warnings():              # "sparse CSR support is in beta"
                warnings.simplefilter("ignore", UserWarning)
                adj = torch.sparse_csr_tensor(self.indptr, self.indices, values, (self.num_rows, self.num_cols))
                adj_t = adj.to_sparse_coo().t().coalesce().to_sparse_csr()
            self._adj, self._adj_key = (adj, adj_t), key
        return self._adj

    def _matmul(self, ids: Tensor) -> Tensor:
        adj, adj_t = self._adjacency()
        return _CSRMatmul.apply(self.weight, adj, adj_t).index_select(0, ids)            # (B, k)

    def _rows(self, ids: Tensor) -> Tensor:
        """Row-wise: the bag over the distinct ids (U,), gathered back to the batch (B, k); its gradient is a sparse
        COO tensor over the distinct ids' neighbours."""
        distinct, inverse = torch.unique(ids, return_inverse=True)                       # (U,), (B,)
        lengths = self.indptr[distinct + 1] - self.indptr[distinct]                        # (U,)
        return self._bag(distinct, lengths, int(lengths.sum())).index_select(0, inverse)

    def forward(self, ids: Tensor) -> Tensor:
        if self.nnz == 0:
            return self.weight.new_zeros(ids.shape[0], self.weight.shape[1])
        if self.sparse:
            return self._rows(ids)
        if self.mode == "matmul" or (self.mode == "auto" and ids.device.type != "cpu"):    # no host read
            return self._matmul(ids)
        lengths = self.indptr[ids + 1] - self.indptr[ids]                                 # (B,)
        total = int(lengths.sum())                                 # the one host read (free on the CPU)
        if self.mode == "auto" and total * 4 >= self.nnz:         # many neighbours in the batch: one product
            return self._matmul(ids)
        return self._bag(ids, lengths, total)

    def extra_repr(self) -> str:
        return (f"rows={self.num_rows}, cols={self.num_cols}, k={self.weight.shape[1]}, nnz={self.nnz}"
                + (", sparse=True" if self.sparse else ""))


NEIGHBOURHOOD_SIDES = {None: (), "none": (), "user": ("u",), "item": ("v",), "both": ("u", "v")}


def make_neighbourhoods(which: str | None, num_users: int, num_items: int, k: int, sparse: bool = False
                        ) -> nn.ModuleDict:
    """Empty neighbourhoods for the sides ``which`` names ("user", "item", "both" or None); fill them with
    :func:`set_neighbours`. Their vectors start at zero, so the model starts as the one without them. sparse:
    row-wise updates of their vectors (the model's ``sparse_rows``)."""
    if which not in NEIGHBOURHOOD_SIDES:
        raise ValueError(f"neighbourhood must be one of {sorted(k for k in NEIGHBOURHOOD_SIDES if k)} or None, "
                         f"got {which!r}")
    sizes = {"u": (num_users, num_items), "v": (num_items, num_users)}
    return nn.ModuleDict({s: Neighbourhood(*sizes[s], k, sparse=sparse) for s in NEIGHBOURHOOD_SIDES[which]})


def set_neighbours(neighbourhoods: nn.ModuleDict, users: Tensor, items: Tensor) -> None:
    """Neighbour lists from interactions (users, items): a user's items, an item's users."""
    for side, nb in neighbourhoods.items():
        rows, cols = (users, items) if side == "u" else (items, users)
        nb.set_lists(*neighbour_lists(rows, cols, nb.num_rows))


def add_neighbourhoods(neighbourhoods: nn.ModuleDict, emb: dict[str, Tensor], idx: dict[str, Tensor],
                       reg: float = 1.0) -> tuple[dict[str, Tensor], list[Tensor]]:
    """(``emb[s] + n_s`` for each side s that has a neighbourhood, the rows the L2 penalty sees: each n_s (B, k)
    times sqrt(reg), so that a penalty ``c * |row|^2`` on them is ``c * reg * |n_s|^2``)."""
    if not len(neighbourhoods):
        return emb, []
    parts = {s: nb(idx[s]) for s, nb in neighbourhoods.items()}
    scale = reg ** 0.5
    return ({s: e + parts[s] if s in parts else e for s, e in emb.items()},
            [p * scale for p in parts.values()])
