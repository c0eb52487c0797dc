"""Splits (random, k-fold, canonical MovieLens folds, leave-k-out, time), time bins and the rating scaler."""

import numpy as np
import pytest
import torch

from data_loaders import (
    RatingScaler,
    kfold_split,
    leave_k_out_split,
    load_movielens,
    movielens_fold,
    random_split,
    time_split,
)
from data_loaders.synthetic import synthetic_ratings, write_movielens


@pytest.fixture
def ml_root(tmp_path):
    frame = synthetic_ratings(1000, 50, 80, seed=3)
    write_movielens(tmp_path, "100k", frame)
    return tmp_path


@pytest.fixture
def ds(ml_root):
    return load_movielens("100k", root=ml_root)


def _rows(d):
    """Set of (user id, item id, rating, timestamp) tuples of a dataset."""
    return set(zip(d.user_ids[d.users.numpy()].tolist(), d.item_ids[d.items.numpy()].tolist(),
                   d.ratings.tolist(), d.timestamps.tolist(), strict=True))


def _assert_partition(ds, parts, same_maps=True):
    assert sum(len(p) for p in parts) == len(ds)
    assert set().union(*(_rows(p) for p in parts)) == _rows(ds)
    for p in parts:
        assert p.num_users == ds.num_users and p.num_items == ds.num_items
        if same_maps:
            assert p.user_ids is ds.user_ids and p.item_ids is ds.item_ids


def test_random_split_sizes_seeded_partition(ds):
    parts = random_split(ds, (0.8, 0.1, 0.1), seed=0)
    assert [len(p) for p in parts] == [800, 100, 100]
    _assert_partition(ds, parts)
    again = random_split(ds, (0.8, 0.1, 0.1), seed=0)
    assert all(torch.equal(a.items, b.items) for a, b in zip(parts, again, strict=True))
    other = random_split(ds, (0.8, 0.1, 0.1), seed=1)
    assert not torch.equal(parts[2].items, other[2].items)


def test_random_split_zero_fraction_and_two_parts(ds):
    train, valid, test = random_split(ds, (0.9, 0.0, 0.1), seed=0)
    assert len(valid) == 0 and len(train) == 900 and len(test) == 100
    assert valid.users.dtype == torch.int64
    assert [len(p) for p in random_split(ds, (0.5, 0.5))] == [500, 500]


@pytest.mark.parametrize("fractions", [(0.8, 0.1), (0.5, 0.6, -0.1), ()])
def test_bad_fractions(ds, fractions):
    with pytest.raises(ValueError, match="summing to 1"):
        random_split(ds, fractions)


def test_time_split_orders_by_time_with_stable_ties(ds):
    ds.timestamps[:] = torch.arange(len(ds)) // 10 * 5  # many ties
    train, valid, test = time_split(ds, (0.8, 0.1, 0.1))
    _assert_partition(ds, (train, valid, test))
    assert train.timestamps.max() <= valid.timestamps.min()
    assert valid.timestamps.max() <= test.timestamps.min()
    order = torch.cat([train.timestamps, valid.timestamps, test.timestamps])
    assert torch.equal(order, torch.sort(ds.timestamps, stable=True).values)
    assert torch.equal(train.items, ds.items[:800])  # ties keep original row order


def test_time_split_needs_timestamps(tmp_path):
    from data_loaders import read_ratings_file

    path = tmp_path / "r.csv"
    path.write_text("1,2,3\n")
    with pytest.raises(ValueError, match="needs timestamps"):
        time_split(read_ratings_file(path, header=False))


def test_leave_k_out(ds):
    train, valid, test = leave_k_out_split(ds, k=2, seed=0, valid_k=1)
    _assert_partition(ds, (train, valid, test))
    counts = np.bincount(ds.users.numpy(), minlength=ds.num_users)
    test_counts = np.bincount(test.users.numpy(), minlength=ds.num_users)
    valid_counts = np.bincount(valid.users.numpy(), minlength=ds.num_users)
    np.testing.assert_array_equal(test_counts, np.where(counts >= 4, 2, 0))
    np.testing.assert_array_equal(valid_counts, np.where(counts >= 4, 1, 0))
    again = leave_k_out_split(ds, k=2, seed=0, valid_k=1)
    assert torch.equal(again[2].items, test.items)
    assert not torch.equal(leave_k_out_split(ds, k=2, seed=5, valid_k=1)[2].items, test.items)


def test_leave_k_out_small_users_stay_in_train(tmp_path):
    from data_loaders import read_ratings_file

    path = tmp_path / "r.csv"
    rows = ["1,1,5", "1,2,5", "1,3,5", "2,1,4", "2,2,4"]  # user 1 has 3 ratings, user 2 only 2
    path.write_text("\n".join(rows) + "\n")
    train, valid, test = leave_k_out_split(read_ratings_file(path, header=False), k=1, valid_k=1)
    assert test.user_ids[test.users.numpy()].tolist() == [1]
    assert valid.user_ids[valid.users.numpy()].tolist() == [1]
    assert sorted(train.user_ids[train.users.numpy()].tolist()) == [1, 2, 2]


def test_leave_k_out_by_time_holds_out_latest(ds):
    train, valid, test = leave_k_out_split(ds, k=1, valid_k=1, by_time=True)
    for u in test.users.unique().tolist():
        t_test = test.timestamps[test.users == u].item()
        t_valid = valid.timestamps[valid.users == u].item()
        assert t_test >= t_valid >= train.timestamps[train.users == u].max().item()


def test_kfold_partitions_and_shuffle(ds):
    tests = [kfold_split(ds, f)[1] for f in range(1, 6)]
    _assert_partition(ds, tests)
    train, test = kfold_split(ds, 2)
    assert torch.equal(test.items, ds.items[200:400]) and len(train) == 800
    shuffled = kfold_split(ds, 2, shuffle=True, seed=1)[1]
    assert len(shuffled) == 200 and not torch.equal(shuffled.items, test.items)
    with pytest.raises(ValueError):
        kfold_split(ds, 6)


@pytest.mark.parametrize("fold", [1, 2, 3, 4, 5, "a", "b"])
def test_movielens_fold_files(ml_root, ds, fold):
    train, test = movielens_fold(ml_root, fold=fold)
    _assert_partition(ds, (train, test), same_maps=False)
    assert train.user_ids.tolist() == ds.user_ids.tolist() and test.item_ids is train.item_ids
    assert train.num_items == ds.num_items and test.num_users == ds.num_users
    if fold != "a" and fold != "b":
        expected = kfold_split(ds, int(fold))
        assert _rows(expected[0]) == _rows(train) and _rows(expected[1]) == _rows(test)


def test_movielens_fold_from_zip_and_without_u_data(tmp_path):
    frame = synthetic_ratings(500, 30, 40, seed=1)
    zip_path = write_movielens(tmp_path / "z", "100k", frame, as_zip=True)
    train, test = movielens_fold(zip_path, 3)
    assert len(train) == 400 and len(test) == 100
    folder = write_movielens(tmp_path / "f", "100k", frame)
    (folder / "u.data").unlink()
    train, test = movielens_fold(folder, 3)
    union = np.union1d(train.user_ids[train.users.numpy()], test.user_ids[test.users.numpy()])
    assert train.user_ids.tolist() == union.tolist() and test.num_users == len(union)
    with pytest.raises(ValueError, match="fold"):
        movielens_fold(folder, 6)
    with pytest.raises(FileNotFoundError, match="u1.base"):
        movielens_fold(tmp_path, 1)


def test_time_contexts_fitted_on_train_only(ds):
    train, valid, test = random_split(ds, (0.8, 0.1, 0.1), seed=0)
    train_ctx = train.with_time_contexts(4)
    assert train_ctx.num_contexts == 4 and train_ctx.contexts.dtype == torch.int64
    counts = torch.bincount(train_ctx.contexts, minlength=4)
    assert counts.min() >= len(train) // 4 - 2  # quantile bins are balanced on the data they were fitted on
    test_ctx = test.with_time_contexts(edges=train_ctx.time_bin_edges)
    assert test_ctx.num_contexts == 4
    expected = np.searchsorted(train_ctx.time_bin_edges, test.timestamps.numpy(), side="right")
    np.testing.assert_array_equal(test_ctx.contexts.numpy(), expected)
    assert test_ctx.subset([0, 1]).num_contexts == 4
    with pytest.raises(ValueError):
        train.with_time_contexts()


def test_subset_accepts_tensor_array_and_mask(ds):
    a = ds.subset(torch.tensor([3, 1]))
    b = ds.subset(np.array([3, 1]))
    mask = torch.zeros(len(ds), dtype=torch.bool)
    mask[[1, 3]] = True
    c = ds.subset(mask)
    assert torch.equal(a.items, b.items) and torch.equal(c.items, ds.items[[1, 3]])
    assert a.num_users == ds.num_users and a.rating_scale == ds.rating_scale and a.name == ds.name


def test_scaler_fitted_on_train_only(ds):
    train, _, test = random_split(ds, (0.8, 0.1, 0.1), seed=0)
    scaler = RatingScaler().fit(train)
    r = train.ratings.double()
    assert scaler.mean_ == pytest.approx(r.mean().item())
    assert scaler.std_ == pytest.approx(r.std(unbiased=False).item())
    z = scaler.transform(train.ratings)
    assert z.mean().item() == pytest.approx(0, abs=1e-5)
    assert z.std(unbiased=False).item() == pytest.approx(1, abs=1e-5)
    torch.testing.assert_close(scaler.inverse_transform(scaler.transform(test.ratings)), test.ratings)
    clone = RatingScaler.from_state_dict(scaler.state_dict())
    assert clone.state_dict() == scaler.state_dict() == {"mean": scaler.mean_, "std": scaler.std_}
    with pytest.raises(RuntimeError, match="not fitted"):
        RatingScaler().transform(test.ratings)
    assert RatingScaler().fit(torch.full((3,), 4.0)).std_ == 1.0
