"""Checks on the real ML-100K in $NASP_DATA_DIR (skipped cleanly when that folder is absent)."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from data_loaders import BatchIterator, kfold_split, load_movielens, movielens_fold, to_csr

pytestmark = pytest.mark.realdata


def _ml100k_root() -> Path:
    base = os.environ.get("NASP_DATA_DIR")
    if not base or not (Path(base) / "ml-100k" / "u.data").is_file():
        pytest.skip("NASP_DATA_DIR with ml-100k/ is not available")
    return Path(base) / "ml-100k"


def _sorted_rows(ds) -> np.ndarray:
    """(n, 4) original (user, item, rating, timestamp) rows sorted by (user, item)."""
    rows = np.stack([ds.user_ids[ds.users.numpy()], ds.item_ids[ds.items.numpy()],
                     ds.ratings.numpy().astype(np.int64), ds.timestamps.numpy()], axis=1)
    return rows[np.lexsort((rows[:, 1], rows[:, 0]))]


def test_ml100k_counts():
    root = _ml100k_root()
    for where in (root, root.parent):
        ds = load_movielens("100k", root=where)
        assert (len(ds), ds.num_users, ds.num_items) == (100_000, 943, 1_682)
    assert ds.rating_scale == (1.0, 5.0)
    assert ds.user_ids.tolist() == list(range(1, 944)) and ds.item_ids.tolist() == list(range(1, 1683))
    assert torch.bincount(ds.ratings.long(), minlength=6)[1:].tolist() == [6110, 11370, 27145, 34174, 21201]
    assert to_csr(ds).nnz == 100_000
    assert sum(len(b[0]) for b in BatchIterator(ds, batch_size=4096)) == 100_000


@pytest.mark.parametrize("fold", [1, 2, 3, 4, 5])
def test_canonical_folds_equal_folds_from_u_data(fold):
    root = _ml100k_root()
    train, test = movielens_fold(root, fold)
    assert (len(train), len(test)) == (80_000, 20_000)
    assert train.num_users == test.num_users == 943 and train.num_items == test.num_items == 1_682
    expected_train, expected_test = kfold_split(load_movielens("100k", root=root), fold)
    np.testing.assert_array_equal(_sorted_rows(train), _sorted_rows(expected_train))
    np.testing.assert_array_equal(_sorted_rows(test), _sorted_rows(expected_test))


@pytest.mark.parametrize("fold", ["a", "b"])
def test_ua_ub_folds(fold):
    train, test = movielens_fold(_ml100k_root(), fold)
    assert (len(train), len(test)) == (90_570, 9_430)
    assert torch.bincount(test.users, minlength=943).tolist() == [10] * 943
