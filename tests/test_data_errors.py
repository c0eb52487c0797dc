"""Bad input: every malformed file gives a ValueError/FileNotFoundError naming file, line and expectation;
``drop_invalid`` drops bad rows explicitly and reports how many and why."""

import zipfile

import pytest

from data_loaders import load_movielens, read_ratings_file

COLS = {"user": "user", "item": "item", "rating": "rating", "timestamp": "ts"}
HEAD = "user,item,rating,ts\n"
GOOD = "1,10,4,100\n2,10,3,200\n"


def _write(tmp_path, body, name="r.csv"):
    path = tmp_path / name
    path.write_text(body)
    return path


def _read(path, **kw):
    return read_ratings_file(path, columns=COLS, rating_scale=(1, 5), **kw)


BAD_ROWS = {  # third data row (line 4) -> expected message
    "too many fields": ("3,11,4,300,9", r"line 4: expected 4 fields separated by ',', found 5"),
    "too few fields": ("3,11,4", r"line 4: expected 4 fields separated by ',', found 3"),
    "non-numeric user": ("u3,11,4,300", r"line 4: expected an int64 integer for user \(field 1\), found 'u3"),
    "non-numeric item": ("3,abc,4,300", r"line 4: expected an int64 integer for item \(field 2\), found 'a"),
    "fractional id": ("3,11.5,4,300", r"line 4: expected an int64 integer for item"),
    "huge id": ("99999999999999999999,11,4,300", r"line 4: expected an int64 integer for user"),
    "non-numeric rating": ("3,11,good,300", r"line 4: expected a number for rating \(field 3\), found 'g"),
    "empty rating": ("3,11,,300", r"line 4: expected a number for rating"),
    "nan rating": ("3,11,nan,300", r"line 4: expected a finite rating, found 'nan'"),
    "inf rating": ("3,11,inf,300", r"line 4: expected a finite rating, found 'inf'"),
    "rating above scale": ("3,11,6,300", r"line 4: expected a rating in \[1, 5\], found 6"),
    "rating below scale": ("3,11,0.5,300", r"line 4: expected a rating in \[1, 5\], found 0.5"),
    "bad timestamp": ("3,11,4,yesterday", r"line 4: expected an int64 integer for timestamp"),
    "wrong separator": ("3;11;4;300", r"line 4: expected 4 fields separated by ',', found 1; "
                                      r"the line contains ';': wrong separator\?"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_row_names_file_and_line(tmp_path, case):
    row, message = BAD_ROWS[case]
    path = _write(tmp_path, HEAD + GOOD + row + "\n1,12,5,400\n")
    with pytest.raises(ValueError, match=r"r\.csv, " + message):
        _read(path)


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_drop_invalid_reports_each_reason(tmp_path, case):
    row, _ = BAD_ROWS[case]
    path = _write(tmp_path, HEAD + GOOD + row + "\n1,12,5,400\n")
    with pytest.warns(UserWarning, match=r"r\.csv: dropped 1 invalid row"):
        ds = _read(path, drop_invalid=True)
    assert len(ds) == 3 and sum(ds.dropped.values()) == 1


def test_drop_invalid_counts_by_reason(tmp_path):
    rows = ["3,11,x,300", "3,11,9,300", "3,11", "1,10,5,500", "4,11,nan,1", "5,12,2,2"]
    path = _write(tmp_path, HEAD + GOOD + "\n".join(rows) + "\n")
    with pytest.warns(UserWarning, match="dropped 5 invalid row") as record:
        ds = _read(path, drop_invalid=True)
    assert ds.dropped == {"not a number": 1, "rating outside scale": 1, "wrong number of fields": 1,
                          "non-finite rating": 1, "duplicate (user, item)": 1}
    assert "1 duplicate (user, item)" in str(record[0].message)
    assert len(ds) == 3 and ds.user_ids.tolist() == [1, 2, 5]


def test_duplicate_pair_names_both_lines(tmp_path):
    path = _write(tmp_path, HEAD + GOOD + "3,11,4,300\n2,10,5,400\n")
    expected = r"r\.csv, line 5: duplicate \(user, item\) = \(2, 10\), first seen on line 3"
    with pytest.raises(ValueError, match=expected):
        _read(path)


def test_duplicate_with_drop_keeps_first(tmp_path):
    path = _write(tmp_path, HEAD + GOOD + "2,10,5,400\n")
    with pytest.warns(UserWarning, match="1 duplicate"):
        ds = _read(path, drop_invalid=True)
    assert ds.ratings.tolist() == [4.0, 3.0]


def test_blank_lines_are_skipped_and_counted_in_line_numbers(tmp_path):
    path = _write(tmp_path, HEAD + "1,10,4,100\n\n2,10,x,200\n")
    with pytest.raises(ValueError, match="line 4: expected a number for rating"):
        _read(path)
    assert len(_read(_write(tmp_path, HEAD + "1,10,4,100\n\n2,10,3,200\n", "ok.csv"))) == 2


def test_empty_file(tmp_path):
    with pytest.raises(ValueError, match=r"r\.csv: file is empty"):
        _read(_write(tmp_path, ""))


def test_header_only(tmp_path):
    with pytest.raises(ValueError, match=r"r\.csv: has a header but no rating rows"):
        _read(_write(tmp_path, HEAD))


def test_everything_dropped(tmp_path):
    with pytest.raises(ValueError, match=r"no rating rows left after dropping \{'not a number': 1\}"):
        _read(_write(tmp_path, HEAD + "1,2,x,3\n"), drop_invalid=True)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.csv"):
        _read(tmp_path / "nope.csv")


def test_wrong_separator_whole_file(tmp_path):
    path = _write(tmp_path, "user\titem\trating\tts\n1\t10\t4\t100\n")
    with pytest.raises(ValueError, match=r"r\.csv, line 1: header has no column 'user'.*wrong separator"):
        _read(path)
    no_header = _write(tmp_path, "1\t10\t4\t100\n", "n.csv")
    with pytest.raises(ValueError, match=r"n\.csv, line 1: expected at least 3 fields.*wrong separator"):
        read_ratings_file(no_header, header=False)


def test_bad_columns_mapping(tmp_path):
    path = _write(tmp_path, HEAD + GOOD)
    with pytest.raises(ValueError, match="missing"):
        read_ratings_file(path, columns={"user": "user", "item": "item"})
    with pytest.raises(ValueError, match="unknown"):
        read_ratings_file(path, columns={**COLS, "weight": "w"})
    with pytest.raises(ValueError, match="needs header=True"):
        read_ratings_file(path, header=False, columns=COLS)


def test_movielens_dat_bad_row_and_wrong_separator(tmp_path):
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "ratings.dat").write_text("1::10::5::978300760\n2::10::3\n")
    with pytest.raises(ValueError, match=r"ml-1m/ratings\.dat, line 2: expected 4 fields separated by '::'"):
        load_movielens("1m", root=tmp_path)
    (folder / "ratings.dat").write_text("1,10,5,978300760\n")
    with pytest.raises(ValueError, match=r"line 1: expected 4 fields separated by '::', found 1.*separator"):
        load_movielens("1m", root=tmp_path)


def test_zip_member_errors_name_archive_and_member(tmp_path):
    path = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ml-100k/u.data", "1\t2\t3\t4\n1\t2\t5\t4\n")
    with pytest.raises(ValueError, match=r"ml-100k\.zip\[ml-100k/u\.data\], line 2: duplicate"):
        load_movielens("100k", root=path)
    with pytest.warns(UserWarning, match="dropped 1"):
        assert len(load_movielens("100k", root=path, drop_invalid=True)) == 1


def test_empty_zip_member(tmp_path):
    path = tmp_path / "ml-latest-small.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ml-latest-small/ratings.csv", "")
    with pytest.raises(ValueError, match=r"ml-latest-small/ratings\.csv\]: file is empty"):
        load_movielens("latest-small", root=tmp_path)


def test_csv_header_mismatch_for_movielens(tmp_path):
    path = tmp_path / "ml-25m.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ml-25m/ratings.csv", "user,movie,rating,timestamp\n1,2,3,4\n")
    with pytest.raises(ValueError, match=r"header has no column 'userId'"):
        load_movielens("25m", root=path)


def test_duplicate_triple_with_context_and_negative_ids(tmp_path):
    path = _write(tmp_path, "-1,2,3,0\n-1,2,4,1\n-1,2,5,1\n")
    expected = r"line 3: duplicate \(user, item, context\) = \(-1, 2, 1\), first seen on line 2"
    with pytest.raises(ValueError, match=expected):
        read_ratings_file(path, header=False, columns={"user": 0, "item": 1, "rating": 2, "context": 3})
    path = _write(tmp_path, "-1,2,3\n5,-2,4\n-1,2,5\n", "neg.csv")
    with pytest.raises(ValueError, match=r"3: duplicate \(user, item\) = \(-1, 2\), first seen on line 1"):
        read_ratings_file(path, header=False)
