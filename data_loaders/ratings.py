"""Rating datasets and their readers (MovieLens family and generic CSV/TSV/Parquet)."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ._format import FLOAT32_MAX, RatingScale, Table, TableFormat, check_encoding, positions_by_name
from ._movielens import find_file, get_spec
from ._parse import duplicate_mask, read_delimited, read_parquet_table
from ._source import Source
from .download import DEFAULT_BASE_URL, DownloadError, default_cache_dir, download_movielens

_log = logging.getLogger(__name__)

_SUFFIX_SEPS = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".txt": "\t", ".data": "\t", ".dat": "::"}
_PARQUET = (".parquet", ".pq")
_FRAME_HINT = " (RatingDataset.from_frame(frame, columns={'user': ..., 'item': ..., 'rating': ...})) or rename them"
_TORCH_DTYPES = {np.int64: torch.int64, np.float32: torch.float32}


def _as_tensor(values, dtype) -> torch.Tensor:
    """A tensor of ``values`` (tensor or array-like); read-only arrays are copied first."""
    if torch.is_tensor(values):
        return values.to(_TORCH_DTYPES[dtype])
    arr = np.asarray(values, dtype=dtype)
    return torch.from_numpy(arr if arr.flags.writeable else arr.copy())


def _float32_range(ratings, name: str):
    """``ratings`` unchanged when float32 holds every one (finite ones stay finite); ValueError naming the first
    that would become infinite (ratings are stored as float32)."""
    if torch.is_tensor(ratings) or np.asarray(ratings).dtype == np.float32:
        return ratings
    values = np.asarray(ratings, dtype=np.float64)
    beyond = np.abs(values) > FLOAT32_MAX
    if beyond.any():
        k = int(np.flatnonzero(beyond)[0])
        raise ValueError(f"{name}: rating {values[k]:g} (row {k + 1}) is beyond float32's range (+-3.4e38), in "
                         "which ratings are stored; rescale the ratings")
    return ratings


def _as_long(values) -> torch.Tensor:
    return _as_tensor(values, np.int64)


_INT64_MAX = np.iinfo(np.int64).max
_LUT_MIN_SPAN = 1 << 24     # integer ids spanning at most max(this, n) values are encoded with a lookup table


def _as_ids(ids: np.ndarray) -> np.ndarray:
    """An id map as stored: integer ids as int64 (whatever width they were read in), others unchanged."""
    ids = np.asarray(ids)
    if ids.dtype.kind == "O" and pd.api.types.infer_dtype(ids, skipna=False) == "string":
        return ids.astype(str)              # string ids as a unicode array: saved and loaded without pickle
    fits = ids.dtype.kind == "i" or (ids.dtype.kind == "u" and (len(ids) == 0 or int(ids.max()) <= _INT64_MAX))
    return ids.astype(np.int64, copy=False) if fits else ids


def _encode_dense(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(codes, sorted distinct ids) of integer ids in a narrow range, by a lookup table (no sort, no hash);
    None when the ids are not integers or span too many values for a table."""
    if raw.dtype.kind not in "iu" or len(raw) == 0:
        return None
    low, high = int(raw.min()), int(raw.max())
    if high - low + 1 > max(_LUT_MIN_SPAN, len(raw)) or high > _INT64_MAX:
        return None
    shifted = raw - raw.dtype.type(low) if low else raw    # (n,) in 0..span-1; no overflow: the span is small
    present = np.zeros(high - low + 1, dtype=bool)
    present[shifted] = True
    lut = np.cumsum(present, dtype=np.int64) - 1           # (span,) code of each present value
    return lut[shifted], np.flatnonzero(present).astype(np.int64) + low


def _encode(raw: np.ndarray, ids: np.ndarray | None, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(codes, ids): contiguous int64 codes of ``raw``; ``ids`` (sorted original ids) is built when None."""
    if ids is None:
        dense = _encode_dense(raw)
        if dense is not None:
            return dense
        codes, uniques = pd.factorize(raw, sort=True)
        return codes.astype(np.int64, copy=False), _as_ids(uniques)
    ids = _as_ids(ids)
    pos = np.searchsorted(ids, raw)
    if len(ids) == 0:
        missing = np.ones(len(raw), dtype=bool)
    else:
        missing = (pos >= len(ids)) | (ids[np.minimum(pos, len(ids) - 1)] != raw)
    if missing.any():
        raise ValueError(f"{what} id {raw[np.flatnonzero(missing)[0]]} is not in the given id map")
    return pos.astype(np.int64), ids


class RatingDataset:
    """Ratings as tensors: contiguous int64 user/item (and context) indices, float32 ratings.

    ``user_ids[k]`` / ``item_ids[k]`` give the original id of index ``k``; subsets share these maps, so
    ``num_users`` / ``num_items`` are the same for a dataset and all its splits.

    ``rating_scale`` is (low, high); ``rating_step`` the declared step (1.0 for whole stars) or None;
    ``rating_scale_source`` is "declared" (a built-in data set's scale or one passed by the caller, which
    every rating was checked against) or "inferred" (the observed min and max, nothing was checked).
    """

    def __init__(self, users, items, ratings, *, user_ids, item_ids, rating_scale, name: str = "ratings",
                 contexts=None, timestamps=None, num_contexts: int | None = None, context_ids=None,
                 time_bin_edges=None, dropped: Mapping[str, int] | None = None,
                 rating_scale_source: str = "declared", rating_step: float | None = None):
        self.users = _as_long(users)  # (n,) int64
        self.items = _as_long(items)  # (n,) int64
        self.ratings = _as_tensor(_float32_range(ratings, name), np.float32)  # (n,) float32
        self.contexts = None if contexts is None else _as_long(contexts)  # (n,) int64 or None
        self.timestamps = None if timestamps is None else _as_long(timestamps)  # (n,) int64 or None
        self.user_ids, self.item_ids = np.asarray(user_ids), np.asarray(item_ids)
        self.context_ids = None if context_ids is None else np.asarray(context_ids)
        self.time_bin_edges = None if time_bin_edges is None else np.asarray(time_bin_edges, dtype=np.float64)
        self.rating_scale = (float(rating_scale[0]), float(rating_scale[1]))
        if rating_step is None and isinstance(rating_scale, RatingScale):
            rating_step = rating_scale.step
        self.rating_step = None if rating_step is None else float(rating_step)
        if rating_scale_source not in ("declared", "inferred"):
            raise ValueError(f"rating_scale_source={rating_scale_source!r}: expected 'declared' or 'inferred'")
        self.rating_scale_source = rating_scale_source
        self.name = name
        self.dropped = dict(dropped or {})
        self.num_contexts = self._count_contexts(num_contexts)
        self._check_lengths()

    def _count_contexts(self, num_contexts: int | None) -> int:
        if self.contexts is None:
            return 0
        if num_contexts is not None:
            return int(num_contexts)
        if self.context_ids is not None:
            return len(self.context_ids)
        return int(self.contexts.max()) + 1 if len(self.contexts) else 0

    def _check_lengths(self) -> None:
        n = len(self.ratings)
        for label, t in (("users", self.users), ("items", self.items), ("contexts", self.contexts),
                         ("timestamps", self.timestamps)):
            if t is not None and t.shape != (n,):
                raise ValueError(f"{label} has shape {tuple(t.shape)}, expected ({n},) like ratings")

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def __len__(self) -> int:
        return len(self.ratings)

    def __repr__(self) -> str:
        return (f"RatingDataset({self.name!r}, n={len(self)}, users={self.num_users}, "
                f"items={self.num_items}, contexts={self.num_contexts}, scale={self.rating_scale} "
                f"({self.rating_scale_source}))")

    @classmethod
    def from_arrays(cls, users, items, ratings, *, timestamps=None, contexts=None, rating_scale=None,
                    name: str = "ratings", user_ids=None, item_ids=None, dropped=None) -> RatingDataset:
        """Build from original ids; the id maps are the sorted distinct ids unless given (integer ids as int64).

        ``ratings`` in float32 are kept as they are (no float64 copy of a large column); others become float64.
        """
        ratings = np.asarray(ratings)
        if ratings.dtype != np.float32:
            ratings = ratings.astype(np.float64, copy=False)
        u, user_ids = _encode(np.asarray(users), None if user_ids is None else np.asarray(user_ids), "user")
        i, item_ids = _encode(np.asarray(items), None if item_ids is None else np.asarray(item_ids), "item")
        c, context_ids = (None, None) if contexts is None else _encode(np.asarray(contexts), None, "context")
        source = "declared" if rating_scale is not None else "inferred"
        if rating_scale is None:
            rating_scale = (float(ratings.min()), float(ratings.max())) if len(ratings) else (0.0, 0.0)
        return cls(u, i, ratings, user_ids=user_ids, item_ids=item_ids, rating_scale=rating_scale, name=name,
                   contexts=c, timestamps=timestamps, context_ids=context_ids, dropped=dropped,
                   rating_scale_source=source)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, columns: Mapping[str, str] | None = None, rating_scale=None,
                   name: str = "frame") -> RatingDataset:
        """Build from a pandas DataFrame: ``columns`` maps user/item/rating (and optional timestamp) to column
        names; None finds them by name like a file header (userId, movieId, rating, ...). Integer ids (or floats
        that are all integral) become int64 ids, text ids stay text; ratings must be finite numbers. A bad value
        or a repeated (user, item) pair raises one ValueError line naming the column and the row label."""
        names = [str(c) for c in frame.columns]
        if columns is None:
            found = positions_by_name(names, f"DataFrame {name!r}", _FRAME_HINT)
            columns = {role: frame.columns[j] for role, j in found.items() if role != "context"}
        missing = [c for c in columns.values() if c not in frame.columns]
        if missing or any(r not in columns for r in ("user", "item", "rating")):
            raise ValueError(f"DataFrame {name!r}: columns={dict(columns)} needs user, item and rating columns "
                             f"that exist (found columns {names})")
        cols = {role: _frame_values(frame, col, role, name) for role, col in columns.items()}
        dup = duplicate_mask(cols)
        if dup.any():
            k = int(np.flatnonzero(dup)[0])                 # a position: the row labels need not be unique
            raise ValueError(f"DataFrame {name!r}, row {frame.index[k]!r}: duplicate (user, item) = "
                             f"({cols['user'][k]}, {cols['item'][k]}); expected each pair at most once")
        return cls.from_arrays(cols["user"], cols["item"], cols["rating"], timestamps=cols.get("timestamp"),
                               rating_scale=RatingScale.parse(rating_scale), name=name)

    def _replace(self, **changes) -> RatingDataset:
        state = dict(users=self.users, items=self.items, ratings=self.ratings, contexts=self.contexts,
                     timestamps=self.timestamps, user_ids=self.user_ids, item_ids=self.item_ids,
                     rating_scale=self.rating_scale, name=self.name, num_contexts=self.num_contexts,
                     context_ids=self.context_ids, time_bin_edges=self.time_bin_edges, dropped=self.dropped,
                     rating_scale_source=self.rating_scale_source, rating_step=self.rating_step)
        state.update(changes)
        return RatingDataset(state.pop("users"), state.pop("items"), state.pop("ratings"), **state)

    def subset(self, index) -> RatingDataset:
        """Rows ``index`` (int or bool tensor/array) as a dataset with the same id maps and sizes."""
        idx = torch.as_tensor(np.asarray(index) if not torch.is_tensor(index) else index)
        if idx.dtype == torch.bool:
            idx = torch.nonzero(idx, as_tuple=True)[0]
        idx = idx.to(torch.int64).reshape(-1)  # (m,)
        pick = lambda t: None if t is None else t.index_select(0, idx)  # noqa: E731
        return self._replace(users=pick(self.users), items=pick(self.items), ratings=pick(self.ratings),
                             contexts=pick(self.contexts), timestamps=pick(self.timestamps))

    def concat(self, other: RatingDataset) -> RatingDataset:
        """This dataset's rows followed by ``other``'s; both must share their id maps (splits of one dataset)."""
        if (other.user_ids is not self.user_ids and not np.array_equal(other.user_ids, self.user_ids)) or (
                other.item_ids is not self.item_ids and not np.array_equal(other.item_ids, self.item_ids)):
            raise ValueError(f"concat: {self.name} and {other.name} have different user/item id maps")
        if (self.contexts is None) != (other.contexts is None) or (self.timestamps is None) != (
                other.timestamps is None):
            raise ValueError(f"concat: {self.name} and {other.name} differ in having contexts or timestamps")
        cat = lambda a, b: None if a is None else torch.cat([a, b])  # noqa: E731
        return self._replace(users=cat(self.users, other.users), items=cat(self.items, other.items),
                             ratings=cat(self.ratings, other.ratings), contexts=cat(self.contexts, other.contexts),
                             timestamps=cat(self.timestamps, other.timestamps))

    def with_time_contexts(self, num_bins: int | None = None, edges=None) -> RatingDataset:
        """A copy whose contexts are time bins of the timestamps.

        With ``num_bins``, the bins are quantile bins fitted on this dataset (fit them on train only); the
        result's ``time_bin_edges`` can be passed as ``edges`` to bin valid/test data the same way.
        """
        if self.timestamps is None:
            raise ValueError(f"{self.name}: has no timestamps to bin")
        ts = self.timestamps.numpy()
        if edges is None:
            if num_bins is None or num_bins < 1 or len(ts) == 0:
                raise ValueError("with_time_contexts needs num_bins >= 1 and a non-empty dataset, or edges")
            edges = np.quantile(ts, np.linspace(0.0, 1.0, num_bins + 1)[1:-1])
        edges = np.asarray(edges, dtype=np.float64)  # (num_bins - 1,) inner edges, ascending
        bins = np.searchsorted(edges, ts, side="right")  # (n,) in 0..num_bins-1
        num_bins = len(edges) + 1
        return self._replace(contexts=bins, num_contexts=num_bins, context_ids=np.arange(num_bins),
                             time_bin_edges=edges)

    def with_contexts(self, contexts, context_ids) -> RatingDataset:
        """A copy with context index ``contexts`` (n,) per rating, in 0..len(context_ids)-1, and ``context_ids``
        the value of each index (the readers in :mod:`data_loaders.contexts` build both); ``contexts=None``:
        a copy without contexts (matrix data)."""
        if contexts is None:
            return self._replace(contexts=None, num_contexts=None, context_ids=None, time_bin_edges=None)
        context_ids = np.asarray(context_ids)
        contexts = np.asarray(contexts, dtype=np.int64)
        if len(contexts) and (contexts.min() < 0 or contexts.max() >= len(context_ids)):
            raise ValueError(f"{self.name}: context indices must lie in 0..{len(context_ids) - 1}")
        return self._replace(contexts=contexts, num_contexts=len(context_ids), context_ids=context_ids,
                             time_bin_edges=None)


def _frame_values(frame: pd.DataFrame, column, role: str, name: str) -> np.ndarray:
    """One column of a DataFrame as checked values: float64 ratings (finite), int64 or text ids, int64 times
    (datetimes become Unix seconds, naive ones read as UTC). Categories are read as their values."""
    series = frame[column]
    if isinstance(series.dtype, pd.CategoricalDtype):
        series = series.astype(series.cat.categories.dtype if not series.isna().any() else object)
    where = f"DataFrame {name!r}, column {column!r} ({role})"

    def refuse(k: int, want: str, found) -> ValueError:
        found = found.item() if hasattr(found, "item") else found
        return ValueError(f"{where}, row {frame.index[k]!r}: expected {want}, found {found!r}")

    missing = series.isna().to_numpy()
    if missing.any():
        raise refuse(int(np.flatnonzero(missing)[0]), "a value", np.nan)
    kind = series.dtype.kind
    if kind == "M":                                                # datetimes: Unix seconds
        utc = series.dt.tz_convert("UTC").dt.tz_localize(None) if series.dt.tz is not None else series
        return utc.to_numpy(dtype="datetime64[s]").astype(np.int64)
    if kind in "OSUT" and role in ("user", "item"):
        if pd.api.types.infer_dtype(series, skipna=False) != "string":
            k = next(j for j, v in enumerate(series) if not isinstance(v, str))
            raise refuse(k, "integer or text ids", series.iloc[k])
        return series.to_numpy(dtype=object).astype(str)
    if kind not in "iuf":
        raise ValueError(f"{where}: expected numbers, found dtype {series.dtype}")
    values = series.to_numpy(dtype=np.float64 if kind == "f" else getattr(series.dtype, "numpy_dtype", None))
    if role == "rating":
        bad, want = ~np.isfinite(values.astype(np.float64)), "a finite rating"
    elif values.dtype.kind == "f":
        bad = ~np.isfinite(values) | (values != np.round(values)) | (np.abs(values) >= 2.0**63)
        want = "an integer"
    else:                                                          # uint64 beyond int64 would wrap around
        bad = values > np.iinfo(np.int64).max if values.dtype.kind == "u" else np.zeros(len(values), dtype=bool)
        want = "an integer below 2**63"
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise refuse(k, want, values[k])
    return values.astype(np.float64 if role == "rating" else np.int64)


# ------------------------------------------------------------------------------------------------ readers
def _dataset_from_table(table: Table, label: str, name: str, scale: RatingScale | None) -> RatingDataset:
    if table.dropped:
        total = sum(table.dropped.values())
        detail = ", ".join(f"{n} {reason}" for reason, n in table.dropped.items())
        warnings.warn(f"{label}: dropped {total} invalid row(s) ({detail})", stacklevel=3)
    c = table.columns
    ds = RatingDataset.from_arrays(c["user"], c["item"], c["rating"], timestamps=c.get("timestamp"),
                                   contexts=c.get("context"), rating_scale=scale, name=name,
                                   dropped=table.dropped)
    if scale is None:
        _log.info("%s: no rating scale declared; inferred [%g, %g] from the data", label, *ds.rating_scale)
    return ds


def read_ratings_file(path, sep: str | None = None, columns: Mapping[str, str | int | None] | None = None,
                      header: bool | None = None, rating_scale=None, drop_invalid: bool = False,
                      name: str | None = None, encoding: str = "utf-8", show_progress: bool = True,
                      id_type: str = "int") -> RatingDataset:
    """Read a generic rating file: CSV/TSV (by suffix, or ``sep``) or Parquet (``.parquet``/``.pq``); a gzip, bz2
    or xz compressed text file (``ratings.csv.gz``) is decompressed as it is read, and a zip archive holding one file
    reads that file.

    ``columns`` maps user/item/rating (required) and timestamp/context (optional) to header names or
    0-based positions. Without it, a header's columns are found by name, any case (user: user, userId,
    user_id, uid; item: item, itemId, movieId, iid; rating: rating, ratings, score; timestamp: timestamp,
    time, ts; context), and a file without a header is read as user, item, rating in its first three fields.
    ``header`` None (default) detects a header: a first row whose id/rating fields are all non-numeric;
    True/False force it. ``rating_scale`` is (low, high) or (low, high, step): every rating must lie on it;
    without it nothing is checked but finiteness and the scale is the observed (min, max), marked
    ``rating_scale_source == "inferred"`` on the result. Bad rows raise ValueError naming file and line,
    unless ``drop_invalid``. ``encoding`` names the text encoding (e.g. "latin-1"). ``show_progress``: a progress
    bar (by bytes, on stderr) while a text file of 50 MiB or more is parsed. ``id_type``: "int" (default: user and
    item ids must be integers, anything else is a bad row) or "str" (ids are the fields' text, e.g. ISBNs or
    hashed ids; the dataset's ``user_ids`` / ``item_ids`` are then unicode arrays).
    """
    if id_type not in ("int", "str"):
        raise ValueError(f"id_type must be 'int' or 'str', got {id_type!r}")
    source = Source(Path(path).expanduser()).sole_member()      # a zip archive: its one file; ~ expanded
    columns = None if columns is None else dict(columns)
    scale = RatingScale.parse(rating_scale)
    encoding = check_encoding(encoding)
    name = name or source.path.stem
    if source.suffix in _PARQUET:
        if source.member is not None or source.compression is not None:
            raise ValueError(f"{source.label}: a Parquet file inside a zip or compressed file; Parquet compresses "
                             "its own columns: pass the plain .parquet file")
        table = read_parquet_table(source, columns, scale, drop_invalid, string_ids=id_type == "str")
    else:
        sep = sep or _SUFFIX_SEPS.get(source.suffix, ",")
        fmt = TableFormat(sep=sep, header=header, columns=columns, encoding=encoding, string_ids=id_type == "str")
        table = read_delimited(source, fmt, scale, drop_invalid, show_progress=show_progress)
    return _dataset_from_table(table, source.label, name, scale)


def _default_root() -> Path:
    env = os.environ.get("NASP_DATA_DIR")
    return Path(env) if env else default_cache_dir()


def where_to_put(spec, root: Path) -> str:
    """The one-line advice of where a release's files belong, naming NASP_DATA_DIR and data.root."""
    holder = root.parent if root.suffix == ".zip" else root
    return (f"put {spec.zip_name} or its extracted folder {holder / spec.folder}/ into {holder}, or point "
            f"NASP_DATA_DIR or the config key data.root at the folder holding them")


def load_movielens(variant: str = "100k", root=None, download: bool = False,
                   base_url: str = DEFAULT_BASE_URL, checksum: str | None = None,
                   drop_invalid: bool = False, progress: bool = True, rating_scale=None,
                   allow_unverified: bool = False, timeout: float = 60.0) -> RatingDataset:
    """Load a MovieLens release: 100k, 1m, 10m, 20m, 25m, 32m, latest, latest-small.

    ``root`` is the extracted folder, a folder holding it, the official zip, or a folder holding the zip
    (default: $NASP_DATA_DIR, else the cache folder). With ``download=True`` and nothing found, the official
    zip is fetched from ``base_url`` into ``root``, its digest (``checksum`` or the known one) checked before
    any member is read; releases without a known digest (latest, latest-small) need ``checksum`` or
    ``allow_unverified=True``. A failed download raises :class:`DownloadError` (a FileNotFoundError) saying
    where to put the files. Every rating is checked against the release's declared scale (``rating_scale``
    replaces it). ``progress``: progress bars for the download and for parsing a ratings file of 50 MiB or more.
    """
    spec = get_spec(variant)
    scale = RatingScale.parse(rating_scale) or spec.scale
    root = Path(root).expanduser() if root is not None else _default_root()
    source = find_file(root, spec, spec.ratings_file)
    if source is None:
        if not download:
            tried = [root / spec.ratings_file, root / spec.folder / spec.ratings_file, root / spec.zip_name]
            raise FileNotFoundError(f"MovieLens {spec.name}: none of {', '.join(map(str, tried))} exists; "
                                    f"{where_to_put(spec, root)} (or pass download=True / data.download=true)")
        dest = root if root.suffix == ".zip" else root / spec.zip_name
        try:
            zip_path = download_movielens(spec.name, dest=dest, base_url=base_url, checksum=checksum,
                                          progress=progress, allow_unverified=allow_unverified, timeout=timeout)
        except DownloadError as err:
            raise DownloadError(f"MovieLens {spec.name}: {err.args[0]}; {where_to_put(spec, root)}") from err
        source = find_file(zip_path, spec, spec.ratings_file)
    table = read_delimited(source, spec.fmt, scale, drop_invalid, show_progress=progress)
    return _dataset_from_table(table, source.label, f"ml-{spec.name}", scale)
