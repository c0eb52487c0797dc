"""Seeded train/valid/test splits of a RatingDataset, the canonical MovieLens folds, and rating scaling.

Every split returns subsets that share the parent's id maps (same num_users/num_items). Statistics used to
transform data (RatingScaler, time bins) are fitted on the training part only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ._movielens import find_file, get_spec
from ._parse import read_delimited
from .ratings import RatingDataset


def _check_fractions(fractions: Sequence[float]) -> np.ndarray:
    fr = np.asarray(fractions, dtype=np.float64)
    if fr.ndim != 1 or len(fr) < 1 or (fr < 0).any() or not np.isclose(fr.sum(), 1.0, atol=1e-6):
        raise ValueError(f"fractions {tuple(fractions)}: expected non-negative numbers summing to 1")
    return fr


def _split_order(ds: RatingDataset, order: np.ndarray, fractions: Sequence[float],
                 sort_parts: bool) -> tuple[RatingDataset, ...]:
    """Cut ``order`` (a permutation of row indices) into consecutive parts of the given fractions."""
    fr = _check_fractions(fractions)
    bounds = np.round(np.cumsum(fr) * len(order)).astype(np.int64)  # (parts,) end of each part
    bounds[-1] = len(order)
    starts = np.concatenate([[0], bounds[:-1]])
    parts = [order[s:e] for s, e in zip(starts, bounds, strict=True)]
    return tuple(ds.subset(np.sort(p) if sort_parts else p) for p in parts)


def random_split(ds: RatingDataset, fractions: Sequence[float] = (0.8, 0.1, 0.1),
                 seed: int = 0) -> tuple[RatingDataset, ...]:
    """Uniformly random parts of the given fractions (any may be 0); rows keep their original order."""
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(len(ds), generator=gen).numpy()  # (n,)
    return _split_order(ds, perm, fractions, sort_parts=True)


def time_split(ds: RatingDataset, fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> tuple[RatingDataset, ...]:
    """Parts in global time order (earliest first); ties keep the original row order."""
    if ds.timestamps is None:
        raise ValueError(f"{ds.name}: time_split needs timestamps")
    order = np.argsort(ds.timestamps.numpy(), kind="stable")  # (n,)
    return _split_order(ds, order, fractions, sort_parts=False)


def _rank_within_user(users: np.ndarray, key: np.ndarray) -> np.ndarray:
    """(n,) 0-based rank of each row among its user's rows, ordered by ``key`` (ties by row order)."""
    n = len(users)
    by_key = np.argsort(key, kind="stable")  # (n,) rows by key, ties by row order
    key_rank = np.empty(n, dtype=np.int64)
    key_rank[by_key] = np.arange(n)  # (n,) distinct ranks: one int64 sort key with the users (no 3-key lexsort)
    del by_key
    if n and int(users.max()) >= np.iinfo(np.int64).max // n - 1:   # the combined key would overflow
        order = np.lexsort((key_rank, users))
    else:
        order = np.argsort(users.astype(np.int64) * n + key_rank)  # (n,) by user, then key, then row
    del key_rank
    sorted_users = users[order]
    is_start = np.r_[True, sorted_users[1:] != sorted_users[:-1]]  # (n,) first row of each user's run
    group_start = np.flatnonzero(is_start)[np.cumsum(is_start) - 1]  # (n,) position of that first row
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - group_start
    return rank


def leave_k_out_split(ds: RatingDataset, k: int = 1, seed: int = 0, valid_k: int = 1,
                      by_time: bool = False) -> tuple[RatingDataset, RatingDataset, RatingDataset]:
    """Per user, hold out ``k`` test and ``valid_k`` valid ratings (random, or the latest with ``by_time``).

    Users with fewer than ``k + valid_k + 1`` ratings stay fully in train, so each held-out user keeps at
    least one training rating. With ``by_time``, the test ratings are each user's latest, valid the next ones.
    """
    if k < 0 or valid_k < 0:
        raise ValueError(f"k={k}, valid_k={valid_k}: expected non-negative counts")
    users = ds.users.numpy()
    if by_time:
        if ds.timestamps is None:
            raise ValueError(f"{ds.name}: leave_k_out_split(by_time=True) needs timestamps")
        key = -ds.timestamps.numpy()  # latest first
    else:
        gen = torch.Generator().manual_seed(int(seed))
        key = torch.rand(len(ds), generator=gen, dtype=torch.float64).numpy()
    rank = _rank_within_user(users, key)  # (n,)
    eligible = np.bincount(users, minlength=ds.num_users)[users] >= k + valid_k + 1  # (n,)
    test = eligible & (rank < k)
    valid = eligible & (rank >= k) & (rank < k + valid_k)
    train = ~(test | valid)
    return ds.subset(np.flatnonzero(train)), ds.subset(np.flatnonzero(valid)), ds.subset(np.flatnonzero(test))


def kfold_split(ds: RatingDataset, fold: int, num_folds: int = 5, shuffle: bool = False,
                seed: int = 0) -> tuple[RatingDataset, RatingDataset]:
    """(train, test) of fold ``fold`` (1-based): test is the fold-th of ``num_folds`` contiguous row blocks.

    Without shuffling this reproduces the ML-100K u1..u5 folds from u.data (each file is then sorted by
    (user, item)); with ``shuffle`` the rows are first permuted by ``seed``.
    """
    if not 1 <= fold <= num_folds:
        raise ValueError(f"fold={fold}: expected 1..{num_folds}")
    n = len(ds)
    order = np.arange(n)
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).numpy()
    lo, hi = (fold - 1) * n // num_folds, fold * n // num_folds
    return ds.subset(np.sort(np.r_[order[:lo], order[hi:]])), ds.subset(np.sort(order[lo:hi]))


def movielens_fold(root, fold: int | str = 1,
                   drop_invalid: bool = False) -> tuple[RatingDataset, RatingDataset]:
    """(train, test) read from the canonical ML-100K files u{fold}.base / u{fold}.test (fold 1-5, 'a', 'b').

    Both share one id map, built from u.data when present, else from the union of the two files.
    ``root`` is like in :func:`load_movielens` (folder, folder holding it, zip, folder holding the zip).
    """
    spec = get_spec("100k")
    fold = str(fold).lower()
    if fold not in ("1", "2", "3", "4", "5", "a", "b"):
        raise ValueError(f"fold={fold!r}: expected 1..5, 'a' or 'b'")
    tables = {}
    for part in ("base", "test", "data"):
        filename = "u.data" if part == "data" else f"u{fold}.{part}"
        source = find_file(root, spec, filename)
        if source is None:
            if part == "data":
                continue
            raise FileNotFoundError(f"{root}: no {filename} (expected ML-100K's folder, its parent, or zip)")
        tables[part] = read_delimited(source, spec.fmt, spec.scale, drop_invalid and part != "data").columns
    id_source = [tables["data"]] if "data" in tables else [tables["base"], tables["test"]]
    user_ids = np.unique(np.concatenate([t["user"] for t in id_source])).astype(np.int64)  # one map, shared
    item_ids = np.unique(np.concatenate([t["item"] for t in id_source])).astype(np.int64)
    return tuple(RatingDataset.from_arrays(
        t["user"], t["item"], t["rating"], timestamps=t["timestamp"], rating_scale=spec.scale,
        name=f"ml-100k-u{fold}.{part}", user_ids=user_ids, item_ids=item_ids)
        for part, t in (("base", tables["base"]), ("test", tables["test"])))


class RatingScaler:
    """Standardises ratings with the mean/std of the data it is fitted on (fit on train only)."""

    def __init__(self, mean: float | None = None, std: float | None = None):
        self.mean_, self.std_ = mean, std

    def fit(self, data) -> RatingScaler:
        """Fit on a RatingDataset (its ratings) or a tensor/array of ratings."""
        ratings = data.ratings if isinstance(data, RatingDataset) else torch.as_tensor(data)
        if ratings.numel() == 0:
            raise ValueError("RatingScaler.fit: no ratings to fit on")
        ratings = ratings.to(torch.float64)
        std = float(ratings.std(unbiased=False))
        self.mean_, self.std_ = float(ratings.mean()), std if std > 0 else 1.0
        return self

    def _check(self) -> None:
        if self.mean_ is None:
            raise RuntimeError("RatingScaler is not fitted; call fit(train) first")

    def transform(self, ratings):
        """(ratings - mean) / std."""
        self._check()
        return (ratings - self.mean_) / self.std_

    def inverse_transform(self, scaled):
        """scaled * std + mean."""
        self._check()
        return scaled * self.std_ + self.mean_

    def state_dict(self) -> dict:
        """Plain dict for checkpoints."""
        return {"mean": self.mean_, "std": self.std_}

    @classmethod
    def from_state_dict(cls, state: dict) -> RatingScaler:
        """Inverse of :meth:`state_dict`."""
        return cls(state["mean"], state["std"])
