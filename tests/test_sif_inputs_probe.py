"""Inputs a new user may give (rating files, configs, the estimator API): each is read correctly or refused in one
line naming the file, line, key or argument; none becomes a silently wrong number. Synthetic data only."""

from __future__ import annotations

import bz2
import gzip
import lzma
import zipfile

import numpy as np
import pytest

from data_loaders import read_ratings_file

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


def test_consistently_padded_ids_read_as_integers(tmp_path):
    ds = read_ratings_file(_write(tmp_path / "r.csv", "001,010,4\n002,010,3\n001,020,5\n"), show_progress=False)
    assert ds.user_ids.tolist() == [1, 2] and ds.item_ids.tolist() == [10, 20] and len(ds) == 3


@pytest.mark.parametrize("row,field", [("1_000,10,4", "user"), ("1,10,4_5", "rating")])
def test_python_digit_separators_are_not_numbers(tmp_path, row, field):
    with pytest.raises(ValueError, match=rf"line 1: expected an? .*for {field}"):
        read_ratings_file(_write(tmp_path / "r.csv", row + "\n2,20,3\n"), show_progress=False)


def test_boolean_ratings_are_refused_not_read_as_one_and_zero(tmp_path):
    path = _write(tmp_path / "r.csv", "1,10,True\n2,20,False\n")
    with pytest.raises(ValueError, match=r"r\.csv, line 1: expected a number for rating \(field 3\), found 'True'"):
        read_ratings_file(path, show_progress=False)


def test_blanks_around_string_ids_are_formatting(tmp_path):
    ds = read_ratings_file(_write(tmp_path / "r.csv", "user,item,rating\na, x,4\nb,x ,3\n"), id_type="str",
                           show_progress=False)
    assert ds.user_ids.tolist() == ["a", "b"] and ds.item_ids.tolist() == ["x"]
    with pytest.raises(ValueError, match=r"line 3: expected a non-empty id for item"):
        read_ratings_file(_write(tmp_path / "e.csv", "user,item,rating\na,x,4\nb,  ,3\n"), id_type="str",
                          show_progress=False)
