"""Peer-library baselines in the project's harness (issue 14): EASE from ``cornac`` for the top-N task, and
Surprise's SVD, SVD++ and BaselineOnly for the rating task.

EASE (Steck 2019) is the closed-form item-item model ``B = -P / diag(P)`` with ``diag(B) = 0``, where
``P = (X^T X + lambda I)^-1`` and ``X`` is the users x items training matrix; a user's scores are ``X[u] @ B``.
It is fitted by cornac's ``EASE`` on exactly the harness's training CSR matrix and scored through
:func:`sif.ranking.evaluate_ranking` like every other model.

:class:`SurpriseRecommender` ("surprise_svd", "surprise_svdpp", "surprise_baseline" in ``benchmark.models``) fits
one of ``scikit-surprise``'s algorithms, with Surprise's own default settings and ``random_state`` = the run's seed,
on the training split only, and predicts through Surprise's ``algo.predict``: clipped to the data's rating scale,
and for a user or item the training split lacks, whatever Surprise returns then (its estimate without the unknown
side's terms, or the global mean when the estimate is impossible).

Both libraries are optional: ``pip install nasp-sif[peers]``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from data_loaders import RatingDataset

from .ids import to_index
from .train import TrainResult

__all__ = ["EaseFit", "fit_ease", "SURPRISE_PEERS", "SurpriseRecommender"]


def _cornac():
    try:
        import cornac
    except ImportError as e:
        raise ImportError("EASE needs cornac: pip install 'nasp-sif[peers]'") from e
    return cornac


@dataclass
class EaseFit:
    """A fitted EASE model: ``B`` (I, I) over the full catalogue, the training matrix, and fit seconds."""

    lamb: float
    B: np.ndarray          # (I, I), zero diagonal; rows/columns of items absent from training are zero
    train: sp.csr_matrix   # (U, I) binary training matrix
    seconds: float = 0.0

    def score_fn(self, device="cpu") -> Callable[[Tensor], Tensor]:
        """``score_fn(users) -> (b, I)``: ``X[users] @ B``."""
        x = torch.from_numpy(self.train.toarray().astype(np.float32)).to(device)   # (U, I)
        b = torch.from_numpy(self.B.astype(np.float32)).to(device)                 # (I, I)

        def score_fn(users: Tensor) -> Tensor:
            return x.index_select(0, users.to(x.device)) @ b

        return score_fn


def fit_ease(user_items: sp.csr_matrix, lamb: float = 500.0, positive_only: bool = False,
             seed: int = 0) -> EaseFit:
    """Fit cornac's EASE (``lamb`` = lambda, ``positive_only`` = cornac's ``posB``) on a (U, I) CSR matrix."""
    if lamb <= 0:
        raise ValueError(f"lamb must be > 0, got {lamb}")
    cornac = _cornac()
    x = sp.csr_matrix(user_items, dtype=np.float32)
    x.data[:] = 1.0
    coo = x.tocoo()
    triplets = list(zip(coo.row.tolist(), coo.col.tolist(), [1.0] * coo.nnz, strict=True))
    t0 = time.perf_counter()
    data = cornac.data.Dataset.build(triplets, seed=seed)
    model = cornac.models.EASE(lamb=lamb, posB=positive_only, verbose=False, seed=seed).fit(data)
    idx = np.array([i for i, _ in sorted(data.iid_map.items(), key=lambda kv: kv[1])])   # cornac -> global ids
    B = np.zeros((x.shape[1], x.shape[1]))
    B[np.ix_(idx, idx)] = model.B
    return EaseFit(lamb, B, x, time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------- Surprise (ratings)
SURPRISE_PEERS: dict[str, str] = {          # benchmark name -> class in ``surprise``
    "surprise_svd": "SVD",
    "surprise_svdpp": "SVDpp",
    "surprise_baseline": "BaselineOnly",
}


def _surprise():
    try:
        import surprise
    except ImportError as e:
        raise ImportError("Surprise's SVD, SVDpp and BaselineOnly need scikit-surprise: "
                          "pip install 'nasp-sif[peers]'") from e
    return surprise


class SurpriseRecommender:
    """One of Surprise's rating algorithms behind the harness's recommender interface (``fit`` / ``predict`` /
    ``score``, ``train_result_``), so that ``sif benchmark`` runs it on the same splits as every other model.

    model: a key of :data:`SURPRISE_PEERS`. The algorithm gets Surprise's defaults; SVD and SVDpp get
    ``random_state`` (BaselineOnly's ALS has no randomness) and BaselineOnly ``verbose=False``. ``fit`` gives Surprise
    the training split only, in its order, with the raw ids of the data and the data's rating scale; the
    validation split is only scored. Contexts are not used (a matrix model). Rating task only; no ``save``.
    """

    def __init__(self, model: str = "surprise_svd", random_state: int = 0, task: str = "rating"):
        if model not in SURPRISE_PEERS:
            raise ValueError(f"model={model!r}: unknown Surprise peer; use one of {', '.join(SURPRISE_PEERS)}")
        if task != "rating":
            raise ValueError(f"{model}: Surprise's algorithms predict ratings; task={task!r} is not supported")
        self.model, self.random_state, self.task = model, random_state, task

    def get_params(self) -> dict[str, Any]:
        return {"model": self.model, "random_state": self.random_state, "task": self.task}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_params().items())})"

    def _algorithm(self):
        surprise = _surprise()
        cls = getattr(surprise, SURPRISE_PEERS[self.model])
        if cls is surprise.BaselineOnly:
            return cls(verbose=False)
        return cls(random_state=self.random_state)

    def fit(self, train: RatingDataset, valid: RatingDataset | None = None, show_progress: bool = False,
            callback=None, run_dir=None) -> SurpriseRecommender:
        """Fit on ``train`` only; ``valid`` (optional) is scored into ``train_result_.best_valid``. Returns self."""
        import pandas as pd

        surprise = _surprise()
        if not isinstance(train, RatingDataset) or len(train) == 0:
            raise ValueError("train must be a non-empty data_loaders.RatingDataset")
        self.user_ids_, self.item_ids_ = np.asarray(train.user_ids), np.asarray(train.item_ids)
        self.num_users_, self.num_items_ = train.num_users, train.num_items
        self.rating_scale_ = tuple(train.rating_scale)
        frame = pd.DataFrame({"user": self.user_ids_[train.users.numpy()].tolist(),
                              "item": self.item_ids_[train.items.numpy()].tolist(),
                              "rating": train.ratings.numpy().astype(np.float64)})
        reader = surprise.Reader(rating_scale=self.rating_scale_)
        t0 = time.perf_counter()
        trainset = surprise.Dataset.load_from_df(frame, reader).build_full_trainset()
        self.algo_ = self._algorithm()
        self.algo_.fit(trainset)
        seconds = time.perf_counter() - t0
        epochs = getattr(self.algo_, "n_epochs", None) or self.algo_.bsl_options.get("n_epochs", 10)
        best_valid = self.score(valid) if valid is not None else {}
        self.train_result_ = TrainResult(best_epoch=int(epochs) - 1, best_valid=best_valid, seconds=seconds)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "algo_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(train, valid) first")

    def predict(self, users, items, contexts=None, ids: str = "raw") -> np.ndarray:
        """Surprise's ``algo.predict(u, i).est`` for every pair (float64, clipped to the rating scale).

        ``ids="raw"``: the data's raw ids, passed to Surprise as they are (an id the training split lacks gets
        Surprise's fallback, never an error); ``ids="index"``: 0-based indices of the training data's id maps
        (checked against them). ``contexts`` are ignored."""
        self._check_fitted()
        if ids == "index":
            u = self.user_ids_[to_index(users, self.user_ids_, "users", ids, self.num_users_).numpy()].tolist()
            i = self.item_ids_[to_index(items, self.item_ids_, "items", ids, self.num_items_).numpy()].tolist()
        elif ids == "raw":
            u = np.asarray(users).reshape(-1).tolist()
            i = np.asarray(items).reshape(-1).tolist()
        else:
            raise ValueError(f"ids must be 'raw' or 'index', got {ids!r}")
        if len(u) != len(i):
            raise ValueError(f"users and items must have the same length, got {len(u)} and {len(i)}")
        predict = self.algo_.predict
        return np.array([predict(a, b).est for a, b in zip(u, i, strict=True)], dtype=np.float64)

    def score(self, dataset: RatingDataset) -> dict[str, float]:
        """rmse and mae on the raw scale of a dataset split from the training data (the same id maps)."""
        self._check_fitted()
        if not (np.array_equal(dataset.user_ids, self.user_ids_) and np.array_equal(dataset.item_ids, self.item_ids_)):
            raise ValueError(f"dataset {dataset.name!r} has other user/item id maps than the training data")
        if len(dataset) == 0:
            raise ValueError("dataset is empty")
        pred = self.predict(dataset.users, dataset.items, ids="index")
        d = pred - dataset.ratings.numpy().astype(np.float64)
        return {"rmse": float(np.sqrt(np.mean(d * d))), "mae": float(np.mean(np.abs(d)))}
