"""predict / recommend / score take the training data's raw ids; unknown, out-of-range and non-integer ids are
refused; recommend returns the scores it ranked by and can filter the validation ratings too."""

from __future__ import annotations

import numpy as np
import pytest

from data_loaders import RatingDataset, random_split
from sif.recommender import BaselineRecommender


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    n, users, items = 3000, 40, 50
    u, i = rng.integers(0, users, n), rng.integers(0, items, n)
    r = np.clip(np.round(3 + (u % 3 - 1) * (i % 3 - 1) + rng.normal(0, 0.5, n)), 1, 5)
    ds = RatingDataset.from_arrays(u + 1, i + 1, r.astype(np.float32), rating_scale=(1, 5))   # 1-based raw ids
    tr, va, te = random_split(ds, (0.8, 0.1, 0.1), seed=0)
    rec = BaselineRecommender(model="mf", embedding_dim=4, train={"max_epochs": 3}).fit(tr, va, show_progress=False)
    return rec, tr, va, te


def test_raw_ids_are_the_default(fitted):
    rec, tr, _, te = fitted
    raw_u, raw_i = tr.user_ids[te.users], tr.item_ids[te.items]
    np.testing.assert_array_equal(rec.predict(raw_u, raw_i), rec.predict(te.users, te.items, ids="index"))
    with pytest.raises(ValueError, match=r"unknown to the model \(0\)"):    # 0-based indices are not raw ids
        rec.predict(te.users, te.items)


def test_unknown_and_non_integer_ids_are_refused(fitted):
    rec, tr, _, _ = fitted
    with pytest.raises(ValueError, match=r"users: 1 id\(s\) unknown to the model \(999\)"):
        rec.predict([999], [1])
    with pytest.raises(ValueError, match="items: ids must be integers, got 2.5"):
        rec.predict([1], [2.5])
    with pytest.raises(ValueError, match=r"users: indices must lie in \[0, 40\)"):
        rec.predict([40], [0], ids="index")
    with pytest.raises(ValueError, match="ids must be integers"):
        rec.predict([0.5], [0], ids="index")
    with pytest.raises(ValueError, match="ids must be 'raw'"):
        rec.predict([1], [1], ids="original")
    np.testing.assert_array_equal(rec.predict([1.0, 2.0], [3.0, 4.0]), rec.predict([1, 2], [3, 4]))


def test_recommend_returns_raw_items_and_the_scores_it_ranked_by(fitted):
    rec, tr, _, _ = fitted
    items, scores = rec.recommend(tr.user_ids[:5], N=8)
    idx, idx_scores = rec.recommend(np.arange(5), N=8, ids="index")
    np.testing.assert_array_equal(items, tr.item_ids[idx])
    np.testing.assert_array_equal(scores, idx_scores)
    assert (np.diff(scores, axis=1) <= 0).all()
    unclipped = rec.task_.to_raw(rec.model_(*[__import__("torch").as_tensor(a) for a in
                                              (np.repeat(np.arange(5), 8), idx.reshape(-1))]), clip=False)
    np.testing.assert_allclose(scores.reshape(-1), unclipped.detach().numpy(), rtol=1e-6)


def test_recommend_can_filter_the_validation_ratings_too(fitted):
    rec, tr, va, _ = fitted
    users = np.arange(tr.num_users)
    idx, scores = rec.recommend(users, N=tr.num_items, filter_already_rated="train+valid", ids="index")
    seen = {(int(u), int(i)) for ds in (tr, va) for u, i in zip(ds.users, ds.items, strict=True)}
    kept = {(int(u), int(i)) for u in users for i, s in zip(idx[u], scores[u], strict=True) if np.isfinite(s)}
    assert kept and not kept & seen and len(kept) == tr.num_users * tr.num_items - len(seen)
    _, train_only = rec.recommend(users, N=tr.num_items, ids="index")
    assert np.isfinite(train_only).sum() > np.isfinite(scores).sum()
    with pytest.raises(ValueError, match="filter_already_rated must be"):
        rec.recommend(1, filter_already_rated="test")


def test_score_refuses_a_dataset_with_other_id_maps(fitted):
    rec, tr, _, te = fitted
    other = RatingDataset.from_arrays(tr.user_ids[te.users] + 7, tr.item_ids[te.items], te.ratings,
                                      rating_scale=(1, 5))
    with pytest.raises(ValueError, match="other user/item id maps than the training data"):
        rec.score(other)
