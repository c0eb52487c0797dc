"""Rating files with string user/item ids (``id_type="str"``, config ``data.id_type``): read on the fast and the
careful path, checked like integer ids, and carried through fit, save, load and recommend without pickle."""

import numpy as np
import pandas as pd
import pytest

from data_loaders import random_split, read_ratings_file
from data_loaders._parse import _frame_column
from sif.config import load_config
from sif.data import load_splits
from sif.recommender import create_recommender, load_recommender


def _frame(n_users=12, n_items=9, seed=0):
    rng = np.random.default_rng(seed)
    pairs = [(u, i) for u in range(n_users) for i in range(n_items) if rng.random() < 0.7]
    return pd.DataFrame({"user": [f"u{u:03d}" for u, _ in pairs], "item": [f"isbn-{i:02d}X" for _, i in pairs],
                         "rating": rng.integers(1, 6, len(pairs)).astype(float)})


def test_string_ids_are_read_as_text_on_both_paths(tmp_path):
    f = _frame()
    f.loc[0, "user"] = "007"                                   # numeric-looking text stays text
    path = tmp_path / "r.csv"
    f.to_csv(path, index=False)
    fast = read_ratings_file(path, id_type="str")
    assert fast.user_ids.dtype.kind == "U" and "007" in set(fast.user_ids) and len(fast) == len(f)
    bad = tmp_path / "bad.csv"                                 # a bad row sends the reader down the careful path
    bad.write_text(path.read_text() + "u999,isbn-99X,not-a-number\n")
    with pytest.warns(UserWarning, match="dropped 1 invalid row"):
        careful = read_ratings_file(bad, id_type="str", drop_invalid=True)
    assert careful.user_ids.dtype.kind == "U" and len(careful) == len(f)
    assert np.array_equal(careful.user_ids, fast.user_ids) and np.array_equal(careful.item_ids, fast.item_ids)
    assert careful.users.tolist() == fast.users.tolist() and careful.items.tolist() == fast.items.tolist()
    values, bad_rows = _frame_column(pd.Series(["007", None, "", "x"]), "user", string_ids=True)   # Parquet's
    assert values.dtype.kind == "U" and values[0] == "007" and bad_rows.tolist() == [False, True, True, False]


def test_string_ids_keep_the_checks(tmp_path):
    f = _frame()
    path = tmp_path / "dup.csv"
    pd.concat([f, f.iloc[:1]]).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"dup.csv, line \d+: duplicate \(user, item\) = \(u000, isbn-00X\)"):
        read_ratings_file(path, id_type="str")
    empty = tmp_path / "empty.csv"
    empty.write_text("user,item,rating\nu1,a,3\n,b,4\n")
    with pytest.raises(ValueError, match=r"empty.csv, line 3: expected a non-empty id for user \(field 1\)"):
        read_ratings_file(empty, id_type="str")
    with pytest.raises(ValueError, match="expected an int64 integer for user"):      # the default stays strict
        read_ratings_file(tmp_path / "dup.csv")
    with pytest.raises(ValueError, match="id_type must be 'int' or 'str'"):
        read_ratings_file(path, id_type="text")
    with pytest.raises(ValueError, match="data.id_type must be 'int' or 'str'"):
        load_config(None, ["data.id_type=uuid"])


def test_fit_save_load_recommend_with_string_ids(tmp_path):
    path = tmp_path / "r.tsv"
    _frame(seed=1).to_csv(path, sep="\t", index=False, header=False)
    cfg = load_config(None, ["data.dataset=file", f"data.path={path}", "data.id_type=str"])
    train, valid, test = load_splits(cfg.data, 0)
    assert train.user_ids.dtype.kind == "U"
    rec = create_recommender("mf", embedding_dim=2, random_state=0, train={"max_epochs": 2}).fit(
        train, valid, show_progress=False)
    items, _ = rec.recommend("u003", N=3, filter_already_rated=False)
    assert all(isinstance(i, str) and i.startswith("isbn-") for i in items.tolist())
    back = load_recommender(rec.save(tmp_path / "model"))
    assert back.recommend("u003", N=3, filter_already_rated=False)[0].tolist() == items.tolist()
    assert np.allclose(back.predict(["u003"], [items[0]]), rec.predict(["u003"], [items[0]]))
    with pytest.raises(ValueError, match="unknown to the model"):
        back.recommend("nobody", N=3)
    assert len(random_split(train, (0.5, 0.25, 0.25), seed=0)[0]) > 0
