"""Inputs a new user may give (rating files, configs, the estimator API): each is read correctly or refused in one
line naming the file, line, key or argument; none becomes a silently wrong number. Synthetic data only."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import zipfile

import numpy as np
import pytest

from data_loaders import _format, read_ratings_file
from data_loaders._fast_read import _CountingReader

ROWS = "userId,movieId,rating\n1,10,4\n2,20,3\n3,30,5\n"


def _write(path, text: str):
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------ compressed files
@pytest.mark.parametrize("name,pack", [("r.csv.gz", gzip.compress), ("r.csv.bz2", bz2.compress),
                                       ("r.csv.xz", lzma.compress), ("r.csv", gzip.compress)])
def test_compressed_files_read_like_the_plain_file(tmp_path, name, pack):
    plain = read_ratings_file(_write(tmp_path / "plain.csv", ROWS), show_progress=False)
    (tmp_path / name).write_bytes(pack(ROWS.encode()))       # "r.csv": gzip bytes without the suffix
    packed = read_ratings_file(tmp_path / name, show_progress=False)
    assert np.array_equal(packed.user_ids, plain.user_ids) and np.array_equal(packed.item_ids, plain.item_ids)
    assert packed.ratings.tolist() == plain.ratings.tolist() == [4.0, 3.0, 5.0]


def test_truncated_gzip_is_one_line_naming_the_file(tmp_path):
    rows = "".join(f"{u},{i},3\n" for u in range(1, 200) for i in range(1, 50)).encode()
    path = tmp_path / "r.csv.gz"
    path.write_bytes(gzip.compress(rows)[:3000])
    with pytest.raises(ValueError, match=r"r\.csv\.gz: not a readable gzip file \(corrupt or truncated"):
        read_ratings_file(path, show_progress=False)


def test_zip_with_one_file_is_read_and_with_two_refused(tmp_path):
    one = tmp_path / "one.zip"
    with zipfile.ZipFile(one, "w") as zf:
        zf.writestr("ratings.csv", ROWS)
    assert read_ratings_file(one, show_progress=False).ratings.tolist() == [4.0, 3.0, 5.0]
    two = tmp_path / "two.zip"
    with zipfile.ZipFile(two, "w") as zf:
        zf.writestr("a.csv", ROWS)
        zf.writestr("b.csv", ROWS)
    with pytest.raises(ValueError, match=r"two\.zip: a zip archive with 2 files \(a\.csv, b\.csv\)"):
        read_ratings_file(two, show_progress=False)


# ---------------------------------------------------------------------------------------------- id spellings
def test_two_spellings_of_one_integer_id_are_refused(tmp_path):
    path = _write(tmp_path / "r.csv", "1,10,4\n007,20,3\n7,30,5\n")
    with pytest.raises(ValueError, match=r"r\.csv, line 3: user id '7' and '007' \(line 2\) are the same integer 7; "
                                         r"pass id_type='str'"):
        read_ratings_file(path, show_progress=False)
    apart = read_ratings_file(path, show_progress=False, id_type="str")
    assert sorted(apart.user_ids.tolist()) == ["007", "1", "7"]
    quoted = _write(tmp_path / "q.csv", '"1","10","4"\n"007","20","3"\n"7","30","5"\n')
    with pytest.raises(ValueError, match=r"q\.csv, line 3: user id '7' and '007'"):
        read_ratings_file(quoted, show_progress=False)


def test_the_first_spelling_conflict_is_named_before_later_problems(tmp_path):
    items = _write(tmp_path / "i.csv", "1,10,4\n2,010,3\n3,7.0,2\n3,+10,5\n")      # item 010 vs 10 (line 2)
    with pytest.raises(ValueError, match=r"i\.csv, line 2: item id '010' and '10' \(line 1\) are the same integer 10"):
        read_ratings_file(items, show_progress=False)
    later = _write(tmp_path / "l.csv", "7,10,4\n1,20,3\n+7,30,5\nx,40,2\n")           # then a bad row (line 4)
    with pytest.raises(ValueError, match=r"l\.csv, line 3: user id '\+7' and '7' \(line 1\)"):
        read_ratings_file(later, show_progress=False)
    with pytest.raises(ValueError, match=r"l\.csv, line 3: user id '\+7' and '7' \(line 1\)"):
        read_ratings_file(later, show_progress=False, drop_invalid=True)               # dropping rows: still refused
    with pytest.warns(UserWarning, match=r"dropped 1 invalid row\(s\) \(1 not a number\)"):
        fine = read_ratings_file(_write(tmp_path / "f.csv", "7,10,4\n 7.0 ,20,3\nx,1,1\n"), show_progress=False,
                                 drop_invalid=True)
    assert fine.user_ids.tolist() == [7] and len(fine) == 2 and fine.dropped == {"not a number": 1}


def test_consistently_padded_ids_read_as_integers(tmp_path):
    ds = read_ratings_file(_write(tmp_path / "r.csv", "001,010,4\n002,010,3\n001,020,5\n"), show_progress=False)
    assert ds.user_ids.tolist() == [1, 2] and ds.item_ids.tolist() == [10, 20] and len(ds) == 3
    floats = read_ratings_file(_write(tmp_path / "f.csv", "7.0,10,4\n7,20,3\n1,10,5\n"), show_progress=False)
    assert floats.user_ids.tolist() == [1, 7] and len(floats) == 3          # float notation is not a spelling


@pytest.mark.parametrize("chunk", range(1, 9))
def test_fast_path_scan_finds_padded_ids_at_any_chunk_boundary(monkeypatch, chunk):
    monkeypatch.setattr(_format, "_CHUNK", chunk)
    cases = {b"1,10,4\n007,20,3\n": True, b"1,10,4\n 07,20,3\n": True, b'1,10,4\n"07",2,3\n': True,
             b"1,10,4\n+7,20,3\n": True, b"1,10,4\n7,20,0.5\n": False, b"10,20,3\n70,0,3\n": False}
    for text, padded in cases.items():
        reader = _CountingReader(io.BytesIO(text), b",", b",")
        assert reader.read() == text and reader.zero_padded is padded, text
    as_text = _CountingReader(io.BytesIO(b"007,20,3\n"), b",", b",", int_ids=False)    # string ids: not looked for
    assert as_text.read() == b"007,20,3\n" and as_text.zero_padded is False


def test_blank_padded_spelling_is_refused(tmp_path):
    path = _write(tmp_path / "r.csv", "1,10,4\n 007,20,3\n7,30,5\n")
    with pytest.raises(ValueError, match=r"r\.csv, line 3: user id '7' and '007' \(line 2\)"):
        read_ratings_file(path, show_progress=False)


@pytest.mark.parametrize("row,field", [("1_000,10,4", "user"), ("1,10,4_5", "rating")])
def test_python_digit_separators_are_not_numbers(tmp_path, row, field):
    with pytest.raises(ValueError, match=rf"line 1: expected an? .*for {field}"):
        read_ratings_file(_write(tmp_path / "r.csv", row + "\n2,20,3\n"), show_progress=False)


def test_boolean_ratings_are_refused_not_read_as_one_and_zero(tmp_path):
    path = _write(tmp_path / "r.csv", "1,10,True\n2,20,False\n")
    with pytest.raises(ValueError, match=r"r\.csv, line 1: expected a number for rating \(field 3\), found 'True'"):
        read_ratings_file(path, show_progress=False)
    headed = _write(tmp_path / "h.csv", "user,item,rating\n1,10,true\n2,20,FALSE\n")
    with pytest.raises(ValueError, match=r"h\.csv, line 2: expected a number for rating \(field 3\), found 'true'"):
        read_ratings_file(headed, show_progress=False)


@pytest.mark.parametrize("chunk", [1, 3, 7, 1 << 22])
def test_true_false_scan_skips_the_header_so_implicit_files_keep_the_fast_path(monkeypatch, chunk):
    monkeypatch.setattr(_format, "_CHUNK", chunk)
    cases = [(b"userId,movieId,rating\n1,10,1\n2,20,0\n", True, False),   # "userId" is the header's: no True
             (b"userId,movieId,rating\n1,10,1\n2,20,0\n", False, True),   # no header: that line is data
             (b"user,item,rating\n1,10,True\n", True, True), (b"userId\n", True, False)]
    for text, header, boolish in cases:
        reader = _CountingReader(io.BytesIO(text), b",", b",", header=header)
        assert reader.read() == text and reader.boolish is boolish, (text, header)


def test_blanks_around_string_ids_are_formatting(tmp_path):
    ds = read_ratings_file(_write(tmp_path / "r.csv", "user,item,rating\na, x,4\nb,x ,3\n"), id_type="str",
                           show_progress=False)
    assert ds.user_ids.tolist() == ["a", "b"] and ds.item_ids.tolist() == ["x"]
    with pytest.raises(ValueError, match=r"line 3: expected a non-empty id for item"):
        read_ratings_file(_write(tmp_path / "e.csv", "user,item,rating\na,x,4\nb,  ,3\n"), id_type="str",
                          show_progress=False)


# --------------------------------------------------------------------------------------------- config, splits
def _frame(n_users=30, n_items=40, n=600, seed=0):
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(seed)
    pairs = rng.permutation(n_users * n_items)[:n]
    return pd.DataFrame({"userId": pairs // n_items + 1, "movieId": pairs % n_items + 1,
                         "rating": rng.integers(1, 6, n).astype(float)})


@pytest.mark.parametrize("setting,message", [
    ({"ratios": [0.5, 0.5]}, r"data\.ratios must be three fractions \[train, valid, test\], each > 0"),
    ({"ratios": [0.8, 0.2, 0.0]}, r"data\.ratios must be three fractions"),
    ({"valid_fraction": 1.5}, r"data\.valid_fraction must lie in \(0, 1\), got 1\.5")])
def test_split_settings_are_checked_where_they_are_read(setting, message):
    from sif.config import DataConfig

    with pytest.raises(ValueError, match=message):
        DataConfig(**setting)


def test_a_split_that_leaves_a_part_empty_names_the_setting(tmp_path):
    from sif.config import DataConfig
    from sif.data import load_splits

    path = _write(tmp_path / "r.csv", "1,1,5\n1,2,3\n2,1,4\n")
    with pytest.raises(ValueError, match=r"data\.split=random: the test split of r is empty: "
                                         r"data\.ratios=\[0\.8, 0\.1, 0\.1\] of 3 ratings"):
        load_splits(DataConfig(dataset="file", path=str(path)), seed=0)
    with pytest.raises(ValueError, match=r"data\.split=leave_k_out: the valid split of r is empty: no user has more "
                                         r"than 2 ratings"):
        load_splits(DataConfig(dataset="file", path=str(path), split="leave_k_out"), seed=0)
    with pytest.raises(ValueError, match=r"data\.split=time: r has no timestamps"):
        load_splits(DataConfig(dataset="file", path=str(path), split="time"), seed=0)


def test_a_device_this_machine_lacks_is_one_line_before_any_run_folder(tmp_path, capsys):
    import torch

    from sif.cli import main

    if torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 CUDA devices")
    code = main(["search", "--set", "device=cuda:7", f"out_dir={tmp_path / 'runs'}"])
    assert code == 2 and "device='cuda:7': this machine has" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------------- estimator API
@pytest.fixture(scope="module")
def frame_fit():
    from sif.recommender import BaselineRecommender

    df = _frame()
    train, valid = df.iloc[:500], df.iloc[500:]
    rec = BaselineRecommender(model="mf", embedding_dim=4, train={"max_epochs": 2}).fit(train, valid,
                                                                                         show_progress=False)
    return rec, df


def test_fit_takes_dataframes_with_raw_ids(frame_fit):
    rec, df = frame_fit
    assert (rec.num_users_, rec.num_items_) == (df.userId.nunique(), df.movieId.nunique())   # maps of both frames
    assert set(rec.item_ids_.tolist()) == set(df.movieId.tolist())
    pred = rec.predict(df.userId[:5], df.movieId[:5])
    assert pred.shape == (5,) and ((pred >= 1) & (pred <= 5)).all()


def test_dataframe_problems_name_column_and_row():
    pd = pytest.importorskip("pandas")
    from data_loaders import RatingDataset

    with pytest.raises(ValueError, match=r"column 'rating' \(rating\), row 1: expected a value, found nan"):
        RatingDataset.from_frame(pd.DataFrame({"user": [1, 2], "item": [1, 2], "rating": [4.0, np.nan]}))
    with pytest.raises(ValueError, match=r"column 'rating' \(rating\), row 0: expected a finite rating, found inf"):
        RatingDataset.from_frame(pd.DataFrame({"user": [1, 2], "item": [1, 2], "rating": [np.inf, 3.0]}))
    with pytest.raises(ValueError, match=r"column 'user' \(user\), row 1: expected a value, found nan"):   # was '<NA>'
        RatingDataset.from_frame(pd.DataFrame({"user": pd.array(["a", None], dtype="string"), "item": [1, 2],
                                               "rating": [4.0, 3.0]}))
    with pytest.raises(ValueError, match=r"row 1: expected an integer below 2\*\*63, found 9223372036854775813"):
        RatingDataset.from_frame(pd.DataFrame({"user": np.array([1, 2**63 + 5], dtype=np.uint64), "item": [1, 2],
                                               "rating": [4.0, 3.0]}))                          # wrapped around before
    with pytest.raises(ValueError, match=r"column 'item' \(item\), row 0: expected an integer, found 1\.5"):
        RatingDataset.from_frame(pd.DataFrame({"user": [1, 2], "item": [1.5, 2.0], "rating": [4.0, 3.0]}))
    with pytest.raises(ValueError, match=r"row 1: duplicate \(user, item\) = \(1, 1\)"):
        RatingDataset.from_frame(pd.DataFrame({"user": [1, 1], "item": [1, 1], "rating": [4.0, 3.0]}))
    with pytest.raises(ValueError, match=r"row 'a': duplicate \(user, item\) = \(2, 5\); expected"):   # labels repeat
        RatingDataset.from_frame(pd.DataFrame({"user": [1, 2, 2], "item": [5, 5, 5], "rating": [4.0, 3.0, 2.0]},
                                              index=["a", "a", "a"]))
    with pytest.raises(ValueError, match=r"has no user column \(found columns \['u', 'item', 'rating'\]"):
        RatingDataset.from_frame(pd.DataFrame({"u": [1], "item": [1], "rating": [4.0]}))


def test_recommend_n_and_constructor_numbers_are_checked(frame_fit):
    from sif.recommender import BaselineRecommender

    rec, df = frame_fit
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=r"N must be an integer >= 1 \(items per user\), got"):
            rec.recommend(int(df.userId[0]), N=bad)
    with pytest.raises(ValueError, match=r"embedding_dim must be an integer >= 1, got -1"):
        BaselineRecommender(model="mf", embedding_dim=-1)
    with pytest.raises(ValueError, match=r"valid_fraction must be in \(0, 1\), got 0"):
        BaselineRecommender(model="mf", valid_fraction=0)


def test_set_params_get_params_and_a_clean_refit(frame_fit):
    from sif.recommender import BaselineRecommender

    _, df = frame_fit
    rec = BaselineRecommender(model="mf", embedding_dim=4, train={"max_epochs": 2})
    assert rec.set_params(embedding_dim=3) is rec and rec.get_params(deep=False)["embedding_dim"] == 3
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['embeding_dim'\]"):
        rec.set_params(embeding_dim=3)
    with pytest.raises(ValueError, match=r"embedding_dim must be an integer >= 1"):
        rec.set_params(embedding_dim=0)
    assert rec.embedding_dim == 3                                   # a refused set_params changes nothing
    rec.fit(df, show_progress=False)
    rec.stale_ = "from an earlier fit"
    first = rec.predict(df.userId[:4], df.movieId[:4])
    rec.fit(df, show_progress=False)
    assert not hasattr(rec, "stale_")                               # a refit starts clean ...
    np.testing.assert_array_equal(rec.predict(df.userId[:4], df.movieId[:4]), first)   # ... and is seeded


def test_cold_start_test_ratings_are_counted():
    from data_loaders import RatingDataset
    from sif.cli import cold_counts

    ds = RatingDataset.from_arrays([1, 1, 2, 2, 3], [1, 2, 1, 3, 4], [5.0, 3, 4, 2, 1])
    train, test = ds.subset([0, 1, 2]), ds.subset([3, 4])           # user 3 and items 3, 4 only in test
    assert cold_counts(train, test) == {"ratings": 2, "users": 1, "items": 2}


def test_parquet_without_its_engine_is_one_line(tmp_path, monkeypatch):
    import pandas as pd

    def no_engine(*args, **kwargs):
        raise ImportError("Unable to find a usable engine")

    monkeypatch.setattr(pd, "read_parquet", no_engine)
    path = tmp_path / "r.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(ValueError, match=r"r\.parquet: reading Parquet needs pyarrow \(pip install pyarrow\)"):
        read_ratings_file(path, show_progress=False)


def test_out_dir_that_is_a_file_is_refused_naming_it(tmp_path):
    from sif.runs import RunFolderError, prepare_run_folder

    (tmp_path / "afile").write_text("x")
    with pytest.raises(RunFolderError, match=r"afile is a file, not a folder; choose another out_dir"):
        prepare_run_folder(tmp_path / "afile" / "search", {"config": {}})


@pytest.mark.parametrize("tune,message", [
    ({"mf": {"bogus": [1]}}, r"benchmark\.tune\.mf\.bogus: not a model or train setting"),
    ({"mf": {"ops": [["plus"]]}}, r"benchmark\.tune\.mf\.ops: not a setting of 'mf'"),
    ({"mf": {"reg": [-1]}}, r"benchmark\.tune\.mf\.reg: value -1: reg must be >= 0"),
    ({"mf": {"reg": 0.1}}, r"benchmark\.tune\.mf\.reg: expected a non-empty list of values"),
    ({"mff": {"reg": [0.1]}}, r"unknown recommender 'mff'")])
def test_benchmark_grids_over_nothing_are_refused_before_any_fit(tune, message):
    from nasp.config import ConfigError
    from sif.cli import _check_benchmark
    from sif.config import load_config

    cfg = load_config(None, ["benchmark.models=[mf, svdpp]"])
    cfg.benchmark.tune = tune
    with pytest.raises((ConfigError, KeyError), match=message):
        _check_benchmark(cfg)
    cfg.benchmark.tune = {"mf": {"reg": [0.05, 0.1], "lr": [0.001]}, "svdpp": {"neighbourhood_reg": [0.2]}}
    _check_benchmark(cfg)                                             # a valid grid passes


def test_recommend_never_returns_a_filtered_item_for_one_user(frame_fit):
    rec, df = frame_fit
    user = int(df.userId[0])
    seen = set(rec.item_ids_[rec.rated_[rec.user_ids_.tolist().index(user)].indices].tolist())
    items, scores = rec.recommend(user, N=rec.num_items_)
    assert len(items) == rec.num_items_ - len(seen) and not set(items.tolist()) & seen
    assert np.isfinite(scores).all()
    batch_items, batch_scores = rec.recommend([user, user], N=rec.num_items_)
    assert batch_items.shape == (2, rec.num_items_) and np.isneginf(batch_scores[0]).sum() == len(seen)


def test_config_drop_invalid_drops_and_counts_bad_rows(tmp_path):
    from sif.config import DataConfig
    from sif.data import load_splits

    rows = "".join(f"{u},{i},{(u + i) % 5 + 1}\n" for u in range(1, 11) for i in range(1, 4))
    with pytest.raises(ValueError, match=r"line 31: duplicate \(user, item\) = \(1, 1\).*data\.drop_invalid: true"):
        load_splits(DataConfig(dataset="file", path=str(_write(tmp_path / "d.csv", rows + "1,1,2\n"))), seed=0)
    path = _write(tmp_path / "r.csv", rows + "1,1,2\nx,1,3\n")                 # a repeated pair and a bad id
    with pytest.warns(UserWarning, match=r"dropped 2 invalid row\(s\)"):
        train, valid, test = load_splits(DataConfig(dataset="file", path=str(path), drop_invalid=True), seed=0)
    assert len(train) + len(valid) + len(test) == 30
    assert train.dropped == {"not a number": 1, "duplicate (user, item)": 1}


def test_score_takes_a_dataframe_on_the_model_id_maps(frame_fit):
    rec, df = frame_fit
    part = df.iloc[500:]
    known = part[part.userId.isin(rec.user_ids_) & part.movieId.isin(rec.item_ids_)]
    pred = rec.predict(known.userId, known.movieId)
    expected = float(np.sqrt(np.mean((pred - known.rating.to_numpy()) ** 2)))
    assert rec.score(known)["rmse"] == pytest.approx(expected, rel=1e-5)
    unknown = known.assign(userId=known.userId + 10_000)
    with pytest.raises(ValueError, match=r"score: DataFrame users: \d+ id\(s\) unknown to the model"):
        rec.score(unknown)


def test_contexts_are_required_checked_or_refused_never_ignored(frame_fit):
    from data_loaders import RatingDataset, random_split
    from sif.recommender import FixedInteractionRecommender

    rec, df = frame_fit
    u, i = int(df.userId[0]), int(df.movieId[0])
    for call in (lambda: rec.predict([u], [i], contexts=[1]), lambda: rec.recommend(u, context=1)):
        with pytest.raises(ValueError, match=r"fitted without contexts, so contexts?= would be ignored"):
            call()
    rng = np.random.default_rng(0)
    cells = rng.permutation(20 * 30 * 3)[:400]                          # distinct (user, item, context) triples
    ds = RatingDataset.from_arrays(cells // 90, cells // 3 % 30, rng.integers(1, 6, 400) * 1.0, contexts=cells % 3)
    tr, va, _ = random_split(ds, (0.8, 0.2, 0.0), seed=0)
    ctx = FixedInteractionRecommender(op="multiply_multiply", embedding_dim=4, train={"max_epochs": 1}).fit(
        tr, va, show_progress=False)
    with pytest.raises(ValueError, match=r"fitted with 3 contexts: pass context= "):
        ctx.recommend(1)                                       # was: context 0, silently
    for bad, message in ((3, r"indices must lie in \[0, 3\)"), (-1, r"indices must lie in \[0, 3\)"),
                         (1.5, r"ids must be integers, got 1\.5")):
        with pytest.raises(ValueError, match=rf"context: {message}"):
            ctx.recommend(1, context=bad)
    assert ctx.recommend(1, N=2, context=2)[0].shape == (2,)


def test_a_tilde_in_paths_is_the_home_folder(tmp_path, monkeypatch):
    from sif.runs import command_folder

    monkeypatch.setenv("HOME", str(tmp_path))
    _write(tmp_path / "r.csv", ROWS)
    assert len(read_ratings_file("~/r.csv", show_progress=False)) == 3
    assert command_folder("~/runs", "search") == tmp_path / "runs" / "search"


def test_implicit_task_without_positives_is_refused(frame_fit):
    from sif.recommender import BaselineRecommender

    _, df = frame_fit
    rec = BaselineRecommender(model="mf", task="bpr", positive_threshold=10.0, embedding_dim=4,
                              train={"max_epochs": 1})
    with pytest.raises(ValueError, match=r"task='bpr': the train split has no positives \(ratings >= "
                                         r"positive_threshold=10\.0; its ratings lie in \(1\.0, 5\.0\)\)"):
        rec.fit(df, show_progress=False)


def test_an_item_file_without_the_rated_items_is_refused(tmp_path):
    from data_loaders import RatingDataset
    from data_loaders.contexts import with_context

    ds = RatingDataset.from_arrays([1, 2, 3], [10, 20, 30], [4.0, 3.0, 5.0])
    splits = (ds.subset([0]), ds.subset([1]), ds.subset([2]))
    with pytest.raises(ValueError, match=r"context 'genre': none of the 3 rated item ids "
                                         r"\(e\.g\. \['10', '20', '30'\]\) is in the item file \(1 items"):
        with_context(splits, "genre", genres={"1000": "Drama"})
    train, _, _ = with_context(splits, "genre", genres={"10": "Drama"})        # partial: the rest are "unknown"
    assert train.context_ids.tolist() == ["Drama", "unknown"]


def test_dataframe_categories_and_datetimes_are_read_as_their_values():
    pd = pytest.importorskip("pandas")
    from data_loaders import RatingDataset

    frame = pd.DataFrame({"user": pd.Categorical([7, 8]), "item": pd.Categorical(["x", "y"]), "rating": [4.0, 3.0],
                          "timestamp": pd.to_datetime(["1970-01-01 00:00:01", "2020-01-02 00:00:00"])})
    ds = RatingDataset.from_frame(frame)
    assert ds.user_ids.tolist() == [7, 8] and ds.item_ids.tolist() == ["x", "y"]
    assert ds.timestamps.tolist() == [1, 1577923200]                                  # Unix seconds, UTC


def test_api_ids_past_int64_are_refused_not_wrapped():
    from sif.ids import to_index

    id_map = np.array([-9223372036854775803, 1, 2])            # what 2**63 + 5 wraps to
    with pytest.raises(ValueError, match=r"users: ids must be integers below 2\*\*63, got 9223372036854775813"):
        to_index(np.array([2**63 + 5], dtype=np.uint64), id_map, "users")
    with pytest.raises(ValueError, match=r"users: ids must be integers, got 1e\+19"):
        to_index(np.array([1e19]), id_map, "users")


def test_utf16_text_is_named_with_the_encoding_to_pass(tmp_path):
    path = tmp_path / "r.csv"
    path.write_bytes(ROWS.encode("utf-16"))
    with pytest.raises(ValueError, match=r"r\.csv: the file starts with a UTF-16 byte-order mark.*encoding='utf-16'"):
        read_ratings_file(path, show_progress=False)
    with pytest.raises(ValueError, match=r"r\.csv, line 1: NUL characters in the text.*encoding='utf-16'"):
        read_ratings_file(path, encoding="latin-1", show_progress=False)
    assert read_ratings_file(path, encoding="utf-16", show_progress=False).ratings.tolist() == [4.0, 3.0, 5.0]


def test_numbers_for_a_text_id_model_name_the_id_type():
    from sif.ids import to_index

    with pytest.raises(ValueError, match=r"unknown to the model \(7\).*this model's ids are text \(id_type str\)"):
        to_index([7], np.array(["007", "7"]), "users")
    assert to_index(["7"], np.array(["007", "7"]), "users").tolist() == [1]


def test_parameters_survive_a_scikit_learn_style_clone():
    import copy

    from sif import SIFRecommender
    from sif.recommender import BaselineRecommender

    for est in (SIFRecommender(train={"max_epochs": 1}, search={"epochs": 2}), BaselineRecommender(model="mf")):
        params = {k: copy.deepcopy(v) for k, v in est.get_params(deep=False).items()}    # what sklearn.clone does
        twin = type(est)(**params)
        assert all(twin.get_params(deep=False)[k] is v for k, v in params.items())      # clone's own check


def test_errors_of_nothing_are_refused_not_nan():
    from sif.evaluation import mae, mean_std, rmse

    for fn, name in ((rmse, "rmse"), (mae, "mae")):
        with pytest.raises(ValueError, match=rf"{name}: no ratings to score"):
            fn([], [])
    with pytest.raises(ValueError, match="mean_std: no values"):
        mean_std([])
    assert rmse([1.0, 3.0], [2.0, 2.0]) == 1.0 and mae([1.0, 4.0], [2.0, 2.0]) == 1.5


def test_cli_refuses_a_split_without_positives_before_any_run_folder(tmp_path, capsys):
    from sif.cli import main

    rows = "".join(f"{u},{i},{5 if (u, i) == (1, 1) else 3}\n" for u in range(1, 21) for i in range(1, 6))
    path = _write(tmp_path / "r.csv", rows)                  # one 5: at most one split holds a positive >= 5
    code = main(["search", "--set", "data.dataset=file", f"data.path={path}", "model.task=bpr",
                 "model.positive_threshold=5", f"out_dir={tmp_path / 'runs'}"])
    assert code == 2 and "model.positive_threshold=5.0: the" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_ratings_beyond_float32_are_refused_not_stored_as_inf(tmp_path):
    from data_loaders import RatingDataset

    with pytest.raises(ValueError, match=r"r\.csv, line 1: expected a rating within float32's \+-3\.4e38, "
                                         r"found '1e39'"):
        read_ratings_file(_write(tmp_path / "r.csv", "1,10,1e39\n2,20,3\n"), show_progress=False)
    with pytest.raises(ValueError, match=r"rating 1e\+40 \(row 1\) is beyond float32's range"):
        RatingDataset.from_arrays([1], [1], [1e40])


def test_parquet_rows_name_the_reasons_csv_rows_do():
    from data_loaders._format import RatingScale
    from data_loaders._parse import _frame_problems

    ratings = np.array([3.0, np.inf, 1e39, 9.0, np.nan, 2.0])
    bad = {"user": np.array([False, False, False, False, False, True])}
    problems = _frame_problems({"rating": ratings}, bad, RatingScale(1, 5))
    assert {r: np.flatnonzero(m).tolist() for r, m in problems.items()} == {
        "not a number": [5], "non-finite rating": [1, 4], "rating beyond float32": [2], "rating outside scale": [3]}


def test_a_damaged_recommender_json_names_the_file(tmp_path):
    from sif import SIFRecommender

    (tmp_path / "recommender.json").write_text("{bad")
    with pytest.raises(ValueError, match=r"recommender\.json: not a recommender\.json written by save\(\) "
                                         r"\(JSONDecodeError"):
        SIFRecommender.load(tmp_path)
    (tmp_path / "recommender.json").write_text('{"class": "SIFRecommender"}')
    with pytest.raises(ValueError, match=r"not a recommender\.json written by save\(\) \(KeyError: 'params, fitted'"):
        SIFRecommender.load(tmp_path)


def test_movielens_root_may_be_the_ratings_file_itself(tmp_path):
    from data_loaders import load_movielens

    folder = tmp_path / "ml-1m"
    folder.mkdir()
    _write(folder / "ratings.dat", "1::10::4::978300760\n2::20::3::978300761\n")
    _write(folder / "notes.txt", "x")
    for root in (folder / "ratings.dat", folder, tmp_path, folder / "notes.txt"):
        assert load_movielens("1m", root=root).ratings.tolist() == [4.0, 3.0]


def test_a_run_made_before_a_setting_existed_resumes_when_it_is_at_its_default():
    from sif.runs import differences

    old = {"command": "search", "config": {"seed": 0}, "data": {}}
    new = {"command": "search", "config": {"seed": 0, "data.drop_invalid": False}, "data": {}}
    assert differences(old, new) == []
    changed = {"command": "search", "config": {"seed": 0, "data.drop_invalid": True}, "data": {}}
    assert differences(old, changed) == ["data.drop_invalid ('<absent>' -> True)"]


def test_a_held_out_valid_split_that_is_empty_names_valid_fraction():
    from data_loaders import RatingDataset
    from sif.recommender import BaselineRecommender

    tiny = RatingDataset.from_arrays([1, 2, 3], [1, 2, 3], [4.0, 3.0, 5.0])
    with pytest.raises(ValueError, match=r"valid_fraction=0\.1 of 3 training ratings holds out none for validation"):
        BaselineRecommender(model="mf").fit(tiny, show_progress=False)


def test_threads_is_zero_for_torch_default_as_in_the_nasp_commands_and_old_null_still_loads(tmp_path):
    from nasp.commands.cnn import CNNSearchRun
    from nasp.config import ConfigError
    from sif.config import RunConfig, load_config

    assert RunConfig().threads == CNNSearchRun().threads == 0
    old = tmp_path / "config.yaml"                  # a run folder's config.yaml written before threads became 0
    old.write_text("seed: 3\nthreads: null\n")
    assert load_config(old).threads == 0
    with pytest.raises(ConfigError, match=r"threads must be >= 0 \(0: torch's default\), got -1"):
        load_config(None, ["threads=-1"])
