"""Implicit-feedback training for SIF and the neural baselines: ranking losses, negative sampling, the task
adapter of the search loop, and scoring every item for :func:`sif.ranking.evaluate_ranking`.

Data: positives are the (user, item) pairs of a users x items CSR matrix (e.g. ratings >= 4, see
:func:`positives`). Training batches are ``(users, items)`` positive pairs; the task draws negatives itself with a
:class:`NegativeSampler` that never returns one of the user's positives.

Losses (``s`` = model score, a logit):

- ``"bpr"``: ``-log sigmoid(s(u, i) - s(u, j))`` for each positive ``i`` and each of ``num_negatives`` sampled
  negatives ``j`` (Rendle et al.'s pairwise loss), averaged;
- ``"bce"``: binary cross-entropy with label 1 on the positive and 0 on each sampled negative (NCF's pointwise
  loss), averaged over the ``1 + num_negatives`` terms;
- ``"softmax"``: sampled softmax, the cross-entropy of the positive against its ``num_negatives`` sampled
  negatives, ``-s(u, i) + log(exp s(u, i) + sum_j exp s(u, j))``, averaged over positives (a listwise loss: each
  negative is weighted by how high it scores, where BPR weights every pair alike).

All three add ``reg * (sum of the norms of the batch's embedding rows)`` as the rating task does.

SIF defaults for these tasks (:class:`sif.recommender.SIFRecommender` with ``task="bpr"``, ``"bce"`` or
``"softmax"``): heads in an L2 ball of radius sqrt(embedding_dim) instead of the paper's unit ball (which kept BPR
scores so small that SIF sat at the popularity level on ML-100K), and a search over :data:`RANKING_OPS` only (see
benchmarks/README.md, implicit).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from data_loaders import BatchIterator, RatingDataset, leave_k_out_split, time_split, to_csr
from nasp.arch import SPARSE, ArchView

from .ensemble import AveragedModel
from .model import RatingModule
from .neighbourhood import add_neighbourhoods
from .ranking import evaluate_ranking

__all__ = ["LOSSES", "NegativeSampler", "RankingData", "ImplicitTask", "positives", "positive_pairs",
           "score_all_items", "model_score_fn", "positive_iterator", "split_matrices",
           "implicit_splits", "RANKING_OPS"]

LOSSES = ("bpr", "bce", "softmax")

# The matrix interaction functions that can rank items differently for different users. ``plus`` and ``concat``
# give a head output ``a(u) + b(v)`` (a user term plus an item term), so every user gets the same item order: for
# ranking they add nothing that an item bias does not already express. SIF's default search space for the implicit
# tasks (see :class:`sif.recommender.SIFRecommender`).
RANKING_OPS = ("multiply", "max", "min")


# ---- data ---------------------------------------------------------------------------------------------------
def positives(ds: RatingDataset, threshold: float | None = None) -> RatingDataset:
    """The rows of ``ds`` with rating >= ``threshold`` (all rows when None), same id maps."""
    if threshold is None:
        return ds
    return ds.subset(torch.nonzero(ds.ratings >= threshold, as_tuple=True)[0])


def positive_pairs(matrix: sp.csr_matrix) -> tuple[Tensor, Tensor]:
    """(users, items) int64 tensors of the non-zeros of a users x items CSR matrix, in row-major order."""
    coo = sp.csr_matrix(matrix).tocoo()
    return torch.from_numpy(coo.row.astype(np.int64)), torch.from_numpy(coo.col.astype(np.int64))


def positive_iterator(matrix: sp.csr_matrix, batch_size: int, shuffle: bool = True, seed: int = 0,
                      device="cpu") -> BatchIterator:
    """Seeded, resumable batches ``(users, items)`` of the positives of ``matrix``."""
    users, items = positive_pairs(matrix)
    return BatchIterator({"users": users, "items": items}, batch_size=batch_size, shuffle=shuffle, seed=seed,
                         device=device, fields=("users", "items"))


class RankingData:
    """What ranking evaluation needs: the users x items CSR of items to filter (``seen``, the training
    positives) and of items to find (``target``), plus evaluation settings. It is the "loader" that
    :meth:`ImplicitTask.evaluate` receives from the search loop and the stand-alone trainer."""

    def __init__(self, seen: sp.csr_matrix, target: sp.csr_matrix, ks=(10,), auc: bool = False,
                 max_elements: int = 1 << 24):
        self.seen, self.target = sp.csr_matrix(seen), sp.csr_matrix(target)
        if self.seen.shape != self.target.shape:
            raise ValueError(f"seen {self.seen.shape} and target {self.target.shape} must have the same shape")
        self.ks, self.auc, self.max_elements = tuple(ks), auc, max_elements


# ---- negative sampling --------------------------------------------------------------------------------------
class NegativeSampler:
    """Uniform negatives that are never a positive of their user.

    The positives are kept as one sorted int64 key array ``user * num_items + item``; a draw is uniform over all
    items, and the draws that hit a positive are redrawn (vectorised ``searchsorted`` membership test) for at
    most ``max_rounds`` rounds. Draws still colliding after that (only for users with almost every item
    positive) are replaced by an exact uniform draw over the user's non-positives. A user with no negative
    item at all raises ValueError. Randomness comes from ``generator`` or torch's global RNG (so checkpoints
    that save the RNG resume exactly).
    """

    def __init__(self, matrix: sp.csr_matrix, max_rounds: int = 20, device="cpu"):
        m = sp.csr_matrix(matrix)
        m.sum_duplicates()
        self.num_users, self.num_items = m.shape
        self.matrix = m
        users, items = positive_pairs(m)
        self.device = torch.device(device)
        self.keys = torch.sort(users * self.num_items + items).values.to(self.device)     # (nnz,) sorted
        self.counts = torch.from_numpy(np.diff(m.indptr).astype(np.int64)).to(self.device)  # (U,)
        self.max_rounds = max_rounds

    def is_positive(self, users: Tensor, items: Tensor) -> Tensor:
        """Bool tensor, True where (user, item) is a positive (same shape as ``users``)."""
        if len(self.keys) == 0:
            return torch.zeros_like(users, dtype=torch.bool)
        q = users * self.num_items + items
        pos = torch.searchsorted(self.keys, q).clamp(max=len(self.keys) - 1)
        return self.keys[pos] == q

    def sample(self, users: Tensor, num: int = 1, generator: torch.Generator | None = None) -> Tensor:
        """(len(users), num) negative items for each user."""
        users = users.to(self.device)
        if bool((self.counts[users] >= self.num_items).any()):
            raise ValueError("a user has every item as a positive: no negative item can be sampled")
        uu = users.unsqueeze(1).expand(-1, num)                                  # (B, num)
        items = torch.randint(self.num_items, uu.shape, device=self.device, generator=generator)
        bad = self.is_positive(uu, items)
        for _ in range(self.max_rounds):
            if self.device.type == "cpu" and not bool(bad.any()):   # accelerators skip the sync per round
                return items
            redraw = torch.randint(self.num_items, uu.shape, device=self.device, generator=generator)
            items = torch.where(bad, redraw, items)
            bad = bad & self.is_positive(uu, items)
        if bool(bad.any()):
            items = self._exact(uu, items, bad, generator)
        return items

    def _exact(self, uu: Tensor, items: Tensor, bad: Tensor, generator) -> Tensor:
        """Replace the still-colliding draws by a uniform pick among the user's non-positives (slow path)."""
        rows = bad.nonzero(as_tuple=True)
        for r, c in zip(*(t.tolist() for t in rows), strict=True):
            u = int(uu[r, c])
            pos = self.matrix.indices[self.matrix.indptr[u]: self.matrix.indptr[u + 1]]
            free = np.setdiff1d(np.arange(self.num_items), pos)
            pick = int(torch.randint(len(free), (1,), generator=generator))
            items[r, c] = int(free[pick])
        return items


# ---- scoring ------------------------------------------------------------------------------------------------
def _is_sif(model: nn.Module) -> bool:
    return isinstance(model, RatingModule) and model.searchable


def _pair_scores(model: nn.Module, users: Tensor, items: Tensor, view: ArchView | None):
    """(scores (B,), penalty, SIF features for other heads or None) of (user, item) pairs."""
    if not _is_sif(model):
        pred, rows = model.forward_with_rows(users, items, None)
        return pred, sum(r.norm() for r in rows), None
    view = model.sparse_view() if view is None else view
    emb, b, rows, neighbours = model.encode_parts(users, items, None)
    z = model.transform(emb, {"u": users, "v": items, "c": None})
    pred = model.interact(z, view)
    pred = pred if b is None else pred + b
    return pred, sum(e.norm() for e in rows + neighbours), (z, b)


def score_all_items(model: nn.Module, users: Tensor, view: ArchView | None = None,
                    item_chunk: int | None = None) -> Tensor:
    """(b, n_items) scores of every item for a batch of users, with the model's own forward pieces.

    SIF: g is applied once to the batch's user rows and once to every item row, then the interaction and head
    run on the broadcast (b, m, k) features. Other models: their forward on the b * m pairs. ``item_chunk``
    bounds the items scored at once (default: all).
    """
    if isinstance(model, AveragedModel):          # the race's ensemble: the mean of its members' scores
        return torch.stack([score_all_items(m, users, view, item_chunk) for m in model.members]).mean(dim=0)
    num_items = _num_items(model)
    chunk = item_chunk or num_items
    parts = []
    for s in range(0, num_items, chunk):
        items = torch.arange(s, min(s + chunk, num_items), device=users.device)
        parts.append(_sif_block(model, users, items, view) if _is_sif(model) else _pairs_block(model, users, items))
    return torch.cat(parts, dim=1)


def _num_items(model: nn.Module) -> int:
    if _is_sif(model):
        return model.embeddings["v"].num_embeddings
    return model.item.num_embeddings


def _pairs_block(model: nn.Module, users: Tensor, items: Tensor) -> Tensor:
    b, m = len(users), len(items)
    uu, ii = users.repeat_interleave(m), items.repeat(b)
    return model(uu, ii).view(b, m)


def _sif_block(model: nn.Module, users: Tensor, items: Tensor, view: ArchView | None) -> Tensor:
    view = model.sparse_view() if view is None else view
    if len(model.sides) != 2:
        raise ValueError("ranking evaluation supports the (user, item) SIF space, not tensor spaces with contexts")
    rows_u = model.embeddings["u"].weight.index_select(0, users)              # (b, k [+1])
    rows_v = model.embeddings["v"].weight.index_select(0, items)              # (m, k [+1])
    k = model.embedding_dim
    b, m = len(users), len(items)
    n = max(b, m)
    emb, _ = add_neighbourhoods(model.neighbourhoods, {"u": rows_u[:, :k], "v": rows_v[:, :k]},
                                {"u": users, "v": items})
    stacked = torch.zeros(2, n, k, dtype=rows_u.dtype, device=rows_u.device)
    stacked[0, :b], stacked[1, :m] = emb["u"], emb["v"]
    z = model.g(stacked)                                                      # (2, n, k), g per side
    zu, zv = z[0, :b].unsqueeze(1).expand(b, m, k), z[1, :m].unsqueeze(0).expand(b, m, k)
    out = model.interact({"u": zu, "v": zv}, view)                            # (b, m)
    if model.use_bias:
        out = out + model.global_bias + rows_u[:, k].unsqueeze(1) + rows_v[:, k].unsqueeze(0)
    return out


def model_score_fn(model: nn.Module, view: ArchView | None = None,
                   item_chunk: int | None = None) -> Callable[[Tensor], Tensor]:
    """``score_fn(users) -> (b, n_items)`` for :func:`sif.ranking.evaluate_ranking` (eval mode, no grad)."""

    def score_fn(users: Tensor) -> Tensor:
        return score_all_items(model, users, view, item_chunk)

    return score_fn


# ---- the task adapter ---------------------------------------------------------------------------------------
class ImplicitTask:
    """Task adapter for the nasp Searcher and :func:`sif.train.train_model` on implicit feedback.

    loss: "bpr", "bce" or "softmax"; num_negatives: sampled negatives per positive; samplers: {"train": sampler of the
    training positives, "valid": sampler of training + validation positives} (the valid stream drives the alpha
    steps; its negatives avoid both sets); metric: a key of :meth:`evaluate` (default "ndcg@10", maximised);
    train_all_heads: in training steps, also train every non-selected SIF head on detached features with the
    same loss, so that the alpha step judges unselected ops with trained heads.
    """

    tie_metric = "auc"      # breaks the race's ties on ``metric`` (sif.selection.tie_break): it ranks every item

    def __init__(self, loss: str = "bpr", num_negatives: int = 1, samplers: dict | None = None, reg: float = 0.0,
                 metric: str = "ndcg@10", train_all_heads: bool = False):
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if num_negatives < 1:
            raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
        self.loss_name, self.num_negatives, self.samplers = loss, num_negatives, dict(samplers or {})
        self.reg, self.metric, self.maximize, self.train_all_heads = reg, metric, True, train_all_heads

    def sampler(self, stream: str) -> NegativeSampler:
        s = self.samplers.get(stream) or self.samplers.get("train")
        if s is None:
            raise RuntimeError("ImplicitTask has no negative sampler: pass samplers={'train': NegativeSampler(..)}")
        return s

    def _objective(self, pos: Tensor, neg: Tensor) -> Tensor:
        """pos (B,), neg (B, n) scores -> mean loss."""
        if self.loss_name == "bpr":
            return -F.logsigmoid(pos.unsqueeze(1) - neg).mean()
        logits = torch.cat([pos.unsqueeze(1), neg], dim=1)                        # (B, 1 + n)
        if self.loss_name == "softmax":                                           # the positive is class 0
            return (torch.logsumexp(logits, dim=1) - pos).mean()
        labels = torch.zeros_like(logits)
        labels[:, 0] = 1.0
        return F.binary_cross_entropy_with_logits(logits, labels)

    def loss(self, model: nn.Module, batch, view: ArchView | None, stream: str) -> Tensor:
        users, items = batch[0], batch[1]
        n, bsz = self.num_negatives, len(users)
        neg = self.sampler(stream).sample(users, n).to(users.device)               # (B, n)
        all_u = torch.cat([users, users.repeat_interleave(n)])                     # (B + B n,)
        all_i = torch.cat([items, neg.reshape(-1)])
        scores, penalty, feats = _pair_scores(model, all_u, all_i, view)
        loss = self._objective(scores[:bsz], scores[bsz:].view(bsz, n))
        if self.reg:
            loss = loss + self.reg * penalty
        if self.train_all_heads and stream == "train" and feats is not None:
            extra = self._other_heads_loss(model, feats, bsz, n, view)
            if extra is not None:
                loss = loss + extra
        return loss

    def _other_heads_loss(self, model, feats, bsz: int, n: int, view: ArchView | None) -> Tensor | None:
        view = model.sparse_view() if view is None else view
        if view.mode != SPARSE or len(model.names) == 1:
            return None
        z, b = feats
        sel = view.selected["interaction"][0]
        zd = {s: t.detach() for s, t in z.items()}
        bd = 0.0 if b is None else b.detach()
        total = None
        for k in range(len(model.names)):
            if k == sel:
                continue
            s = model.candidate(k, zd) + bd
            term = self._objective(s[:bsz], s[bsz:].view(bsz, n))
            total = term if total is None else total + term
        return total

    def to_raw(self, pred: Tensor, clip: bool = True) -> Tensor:
        """Scores are reported as they are (no rating scale; ``clip`` has nothing to clip)."""
        return pred.float()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: RankingData, view: ArchView | None = None) -> dict[str, float]:
        """Ranking metrics of ``model`` on ``data`` (training items filtered), e.g. {"ndcg@10", "recall@10"}."""
        if not isinstance(data, RankingData):
            raise TypeError(f"ImplicitTask.evaluate needs a RankingData, got {type(data).__name__}")
        return _ranking(model, data, view, auc=data.auc)

    @torch.no_grad()
    def per_user(self, model: nn.Module, data: RankingData) -> dict[str, np.ndarray]:
        """Per-user validation values of ``metric`` and ``tie_metric`` ({key: (n,) float64}, the same users in the
        same order; AUC NaN for a user without a candidate negative), for paired comparisons of two models."""
        out = _ranking(model, data, None, auc=True, per_user=True)
        return {k: out[k] for k in (self.metric, self.tie_metric)}


def _ranking(model: nn.Module, data: RankingData, view: ArchView | None, **options) -> dict:
    """:func:`evaluate_ranking` of ``model`` (in eval mode, its mode restored after) on ``data``'s targets with its
    seen items filtered; ``options`` (auc, per_user) pass through."""
    was_training = model.training
    model.eval()
    out = evaluate_ranking(model_score_fn(model, view), data.seen, data.target, ks=data.ks,
                           device=next(model.parameters()).device, max_elements=data.max_elements, **options)
    model.train(was_training)
    return out


def implicit_splits(ds: RatingDataset, threshold: float | None = 4.0, split: str = "leave_k_out", k: int = 5,
                    valid_k: int | None = None, seed: int = 0, fractions=(0.8, 0.1, 0.1)
                    ) -> tuple[RatingDataset, RatingDataset, RatingDataset]:
    """(train, valid, test) positives for implicit feedback: ratings >= ``threshold`` (all when None), split by
    the data layer: "leave_k_out" (per user, ``k`` random test and ``valid_k`` (default k) valid positives),
    "leave_k_out_time" (per user, the latest ``k`` test, the next ``valid_k`` valid), or "time" (global time order,
    ``fractions``)."""
    pos = positives(ds, threshold)
    valid_k = k if valid_k is None else valid_k
    if split == "leave_k_out":
        return leave_k_out_split(pos, k=k, seed=seed, valid_k=valid_k)
    if split == "leave_k_out_time":
        return leave_k_out_split(pos, k=k, seed=seed, valid_k=valid_k, by_time=True)
    if split == "time":
        return time_split(pos, tuple(fractions))
    raise ValueError(f"split must be leave_k_out, leave_k_out_time or time, got {split!r}")


def split_matrices(train: RatingDataset, valid: RatingDataset, threshold: float | None
                            ) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Binary users x items CSR of the train and valid positives (ratings >= threshold; all when None)."""
    return to_csr(train, threshold=threshold, binary=True), to_csr(valid, threshold=threshold, binary=True)
