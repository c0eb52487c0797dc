"""SIF on (user, item, context) data: the context readers, their config wiring and errors, and planted tensor
functions recovered by the library's search plus selection race."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from data_loaders import RatingDataset, random_split
from data_loaders.contexts import (
    ML100K_GENRES,
    genre_contexts,
    hour_contexts,
    read_item_genres,
    time_bin_contexts,
    weekday_contexts,
    with_context,
)
from data_loaders.synthetic import synthetic_ratings, write_movielens
from sif.cli import main
from sif.config import load_config
from sif.data import load_splits
from sif.recommender import create_recommender
from sif.synthetic import planted_ratings

# 2026-12-02 was a Wednesday; 13:45:10 UTC
WED = 1_796_219_110


def _ds(timestamps, items=None) -> RatingDataset:
    n = len(timestamps)
    items = np.arange(n) % 3 + 1 if items is None else np.asarray(items)
    return RatingDataset.from_arrays(np.arange(n) % 2, items, np.ones(n), timestamps=np.asarray(timestamps),
                                     rating_scale=(1, 5), item_ids=np.array([1, 2, 3]))


def test_weekday_and_hour_are_utc():
    ts = [WED, WED + 86400 * 4, WED - 13 * 3600 - 45 * 60 - 10, 0]          # Wed, Sun, Wed 00:00, 1970-01-01 Thu
    wd, hr = weekday_contexts(_ds(ts)), hour_contexts(_ds(ts))
    assert wd.contexts.tolist() == [2, 6, 2, 3] and wd.num_contexts == 7
    assert hr.contexts.tolist() == [13, 13, 0, 0] and hr.num_contexts == 24


def test_time_bins_reuse_the_dataset_binning_fitted_on_train():
    train, valid, test = _ds(np.arange(8) * 100), _ds([-5, 300, 10_000]), _ds([0])
    tr, va, _ = with_context((train, valid, test), "time_bins", num_bins=4)
    assert tr.contexts.tolist() == [0, 0, 1, 1, 2, 2, 3, 3] and va.contexts.tolist() == [0, 1, 3]
    np.testing.assert_array_equal(va.time_bin_edges, tr.time_bin_edges)


def _u_item(path: Path) -> Path:
    flags = {1: [0, 0, 1] + [0] * 16, 2: [0] * 19, 3: [0] * 8 + [1] + [0] * 5 + [1] + [0] * 4}  # Adventure;-;Drama
    lines = [f"{i}|Movie {i} (1995)|01-Jan-1995||http://x|" + "|".join(map(str, f)) for i, f in flags.items()]
    path.write_text("\n".join(lines) + "\n", encoding="latin-1")
    return path


def test_u_item_first_genre_and_unknown(tmp_path):
    genres = read_item_genres(_u_item(tmp_path / "u.item"))
    assert genres == {"1": "Adventure", "2": "unknown", "3": "Drama"} and len(ML100K_GENRES) == 19
    ds = genre_contexts(_ds([1, 2, 3, 4], items=[1, 2, 3, 3]), genres)
    assert list(ds.context_ids) == ["Adventure", "Drama", "unknown"] and ds.contexts.tolist() == [0, 2, 1, 1]


def test_movies_csv_and_dat_first_genre(tmp_path):
    csv = tmp_path / "movies.csv"
    csv.write_text('movieId,title,genres\n1,"Toy Story, The (1995)",Animation|Children\n'
                   "2,Heat (1995),(no genres listed)\n3,Up (2009),Comedy\n")
    assert read_item_genres(csv) == {"1": "Animation", "2": "unknown", "3": "Comedy"}
    dat = tmp_path / "movies.dat"
    dat.write_text("1::Toy Story (1995)::Animation|Children's|Comedy\n2::Heat (1995)::Action|Crime\n",
                   encoding="latin-1")
    assert read_item_genres(dat) == {"1": "Animation", "2": "Action"}
    ds = genre_contexts(_ds([1, 2, 3], items=[3, 1, 2]), read_item_genres(csv))    # item 3 absent -> unknown
    assert [ds.context_ids[c] for c in ds.contexts] == ["Comedy", "Animation", "unknown"]


def test_bad_item_files_name_file_and_line(tmp_path):
    bad = tmp_path / "u.item"
    bad.write_text("1|Movie|01-Jan-1995||http://x|" + "|".join(["0"] * 19) + "\n2|Movie|x|0|1\n")
    with pytest.raises(ValueError, match=r"u.item, line 2: expected an item id and 19"):
        read_item_genres(bad)
    csv = tmp_path / "movies.csv"
    csv.write_text("movieId,title\n1,Heat\n")
    with pytest.raises(ValueError, match=r"movies.csv, line 1: expected a header with the columns movieId and genres"):
        read_item_genres(csv)


def test_time_contexts_without_timestamps_fail_in_one_line():
    ds = RatingDataset.from_arrays([1, 2], [1, 2], [3.0, 4.0], rating_scale=(1, 5))
    for fn in (weekday_contexts, hour_contexts):
        with pytest.raises(ValueError, match=r"has no timestamps, so context '(weekday|hour)'"):
            fn(ds)


def test_calendar_contexts_refuse_millisecond_timestamps():
    ms = _ds([WED * 1000, (WED + 3600) * 1000])       # a file in milliseconds: weekday/hour would be garbage
    for fn, name in ((weekday_contexts, "weekday"), (hour_contexts, "hour")):
        with pytest.raises(ValueError, match=rf"not Unix seconds \(past the year 3000; milliseconds\?\), so context "
                                             rf"'{name}' would be wrong"):
            fn(ms)
    assert time_bin_contexts(ms, 2).num_contexts == 2            # quantile bins do not depend on the unit


def _release(tmp_path) -> Path:
    frame = synthetic_ratings(600, 30, 40, seed=0)
    folder = write_movielens(tmp_path, "100k", frame)
    _u_item(folder / "u.item")
    return folder


@pytest.mark.parametrize("context,values", [("none", 0), ("time_bins", 5), ("weekday", 7), ("hour", 24),
                                            ("genre", 3)])
def test_config_context_reaches_the_splits(tmp_path, context, values):
    folder = _release(tmp_path)
    cfg = load_config(None, ["data.split=fold", f"data.root={folder}", f"data.context={context}",
                             "data.context_bins=5"])
    train, valid, test = load_splits(cfg.data, 0)
    assert train.num_contexts == valid.num_contexts == test.num_contexts == values
    if values:
        assert int(train.contexts.max()) < values and len(test.contexts) == len(test)


def test_config_context_errors_are_one_line(tmp_path):
    with pytest.raises(Exception, match=r"data.context must be one of none, time_bins, weekday, hour, genre"):
        load_config(None, ["data.context=season"])
    with pytest.raises(Exception, match=r"data.context_bins must be >= 1"):
        load_config(None, ["data.context_bins=0"])
    folder = _release(tmp_path)
    (folder / "u.item").unlink()
    cfg = load_config(None, ["data.split=fold", f"data.root={folder}", "data.context=genre"])
    with pytest.raises(FileNotFoundError, match=r"data.context=genre: no u.item under .*; set data.item_file"):
        load_splits(cfg.data, 0)
    cfg = load_config(None, ["data.dataset=file", f"data.path={folder / 'u.data'}", "data.context=genre"])
    with pytest.raises(ValueError, match=r"data.context=genre needs data.item_file"):
        load_splits(cfg.data, 0)
    cfg = load_config(None, ["data.dataset=file", f"data.path={folder / 'u.data'}", "data.context=genre",
                             f"data.item_file={tmp_path / 'missing.item'}"])
    with pytest.raises(FileNotFoundError, match=r"data.item_file=.*missing.item: no such file"):
        load_splits(cfg.data, 0)


def test_item_file_key_reads_a_generic_file(tmp_path):
    folder = _release(tmp_path)
    path = tmp_path / "ratings.csv"
    path.write_text("user,item,rating\n1,1,4\n2,3,5\n1,2,3\n2,1,2\n3,3,1\n3,2,4\n1,3,2\n2,2,5\n3,1,3\n4,1,3\n")
    cfg = load_config(None, ["data.dataset=file", f"data.path={path}", "data.context=genre",
                             f"data.item_file={folder / 'u.item'}"])
    train, _, _ = load_splits(cfg.data, 0)
    genre = {int(train.item_ids[i]): train.context_ids[c] for i, c in zip(train.items, train.contexts, strict=True)}
    assert genre == {1: "Adventure", 2: "unknown", 3: "Drama"}


def test_cli_writes_the_context_into_results(tmp_path):
    folder = _release(tmp_path)
    assert main(["train", "--out", str(tmp_path / "run"), "--set", "model.name=cp", "data.split=fold",
                 f"data.root={folder}", "data.context=weekday", "model.embedding_dim=2", "train.max_epochs=1",
                 "show_progress=false"]) == 0
    results = json.loads((tmp_path / "run" / "train-cp" / "results.json").read_text())
    assert results["context"] == "weekday" and results["num_contexts"] == 7


# ---- planted tensor functions -------------------------------------------------------------------------------
# The library's defaults select: the search, then the race of its tensor_race_k = 4 largest alphas (one per function
# class, rounds capped at tensor_race_cap = 8 epochs), embeddings started at init_std 0.1. Set here, and only for the
# size of this data (1,920 training ratings are 15 batches of 128, so one search epoch is 15 alpha steps; ML-100K's
# 4-epoch search makes about 280): L2 1e-4 and no biases (noise 0.1, no offsets planted), lr 0.03, and a search of
# 30 epochs at the stand-alone lr with alpha lr 0.003, so that the alphas can travel about as far as on ML-100K's
# longer search. With the 1-epoch search of the earlier (slow, 53-candidate race) version of this test, the triple
# product had alpha rank 38-39 of 40 function classes on these seeds, and the default race found it on 0 of 5 and
# the mixed op on 2 of 5; with this search on 10 of 10 seeds each (0-9), on 5 of the 20 through alphas tied at the
# bound 1, which widen the race (benchmarks/README.md, SIF tensor search, 2026-12-05 (2)).
_FIT = {"reg": 1e-4, "use_bias": False, "search": {"epochs": 30, "w_lr": 0.03, "a_lr": 0.003},
        "train": {"max_epochs": 30, "patience": 3, "lr": 0.03, "batch_size": 128}}
# w^T [u*v, c] and w^T (u*v + c) are one function class (c is learned): either recovers the planted mixed op
_SAME = {"multiply_multiply": {"multiply_multiply"},
         "multiply(u,v)_plus(c)": {"multiply(u,v)_plus(c)", "multiply(u,v)_concat(c)"}}


@pytest.mark.parametrize("op", sorted(_SAME))
def test_planted_tensor_function_is_recovered_on_every_seed_by_the_default_race(op):
    found, rmse = [], []
    for seed in range(5):
        ds = planted_ratings(op, num_users=24, num_items=30, num_contexts=4, dim=2, n=2400, seed=seed)
        tr, va, te = random_split(ds, (0.8, 0.1, 0.1), seed=seed)
        rec = create_recommender("sif", embedding_dim=2, random_state=seed, **_FIT).fit(tr, va, show_progress=False)
        assert rec.tensor_race_k == 4 and rec.tensor_race_cap == 8 and rec.init_std == 0.1   # the defaults
        found.append(rec.op_)
        rmse.append(rec.score(te)["rmse"])
    assert all(f in _SAME[op] for f in found), found
    assert max(rmse) < 0.3, rmse          # near the planted noise (0.1) on a rating std of about 1.5-2


@pytest.mark.realdata
def test_ml100k_contexts_from_the_shared_data():
    root = os.environ.get("NASP_DATA_DIR")
    if not root or not (Path(root) / "ml-100k" / "u.item").is_file():
        pytest.skip("NASP_DATA_DIR with ml-100k/ not set")
    cfg = load_config(None, ["data.split=fold", "data.context=genre"])
    train, _, test = load_splits(cfg.data, 0)
    assert train.num_contexts == 19 and test.num_contexts == 19 and "Drama" in set(train.context_ids)


# ---- benchmarks/sif_tensor_benchmark.py -----------------------------------------------------------------------
def _rows(model, rmses, valid=None):
    return [{"model": model, "context": "planted:x", "num_contexts": 8, "split": s, "test": {"rmse": t},
             "valid": {"rmse": valid[s] if valid else t}, "seconds": 1.0, "setting": {}, "op": "multiply_multiply"}
            for s, t in enumerate(rmses)]


def test_tensor_benchmark_row_names_and_planted_splits():
    from benchmarks.sif_tensor_benchmark import _grid, planted_splits

    cfg = load_config("configs/sif_tensor_ml100k_folds.yaml")
    assert _grid(cfg, "sif@race_k=53") == ("sif", {"race_k": [53]})
    assert _grid(cfg, "matrix:mf") == ("mf", {"reg": [0.03, 0.1]})
    tr, va, te = planted_splits("multiply_multiply", 3, num_users=20, num_items=30, n=1000)
    assert (len(tr), len(va), len(te)) == (800, 100, 100) and tr.num_contexts == 8


def test_tensor_benchmark_targets_and_regret():
    from benchmarks.sif_tensor_benchmark import summary

    rows = (_rows("sif", [1.00, 1.01, 0.99]) + _rows("cp", [1.20, 1.21, 1.19]) + _rows("matrix:mf", [1.00, 1.02, 0.98])
            + _rows("fixed:multiply_multiply", [0.98, 0.99, 0.97], valid=[0.9, 0.9, 0.9])
            + _rows("fixed:plus_plus", [0.5, 0.5, 0.5], valid=[1.5, 1.5, 1.5]))
    text = summary(rows)
    assert "target sif < cp by one std: met (+0.2000" in text
    assert "target sif < matrix:mf by one std: not met" in text
    # the regret is against the fixed candidate best on validation (multiply_multiply), not the best on test
    assert "(multiply_multiply, multiply_multiply, multiply_multiply): 0.0200 +- 0.0000" in text


# ---- the tensor race: one op per function class, the round cap ---------------------------------------------
def test_function_classes_of_tensor_candidates():
    from sif.selection import distinct_classes, function_class

    assert {function_class(op) for op in ("plus_plus", "concat_concat", "plus(u,v)_concat(c)",
                                          "plus(u,c)_concat(v)")} == {"additive"}
    assert function_class("multiply(u,v)_concat(c)") == function_class("multiply(u,v)_plus(c)")
    assert function_class("multiply(u,v)_max(c)") == "multiply(u,v)_max(c)"
    assert function_class("plus") == "plus" and function_class("concat") == "concat"     # matrix ops: untouched
    ops = ["plus_plus", "min(u,c)_concat(v)", "concat_concat", "min(u,c)_plus(v)", "multiply_multiply"]
    assert distinct_classes(ops) == ["plus_plus", "min(u,c)_concat(v)", "multiply_multiply"]


def test_race_cap_stops_the_rounds_and_trains_the_winner_on():
    from sif.selection import race

    # "slow" learns steadily and is best after 12 epochs; "fast" leads up to epoch 8, then plateaus at 0.90
    curves = {"fast": [1.0, 0.95, 0.92, 0.91, 0.905, 0.902, 0.901, 0.9005] + [0.9004] * 12,
              "slow": [1.0 - 0.012 * e for e in range(20)]}

    def advance(op, epochs):
        return curves[op][:epochs]

    free = race(["fast", "slow"], advance, patience=2, max_epochs=20)
    capped = race(["fast", "slow"], advance, patience=2, max_epochs=20, cap=4)
    assert free.winner == "slow" and capped.winner == "fast"
    assert len(capped.curves["slow"]) == 4 and "cap 4" in capped.eliminated[0][2]
    assert len(capped.curves["fast"]) > 4          # the winner trained on to its own early stop
    assert race(["fast", "slow"], advance, patience=2, max_epochs=20, cap=None).curves == free.curves
    with pytest.raises(ValueError, match="cap"):
        race(["fast"], advance, patience=2, cap=0)


def test_tensor_race_uses_its_own_k_classes_and_cap():
    ds = planted_ratings("multiply(u,v)_plus(c)", num_users=20, num_items=25, num_contexts=3, dim=2, n=1200, seed=0)
    tr, va, _ = random_split(ds, (0.8, 0.2, 0.0), seed=0)
    rec = create_recommender("sif", embedding_dim=2, race_k=1, tensor_race_k=3, tensor_race_cap=2, alpha_tol=0.0,
                             search={"epochs": 1}, train={"max_epochs": 6, "patience": 2}).fit(tr, va,
                                                                                               show_progress=False)
    from sif.selection import function_class

    cands = rec.selection_.candidates
    assert 1 <= len(cands) <= 3 and len({function_class(c) for c in cands}) == len(cands)
    assert all(len(c) <= 2 for op, c in rec.selection_.curves.items() if op != rec.op_)
    with pytest.raises(ValueError, match="tensor_race_k"):
        create_recommender("sif", tensor_race_k=0)
