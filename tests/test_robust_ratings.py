"""Rating files never give silently wrong numbers: columns by header name, header detection, declared and
inferred rating scales, non-finite ratings and undecodable bytes are each named by file and line."""

import logging
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from data_loaders import RatingDataset, load_movielens, read_ratings_file
from data_loaders.synthetic import synthetic_ratings, write_movielens
from sif.config import DataConfig
from sif.data import load_splits

# planted rows: (user, item, rating, timestamp)
ROWS = [(7, 70, 4.5, 100), (8, 70, 3.0, 200), (7, 71, 1.0, 300), (9, 72, 5.0, 400)]


def _write(tmp_path, text, name="r.csv", encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def _body(order=(0, 1, 2, 3), sep=","):
    return "".join(sep.join(f"{row[j]:g}" for j in order) + "\n" for row in ROWS)


def _originals(ds):
    """(n, 3) original (user, item, rating) rows in file order."""
    return np.stack([ds.user_ids[ds.users.numpy()], ds.item_ids[ds.items.numpy()], ds.ratings.numpy()], axis=1)


PLANTED = np.asarray([r[:3] for r in ROWS], dtype=np.float64)


# --------------------------------------------------------------------------------------- columns by name
def test_header_without_rating_column_names_file_and_columns(tmp_path):
    # the case: timestamps must never be read as ratings
    path = _write(tmp_path, "userId,movieId,timestamp\n1,2,978300760\n2,3,978300761\n")
    with pytest.raises(ValueError) as err:
        read_ratings_file(path)
    message = str(err.value)
    assert "\n" not in message
    assert "r.csv, line 1: header has no rating column" in message
    assert "['userId', 'movieId', 'timestamp']" in message


@pytest.mark.parametrize("names", [("userId", "movieId", "rating", "timestamp"),
                                   ("user_id", "item_id", "ratings", "ts"),
                                   ("UID", "IID", "Score", "time"),
                                   ("user", "itemId", "rating", "Timestamp"),
                                   ("User ID", "movie_id", "RATING", "TS")])
def test_columns_are_found_by_name_in_any_order(tmp_path, names):
    order = (3, 2, 0, 1)  # timestamp, rating, user, item
    head = ",".join(names[j] for j in order)
    ds = read_ratings_file(_write(tmp_path, head + "\n" + _body(order)))
    np.testing.assert_array_equal(_originals(ds), PLANTED)
    assert ds.timestamps.tolist() == [100, 200, 300, 400]


def test_explicit_columns_win_over_names(tmp_path):
    # two rating-like columns: by name is ambiguous, an explicit mapping chooses
    text = "user,item,rating,score\n1,2,4,1\n2,2,3,2\n"
    with pytest.raises(ValueError, match=r"r\.csv, line 1: header has 2 columns for rating \(\['rating', 'score'\]\)"):
        read_ratings_file(_write(tmp_path, text))
    ds = read_ratings_file(_write(tmp_path, text), columns={"user": "user", "item": "item", "rating": "score"})
    assert ds.ratings.tolist() == [1.0, 2.0]
    ds = read_ratings_file(_write(tmp_path, text), columns={"user": 0, "item": 1, "rating": 2})
    assert ds.ratings.tolist() == [4.0, 3.0]


def test_utf8_bom_before_the_header_or_first_row(tmp_path):
    ds = read_ratings_file(_write(tmp_path, "\ufeffuserId,movieId,rating\n" + _body((0, 1, 2))))
    np.testing.assert_array_equal(_originals(ds), PLANTED)
    with pytest.warns(UserWarning, match=r"b\.csv: dropped 1 invalid row\(s\) \(1 not a number\)"):
        ds = read_ratings_file(_write(tmp_path, "\ufeff" + _body((0, 1, 2)) + "9,72,x\n", "b.csv"), drop_invalid=True)
    np.testing.assert_array_equal(_originals(ds), PLANTED)  # careful path: the first row is kept too


def test_unknown_header_names_list_the_columns(tmp_path):
    path = _write(tmp_path, "a,b,c\n1,2,3\n")
    with pytest.raises(ValueError, match=r"r\.csv, line 1: header has no user or item or rating column "
                                         r"\(found columns \['a', 'b', 'c'\]"):
        read_ratings_file(path)


# ------------------------------------------------------------------------------------------- header detection
def test_headerless_csv_keeps_its_first_row(tmp_path):
    ds = read_ratings_file(_write(tmp_path, _body((0, 1, 2))))
    assert len(ds) == len(ROWS)
    np.testing.assert_array_equal(_originals(ds), PLANTED)


@pytest.mark.parametrize("name,sep", [("r.csv", ","), ("r.tsv", "\t")])
def test_headed_and_headerless_files_load_the_same_without_flags(tmp_path, name, sep):
    headed = read_ratings_file(_write(tmp_path, sep.join(["user", "item", "rating"]) + "\n" + _body((0, 1, 2), sep),
                                      "h" + name))
    bare = read_ratings_file(_write(tmp_path, _body((0, 1, 2), sep), name))
    np.testing.assert_array_equal(_originals(headed), PLANTED)
    np.testing.assert_array_equal(_originals(bare), PLANTED)


def test_header_flags_are_explicit_overrides(tmp_path):
    path = _write(tmp_path, _body((0, 1, 2)))
    positions = {"user": 0, "item": 1, "rating": 2}
    ds = read_ratings_file(path, header=True, columns=positions)  # the caller says line 1 is a header: skipped
    np.testing.assert_array_equal(_originals(ds), PLANTED[1:])
    with pytest.raises(ValueError, match=r"r\.csv, line 1: header has no user or item or rating column "
                                         r"\(found columns \['7', '70', '4\.5'\]"):
        read_ratings_file(path, header=True)  # a header's columns are taken by name
    headed = _write(tmp_path, "user,item,rating\n" + _body((0, 1, 2)), "h.csv")
    with pytest.raises(ValueError, match=r"h\.csv, line 1: expected an int64 integer for user \(field 1\), "
                                         r"found 'user'"):
        read_ratings_file(headed, header=False)


def test_config_default_header_is_detected(tmp_path):
    assert DataConfig().header is None and DataConfig().encoding == "utf-8"
    rows = "".join(f"{u},{i},{1 + (u + i) % 5},{u * 100 + i}\n" for u in range(1, 11) for i in range(1, 11))
    path = _write(tmp_path, rows)
    train, valid, test = load_splits(DataConfig(dataset="file", path=str(path)), seed=0)
    assert len(train) + len(valid) + len(test) == 100  # the first row was kept


# ---------------------------------------------------------------------------------------------- rating scales
@pytest.mark.parametrize("variant,row,message", [
    ("20m", "3,11,7,300", r"line 4: expected a rating in \[0\.5, 5\], found 7"),
    ("20m", "3,11,3.7,300", r"line 4: expected a rating in \[0\.5, 5\] in steps of 0\.5, found 3\.7"),
    ("100k", "3\t11\t4.5\t300", r"line 3: expected a rating in \[1, 5\] in steps of 1, found 4\.5"),
])
def test_builtin_scale_rejects_values_off_it(tmp_path, variant, row, message):
    if variant == "20m":
        text = "userId,movieId,rating,timestamp\n1,10,4.5,100\n2,10,3,200\n" + row + "\n"
        member = "ml-20m/ratings.csv"
    else:
        text = "1\t10\t4\t100\n2\t10\t3\t200\n" + row + "\n"
        member = "ml-100k/u.data"
    path = tmp_path / f"ml-{variant}.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, text)
    with pytest.raises(ValueError, match=rf"ml-{variant}\.zip\[{member}\], " + message):
        load_movielens(variant, root=path)


def test_builtin_scales_are_declared(tmp_path):
    ds = load_movielens("100k", root=write_movielens(tmp_path, "100k", synthetic_ratings(60, 6, 20, seed=1)))
    assert (ds.rating_scale, ds.rating_step, ds.rating_scale_source) == ((1.0, 5.0), 1.0, "declared")
    frame = synthetic_ratings(60, 6, 20, seed=1, half_stars=True)
    ds = load_movielens("20m", root=write_movielens(tmp_path, "20m", frame))
    assert (ds.rating_scale, ds.rating_step, ds.rating_scale_source) == ((0.5, 5.0), 0.5, "declared")
    sub = ds.subset([0, 1])
    assert (sub.rating_step, sub.rating_scale_source) == (0.5, "declared")


def test_rating_scale_argument(tmp_path):
    path = _write(tmp_path, "user,item,rating\n1,1,4\n2,1,7\n")
    with pytest.raises(ValueError, match=r"r\.csv, line 3: expected a rating in \[0\.5, 5\], found 7"):
        read_ratings_file(path, rating_scale=(0.5, 5))
    half = _write(tmp_path, "user,item,rating\n1,1,4\n2,1,2.25\n", "h.csv")
    with pytest.raises(ValueError, match=r"h\.csv, line 3: expected a rating in \[0\.5, 5\] in steps of 0\.5, "
                                         r"found 2\.25"):
        read_ratings_file(half, rating_scale=[0.5, 5, 0.5])
    with pytest.raises(ValueError, match=r"rating_scale=\(5, 1\): expected \[low, high\]"):
        read_ratings_file(path, rating_scale=(5, 1))
    # data.rating_scale replaces a built-in scale too
    root = write_movielens(tmp_path, "100k", synthetic_ratings(40, 5, 20, seed=3))
    with pytest.raises(ValueError, match=r"u\.data, line \d+: expected a rating in \[1, 4\], found 5"):
        load_movielens("100k", root=root, rating_scale=(1, 4))


def test_inferred_scale_is_reported(tmp_path, caplog):
    path = _write(tmp_path, "user,item,rating\n1,1,7\n2,1,0.5\n3,1,2\n")
    with caplog.at_level(logging.INFO, logger="data_loaders.ratings"):
        ds = read_ratings_file(path)
    assert ds.rating_scale == (0.5, 7.0) and ds.rating_scale_source == "inferred" and ds.rating_step is None
    assert "r.csv: no rating scale declared; inferred [0.5, 7]" in caplog.text
    assert "inferred" in repr(ds)
    assert RatingDataset.from_arrays([1], [2], [3.0], rating_scale=(1, 5)).rating_scale_source == "declared"


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "NaN"])
def test_non_finite_rating_names_the_line(tmp_path, text):
    path = _write(tmp_path, f"user,item,rating\n1,1,4\n2,1,{text}\n3,1,2\n")
    with pytest.raises(ValueError, match=rf"r\.csv, line 3: expected a finite rating, found '{text}'"):
        read_ratings_file(path)


# -------------------------------------------------------------------------------------------------- encoding
def test_non_utf8_byte_names_file_line_and_offset(tmp_path):
    head = "user,item,rating,title\n1,1,4,Heat\n"
    body = "2,1,3,Caf\xe9\n"  # written as latin-1: byte 0xe9 is not valid UTF-8
    path = _write(tmp_path, head + body, encoding="latin-1")
    offset = len(head.encode()) + body.index("\xe9")
    with pytest.raises(ValueError) as err:
        read_ratings_file(path)
    message = str(err.value)
    assert f"r.csv, line 3: byte 0xe9 at byte offset {offset} (column 10 of the line) is not valid utf-8" in message
    assert "encoding='latin-1'" in message and "\n" not in message
    ds = read_ratings_file(path, encoding="latin-1")
    assert ds.ratings.tolist() == [4.0, 3.0]


def test_non_utf8_byte_on_the_first_line_and_in_a_zip(tmp_path):
    path = tmp_path / "r.csv"
    path.write_bytes(b"us\xffer,item,rating\n1,1,4\n")
    with pytest.raises(ValueError, match=r"r\.csv, line 1: byte 0xff at byte offset 2 \(column 3 of the line\)"):
        read_ratings_file(path)
    zpath = tmp_path / "ml-latest-small.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("ml-latest-small/ratings.csv", b"userId,movieId,rating,timestamp\n1,2,4,5\n1,3,4,\xc3\n")
    with pytest.raises(ValueError, match=r"ratings\.csv\], line 3: byte 0xc3 at byte offset 46 \(column 7 "):
        load_movielens("latest-small", root=zpath)


def test_unknown_encoding_and_config_encoding(tmp_path):
    path = _write(tmp_path, "user,item,rating,title\n1,1,4,Caf\xe9\n2,2,3,x\n3,3,5,y\n", encoding="latin-1")
    with pytest.raises(ValueError, match=r"encoding 'klingon' is not a known text encoding"):
        read_ratings_file(path, encoding="klingon")
    cfg = DataConfig(dataset="file", path=str(path), encoding="latin-1", ratios=[0.4, 0.3, 0.3])
    train, valid, test = load_splits(cfg, seed=0)
    assert (len(train), len(valid), len(test)) == (1, 1, 1)


# -------------------------------------------------------------------------------------------------- parquet
def test_parquet_columns_by_name(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    path = tmp_path / "r.parquet"
    pd.DataFrame({"ts": [1, 2], "Score": [4.0, 2.0], "user_id": [5, 6], "movieId": [1, 1]}).to_parquet(path)
    ds = read_ratings_file(path)
    assert ds.ratings.tolist() == [4.0, 2.0] and ds.user_ids.tolist() == [5, 6] and ds.timestamps.tolist() == [1, 2]
    pd.DataFrame({"user": [1], "item": [1], "timestamp": [9]}).to_parquet(path)
    with pytest.raises(ValueError, match=r"r\.parquet: header has no rating column"):
        read_ratings_file(path)


# ------------------------------------------------------------------------------------------------- real data
@pytest.mark.realdata
def test_real_ml100k_u_data_loads_all_rows():
    base = os.environ.get("NASP_DATA_DIR")
    if not base or not (Path(base) / "ml-100k" / "u.data").is_file():
        pytest.skip("NASP_DATA_DIR with ml-100k/ is not available")
    path = Path(base) / "ml-100k" / "u.data"
    first = [int(v) for v in path.read_text().split("\n", 1)[0].split("\t")]
    for ds in (load_movielens("100k", root=path.parent), read_ratings_file(path)):  # tab, no header, no flags
        assert len(ds) == 100_000
        assert (ds.user_ids[ds.users[0]], ds.item_ids[ds.items[0]], ds.ratings[0].item()) == tuple(first[:3])
    assert ds.rating_scale == (1.0, 5.0) and ds.rating_scale_source == "inferred"
