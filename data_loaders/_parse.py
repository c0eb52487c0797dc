"""Parsing rating tables into validated numpy columns.

Delimited text goes through a fast path (pandas C engine with explicit dtypes plus a separator count that
proves every line had the expected number of fields). Only when that path fails or finds a bad value does a
careful line-by-line path run; it names the file and line of the first bad row, or, with ``drop_invalid``,
drops every bad row and counts why.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping

import numpy as np
import pandas as pd

from ._fast_read import fast_read
from ._format import (
    _INT64_MAX,
    FLOAT32_MAX,
    RatingScale,
    Table,
    TableFormat,
    _check_roles,
    _Layout,
    _reader,
    _sep_hint,
    _to_int,
    check_encoding,
    decode_error,
    positions_by_name,
    resolve_format,
    to_float,
)
from ._source import Source

__all__ = ["duplicate_mask", "has_duplicates", "read_delimited", "read_parquet_table"]


def _pair_key(cols: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """(n,) int64 key equal for equal (user, item) rows, when ids are small enough; else None."""
    if cols["user"].dtype.kind not in "iu" or cols["item"].dtype.kind not in "iu":
        return None                                   # string ids
    users, items = cols["user"].astype(np.int64, copy=False), cols["item"].astype(np.int64, copy=False)
    if "context" in cols or not len(users) or min(users.min(), items.min()) < 0:
        return None
    span = int(items.max()) + 1
    return users * span + items if int(users.max()) < _INT64_MAX // span else None


def has_duplicates(cols: Mapping[str, np.ndarray]) -> bool:
    """Whether some (user, item[, context]) key repeats (sorting one int64 key beats hashing)."""
    key = _pair_key(cols)
    if key is None:
        return bool(duplicate_mask(cols).any())
    key = np.sort(key)  # (n,)
    return bool((key[1:] == key[:-1]).any())


def duplicate_mask(cols: Mapping[str, np.ndarray]) -> np.ndarray:
    """(n,) bool, True for each repeat of an earlier (user, item[, context]) key."""
    key = _pair_key(cols)
    if key is not None:
        return pd.Series(key).duplicated().to_numpy()
    keys = {r: cols[r] for r in ("user", "item", "context") if r in cols}
    return pd.DataFrame(keys).duplicated().to_numpy()




# ---------------------------------------------------------------------------------------- careful path
def _parse_row(fields: list[str], layout: _Layout, sep: str, scale: RatingScale | None,
               string_ids: bool = False) -> tuple[dict | None, tuple[str, str] | None]:
    """(values, None) for a good row, (None, (reason, message)) for a bad one."""
    if len(fields) != layout.num_fields:
        line = sep.join(fields)
        return None, ("wrong number of fields",
                      f"expected {layout.num_fields} fields separated by {sep!r}, found {len(fields)}"
                      f"{_sep_hint(line, sep)}: {line[:100]!r}")
    values = {}
    for role, pos in layout.positions.items():
        text = fields[pos]
        if string_ids and role in ("user", "item"):
            text = text.strip()         # surrounding blanks are formatting, as for integer ids
            if not text:
                return None, ("empty id", f"expected a non-empty id for {role} (field {pos + 1})")
            values[role] = text
            continue
        try:
            values[role] = to_float(text) if role == "rating" else _to_int(text)
        except ValueError:
            kind = "a number" if role == "rating" else "an int64 integer"
            return None, ("not a number", f"expected {kind} for {role} (field {pos + 1}), found {text!r}")
    rating = values["rating"]
    if not math.isfinite(rating):
        text = fields[layout.positions["rating"]]
        return None, ("non-finite rating", f"expected a finite rating, found {text!r}")
    if abs(rating) > FLOAT32_MAX:                # ratings are stored as float32: it would become inf
        text = fields[layout.positions["rating"]]
        return None, ("rating beyond float32", f"expected a rating within float32's +-3.4e38, found {text!r}")
    problem = None if scale is None else scale.problem(rating)
    if problem is not None:
        return None, ("rating outside scale", problem)
    return values, None


def _check_spellings(label: str, texts: dict[str, list[str]], values: dict[str, list], lines: list[int]) -> None:
    """Refuse two spellings of one integer id ("007" and "7", "+7"): they may be two ids in the file's eyes and are
    one after parsing, so they are not silently merged. Float formatting ("7.0", "7e0") is a number's notation, not
    a spelling: it reads as the integer, like the fast path does. texts, values: role -> (n,) id texts and their
    integers of the rows read so far (at ``lines``); the message names the first row whose spelling differs from
    the first one of its integer (user before item on one row). Plain files cost one string comparison per id,
    others a sort per role."""
    found = []
    for role, raw in texts.items():
        if all(map(str.__eq__, raw, map(str, values[role]))):
            continue                    # every id written the plain way ("7"): one spelling each (the common case)
        ints = np.asarray(values[role], dtype=np.int64)                         # (n,)
        text, plain = np.strings.strip(np.asarray(raw, dtype=str)), ints.astype(str)     # (n,) each
        notation = np.zeros(len(text), dtype=bool)
        for c in ".eE":
            notation |= np.strings.find(text, c) >= 0
        text = np.where(notation, plain, text)
        if (text == plain).all():
            continue                    # plain once blanks and float notation are read
        _, first, inverse = np.unique(ints, return_index=True, return_inverse=True)
        bad = np.flatnonzero(text != text[first[inverse]])
        if len(bad):
            k, j = int(bad[0]), int(first[inverse[bad[0]]])                  # j: the first row of k's integer
            found.append((k, role, str(text[k]), str(text[j]), lines[j], int(ints[k])))
    if found:
        k, role, text, other, other_line, value = min(found, key=lambda f: f[0])    # stable: user before item
        raise ValueError(f"{label}, line {lines[k]}: {role} id {text!r} and {other!r} (line {other_line}) are the "
                         f"same integer {value}; pass id_type='str' (config key data.id_type: str) to keep them "
                         "apart, or write each id one way")


def _careful_read(source: Source, fmt: TableFormat, layout: _Layout,
                  scale: RatingScale | None, drop_invalid: bool) -> Table:
    """Line-by-line parse; raise at the first bad row, or drop bad rows when ``drop_invalid``."""
    out: dict[str, list] = {role: [] for role in layout.positions}
    lines: list[int] = []
    dropped: Counter = Counter()
    reader, skip_header = _reader(source, fmt), fmt.header
    id_texts: dict[str, list[str]] = {} if fmt.string_ids else {"user": [], "item": []}   # checked at the end
    id_fields = [(texts, layout.positions[role]) for role, texts in id_texts.items()]
    for fields in reader:
        if not fields:
            continue
        if skip_header:
            skip_header = False
            continue
        values, problem = _parse_row(fields, layout, fmt.sep, scale, fmt.string_ids)
        if problem is not None:
            if not drop_invalid:
                _check_spellings(source.label, id_texts, out, lines)      # an earlier line's problem first
                raise ValueError(f"{source.label}, line {reader.line_num}: {problem[1]}")
            dropped[problem[0]] += 1
            continue
        for texts, pos in id_fields:
            texts.append(fields[pos])
        for role, value in values.items():
            out[role].append(value)
        lines.append(reader.line_num)
    _check_spellings(source.label, id_texts, out, lines)
    cols = {r: np.asarray(v, dtype=np.float64 if r == "rating" else str if fmt.string_ids and r in ("user", "item")
                          else np.int64) for r, v in out.items()}
    return Table(cols, np.asarray(lines, dtype=np.int64), dict(dropped))


def _handle_duplicates(table: Table, label: str, drop_invalid: bool, where: str = "line") -> Table:
    """Raise on the first repeated (user, item[, context]) key, or drop repeats when ``drop_invalid``."""
    mask = duplicate_mask(table.columns)
    if not mask.any():
        return table
    key = "(user, item, context)" if "context" in table.columns else "(user, item)"
    if drop_invalid:
        keep = ~mask
        cols = {r: v[keep] for r, v in table.columns.items()}
        dropped = {**table.dropped, f"duplicate {key}": int(mask.sum())}
        return Table(cols, table.lines[keep], dropped)
    row = int(np.flatnonzero(mask)[0])
    c = table.columns
    same = np.ones(len(mask), dtype=bool)
    for r in ("user", "item", "context"):
        if r in c:
            same &= c[r] == c[r][row]
    first = int(np.flatnonzero(same)[0])
    values = ", ".join(str(c[r][row]) for r in ("user", "item", "context") if r in c)
    raise ValueError(f"{label}, {where} {table.lines[row]}: duplicate {key} = ({values}), first seen on "
                     f"{where} {table.lines[first]}; expected each {key} at most once "
                     f"(drop_invalid=True, config key data.drop_invalid: true, keeps the first)")


def _finish(table: Table, label: str, drop_invalid: bool, header: bool, where: str = "line") -> Table:
    """Duplicate handling and the empty-result check shared by every format."""
    table = _handle_duplicates(table, label, drop_invalid, where)
    if len(table) == 0:
        if table.dropped:
            raise ValueError(f"{label}: no rating rows left after dropping {table.dropped}")
        what = "has a header but no rating rows" if header else "has no rating rows"
        raise ValueError(f"{label}: {what} (expected at least one)")
    return table


def read_delimited(source: Source, fmt: TableFormat, scale: RatingScale | None,
                   drop_invalid: bool, show_progress: bool = True) -> Table:
    """Read and validate a delimited text file (plain or zip member).

    Clean files take the fast path: ids come back as int32 when every id fits (else int64), ratings as float32
    when that is exact for every rating (else float64), timestamps and contexts as int64. ``show_progress``: a
    progress bar by bytes while a file of at least ``PROGRESS_MIN_BYTES`` (50 MiB) is parsed.
    """
    source.check()
    check_encoding(fmt.encoding)
    scale = RatingScale.parse(scale)
    fmt, layout = resolve_format(source, fmt)
    cols = fast_read(source, fmt, layout, scale, show_progress)
    if cols is not None and len(cols["rating"]) and not has_duplicates(cols):  # ratings checked per chunk
        return Table(cols)
    try:
        table = _careful_read(source, fmt, layout, scale, drop_invalid)
    except UnicodeDecodeError:
        raise ValueError(decode_error(source, fmt.encoding)) from None
    return _finish(table, source.label, drop_invalid, fmt.header)


# --------------------------------------------------------------------------------------------- parquet
def _frame_column(series: pd.Series, role: str, string_ids: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(values, bad mask) for one column of a frame; ids as int64 (``string_ids``: user/item as str), ratings as
    float64."""
    if string_ids and role in ("user", "item"):
        text = series.astype(str)
        return text.to_numpy().astype(str), series.isna().to_numpy() | (text == "").to_numpy()
    if role != "rating" and pd.api.types.is_integer_dtype(series.dtype) and not series.isna().any():
        return series.to_numpy(dtype=np.int64), np.zeros(len(series), dtype=bool)
    numbers = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    if role == "rating":
        return numbers, np.isnan(numbers) & series.notna().to_numpy()
    bad = ~np.isfinite(numbers) | (numbers != np.round(numbers)) | (np.abs(numbers) >= 2.0**63)
    return np.where(bad, 0, numbers).astype(np.int64), bad


def _frame_problems(cols: dict[str, np.ndarray], bad: dict[str, np.ndarray],
                    scale: RatingScale | None) -> dict[str, np.ndarray]:
    """reason -> (n,) bool mask of rows with that problem (each bad row under one reason, the reasons and their
    order those of the CSV reader)."""
    ratings = cols["rating"]
    problems = {"not a number": np.logical_or.reduce(list(bad.values()))}
    number = ~problems["not a number"]
    problems["non-finite rating"] = ~np.isfinite(ratings) & number
    problems["rating beyond float32"] = np.isfinite(ratings) & (np.abs(ratings) > FLOAT32_MAX) & number   # as in CSV
    outside = np.zeros(len(ratings), dtype=bool)
    if scale is not None:
        outside = np.isfinite(ratings) & ~problems["rating beyond float32"] & ~scale.mask(ratings)
    problems["rating outside scale"] = outside & ~problems["not a number"]
    return problems


def read_parquet_table(source: Source, columns: Mapping[str, str | int] | None,
                       scale: RatingScale | None, drop_invalid: bool, string_ids: bool = False) -> Table:
    """Read and validate a Parquet file; problems are reported by 1-based row number.

    ``columns`` None: the columns are found by name (see ``ROLE_ALIASES``).
    """
    source.check()
    scale = RatingScale.parse(scale)
    try:
        frame = pd.read_parquet(source.path)
    except ImportError:
        raise ValueError(f"{source.label}: reading Parquet needs pyarrow (pip install pyarrow), or save the ratings "
                         "as CSV") from None
    if columns is None:
        columns = positions_by_name([str(c) for c in frame.columns], source.label)
    else:
        _check_roles(columns)
    names = {}
    for role, col in columns.items():
        if col is None:
            continue
        name = frame.columns[col] if isinstance(col, int) else col
        if name not in frame.columns:
            raise ValueError(f"{source.label}: no column {name!r} for {role} (found {list(frame.columns)})")
        names[role] = name
    parsed = {role: _frame_column(frame[name], role, string_ids) for role, name in names.items()}
    cols = {role: v for role, (v, _) in parsed.items()}
    problems = _frame_problems(cols, {r: b for r, (_, b) in parsed.items()}, scale)
    any_bad = np.logical_or.reduce(list(problems.values()))
    rows = np.arange(1, len(frame) + 1, dtype=np.int64)
    if any_bad.any() and not drop_invalid:
        row = int(np.flatnonzero(any_bad)[0])
        reason = next(r for r, m in problems.items() if m[row])
        shown = {role: frame[name].iloc[row] for role, name in names.items()}
        raise ValueError(f"{source.label}, row {row + 1}: {reason} (expected numeric ids and a finite rating"
                         f"{'' if scale is None else f' in {scale.describe()}'}), found {shown}")
    dropped = {r: int(m.sum()) for r, m in problems.items() if m.any()}
    keep = ~any_bad
    table = Table({r: v[keep] for r, v in cols.items()}, rows[keep], dropped)
    return _finish(table, source.label, drop_invalid, header=True, where="row")
