"""The rating task adapter: loss of a batch for the search loop and the stand-alone trainer, and evaluation.

Batches are tuples ``(users, items, ratings)`` or ``(users, items, ratings, contexts)`` with ratings already
standardised by a :class:`data_loaders.RatingScaler` fitted on the training split. Evaluation reports RMSE and MAE
on the raw rating scale (predictions mapped back and clipped to the scale) and RMSE on the standardised scale.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from nasp.arch import ArchView

__all__ = ["RatingTask", "unpack", "mse_closed_form"]


def unpack(batch) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """(users, items, ratings, contexts or None) from a 3- or 4-tuple batch."""
    if len(batch) == 3:
        users, items, ratings = batch
        return users, items, ratings, None
    users, items, ratings, contexts = batch
    return users, items, ratings, contexts


def mse_closed_form(d: Tensor) -> tuple[Tensor, Tensor]:
    """(mean(d^2), its gradient 2 d / B) of a residual d (B,): the MSE of :meth:`RatingTask.loss` (and of
    :meth:`sif.space.SIFSpace.other_heads_loss`) in closed form, for a hand-written step (:mod:`sif.fused`)."""
    return torch.dot(d, d) * (1.0 / d.shape[0]), d * (2.0 / d.shape[0])


class RatingTask:
    """MSE + ``reg * penalty`` on standardised ratings.

    penalty "l2" (default): the mean over the batch of the squared norms of the looked-up embedding rows (the
    per-rating L2 of classic MF); "norm": ``||U_batch|| + ||V_batch|| [+ ||C_batch||]`` (the SIF reference code).
    "effective" (SIF models; "l2" for the baselines): the L2 of the transformed embeddings as the selected op's head
    sees them, invariant to rescaling by the head or g (:meth:`sif.space.SIFSpace.effective_penalty`); it differs
    between ops, so it is left out of the alpha step's validation loss (it would steer the choice by head size).
    For SIF models the "l2"/"norm" penalty applies to the raw embeddings e, or to the transformed g(e) when
    ``on_transformed``.

    mean, std: the train-only scaler (to report raw-scale errors); rating_scale: (min, max) for clipping
    predictions at evaluation (None: no clipping); train_all_heads: add the loss of every non-selected head on
    detached features in training steps (SIF only), so that unselected ops are never judged with untrained heads.
    """

    metric, maximize = "rmse", False
    tie_metric = None               # no tie rule in the race (sif.selection.tie_break): RMSE over every rating

    def __init__(self, mean: float = 0.0, std: float = 1.0, rating_scale: tuple[float, float] | None = None,
                 reg: float = 1e-5, train_all_heads: bool = False, penalty: str = "l2", on_transformed: bool = False):
        if penalty not in ("l2", "norm", "effective"):
            raise ValueError(f"penalty must be 'l2', 'norm' or 'effective', got {penalty!r}")
        self.mean, self.std, self.rating_scale = float(mean), float(std), rating_scale
        self.reg, self.train_all_heads, self.penalty = reg, train_all_heads, penalty
        self.on_transformed = on_transformed

    def _penalty(self, rows) -> Tensor:
        if self.penalty == "norm":
            return sum(r.norm() for r in rows)
        return sum((r * r).sum() for r in rows) / rows[0].shape[0]

    def penalty_closed_form(self, r: Tensor, want_grad: bool = True) -> tuple[Tensor, Tensor | None]:
        """(reg * the "l2" | "norm" penalty of the stacked sides ``r`` (S, B, k), its gradient w.r.t. r or None):
        :meth:`loss`'s penalty in closed form, for a hand-written step (:mod:`sif.fused`)."""
        if self.penalty == "norm":
            n = torch.linalg.vector_norm(r, dim=(1, 2))                                     # (S,)
            grad = r * (self.reg / n.clamp_min(torch.finfo(n.dtype).tiny)).view(-1, 1, 1) if want_grad else None
            return n.sum() * self.reg, grad
        return (r * r).sum() * (self.reg / r.shape[1]), (r * (2 * self.reg / r.shape[1]) if want_grad else None)

    def loss(self, model: nn.Module, batch, view: ArchView | None, stream: str) -> Tensor:
        users, items, y, contexts = unpack(batch)
        if not model.searchable:                      # baselines: a plain rating model
            pred, rows = model.forward_with_rows(users, items, contexts)
            loss = torch.mean((pred - y) ** 2)
            return loss + self.reg * self._penalty(rows) if self.reg else loss
        view = model.sparse_view() if view is None else view
        emb, b, rows, neighbours = model.encode_parts(users, items, contexts)
        idx = {"u": users, "v": items, "c": contexts}
        plans = model.unique_plans(idx)                 # once per batch: g of the rows, and of the free vectors
        z = model.transform(emb, plans=plans)
        pred = model.interact(z, view) if b is None else model.interact(z, view) + b
        loss = torch.mean((pred - y) ** 2)
        if self.reg and self.penalty == "effective":
            if stream == "train":     # op-dependent: in the alpha step it would bias the choice toward small heads
                free = model.transform_free(rows, plans) if neighbours else None
                loss = loss + self.reg * model.effective_penalty(z, view, free)
        elif self.reg:
            loss = loss + self.reg * self._penalty((list(z.values()) if self.on_transformed else rows) + neighbours)
        if self.train_all_heads and stream == "train":
            extra = model.other_heads_loss(z, y if b is None else y - b, view)
            if extra is not None:
                loss = loss + extra
        return loss

    def to_raw(self, pred: Tensor, clip: bool = True) -> Tensor:
        """Standardised predictions -> raw rating scale (clipped to ``rating_scale`` when ``clip``)."""
        raw = pred.float() * self.std + self.mean
        return raw.clamp(*self.rating_scale) if clip and self.rating_scale is not None else raw

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Iterable, view: ArchView | None = None) -> dict[str, float]:
        """rmse, mae (raw scale) and rmse_z (standardised scale, unclipped) over a loader."""
        was_training = model.training
        model.eval()
        se = ae = se_z = None
        n = 0
        for batch in loader:
            users, items, y, contexts = unpack(batch)
            pred = model(users, items, contexts, view) if view is not None else model(users, items, contexts)
            d = self.to_raw(pred) - (y.float() * self.std + self.mean)
            parts = ((d * d).sum(), d.abs().sum(), ((pred.float() - y.float()) ** 2).sum())
            se, ae, se_z = parts if se is None else (se + parts[0], ae + parts[1], se_z + parts[2])
            n += len(y)
        model.train(was_training)
        if n == 0:
            raise ValueError("evaluate: the loader yielded no ratings")
        return {"rmse": (se / n).sqrt().item(), "mae": (ae / n).item(), "rmse_z": (se_z / n).sqrt().item()}
