"""Peer-library baselines in the project's harness (issue 14): EASE from ``cornac`` for the top-N task.

EASE (Steck 2019) is the closed-form item-item model ``B = -P / diag(P)`` with ``diag(B) = 0``, where
``P = (X^T X + lambda I)^-1`` and ``X`` is the users x items training matrix; a user's scores are ``X[u] @ B``.
It is fitted by cornac's ``EASE`` on exactly the harness's training CSR matrix and scored through
:func:`sif.ranking.evaluate_ranking` like every other model. ``cornac`` is optional: ``pip install nasp-sif[peers]``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

__all__ = ["EaseFit", "fit_ease"]


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
