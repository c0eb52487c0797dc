"""The two proximal maps of NASP, as pure vectorised torch functions.

C1 (discrete): every kept row of an alpha matrix is one-hot with value 1; rows may be grouped by the node they
feed, and only the ``k`` best rows of each group are kept (the other rows become all-zero).
C2 (box): every entry lies in [0, 1].

Ties are broken by fixed priorities, not by position: ``op_priority`` (rows, ops) and ``row_priority`` (rows,)
hold a seeded random ranking (see :class:`nasp.arch.ArchParameters`). Among entries whose value is exactly the
row maximum the one with the highest op priority wins; among rows whose maximum is equal the one with the
highest row priority wins. Without priorities the lowest index wins (the reference behaviour, which favours
op 0 and is kept only as the fallback for pure-function use).

No function here loops over entries or syncs with the host, except :func:`row_argmax_host`: the choice of
:func:`row_argmax` for one row already read to the host (plain floats).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["prox_c1", "prox_c2", "prox_c2_", "row_argmax", "row_argmax_host", "keep_rows", "random_c1"]


def _default_priority(n: int, device: torch.device) -> Tensor:
    # descending priority -> lowest index wins ties
    return torch.arange(n, 0, -1, device=device, dtype=torch.float32)


def row_argmax(a: Tensor, op_priority: Tensor | None = None) -> Tensor:
    """Index of the largest entry of each row, ties broken by ``op_priority``.

    a: (rows, ops); op_priority: (rows, ops) or (ops,), larger wins a tie. Returns (rows,) int64.
    """
    if op_priority is None:
        op_priority = _default_priority(a.shape[1], a.device)
    is_max = a == a.max(dim=1, keepdim=True).values                      # (rows, ops)
    score = torch.where(is_max, op_priority.to(a.device, torch.float32).expand_as(a), -1.0)
    return score.argmax(dim=1)


def row_argmax_host(row: list[float], op_priority: list[float]) -> int:
    """:func:`row_argmax` of one row on the host: the first of the tied maxima with the top priority (priorities
    > -1); 0 for a row with a NaN (no entry equals a NaN maximum)."""
    if any(v != v for v in row):
        return 0
    top = max(row)
    return max((i for i, v in enumerate(row) if v == top), key=op_priority.__getitem__)


def keep_rows(row_score: Tensor, groups: Tensor | None, k: int, row_priority: Tensor | None = None) -> Tensor:
    """Boolean mask of the rows kept: the ``k`` best rows of every group.

    row_score: (rows,) the value a row is ranked by (its maximum); groups: (rows,) int64 group id of each row, or
    None for "keep every row"; row_priority: (rows,), larger wins a tie. Groups with at most k rows keep all.
    """
    rows = row_score.shape[0]
    if groups is None:
        return torch.ones(rows, dtype=torch.bool, device=row_score.device)
    if row_priority is None:
        row_priority = _default_priority(rows, row_score.device)
    # lexicographic order (group asc, score desc, priority desc) by three stable sorts, least significant first
    order = torch.sort(row_priority.to(row_score.device), descending=True, stable=True).indices
    order = order[torch.sort(row_score[order], descending=True, stable=True).indices]
    order = order[torch.sort(groups[order], stable=True).indices]
    sorted_groups = groups[order]
    # position of each row inside its group: index minus the index where its group starts
    starts = torch.searchsorted(sorted_groups, sorted_groups, right=False)
    position = torch.arange(rows, device=row_score.device) - starts
    keep = torch.empty(rows, dtype=torch.bool, device=row_score.device)
    keep[order] = position < k
    return keep


def prox_c1(
    a: Tensor,
    groups: Tensor | None = None,
    k: int = 1,
    op_priority: Tensor | None = None,
    row_priority: Tensor | None = None,
) -> Tensor:
    """Project ``a`` onto C1: one-hot rows (value 1 at the row's argmax), the k best rows of each group kept.

    a: (rows, ops). Returns a new (rows, ops) tensor of the same dtype, detached from ``a``; rows not kept are 0.
    Rows are ranked inside a group by their maximum entry, the same ranking that derivation uses.
    """
    a = a.detach()
    idx = row_argmax(a, op_priority)                                     # (rows,)
    keep = keep_rows(a.max(dim=1).values, groups, k, row_priority)       # (rows,)
    out = torch.zeros_like(a)
    out.scatter_(1, idx.unsqueeze(1), keep.to(a.dtype).unsqueeze(1))
    return out


def prox_c2(a: Tensor) -> Tensor:
    """Project ``a`` onto C2 = [0, 1] entry-wise (a new tensor)."""
    return a.clamp(0.0, 1.0)


def prox_c2_(a: Tensor) -> Tensor:
    """:func:`prox_c2` in place (one op; it bumps ``a``'s version counter); returns ``a``."""
    return a.clamp_(0.0, 1.0)


def random_c1(
    rows: int, ops: int, groups: Tensor | None, k: int, generator: torch.Generator, device=None
) -> Tensor:
    """A uniform random point of C1: a random op per row, k random rows per group. Returns (rows, ops) float32."""
    scores = torch.rand(rows, ops, generator=generator)
    row_scores = torch.rand(rows, generator=generator)
    idx = scores.argmax(dim=1)
    keep = keep_rows(row_scores, groups, k)
    out = torch.zeros(rows, ops)
    out[torch.arange(rows), idx] = keep.float()
    return out.to(device) if device is not None else out
