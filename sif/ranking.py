"""Top-N ranking evaluation as plain functions, one code path for every model.

A model enters only through ``score_fn(users) -> (b, n_items)`` scores for a batch of user indices (SIF and the
neural baselines score every item with their forward pass, ``implicit`` models with factor dot products).
:func:`evaluate_ranking` then, per batch of users that have test items:

1. masks the user's training items (rows of ``train``) with ``-inf``, so they can never be recommended;
2. takes the top ``K`` with a deterministic tie rule: higher score first, equal scores by the lower item index
   (:func:`topk_by_score_then_index`);
3. computes Recall@K, NDCG@K, HR@K, MAP@K and AUC per user and averages over users with at least one test item.

Definitions (``P`` = the user's test items, ``hits_j`` = 1 when the item at rank ``j`` (0-based) is in ``P``):

- Recall@K = sum(hits) / |P|;  HR@K = 1 if any hit;
- NDCG@K = sum_j hits_j / log2(j + 2) divided by the same sum for an ideal list of min(|P|, K) hits;
- MAP@K = (1 / min(|P|, K)) * sum_j hits_j * precision@(j + 1);
- AUC = P(score of a test item > score of a candidate non-test item) over the candidates (items not in
  ``train``), equal scores counting 1/2 (Mann-Whitney with mid-ranks); users without any candidate negative
  are left out of the AUC mean.

Batches of users are sized so that ``b * n_items`` stays under ``max_elements`` (dense score matrices of an
ML-20M-sized catalogue fit in memory); only the per-user sums are kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

__all__ = ["evaluate_ranking", "topk_by_score_then_index", "ranking_metrics", "auc_scores", "user_batches",
           "METRICS"]

METRICS = ("recall", "ndcg", "hr", "map")
ScoreFn = Callable[[Tensor], Tensor]


def topk_by_score_then_index(scores: Tensor, k: int) -> Tensor:
    """(b, k) item indices of the k best scores per row; equal scores are ordered by the lower item index.

    Exact and deterministic (unlike ``torch.topk`` on ties): every item scoring above the k-th value is kept,
    and the remaining places go to the lowest-indexed items scoring exactly the k-th value.
    """
    b, m = scores.shape
    k = min(k, m)
    kth = torch.topk(scores, k, dim=1).values[:, -1:]                       # (b, 1)
    above = scores > kth                                                     # (b, m)
    equal = scores == kth
    need = k - above.sum(1, keepdim=True)                                    # (b, 1) places left for ties
    chosen = above | (equal & (torch.cumsum(equal, dim=1) <= need))          # (b, m), exactly k per row
    idx = chosen.nonzero()[:, 1].view(b, k)                                  # (b, k) ascending item index
    order = torch.sort(scores.gather(1, idx), dim=1, descending=True, stable=True).indices
    return idx.gather(1, order)


def ranking_metrics(hits: Tensor, num_pos: Tensor) -> dict[str, Tensor]:
    """Per-user Recall/NDCG/HR/MAP at K = hits.shape[1] from (b, K) hits and (b,) test-item counts (> 0)."""
    hits = hits.double()
    k = hits.shape[1]
    n = num_pos.double()
    discounts = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float64, device=hits.device))   # (K,)
    ideal_len = torch.clamp(n, max=k).long()                                  # (b,)
    idcg = torch.cumsum(discounts, 0)[ideal_len - 1]                          # (b,)
    precision = torch.cumsum(hits, 1) / torch.arange(1, k + 1, dtype=torch.float64, device=hits.device)
    return {"recall": hits.sum(1) / n, "ndcg": (hits * discounts).sum(1) / idcg,
            "hr": (hits.sum(1) > 0).double(), "map": (precision * hits).sum(1) / ideal_len.double()}


def auc_scores(scores: Tensor, positive: Tensor, candidate: Tensor) -> tuple[Tensor, Tensor]:
    """Per-user AUC of ``positive`` items against the other ``candidate`` items, ties counting 1/2.

    scores (b, m); positive, candidate (b, m) bool (positives must be candidates). Returns (auc (b,), valid (b,)
    bool): valid is False where a user has no positive or no negative candidate.
    """
    s = scores.double().masked_fill(~candidate, float("-inf"))                # non-candidates sort lowest
    sorted_s, order = torch.sort(s, dim=1)                                    # ascending
    m = s.shape[1]
    pos = torch.arange(1, m + 1, dtype=torch.float64, device=s.device).expand_as(sorted_s)   # 1-based ranks
    new_group = torch.ones_like(sorted_s, dtype=torch.bool)
    new_group[:, 1:] = sorted_s[:, 1:] != sorted_s[:, :-1]
    gid = torch.cumsum(new_group, 1) - 1                                      # (b, m) tie-group id
    first = torch.zeros_like(sorted_s).scatter_reduce(1, gid, pos, "amin", include_self=False)
    last = torch.zeros_like(sorted_s).scatter_reduce(1, gid, pos, "amax", include_self=False)
    midrank = ((first + last) / 2).gather(1, gid)                             # (b, m) in sorted order
    ranks = torch.empty_like(midrank).scatter_(1, order, midrank)             # back to item order
    n_off = (~candidate).sum(1).double()                                      # masked items take the low ranks
    n_pos = positive.sum(1).double()
    n_neg = candidate.sum(1).double() - n_pos
    rank_sum = ((ranks - n_off.unsqueeze(1)) * positive).sum(1)
    u_stat = rank_sum - n_pos * (n_pos + 1) / 2
    valid = (n_pos > 0) & (n_neg > 0)
    return torch.where(valid, u_stat / (n_pos * n_neg).clamp(min=1), torch.zeros_like(u_stat)), valid


def user_batches(users: np.ndarray, num_items: int, max_elements: int, batch_size: int | None = None):
    """Consecutive slices of ``users`` with ``len * num_items <= max_elements`` (at least one user each)."""
    b = batch_size or max(1, max_elements // max(num_items, 1))
    for s in range(0, len(users), b):
        yield users[s: s + b]


def _dense_rows(matrix: sp.csr_matrix, rows: np.ndarray, device) -> Tensor:
    return torch.from_numpy(matrix[rows].toarray() != 0).to(device)          # (b, m) bool


def _user_metrics(score_fn: ScoreFn, train: sp.csr_matrix, test: sp.csr_matrix, ks: Sequence[int], auc: bool,
                  users: np.ndarray | None, device, max_elements: int, batch_size: int | None):
    """Per batch of users with a test item that is not a training item: {key: (b,) float64 per-user values}, the
    keys of :func:`evaluate_ranking` (``auc`` NaN where a user has no candidate negative), and the (b,) user ids."""
    if train.shape != test.shape:
        raise ValueError(f"train {train.shape} and test {test.shape} must have the same users x items shape")
    train, test = sp.csr_matrix(train), sp.csr_matrix(test)
    has_test = np.flatnonzero(np.diff(test.indptr) > 0)
    users = has_test if users is None else np.intersect1d(np.asarray(users, dtype=np.int64), has_test)
    num_items = train.shape[1]
    for ub in user_batches(users, num_items, max_elements, batch_size):
        ut = torch.from_numpy(ub).to(device)
        scores = score_fn(ut).float()
        if scores.shape != (len(ub), num_items):
            raise ValueError(f"score_fn returned shape {tuple(scores.shape)}, expected ({len(ub)}, {num_items})")
        seen, target = _dense_rows(train, ub, device), _dense_rows(test, ub, device)
        target = target & ~seen                                               # a filtered item cannot be hit
        scores = scores.masked_fill(seen, float("-inf"))
        num_pos = target.sum(1)
        keep = num_pos > 0
        top = topk_by_score_then_index(scores, max(ks))                       # (b, Kmax)
        hits = target.gather(1, top)
        out = {f"{name}@{k}": v[keep] for k in ks
               for name, v in ranking_metrics(hits[:, :k], num_pos.clamp(min=1)).items()}
        if auc:
            a, ok = auc_scores(scores, target, ~seen)
            out["auc"] = torch.where(ok, a, torch.full_like(a, float("nan")))[keep]
        yield {key: v.cpu().numpy() for key, v in out.items()}, ub[keep.cpu().numpy()]


@torch.no_grad()
def evaluate_ranking(score_fn: ScoreFn, train: sp.csr_matrix, test: sp.csr_matrix, ks: Sequence[int] = (10,),
                     auc: bool = True, users: np.ndarray | None = None, device="cpu",
                     max_elements: int = 1 << 24, batch_size: int | None = None,
                     per_user: bool = False) -> dict:
    """Mean ranking metrics over the users with test items, the user's ``train`` items filtered.

    score_fn: ``(users (b,) int64 tensor on device) -> (b, n_items)`` scores; train, test: users x items CSR
    (non-zeros = interactions); ks: cut-offs (keys ``recall@10``, ``ndcg@10``, ``hr@10``, ``map@10``; ``auc``).
    users: restrict to these user indices (default: every user with a test item). ``users`` in the result is
    the number of users averaged over (those with at least one test item that is not a training item).
    per_user: return the per-user values instead, {key: (n,) float64 array} in the order of ``users`` (an (n,)
    int64 array of those users; ``auc`` is NaN for a user without any candidate negative), e.g. for paired tests.
    """
    parts = list(_user_metrics(score_fn, train, test, ks, auc, users, device, max_elements, batch_size))
    keys = [f"{name}@{k}" for k in ks for name in METRICS] + (["auc"] if auc else [])
    values = {key: np.concatenate([p[key] for p, _ in parts]) if parts else np.zeros(0) for key in keys}
    if per_user:
        return {**values, "users": np.concatenate([u for _, u in parts]) if parts else np.zeros(0, np.int64)}
    n = len(values[keys[0]])
    out = {key: (float(values[key].sum() / n) if n else float("nan")) for key in keys if key != "auc"}
    if auc:
        ok = ~np.isnan(values["auc"])
        out["auc"] = float(values["auc"][ok].mean()) if ok.any() else float("nan")
    out["users"] = float(n)
    return out
