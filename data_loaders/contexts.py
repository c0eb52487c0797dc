"""Contexts for (user, item, context) rating data: what the third index of a tensor model is.

``time_bins`` (quantile bins of the rating timestamps, fitted on the training split), ``weekday`` (0 = Monday ..
6 = Sunday) and ``hour`` (0..23) of the rating timestamp, read as Unix seconds in UTC (timestamps past the year
3000, e.g. milliseconds, are refused for these two), and ``genre``, an item
attribute read from the data set's item file: ML-100K ``u.item`` (19 genre flags; the first flag set), ML-1M and
ML-10M ``movies.dat`` and ML-20M on ``movies.csv`` (the ``genres`` column, "|"-separated; the first genre). An
item without a genre (no flag set, "(no genres listed)", or absent from the item file) gets the value "unknown".

:func:`with_context` applies a context to (train, valid, test) splits; the context's value set is fixed on train
(time bins) or on the whole item file (genres), never on valid or test ratings.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ._source import Source
from .ratings import RatingDataset

__all__ = ["CONTEXTS", "UNKNOWN_GENRE", "ML100K_GENRES", "ITEM_FILES", "time_bin_contexts", "weekday_contexts",
           "hour_contexts", "genre_contexts", "read_item_genres", "with_context"]

_log = logging.getLogger(__name__)
CONTEXTS = ("none", "time_bins", "weekday", "hour", "genre")
UNKNOWN_GENRE = "unknown"
# the genre flags of ML-100K's u.item, in column order (its README and u.genre; flag 0 is "unknown")
ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
                 "War", "Western")
# the item file of each MovieLens release (the keys of data_loaders._movielens.SPECS)
ITEM_FILES = {"100k": "u.item", "1m": "movies.dat", "10m": "movies.dat", "20m": "movies.csv", "25m": "movies.csv",
              "32m": "movies.csv", "latest": "movies.csv", "latest-small": "movies.csv"}
_SECONDS_PER_DAY, _SECONDS_PER_HOUR = 86400, 3600
_EPOCH_WEEKDAY = 3          # 1970-01-01 (Unix time 0, UTC) was a Thursday: weekday 3 with Monday = 0
_YEAR_3000 = 32_503_680_000  # Unix seconds of 3000-01-01: later "seconds" are milliseconds or another unit


def _timestamps(ds: RatingDataset, context: str) -> np.ndarray:
    if ds.timestamps is None:
        raise ValueError(f"{ds.name}: has no timestamps, so context {context!r} cannot be built (give the file a "
                         "timestamp column, e.g. data.columns.timestamp, or choose data.context=genre/none)")
    return ds.timestamps.numpy()  # (n,) int64 Unix seconds


def _unix_seconds(ds: RatingDataset, context: str) -> np.ndarray:
    """The timestamps, refused when they cannot be Unix seconds (a calendar context from milliseconds would be
    silently wrong)."""
    ts = _timestamps(ds, context)
    if len(ts) and int(ts.max()) >= _YEAR_3000:
        raise ValueError(f"{ds.name}: timestamps up to {int(ts.max())} are not Unix seconds (past the year 3000; "
                         f"milliseconds?), so context {context!r} would be wrong: convert them to seconds")
    return ts


def time_bin_contexts(ds: RatingDataset, num_bins: int | None = None, edges=None) -> RatingDataset:
    """Quantile time bins (:meth:`RatingDataset.with_time_contexts`): ``num_bins`` fitted on ``ds`` (train), or
    the ``edges`` of a fitted dataset (``time_bin_edges``) for valid/test."""
    _timestamps(ds, "time_bins")
    return ds.with_time_contexts(num_bins, edges=edges)


def weekday_contexts(ds: RatingDataset) -> RatingDataset:
    """Context = day of the week of the timestamp in UTC (0 = Monday .. 6 = Sunday); always 7 values."""
    days = np.floor_divide(_unix_seconds(ds, "weekday"), _SECONDS_PER_DAY)  # (n,)
    return ds.with_contexts((days + _EPOCH_WEEKDAY) % 7, np.arange(7))


def hour_contexts(ds: RatingDataset) -> RatingDataset:
    """Context = hour of the day of the timestamp in UTC (0..23); always 24 values."""
    seconds = np.mod(_unix_seconds(ds, "hour"), _SECONDS_PER_DAY)  # (n,)
    return ds.with_contexts(seconds // _SECONDS_PER_HOUR, np.arange(24))


# ------------------------------------------------------------------------------------------------ item files
def _text(source: Source, encoding: str) -> str:
    source.check()
    return source.read_bytes().decode(encoding)


def _u_item_genres(text: str, label: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("|")
        flags = fields[-len(ML100K_GENRES):]
        if len(fields) < 1 + len(ML100K_GENRES) or any(f.strip() not in ("0", "1") for f in flags):
            raise ValueError(f"{label}, line {lineno}: expected an item id and {len(ML100K_GENRES)} trailing 0/1 "
                             f"genre flags separated by '|' (ML-100K u.item), got {len(fields)} fields")
        on = [g for g, f in zip(ML100K_GENRES, flags, strict=True) if f.strip() == "1"]
        out[fields[0].strip()] = on[0] if on else UNKNOWN_GENRE
    return out


def _first_genre(value: str) -> str:
    first = value.split("|")[0].strip()
    return UNKNOWN_GENRE if not first or first == "(no genres listed)" else first


def _movies_dat_genres(text: str, label: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("::")
        if len(fields) != 3:
            raise ValueError(f"{label}, line {lineno}: expected MovieID::Title::Genres (ML-1M movies.dat), got "
                             f"{len(fields)} fields")
        out[fields[0].strip()] = _first_genre(fields[2])
    return out


def _movies_csv_genres(text: str, label: str) -> dict[str, str]:
    rows = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(rows, [])]
    if "movieId" not in header or "genres" not in header:
        raise ValueError(f"{label}, line 1: expected a header with the columns movieId and genres, got {header}")
    id_col, genre_col = header.index("movieId"), header.index("genres")
    out: dict[str, str] = {}
    for lineno, row in enumerate(rows, 2):
        if not row:
            continue
        if len(row) != len(header):
            raise ValueError(f"{label}, line {lineno}: expected {len(header)} fields like the header, got {len(row)}")
        out[row[id_col].strip()] = _first_genre(row[genre_col])
    return out


def read_item_genres(path: str | Path | Source, encoding: str = "latin-1") -> dict[str, str]:
    """{original item id (as text): its first genre} from an item file, by its name: ``u.item`` (ML-100K),
    ``*.dat`` (ML-1M/10M ``movies.dat``) or ``*.csv`` (ML-20M on ``movies.csv``). Bad lines raise ValueError
    naming the file and line."""
    source = path if isinstance(path, Source) else Source(Path(path))
    name = Path(source.member or source.path.name).name
    text = _text(source, "utf-8" if source.suffix == ".csv" else encoding)
    if source.suffix == ".csv":
        return _movies_csv_genres(text, source.label)
    if source.suffix == ".dat":
        return _movies_dat_genres(text, source.label)
    if name == "u.item" or source.suffix == ".item":
        return _u_item_genres(text, source.label)
    raise ValueError(f"{source.label}: unknown item file kind; expected u.item, movies.dat or movies.csv")


def genre_contexts(ds: RatingDataset, genres: Mapping[str, str]) -> RatingDataset:
    """Context = the genre of each rating's item (``genres``: {original item id as text: genre}); the value set is
    every genre of ``genres`` plus "unknown" (sorted), so all splits of one dataset get the same codes."""
    values = np.array(sorted(set(genres.values()) | {UNKNOWN_GENRE}))  # (C,)
    code = {g: i for i, g in enumerate(values)}
    unknown = code[UNKNOWN_GENRE]
    per_item = np.array([code.get(genres.get(str(i), UNKNOWN_GENRE), unknown) for i in ds.item_ids])  # (items,)
    return ds.with_contexts(per_item[ds.items.numpy()], values)


def _check_genre_coverage(item_ids: np.ndarray, genres: Mapping[str, str]) -> None:
    """Refuse an item file that holds none of the rated items (every rating would get "unknown": one context);
    log how many rated items it lacks otherwise."""
    missing = [str(i) for i in item_ids if str(i) not in genres]
    if len(missing) == len(item_ids):
        raise ValueError(f"context 'genre': none of the {len(item_ids)} rated item ids (e.g. {missing[:3]}) is in the "
                         f"item file ({len(genres)} items, e.g. {list(genres)[:3]}); wrong item file (data.item_file)?")
    if missing:
        _log.warning("context 'genre': %d of %d rated items are not in the item file (genre 'unknown'), e.g. %s",
                     len(missing), len(item_ids), missing[:3])


def with_context(splits: tuple[RatingDataset, RatingDataset, RatingDataset], context: str, num_bins: int = 8,
                 genres: Mapping[str, str] | None = None) -> tuple[RatingDataset, RatingDataset, RatingDataset]:
    """(train, valid, test) with the contexts named by ``context`` (one of :data:`CONTEXTS`); time bins are fitted
    on train and applied to valid/test with the same edges; ``genres`` (``read_item_genres``) is needed for genre."""
    train, valid, test = splits
    if context == "none":
        return train, valid, test
    if context == "time_bins":
        train = time_bin_contexts(train, num_bins)
        return train, time_bin_contexts(valid, edges=train.time_bin_edges), time_bin_contexts(
            test, edges=train.time_bin_edges)
    if context == "genre":
        if genres is None:
            raise ValueError("context 'genre' needs the item genres (read_item_genres of the item file)")
        _check_genre_coverage(train.item_ids, genres)
        return tuple(genre_contexts(ds, genres) for ds in splits)
    fns = {"weekday": weekday_contexts, "hour": hour_contexts}
    if context not in fns:
        raise ValueError(f"context={context!r}: expected one of {', '.join(CONTEXTS)}")
    return tuple(fns[context](ds) for ds in splits)
