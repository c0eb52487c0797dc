"""Readers: MovieLens formats (folder and zip) and generic CSV/TSV/Parquet, on files the tests write."""

import zipfile

import numpy as np
import pytest
import torch

from data_loaders import RatingDataset, load_movielens, read_ratings_file
from data_loaders.synthetic import synthetic_ratings, write_movielens

VARIANTS = ["100k", "1m", "10m", "20m", "25m", "32m", "latest", "latest-small"]


def _frame(variant="100k", n=300, seed=0):
    return synthetic_ratings(n, 40, 60, seed=seed, half_stars=variant not in ("100k", "1m"))


def _check_matches(ds: RatingDataset, frame):
    """The dataset holds exactly the frame's rows, in file order, through its id maps."""
    assert len(ds) == len(frame)
    np.testing.assert_array_equal(ds.user_ids[ds.users.numpy()], frame["user"].to_numpy())
    np.testing.assert_array_equal(ds.item_ids[ds.items.numpy()], frame["item"].to_numpy())
    np.testing.assert_allclose(ds.ratings.numpy(), frame["rating"].to_numpy())
    np.testing.assert_array_equal(ds.timestamps.numpy(), frame["timestamp"].to_numpy())


@pytest.mark.parametrize("as_zip", [False, True])
@pytest.mark.parametrize("variant", VARIANTS)
def test_movielens_variants_folder_and_zip(tmp_path, variant, as_zip):
    frame = _frame(variant)
    path = write_movielens(tmp_path, variant, frame, as_zip=as_zip)
    for root in (tmp_path, path):  # the folder/zip itself, or the folder holding it
        ds = load_movielens(variant, root=root)
        _check_matches(ds, frame)
        assert ds.users.dtype == torch.int64 and ds.items.dtype == torch.int64
        assert ds.ratings.dtype == torch.float32 and ds.timestamps.dtype == torch.int64
        assert ds.contexts is None and ds.num_contexts == 0
        assert ds.num_users == frame["user"].nunique() and ds.num_items == frame["item"].nunique()
        assert ds.rating_scale == ((1.0, 5.0) if variant in ("100k", "1m") else (0.5, 5.0))
        assert ds.name == f"ml-{variant}"


def test_dataset_ids_are_sorted_contiguous(tmp_path):
    frame = _frame()
    ds = load_movielens("100k", root=write_movielens(tmp_path, "100k", frame))
    assert (np.diff(ds.user_ids) > 0).all() and (np.diff(ds.item_ids) > 0).all()
    assert ds.users.min() == 0 and ds.users.max() == ds.num_users - 1
    assert ds.items.min() == 0 and ds.items.max() == ds.num_items - 1


def test_variant_names_are_normalised(tmp_path):
    write_movielens(tmp_path, "1m", _frame("1m"))
    assert len(load_movielens("ML-1M", root=tmp_path)) == 300
    with pytest.raises(ValueError, match="unknown MovieLens variant"):
        load_movielens("7m", root=tmp_path)


def test_dat_reader_latin1_and_double_colon(tmp_path):
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "ratings.dat").write_bytes(b"1::10::5::978300760\n2::10::3::978302109\n")
    (folder / "movies.dat").write_bytes("10::Caf\xe9 (1995)::Comedy\n".encode("latin-1"))
    ds = load_movielens("1m", root=tmp_path)
    assert ds.ratings.tolist() == [5.0, 3.0] and ds.item_ids.tolist() == [10]


def test_missing_dataset_without_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True"):
        load_movielens("100k", root=tmp_path)


def test_zip_without_expected_member(tmp_path):
    path = tmp_path / "ml-20m.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ml-20m/movies.csv", "movieId,title\n1,A\n")
    with pytest.raises(ValueError, match=r"ml-20m\.zip.*expected a zip member 'ml-20m/ratings\.csv'"):
        load_movielens("20m", root=path)


def test_not_a_zip(tmp_path):
    path = tmp_path / "ml-1m.zip"
    path.write_text("not a zip")
    with pytest.raises(ValueError, match="expected a zip archive"):
        load_movielens("1m", root=path)


def test_10m_zip_prefix(tmp_path):
    frame = _frame("10m")
    path = write_movielens(tmp_path, "10m", frame, as_zip=True)
    assert path.name == "ml-10m.zip"
    with zipfile.ZipFile(path) as zf:
        assert "ml-10M100K/ratings.dat" in zf.namelist()
    _check_matches(load_movielens("10m", root=path), frame)


def test_scale_enforced_for_movielens(tmp_path):
    frame = _frame("1m")
    frame.loc[frame.index[5], "rating"] = 0.5  # a half star below ML-1M's 1..5 scale
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    lines = [f"{u}::{i}::{r:g}::{t}" for u, i, r, t in frame.itertuples(index=False)]
    (folder / "ratings.dat").write_text("\n".join(lines) + "\n", encoding="latin-1")
    with pytest.raises(ValueError, match=r"ratings\.dat, line 6: expected a rating in \[1, 5\], found 0\.5"):
        load_movielens("1m", root=tmp_path)


# ------------------------------------------------------------------------------------------- generic
def test_generic_csv_with_names_and_context(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("uid,when,iid,score,device\n7,100,70,4.5,2\n8,200,70,3,1\n7,300,71,1,2\n")
    ds = read_ratings_file(path, columns={"user": "uid", "item": "iid", "rating": "score",
                                          "timestamp": "when", "context": "device"})
    assert ds.user_ids.tolist() == [7, 8] and ds.item_ids.tolist() == [70, 71]
    assert ds.users.tolist() == [0, 1, 0] and ds.items.tolist() == [0, 0, 1]
    assert ds.contexts.tolist() == [1, 0, 1] and ds.num_contexts == 2 and ds.context_ids.tolist() == [1, 2]
    assert ds.timestamps.tolist() == [100, 200, 300]
    assert ds.rating_scale == (1.0, 4.5) and ds.name == "r"


def test_generic_tsv_by_suffix_positions_no_header(tmp_path):
    path = tmp_path / "r.tsv"
    path.write_text("1\t2\t3\t9\n4\t5\t6\t9\n")
    ds = read_ratings_file(path, header=False, columns={"user": 0, "item": 1, "rating": 2})
    assert ds.ratings.tolist() == [3.0, 6.0] and ds.timestamps is None


def test_generic_explicit_sep(tmp_path):
    path = tmp_path / "r.txt"
    path.write_text("u;i;r\n1;2;3\n")
    ds = read_ratings_file(path, sep=";", columns={"user": "u", "item": "i", "rating": "r"})
    assert len(ds) == 1


def test_generic_context_duplicates_allowed_across_contexts(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("1,2,3,0\n1,2,4,1\n")
    ds = read_ratings_file(path, header=False, columns={"user": 0, "item": 1, "rating": 2, "context": 3})
    assert len(ds) == 2 and ds.num_contexts == 2


def test_parquet(tmp_path):
    pytest.importorskip("pyarrow")
    frame = _frame("20m")
    frame["ctx"] = np.arange(len(frame)) % 3
    path = tmp_path / "r.parquet"
    frame.to_parquet(path)
    ds = read_ratings_file(path, columns={"user": "user", "item": "item", "rating": "rating",
                                          "timestamp": "timestamp", "context": "ctx"}, rating_scale=(0.5, 5))
    _check_matches(ds, frame)
    assert ds.num_contexts == 3


def test_parquet_bad_rows(tmp_path):
    pytest.importorskip("pyarrow")
    import pandas as pd

    path = tmp_path / "r.parquet"
    pd.DataFrame({"u": [1, 2, 3, 4], "i": [1, 1, 1, 1], "r": [3.0, np.nan, 9.0, 4.0]}).to_parquet(path)
    cols = {"user": "u", "item": "i", "rating": "r"}
    with pytest.raises(ValueError, match=r"r\.parquet, row 2: non-finite rating"):
        read_ratings_file(path, columns=cols, rating_scale=(1, 5))
    with pytest.warns(UserWarning, match="dropped 2"):
        ds = read_ratings_file(path, columns=cols, rating_scale=(1, 5), drop_invalid=True)
    assert ds.user_ids.tolist() == [1, 4]
    assert ds.dropped == {"non-finite rating": 1, "rating outside scale": 1}
    with pytest.raises(ValueError, match="no column 'x'"):
        read_ratings_file(path, columns={"user": "x", "item": "i", "rating": "r"})
