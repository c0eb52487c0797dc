"""Sparse gradient sync for data-parallel runs: ranks exchange only the touched rows of row-wise embedding tables
(:func:`nasp.optim.mark_row_sparse`), not the whole tables.

Each rank coalesces its sparse COO gradient (unique rows, summed row gradients), the ranks all-gather their row
counts and then the padded (index, row) pairs in two collectives (indices, values) for all tables at once, and
every rank sums the pairs of all ranks in rank order (``coalesce``) and divides by the world size: the same
arithmetic on every rank, so the ranks stay bit-identical, and the mean of the per-rank mean-loss gradients, so
N ranks equal one process on the same global batch up to float rounding. The traffic per step is
world x (touched rows x (k + 1)) numbers instead of the tables' N x k.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["allreduce_sparse_mean_"]


def _gather(t: Tensor, world: int) -> list[Tensor]:
    out = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(out, t)
    return out


def _pad(t: Tensor, n: int) -> Tensor:
    """``t`` (m, ...) padded with zeros to n rows."""
    return torch.cat([t, t.new_zeros(n - t.shape[0], *t.shape[1:])]) if n > t.shape[0] else t


@torch.no_grad()
def allreduce_sparse_mean_(tensors: Sequence[Tensor]) -> None:
    """Average sparse COO gradients (N, k) in place over all ranks (one dtype and device per call: the caller
    buckets). Every rank passes the same tables in the same order; a rank may touch no row of a table."""
    if not tensors or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    world, parts = dist.get_world_size(), [t.coalesce() for t in tensors]
    dev = parts[0].device
    counts = torch.stack(_gather(torch.tensor([p._nnz() for p in parts], dtype=torch.int64, device=dev), world))
    top = counts.max(0).values.tolist()                          # (tables,) the most rows any rank sends
    rows = [p.values().reshape(p._nnz(), -1) for p in parts]      # (nnz, k) each
    idx = torch.cat([_pad(p.indices()[0], n) for p, n in zip(parts, top, strict=True)])
    vals = torch.cat([_pad(r, n).reshape(-1) for r, n in zip(rows, top, strict=True)])
    all_idx, all_vals = _gather(idx, world), _gather(vals, world)
    counts = counts.tolist()
    i_off = v_off = 0
    for j, (t, p, r) in enumerate(zip(tensors, parts, rows, strict=True)):
        k = r.shape[1]
        got_i = torch.cat([all_idx[w][i_off:i_off + counts[w][j]] for w in range(world)])
        got_v = torch.cat([all_vals[w][v_off:v_off + counts[w][j] * k].view(-1, k) for w in range(world)])
        i_off, v_off = i_off + top[j], v_off + top[j] * k
        total = torch.sparse_coo_tensor(got_i.unsqueeze(0), got_v.view(-1, *p.shape[1:]), p.shape,
                                        check_invariants=False).coalesce()
        t.copy_(total.div_(world) if total._nnz() else total)
