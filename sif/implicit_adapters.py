"""Adapters for the ``implicit`` library (0.7.x): train ALS, BPR and LMF on the same users x items CSR matrix as
SIF, and score them through :func:`sif.ranking.evaluate_ranking` like every other model.

``implicit`` is an optional dependency (``pip install implicit``); it is imported when a model is built. Its
native loops are multi-threaded: :func:`fit_implicit` limits BLAS to one thread while fitting (as ``implicit``
recommends) and passes ``num_threads``. Scores are the dot products ``user_factors[u] @ item_factors.T`` (BPR and
LMF keep their item bias as an extra factor column, so it is included).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

__all__ = ["IMPLICIT_MODELS", "ImplicitFit", "build_implicit", "fit_implicit", "factor_score_fn"]

IMPLICIT_MODELS = ("als", "bpr", "lmf")


def build_implicit(name: str, factors: int = 64, regularization: float = 0.01, iterations: int = 15,
                   learning_rate: float | None = None, alpha: float | None = None, random_state: int = 0,
                   num_threads: int = 0, **extra):
    """An unfitted ``implicit`` CPU model: "als" (AlternatingLeastSquares, ``alpha`` = confidence scale),
    "bpr" (BayesianPersonalizedRanking) or "lmf" (LogisticMatrixFactorization)."""
    if name not in IMPLICIT_MODELS:
        raise ValueError(f"unknown implicit model {name!r}; expected one of {IMPLICIT_MODELS}")
    kw: dict[str, Any] = dict(factors=factors, regularization=regularization, iterations=iterations,
                              random_state=random_state, num_threads=num_threads, **extra)
    if name == "als":
        from implicit.cpu.als import AlternatingLeastSquares

        if alpha is not None:
            kw["alpha"] = alpha
        return AlternatingLeastSquares(**kw)
    if learning_rate is not None:
        kw["learning_rate"] = learning_rate
    if name == "bpr":
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        return BayesianPersonalizedRanking(**kw)
    from implicit.cpu.lmf import LogisticMatrixFactorization

    return LogisticMatrixFactorization(**kw)


@dataclass
class ImplicitFit:
    """A fitted ``implicit`` model with its settings and fit time (seconds)."""

    name: str
    model: Any
    params: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def score_fn(self, device="cpu") -> Callable[[Tensor], Tensor]:
        return factor_score_fn(self.model, device)


def fit_implicit(name: str, user_items: sp.csr_matrix, **params) -> ImplicitFit:
    """Fit ``implicit`` model ``name`` on a users x items CSR matrix (0.7 orientation) with BLAS on one thread."""
    from threadpoolctl import threadpool_limits

    matrix = sp.csr_matrix(user_items, dtype=np.float32)
    t0 = time.perf_counter()
    with threadpool_limits(limits=1, user_api="blas"):
        model = build_implicit(name, **params)        # implicit checks the BLAS threads when it is built
        model.fit(matrix, show_progress=False)
    return ImplicitFit(name, model, dict(params), time.perf_counter() - t0)


def _factors(array) -> np.ndarray:
    return np.asarray(array.to_numpy() if hasattr(array, "to_numpy") else array, dtype=np.float32)


def factor_score_fn(model, device="cpu") -> Callable[[Tensor], Tensor]:
    """``score_fn(users) -> (b, n_items)``: ``user_factors[users] @ item_factors.T`` as torch tensors."""
    users_f = torch.from_numpy(_factors(model.user_factors)).to(device)   # (U, f)
    items_f = torch.from_numpy(_factors(model.item_factors)).to(device)   # (I, f)

    def score_fn(users: Tensor) -> Tensor:
        return users_f.index_select(0, users.to(users_f.device)) @ items_f.T

    return score_fn
