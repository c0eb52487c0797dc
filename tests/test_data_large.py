"""The reader at scale (issue 17): the chunked, streamed fast path gives exactly the dataset of the frame it read
(several formats, header or not, separators), in lean column types, with a progress bar for large files.

Small files only: the chunk sizes are shrunk so that a few hundred rows cross many chunk boundaries.
"""

import zipfile

import numpy as np
import pandas as pd
import pytest
import torch

from data_loaders import RatingDataset, _fast_read, _format, _parse, load_movielens, ratings, read_ratings_file
from data_loaders._format import RatingScale, TableFormat, resolve_format
from data_loaders._source import Source
from data_loaders.synthetic import synthetic_ratings, write_movielens


@pytest.fixture
def small_chunks(monkeypatch):
    """7 rows per pandas chunk and 16 bytes per read: every file crosses many chunk and buffer boundaries."""
    monkeypatch.setattr(_fast_read, "_CHUNK_ROWS", 7)
    monkeypatch.setattr(_format, "_CHUNK", 16)


def _frame(n=300, users=40, items=60, seed=0, half_stars=True, id_offset=0, continuous=False):
    frame = synthetic_ratings(n, users, items, seed=seed, half_stars=half_stars)
    frame["user"] += id_offset
    frame["item"] = frame["item"] * 7 + id_offset      # sparse item ids, like ML-20M's movie ids
    if continuous:                                     # ratings float32 cannot hold exactly
        frame["rating"] = frame["rating"] + 0.1
    return frame


def _write(path, frame, sep, header):
    lines = [sep.join(map(str, row)) for row in frame[["user", "item", "rating", "timestamp"]].itertuples(False)]
    text = ("userId" + sep + "movieId" + sep + "rating" + sep + "timestamp\n" if header else "") + "\n".join(lines)
    path.write_text(text + "\n")
    return path


def _expected(frame, scale=None) -> RatingDataset:
    """The dataset of the frame's rows in int64 ids and float64 ratings (what the reader produced before)."""
    return RatingDataset.from_arrays(frame["user"].to_numpy(np.int64), frame["item"].to_numpy(np.int64),
                                     frame["rating"].to_numpy(np.float64), timestamps=frame["timestamp"].to_numpy(),
                                     rating_scale=scale)


def _assert_same(ds: RatingDataset, want: RatingDataset):
    for name in ("users", "items", "ratings", "timestamps"):
        got, exp = getattr(ds, name), getattr(want, name)
        assert got.dtype == exp.dtype, name
        assert torch.equal(got, exp), name
    for name in ("user_ids", "item_ids"):
        got, exp = getattr(ds, name), getattr(want, name)
        assert got.dtype == exp.dtype == np.int64, name
        np.testing.assert_array_equal(got, exp)
    assert ds.rating_scale == want.rating_scale and ds.rating_step == want.rating_step
    assert ds.rating_scale_source == want.rating_scale_source


@pytest.mark.parametrize("sep,suffix", [(",", ".csv"), ("\t", ".tsv"), (";", ".txt"), ("::", ".dat"),
                                        ("|", ".txt")])
@pytest.mark.parametrize("header", [True, False])
def test_chunked_reader_gives_the_frame_exactly(tmp_path, small_chunks, sep, suffix, header):
    frame = _frame(seed=3)
    path = _write(tmp_path / f"r{suffix}", frame, sep, header)
    columns = None if header else {"user": 0, "item": 1, "rating": 2, "timestamp": 3}   # header: found by name
    ds = read_ratings_file(path, sep=sep, header=header, columns=columns)
    _assert_same(ds, _expected(frame))
    scaled = read_ratings_file(path, sep=sep, header=header, columns=columns, rating_scale=(0.5, 5, 0.5))
    _assert_same(scaled, _expected(frame, RatingScale(0.5, 5.0, 0.5)))


@pytest.mark.parametrize("kind", ["negative ids", "ids beyond int32", "continuous ratings", "whole stars"])
def test_chunked_reader_matches_careful_path(tmp_path, small_chunks, kind):
    """The fast path and the line-by-line path agree value for value, whichever column types the fast path picks."""
    frame = {"negative ids": lambda: _frame(id_offset=-500),
             "ids beyond int32": lambda: _frame(id_offset=2**40),
             "continuous ratings": lambda: _frame(continuous=True),
             "whole stars": lambda: _frame(half_stars=False)}[kind]()
    path = _write(tmp_path / "r.csv", frame, ",", True)
    ds = read_ratings_file(path)
    _assert_same(ds, _expected(frame))
    fmt, layout = resolve_format(Source(path), TableFormat(",", None, None))
    careful = _parse._careful_read(Source(path), fmt, layout, None, False).columns
    fast = _fast_read.fast_read(Source(path), fmt, layout)
    for role in ("user", "item", "rating", "timestamp"):
        np.testing.assert_array_equal(fast[role].astype(careful[role].dtype), careful[role])


def test_lean_column_types(tmp_path, small_chunks):
    def columns(frame):
        path = _write(tmp_path / "r.csv", frame, ",", True)
        fmt, layout = resolve_format(Source(path), TableFormat(",", None, None))
        return _fast_read.fast_read(Source(path), fmt, layout)

    lean = columns(_frame())
    assert lean["user"].dtype == lean["item"].dtype == np.int32
    assert lean["rating"].dtype == np.float32 and lean["timestamp"].dtype == np.int64
    wide = columns(_frame(id_offset=2**31, continuous=True))
    assert wide["user"].dtype == wide["item"].dtype == np.int64 and wide["rating"].dtype == np.float64
    ds = read_ratings_file(tmp_path / "r.csv")
    assert ds.users.dtype == torch.int64 and ds.ratings.dtype == torch.float32 and ds.user_ids.dtype == np.int64


@pytest.mark.parametrize("variant", ["1m", "20m"])
def test_zip_member_streams(tmp_path, small_chunks, variant):
    """A zip member (ML-1M's '::' separator, ML-20M's CSV) is streamed, not read whole, and still exact."""
    frame = synthetic_ratings(250, 30, 50, seed=1, half_stars=variant == "20m")
    path = write_movielens(tmp_path, variant, frame, as_zip=True)
    assert zipfile.is_zipfile(path)
    ds = load_movielens(variant, root=path, progress=False)
    scale = RatingScale(1.0, 5.0, 1.0) if variant == "1m" else RatingScale(0.5, 5.0, 0.5)
    want = _expected(frame, scale)
    np.testing.assert_array_equal(ds.user_ids[ds.users.numpy()], frame["user"].to_numpy())
    assert torch.equal(ds.ratings, want.ratings) and torch.equal(ds.timestamps, want.timestamps)


def test_bad_row_after_many_chunks_is_named(tmp_path, small_chunks):
    frame = _frame(n=100)
    path = _write(tmp_path / "r.csv", frame, ",", True)
    lines = path.read_text().splitlines()
    lines[61] = lines[61].rsplit(",", 2)[0] + ",9.5," + lines[61].rsplit(",", 1)[1]   # line 62: out of scale
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"r\.csv, line 62: expected a rating in \[0\.5, 5\]"):
        read_ratings_file(path, rating_scale=(0.5, 5, 0.5))
    lines[61] = lines[61] + ",7"                                                           # line 62: 5 fields
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"line 62: expected 4 fields"):
        read_ratings_file(path)


def test_multibyte_separator_split_across_reads(tmp_path, monkeypatch):
    """'::' cut in two by a read boundary is still one separator (reads of 1..5 bytes)."""
    frame = _frame(n=40)
    path = _write(tmp_path / "r.dat", frame, "::", False)
    columns = {"user": 0, "item": 1, "rating": 2, "timestamp": 3}
    for size in range(1, 6):
        monkeypatch.setattr(_format, "_CHUNK", size)
        _assert_same(read_ratings_file(path, sep="::", columns=columns), _expected(frame))


def test_progress_bar_on_large_files_only(tmp_path, monkeypatch, capsys):
    path = _write(tmp_path / "r.csv", _frame(), ",", True)
    read_ratings_file(path)
    assert "reading r.csv" not in capsys.readouterr().err          # below 50 MiB: no bar
    monkeypatch.setattr(_fast_read, "PROGRESS_MIN_BYTES", 100)
    bars, make_bar = [], _fast_read._progress_bar
    monkeypatch.setattr(_fast_read, "_progress_bar", lambda *a: bars.append(make_bar(*a)) or bars[-1])
    ds = read_ratings_file(path)
    assert "reading r.csv" in capsys.readouterr().err and len(ds) == 300
    assert bars[0].total == path.stat().st_size and bars[0].n == bars[0].total     # advanced over every byte
    read_ratings_file(path, show_progress=False)
    assert "reading r.csv" not in capsys.readouterr().err and bars[-1] is None


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint32])
def test_lookup_table_encoding_equals_factorize(dtype):
    rng = np.random.default_rng(0)
    low = 0 if dtype == np.uint32 else -1000
    raw = rng.integers(low, 5000, size=10_000).astype(dtype)
    codes, ids = ratings._encode(raw, None, "user")
    want_codes, want_ids = pd.factorize(raw, sort=True)
    np.testing.assert_array_equal(codes, want_codes)
    np.testing.assert_array_equal(ids, want_ids)
    assert codes.dtype == ids.dtype == np.int64
    huge = np.array([2**64 - 1, 3, 2**64 - 1], dtype=np.uint64)     # beyond int64: kept as uint64 ids
    codes, ids = ratings._encode(huge, None, "user")
    np.testing.assert_array_equal(codes, [1, 0, 1])
    assert ids.dtype == np.uint64 and ids[1] == 2**64 - 1
    wide = np.array([5, 2**40, 5, -(2**40)], dtype=np.int64)        # too wide a span for a table: factorize
    assert ratings._encode_dense(wide) is None
    np.testing.assert_array_equal(ratings._encode(wide, None, "user")[0], [1, 2, 1, 0])


def test_rank_within_user_equals_lexsort_reference():
    """One combined int64 sort gives the ranks of the (user, key, row) lexicographic order, ties included."""
    from data_loaders.splits import _rank_within_user

    rng = np.random.default_rng(5)
    users = rng.integers(0, 50, size=5000)
    for key in (rng.random(5000), rng.integers(0, 4, size=5000).astype(np.float64)):   # distinct, many ties
        order = np.lexsort((np.arange(5000), key, users))
        want = np.empty(5000, dtype=np.int64)
        starts = np.searchsorted(users[order], users[order], side="left")
        want[order] = np.arange(5000) - starts
        np.testing.assert_array_equal(_rank_within_user(users, key), want)
