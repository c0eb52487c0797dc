import sys

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from data_loaders import RatingDataset
from sif.peers import SURPRISE_PEERS, SurpriseRecommender, fit_ease
from sif.ranking import evaluate_ranking


@pytest.fixture
def cornac():
    return pytest.importorskip("cornac")


@pytest.fixture
def surprise():
    return pytest.importorskip("surprise")


def _matrix(seed=0, num_users=30, num_items=12):
    rng = np.random.default_rng(seed)
    x = (rng.random((num_users, num_items)) < 0.3).astype(np.float64)
    x[:, 5] = 0.0                      # an item with no training positives
    return x


def _closed_form(x, lamb):
    p = np.linalg.inv(x.T @ x + lamb * np.eye(x.shape[1]))
    b = -p / np.diag(p)
    np.fill_diagonal(b, 0.0)
    return b


@pytest.mark.parametrize("lamb", [0.5, 2.0, 50.0])
def test_ease_matches_the_numpy_closed_form(lamb, cornac):
    x = _matrix()
    fit = fit_ease(sp.csr_matrix(x), lamb=lamb)
    np.testing.assert_allclose(fit.B, _closed_form(x, lamb), rtol=1e-9, atol=1e-12)
    assert np.all(np.diag(fit.B) == 0) and np.all(fit.B[5] == 0) and np.all(fit.B[:, 5] == 0)
    users = torch.tensor([0, 7, 29])
    np.testing.assert_allclose(fit.score_fn()(users).numpy(), (x @ _closed_form(x, lamb))[[0, 7, 29]],
                               rtol=1e-4, atol=1e-5)


def test_ease_positive_only_clips_negative_weights(cornac):
    x = _matrix(1)
    fit = fit_ease(sp.csr_matrix(x), lamb=1.0, positive_only=True)
    np.testing.assert_allclose(fit.B, np.clip(_closed_form(x, 1.0), 0, None), rtol=1e-9, atol=1e-12)


def test_ease_ranks_a_planted_co_occurrence_through_the_shared_evaluation(cornac):
    # users who like item 0 also like item 1; held-out item 1 must be ranked first for those users
    x = np.zeros((20, 6))
    x[:10, [0, 1]] = 1.0
    x[10:, [2, 3]] = 1.0
    train = x.copy()
    train[0, 1] = 0.0
    held = np.zeros_like(x)
    held[0, 1] = 1.0
    fit = fit_ease(sp.csr_matrix(train), lamb=1.0)
    m = evaluate_ranking(fit.score_fn(), sp.csr_matrix(train), sp.csr_matrix(held), ks=(1,))
    assert m["hr@1"] == 1.0


def test_ease_rejects_a_bad_lambda(cornac):
    with pytest.raises(ValueError, match="lamb"):
        fit_ease(sp.csr_matrix(_matrix()), lamb=0.0)


def test_missing_cornac_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cornac", None)
    with pytest.raises(ImportError, match=r"nasp-sif\[peers\]"):
        fit_ease(sp.csr_matrix(_matrix()), lamb=1.0)


# ---------------------------------------------------------------------------------------------- Surprise (ratings)
def _ratings(seed=0, n=600, num_users=40, num_items=30):
    """Ratings 1..5 with non-contiguous, unordered raw ids; user 10**6 and item "zz" appear only outside train."""
    rng = np.random.default_rng(seed)
    user_raw = rng.permutation(np.arange(num_users) * 37 + 1001)          # e.g. 1001, 1038, ... shuffled
    item_raw = np.array([f"m{k * 13 % 997}" for k in rng.permutation(num_items)])
    u, i = rng.integers(0, num_users, n), rng.integers(0, num_items, n)
    r = np.clip(np.round(3 + 0.8 * rng.standard_normal(n)), 1, 5)
    users = np.concatenate([user_raw[u], [10**6, 10**6, user_raw[0]]])
    items = np.concatenate([item_raw[i], [item_raw[0], "zz", "zz"]])
    ratings = np.concatenate([r, [4.0, 2.0, 5.0]])
    full = RatingDataset.from_arrays(users, items, ratings, rating_scale=(1, 5))
    train = full.subset(np.arange(n))                  # the last three rows (the unknown user/item) stay out
    held = full.subset(np.arange(n, n + 3))
    return full, train, held


def _surprise_reference(surprise, name, full, train, seed):
    """Surprise's own algorithm on the raw (user, item, rating) triplets of ``train``, in train's order."""
    import pandas as pd

    frame = pd.DataFrame({"u": full.user_ids[train.users.numpy()].tolist(),
                          "i": full.item_ids[train.items.numpy()].tolist(),
                          "r": train.ratings.numpy().astype(float)})
    trainset = surprise.Dataset.load_from_df(frame, surprise.Reader(rating_scale=(1, 5))).build_full_trainset()
    cls = getattr(surprise, SURPRISE_PEERS[name])
    algo = cls(verbose=False) if cls is surprise.BaselineOnly else cls(random_state=seed)
    return algo.fit(trainset)


@pytest.mark.parametrize("name", sorted(SURPRISE_PEERS))
def test_surprise_wrapper_equals_surprise_predict_on_every_pair(surprise, name):
    full, train, _ = _ratings()
    rec = SurpriseRecommender(name, random_state=7).fit(train)
    algo = _surprise_reference(surprise, name, full, train, seed=7)
    assert rec.algo_.trainset.n_ratings == len(train)            # train only
    uu, ii = np.meshgrid(np.arange(full.num_users), np.arange(full.num_items), indexing="ij")
    uu, ii = uu.ravel(), ii.ravel()                               # every (user, item) of the id maps
    raw_u, raw_i = full.user_ids[uu].tolist(), full.item_ids[ii].tolist()
    expected = np.array([algo.predict(a, b).est for a, b in zip(raw_u, raw_i, strict=True)])
    np.testing.assert_array_equal(rec.predict(uu, ii, ids="index"), expected)
    np.testing.assert_array_equal(rec.predict(full.user_ids[uu], full.item_ids[ii]), expected)
    assert len(np.unique(expected)) > full.num_items              # personalised, not a constant


def test_surprise_unknown_user_and_item_get_surprises_fallback(surprise):
    full, train, held = _ratings()
    mu = float(train.ratings.double().mean())
    for name in SURPRISE_PEERS:
        rec = SurpriseRecommender(name, random_state=0).fit(train)
        new_user, new_item = 10**6, "zz"
        known_item = full.item_ids[0]
        both = rec.predict([new_user], [new_item])[0]
        assert both == pytest.approx(mu, abs=1e-12)              # neither known: the global mean
        # a new user with a known item: Surprise's estimate without the user's terms (mu + b_i for all three)
        inner_i = rec.algo_.trainset.to_inner_iid(known_item)
        assert rec.predict([new_user], [known_item])[0] == pytest.approx(np.clip(mu + rec.algo_.bi[inner_i], 1, 5))
        assert rec.predict([99], [-3])[0] == pytest.approx(mu)    # raw ids outside the id maps: no error
        s = rec.score(held)                                       # rows with the new user/item: scored, no crash
        assert np.isfinite(s["rmse"]) and np.isfinite(s["mae"])


def _baseline_als(users, items, r, num_users, num_items, epochs=10, reg_u=15.0, reg_i=10.0):
    """Regularised user/item biases by alternating exact minimisation (items, then users, each epoch), the
    algorithm Surprise documents for BaselineOnly with its default options."""
    mu = r.mean()
    bu, bi = np.zeros(num_users), np.zeros(num_items)
    n_u, n_i = np.bincount(users, minlength=num_users), np.bincount(items, minlength=num_items)
    for _ in range(epochs):
        bi = np.bincount(items, r - mu - bu[users], minlength=num_items) / (reg_i + n_i)
        bu = np.bincount(users, r - mu - bi[items], minlength=num_users) / (reg_u + n_u)
    return mu, bu, bi


def test_surprise_baseline_recovers_planted_biases():
    pytest.importorskip("surprise")
    rng = np.random.default_rng(3)
    nu, ni = 80, 120
    b_user, b_item = rng.uniform(-0.8, 0.8, nu), rng.uniform(-0.8, 0.8, ni)
    uu, ii = np.meshgrid(np.arange(nu), np.arange(ni), indexing="ij")
    keep = rng.random(uu.shape) < 0.8
    u, i = uu[keep], ii[keep]
    r = 3.0 + b_user[u] + b_item[i]                               # no noise: the biases are the whole signal
    ds = RatingDataset.from_arrays(u * 5 + 2, i * 3 + 100, r, rating_scale=(1, 5))
    rec = SurpriseRecommender("surprise_baseline").fit(ds)
    mu, bu, bi = _baseline_als(ds.users.numpy(), ds.items.numpy(), ds.ratings.numpy().astype(float),
                               ds.num_users, ds.num_items)
    grid_u, grid_i = (a.ravel() for a in np.meshgrid(np.arange(nu), np.arange(ni), indexing="ij"))
    np.testing.assert_allclose(rec.predict(grid_u, grid_i, ids="index"),
                               np.clip(mu + bu[grid_u] + bi[grid_i], 1, 5), rtol=0, atol=1e-6)
    # the shrunken estimates still follow the planted biases
    assert np.corrcoef(bu, b_user)[0, 1] > 0.95 and np.corrcoef(bi, b_item)[0, 1] > 0.95
    assert rec.score(ds)["rmse"] < 0.1


def test_surprise_seed_comes_from_the_run_and_the_harness_names_them(surprise):
    from sif.benchmark import fit_tuned
    from sif.build import recommender_kwargs
    from sif.config import RunConfig
    from sif.recommender import create_recommender

    cfg = RunConfig()
    cfg.seed = 5
    assert recommender_kwargs(cfg, "surprise_svd", strict=False) == {"random_state": 5, "task": "rating"}
    full, train, _ = _ratings(1)
    valid = train.subset(np.arange(500, 600))
    train = train.subset(np.arange(500))
    rec, setting = fit_tuned(cfg, "surprise_svd", {}, (train, valid, valid))
    assert isinstance(rec, SurpriseRecommender) and rec.algo_.random_state == 5 and setting == {}
    assert rec.train_result_.best_valid == rec.score(valid) and rec.train_result_.seconds > 0
    again = create_recommender("surprise_svd", random_state=5).fit(train)
    other = create_recommender("surprise_svd", random_state=6).fit(train)
    np.testing.assert_array_equal(again.predict(valid.users, valid.items, ids="index"),
                                  rec.predict(valid.users, valid.items, ids="index"))
    assert not np.array_equal(other.predict(valid.users, valid.items, ids="index"),
                              rec.predict(valid.users, valid.items, ids="index"))
    with pytest.raises(ValueError, match="task"):
        create_recommender("surprise_svdpp", task="bpr")


def test_missing_surprise_names_the_extra(monkeypatch):
    _, train, _ = _ratings()
    monkeypatch.setitem(sys.modules, "surprise", None)
    with pytest.raises(ImportError, match=r"nasp-sif\[peers\]"):
        SurpriseRecommender("surprise_svd").fit(train)


def test_sif_train_refuses_a_surprise_peer_in_one_line(capsys):
    from sif.cli import main

    assert main(["train", "--set", "model.name=surprise_svd"]) == 2
    err = capsys.readouterr().err
    assert "model.name='surprise_svd'" in err and "sif benchmark" in err and len(err.strip().splitlines()) == 1


def test_merge_reads_rows_with_their_machine_and_command(tmp_path):
    import json

    from sif.benchmark import merge_benchmarks

    row = {"model": "surprise_svd", "split": 1, "test": {"rmse": 0.9, "mae": 0.7}, "valid": {"rmse": 0.91},
           "seconds_train": 1.0, "setting": {}}
    (tmp_path / "a.json").write_text(json.dumps([row]))
    (tmp_path / "b.json").write_text(json.dumps({"machine": {}, "command": "sif benchmark", "rows": [
        {**row, "split": 2, "test": {"rmse": 1.1, "mae": 0.9}}]}))
    table = merge_benchmarks([tmp_path / "a.json", tmp_path / "b.json"])
    assert "| surprise_svd | 1.0000 +- 0.1414 | 0.8000 +- 0.1414 |" in table
