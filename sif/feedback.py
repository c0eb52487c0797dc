"""The two kinds of feedback a recommender learns from, as strategies (not flags): explicit ratings, and implicit
feedback (positives vs sampled negatives, trained with BPR or BCE).

A strategy turns the training and validation ratings into the loss adapter (:mod:`sif.task` /
:class:`sif.implicit_feedback.ImplicitTask`), the batch iterators and the evaluation data of a fit, and scores a
fitted recommender on a dataset. :class:`sif.recommender.BaseRecommender` holds one (``feedback_strategy(task)``)
and never asks which kind it is.
"""

from __future__ import annotations

from typing import Any

from data_loaders import BatchIterator, RatingDataset, to_csr
from nasp.distributed import shard_if_distributed

from .implicit_feedback import (
    RANKING_OPS,
    ImplicitTask,
    NegativeSampler,
    RankingData,
    positive_iterator,
    split_matrices,
)
from .task import RatingTask

__all__ = ["RatingFeedback", "ImplicitFeedback", "FEEDBACK", "feedback_strategy"]


class RatingFeedback:
    """Explicit ratings: z-scored MSE on the training split, RMSE/MAE on the raw scale, early stopping on RMSE."""

    name = "rating"
    metric, maximize = "rmse", False       # what tuning and the benchmark choose by (validation)
    head_init = "ones"                     # the SIF heads' start where head_init=None: multiply = a dot product
    supports_refit = True
    default_ops = None                     # the space's own (sif.interactions.SEARCH_SPACE; tensors: all 53)

    def prepare(self, rec, train: RatingDataset, valid: RatingDataset) -> None:
        """Fit-time state the task needs (nothing beyond the scaler, which every recommender fits)."""

    def task(self, rec, **kw) -> RatingTask:
        scale = rec.rating_scale_ if rec.clip_predictions else None
        return RatingTask(rec.scaler_.mean_, rec.scaler_.std_, scale, rec.reg, penalty=rec.penalty,
                          on_transformed=rec.penalize_transformed, **kw)

    def fields(self, rec) -> tuple[str, ...]:
        return ("users", "items", "ratings", "contexts") if rec.num_contexts_ else ("users", "items", "ratings")

    def iterator(self, rec, ds: RatingDataset, shuffle: bool, batch_size: int, seed: int) -> BatchIterator:
        data = {"users": ds.users, "items": ds.items, "ratings": rec.scaler_.transform(ds.ratings).float()}
        if rec.num_contexts_:
            if ds.contexts is None:
                raise ValueError(f"{ds.name}: the model was fitted with contexts but this dataset has none")
            data["contexts"] = ds.contexts
        return BatchIterator(data, batch_size=batch_size, shuffle=shuffle, seed=seed, device=rec.device,
                             fields=self.fields(rec))

    def loaders(self, rec, train: RatingDataset, valid: RatingDataset) -> tuple[Any, Any, Any]:
        """(train batches, validation batches for alpha steps, validation data for evaluation)."""
        bs, seed = rec.train_config_.batch_size, rec.random_state
        # data parallel (torchrun): each rank takes its slice of every global batch; evaluation sees everything
        return (shard_if_distributed(self.iterator(rec, train, True, bs, seed)),
                shard_if_distributed(self.iterator(rec, valid, True, bs, seed + 1)),
                self.iterator(rec, valid, False, 8192, seed))

    def rated(self, rec, ds: RatingDataset, split: str = "train"):
        """The (users x items) CSR of what each user has in ``ds``, the training or validation split (what
        ``recommend`` filters)."""
        return to_csr(ds, binary=True)

    def score(self, rec, dataset: RatingDataset) -> dict[str, float]:
        return rec.task_.evaluate(rec.model_, self.iterator(rec, dataset, False, 8192, 0))



class ImplicitFeedback:
    """Implicit feedback: the ratings >= ``positive_threshold`` are positives, ``num_negatives`` sampled negatives
    per positive, loss ``bpr``, ``bce`` or ``softmax``; ranking metrics (K=10, AUC) with the training positives
    filtered."""

    metric, maximize = "ndcg@10", True
    head_init = "uniform"                 # ML-100K BPR, fixed multiply, seeds 0/1: test NDCG@10 0.202/0.198 against
    #                                       0.181/0.181 with all-ones heads (which early-stopped 4-8 epochs sooner)
    supports_refit = False
    default_ops = RANKING_OPS             # plus and concat cannot personalise a ranking

    def __init__(self, loss: str):
        self.name = loss

    def prepare(self, rec, train: RatingDataset, valid: RatingDataset) -> None:
        rec.positives_ = split_matrices(train, valid, rec.positive_threshold)     # (train, valid) CSR
        rec.samplers_ = {"train": NegativeSampler(rec.positives_[0], device=rec.device),
                         "valid": NegativeSampler(rec.positives_[0] + rec.positives_[1], device=rec.device)}

    def task(self, rec, **kw) -> ImplicitTask:
        return ImplicitTask(self.name, rec.num_negatives, getattr(rec, "samplers_", None), rec.reg, **kw)

    def fields(self, rec) -> tuple[str, ...]:
        return ("users", "items")

    def loaders(self, rec, train: RatingDataset, valid: RatingDataset) -> tuple[Any, Any, Any]:
        bs, seed = rec.train_config_.batch_size, rec.random_state
        tr, va = rec.positives_
        return (positive_iterator(tr, bs, True, seed, rec.device),
                positive_iterator(va, bs, True, seed + 1, rec.device), RankingData(tr, va))

    def rated(self, rec, ds: RatingDataset, split: str = "train"):
        return rec.positives_[0 if split == "train" else 1]

    def score(self, rec, dataset: RatingDataset) -> dict[str, float]:
        target = to_csr(dataset, threshold=rec.positive_threshold, binary=True)
        return rec.task_.evaluate(rec.model_, RankingData(rec.rated_, target, auc=True))


FEEDBACK: dict[str, RatingFeedback | ImplicitFeedback] = {
    "rating": RatingFeedback(), "bpr": ImplicitFeedback("bpr"), "bce": ImplicitFeedback("bce"),
    "softmax": ImplicitFeedback("softmax")}


def feedback_strategy(task: str) -> RatingFeedback | ImplicitFeedback:
    """The strategy of ``task`` ("rating", "bpr", "bce" or "softmax")."""
    if task not in FEEDBACK:
        raise ValueError(f"task must be one of {', '.join(FEEDBACK)}, got {task!r}")
    return FEEDBACK[task]
