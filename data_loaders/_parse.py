"""Parsing rating tables into validated numpy columns.

Delimited text goes through a fast path (pandas C engine with explicit dtypes plus a separator count that
proves every line had the expected number of fields). Only when that path fails or finds a bad value does a
careful line-by-line path run; it names the file and line of the first bad row, or, with ``drop_invalid``,
drops every bad row and counts why.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import io
import math
import zipfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd

from ._source import Source

ROLES = ("user", "item", "rating", "timestamp", "context")
REQUIRED_ROLES = ("user", "item", "rating")
_COMMON_SEPS = ("\t", ",", ";", "::", "|", " ")
_CHUNK = 1 << 22
_CHUNK_ROWS = 1 << 20   # rows per pandas chunk of the fast path
PROGRESS_MIN_BYTES = 50 * 2**20   # files at least this large show a progress bar while they are read
_INT32 = np.iinfo(np.int32)
_INTERNAL_SEP = "\x1f"  # stands in for a multi-character separator so the C engine can be used
_INT64_MAX = 2**63 - 1
_DEFAULT_POSITIONS = {"user": 0, "item": 1, "rating": 2}
# Header names recognised per role, compared after lower-casing and removing '_', '-', '.' and spaces
# (so userId, user_id, USER ID all read as "userid").
ROLE_ALIASES: dict[str, tuple[str, ...]] = {
    "user": ("user", "userid", "uid", "users"),
    "item": ("item", "itemid", "iid", "items", "movie", "movieid"),
    "rating": ("rating", "ratings", "score"),
    "timestamp": ("timestamp", "time", "ts"),
    "context": ("context", "contextid"),
}
_STEP_TOL = 1e-6


def _norm(name: str) -> str:
    return "".join(ch for ch in name.strip().lower() if ch not in "_-. ")


class RatingScale(NamedTuple):
    """The allowed ratings: ``low <= r <= high`` and, with ``step``, ``r = low + k * step`` for an integer k."""

    low: float
    high: float
    step: float | None = None

    @classmethod
    def parse(cls, value, what: str = "rating_scale") -> RatingScale | None:
        """None, a RatingScale, (low, high) or (low, high, step); ValueError naming ``what`` otherwise."""
        if value is None or isinstance(value, RatingScale):
            return value
        try:
            parts = [float(v) for v in value]
        except (TypeError, ValueError):
            parts = []
        ok = len(parts) in (2, 3) and all(math.isfinite(v) for v in parts) and parts[0] <= parts[1]
        if not ok or (len(parts) == 3 and parts[2] <= 0):
            raise ValueError(f"{what}={value!r}: expected [low, high] or [low, high, step] with finite "
                             f"low <= high and step > 0")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    @property
    def bounds(self) -> tuple[float, float]:
        return (self.low, self.high)

    def mask(self, ratings: np.ndarray) -> np.ndarray:
        """(n,) bool, True for finite ratings inside the scale (and on its steps)."""
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(ratings) & (ratings >= self.low) & (ratings <= self.high)
            if self.step is not None:
                k = (ratings - self.low) / self.step
                ok &= np.abs(k - np.round(k)) <= _STEP_TOL
        return ok

    def problem(self, rating: float) -> str | None:
        """None for an allowed finite rating, else the expectation it breaks."""
        if not self.low <= rating <= self.high:
            return f"expected a rating in [{self.low:g}, {self.high:g}], found {rating:g}"
        if not self.mask(np.asarray([rating]))[0]:
            return f"expected a rating in [{self.low:g}, {self.high:g}] in steps of {self.step:g}, found {rating:g}"
        return None

    def describe(self) -> str:
        steps = "" if self.step is None else f" in steps of {self.step:g}"
        return f"[{self.low:g}, {self.high:g}]{steps}"


@dataclass(frozen=True)
class TableFormat:
    """How a delimited file is laid out.

    ``columns`` maps a role (user, item, rating, timestamp, context) to a header name or a 0-based position;
    None: by header name (see ``ROLE_ALIASES``) when there is a header, else user, item, rating in the
    first three fields. ``header`` None: detected (a first row whose id/rating fields are all non-numeric
    is a header). ``num_fields`` is the number of fields per line (None: taken from the first line).
    """

    sep: str
    header: bool | None
    columns: Mapping[str, str | int] | None
    num_fields: int | None = None
    encoding: str = "utf-8"


@dataclass
class Table:
    """Validated columns: role -> (n,) array (ids int32 or int64, ratings float32 or float64, int64
    timestamps/contexts; the fast path picks the narrower type when it holds every value exactly)."""

    columns: dict[str, np.ndarray]
    lines: np.ndarray | None = None  # (n,) 1-based line (or row) number of each row; careful path only
    dropped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.columns["rating"])


@dataclass(frozen=True)
class _Layout:
    num_fields: int
    positions: dict[str, int]  # role -> 0-based field position


# ----------------------------------------------------------------------------------------------- helpers
def _sep_hint(line: str, sep: str) -> str:
    """A hint naming a common separator the line contains, when it is not the expected one."""
    for cand in _COMMON_SEPS:
        if cand != sep and cand in line and not (cand == " " and sep in line):
            return f"; the line contains {cand!r}: wrong separator?"
    return ""


def _to_int(text: str) -> int:
    """Parse an integer the way the pandas C engine accepts one ('7', ' 7', '7.0')."""
    try:
        value = int(text)
    except ValueError:
        number = float(text)
        if not number.is_integer():
            raise ValueError(text) from None
        value = int(number)
    if not -_INT64_MAX - 1 <= value <= _INT64_MAX:
        raise ValueError(text)
    return value


def _text_lines(source: Source, fmt: TableFormat) -> Iterator[str]:
    """Lines of the file as text (a leading UTF-8 BOM dropped), a multi-character separator replaced by one."""
    utf8 = codecs.lookup(fmt.encoding).name == "utf-8"
    with source.open_binary() as fh:
        text = io.TextIOWrapper(fh, encoding="utf-8-sig" if utf8 else fmt.encoding, newline="")
        for line in text:
            yield line.replace(fmt.sep, _INTERNAL_SEP) if len(fmt.sep) > 1 else line


def _reader(source: Source, fmt: TableFormat):
    """A csv reader over the file (its ``line_num`` is the current 1-based line number)."""
    delimiter = _INTERNAL_SEP if len(fmt.sep) > 1 else fmt.sep
    return csv.reader(_text_lines(source, fmt), delimiter=delimiter)


def decode_error(source: Source, encoding: str) -> str:
    """A one-line message locating the first byte that is not valid ``encoding`` (file, line, byte offset)."""
    decoder = codecs.getincrementaldecoder(encoding)()
    offset, line, line_start = 0, 1, 0
    with source.open_binary() as fh:
        while True:
            chunk = fh.read(_CHUNK)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as err:
                pos = offset - (len(err.object) - len(chunk)) + err.start  # 0-based offset in the file
                before = chunk[: max(pos - offset, 0)]
                line += before.count(b"\n")
                if b"\n" in before:
                    line_start = offset + before.rfind(b"\n") + 1
                bad = err.object[err.start:err.start + 1].hex()
                return (f"{source.label}, line {line}: byte 0x{bad} at byte offset {pos} (column {pos - line_start + 1}"
                        f" of the line) is not valid {encoding} ({err.reason}); pass encoding='latin-1' "
                        f"(config key data.encoding) if the file uses another encoding")
            if not chunk:
                return f"{source.label}: not {encoding} text"
            line += chunk.count(b"\n")
            if b"\n" in chunk:
                line_start = offset + chunk.rfind(b"\n") + 1
            offset += len(chunk)


def check_encoding(encoding: str) -> str:
    """``encoding`` when Python knows it; ValueError naming the argument otherwise."""
    try:
        codecs.lookup(encoding)
    except (LookupError, TypeError):
        raise ValueError(f"encoding={encoding!r}: unknown text encoding (e.g. 'utf-8', 'latin-1')") from None
    return encoding


def _first_row(source: Source, fmt: TableFormat) -> list[str]:
    """Fields of the first non-blank line; ValueError when there is none."""
    try:
        for fields in _reader(source, fmt):
            if fields:
                return fields
    except UnicodeDecodeError:
        raise ValueError(decode_error(source, fmt.encoding)) from None
    raise ValueError(f"{source.label}: file is empty (expected rating rows separated by {fmt.sep!r})")


def _check_roles(columns: Mapping) -> None:
    unknown = set(columns) - set(ROLES)
    missing = [r for r in REQUIRED_ROLES if columns.get(r) is None]
    if unknown or missing:
        raise ValueError(f"columns: expected roles {REQUIRED_ROLES} (+ optional timestamp, context); "
                         f"unknown {sorted(unknown)}, missing {missing}")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _detect_header(fields: list[str], fmt: TableFormat) -> bool:
    """Explicit ``fmt.header``; else True when names are mapped, or every id/rating field is non-numeric."""
    if fmt.header is not None:
        return bool(fmt.header)
    cols = fmt.columns or _DEFAULT_POSITIONS
    if any(isinstance(c, str) for c in cols.values()):
        return True
    probe = [fields[c] for r, c in cols.items() if r in REQUIRED_ROLES and c is not None and c < len(fields)]
    return bool(probe) and not any(_is_number(f) for f in probe)


def positions_by_name(names: Sequence[str], label: str, hint: str = "") -> dict[str, int]:
    """role -> index of the header name matching ``ROLE_ALIASES``; ValueError listing the names found."""
    normed = [_norm(str(n)) for n in names]
    positions = {}
    for role, aliases in ROLE_ALIASES.items():
        hits = [j for j, n in enumerate(normed) if n in aliases]
        if len(hits) > 1:
            raise ValueError(f"{label}: header has {len(hits)} columns for {role} "
                             f"({[names[j] for j in hits]}); pass columns= to choose one")
        if hits:
            positions[role] = hits[0]
    missing = [r for r in REQUIRED_ROLES if r not in positions]
    if missing:
        known = "; ".join(f"{r}: {', '.join(ROLE_ALIASES[r])}" for r in missing)
        raise ValueError(f"{label}: header has no {' or '.join(missing)} column (found columns {list(names)}; "
                         f"known names, any case, '_' optional: {known}); pass columns= to map them{hint}")
    return positions


def _positions(source: Source, fmt: TableFormat, first: list[str], header: bool) -> dict[str, int]:
    names = [f.strip() for f in first]
    hint = _sep_hint(fmt.sep.join(first), fmt.sep)
    if fmt.columns is None:
        if header:
            return positions_by_name(names, f"{source.label}, line 1", hint)
        return dict(_DEFAULT_POSITIONS)
    positions = {}
    for role, col in fmt.columns.items():
        if col is None:
            continue
        if isinstance(col, str):
            if not header:
                raise ValueError(f"columns[{role!r}]={col!r}: a name needs header=True; use a position")
            if col not in names:
                raise ValueError(f"{source.label}, line 1: header has no column {col!r} for {role} "
                                 f"(found {names}){hint}")
            col = names.index(col)
        positions[role] = int(col)
    return positions


def resolve_format(source: Source, fmt: TableFormat) -> tuple[TableFormat, _Layout]:
    """The format with ``header`` decided and the role -> field position layout, from the first line."""
    if fmt.columns is not None:
        _check_roles(fmt.columns)
    first = _first_row(source, fmt)
    header = _detect_header(first, fmt)
    positions = _positions(source, fmt, first, header)
    num_fields = fmt.num_fields or len(first)
    if max(positions.values()) >= num_fields:
        role = max(positions, key=positions.get)
        line = fmt.sep.join(first)
        raise ValueError(f"{source.label}, line 1: expected at least {positions[role] + 1} fields separated "
                         f"by {fmt.sep!r} (for {role}), found {len(first)}{_sep_hint(line, fmt.sep)}")
    return dataclasses.replace(fmt, header=header), _Layout(num_fields, positions)


def _pair_key(cols: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """(n,) int64 key equal for equal (user, item) rows, when ids are small enough; else None."""
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


# ------------------------------------------------------------------------------------------- fast path
def _count_byte(data: bytes, value: bytes) -> int:
    """Occurrences of the one-byte ``value`` in ``data`` (numpy compares 3x faster than bytes.count)."""
    return int(np.count_nonzero(np.frombuffer(data, dtype=np.uint8) == value[0])) if data else 0


class _CountingReader(io.RawIOBase):
    """The bytes of a source, streamed: a multi-byte separator replaced by one byte, the (one-byte) separator
    counted, and a progress bar (by bytes of the source) advanced as pandas reads."""

    def __init__(self, raw, sep: bytes, internal: bytes, bar=None):
        super().__init__()
        self._raw, self._sep, self._internal, self._bar = raw, sep, internal, bar
        self._pending = b""          # a tail that may be the start of a multi-byte separator
        self._out, self._pos = memoryview(b""), 0     # converted bytes; those before _pos are handed out
        self.num_seps = 0

    def readable(self) -> bool:
        return True

    def _split_tail(self, data: bytes) -> tuple[bytes, bytes]:
        """(data, tail): the tail is a proper prefix of the separator that the next chunk may complete."""
        for k in range(len(self._sep) - 1, 0, -1):
            if data.endswith(self._sep[:k]):
                return data[:-k], data[-k:]
        return data, b""

    def _fill(self) -> bool:
        """Read the next chunk of the source; False at the end."""
        chunk = self._raw.read(_CHUNK)
        if self._bar is not None:
            self._bar.update(len(chunk))
        data, self._pending = self._pending + chunk, b""
        if len(self._sep) > 1:
            data = data.replace(self._sep, self._internal)
            if chunk:
                data, self._pending = self._split_tail(data)
        self.num_seps += _count_byte(data, self._internal)
        self._out, self._pos = memoryview(data), 0
        return bool(data) or bool(chunk)

    def _take(self, size: int) -> memoryview:
        while self._pos >= len(self._out) and self._fill():
            pass
        end = len(self._out) if size is None or size < 0 else min(len(self._out), self._pos + size)
        view, self._pos = self._out[self._pos:end], end
        return view

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return b"".join(iter(lambda: bytes(self._take(_CHUNK)), b""))
        return bytes(self._take(size))

    def readinto(self, buffer) -> int:
        view = self._take(len(buffer))
        buffer[:len(view)] = view
        return len(view)

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


def _size(source: Source) -> int:
    """Bytes of the source's content (uncompressed for a zip member)."""
    if source.member is None:
        return source.path.stat().st_size
    with zipfile.ZipFile(source.path) as zf:
        return zf.getinfo(source.member).file_size


def _progress_bar(source: Source, enabled: bool):
    """A tqdm bar by bytes for a source of at least ``PROGRESS_MIN_BYTES``; None otherwise."""
    if not enabled:
        return None
    total = _size(source)
    if total < PROGRESS_MIN_BYTES:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc=f"reading {source.path.name}", leave=False,
                dynamic_ncols=True)


def _lean_ids(values: np.ndarray) -> np.ndarray:
    """int32 when every value fits, else the int64 values."""
    if len(values) and _INT32.min <= values.min() and values.max() <= _INT32.max:
        return values.astype(np.int32)
    return values


def _lean_ratings(values: np.ndarray) -> np.ndarray:
    """float32 when every value survives the round trip exactly (e.g. whole or half stars), else float64."""
    single = values.astype(np.float32)
    return single if np.array_equal(single, values) else values


def _chunk_ok(ratings: np.ndarray, scale: RatingScale | None) -> bool:
    """Every rating of the chunk is finite and inside the scale."""
    if not np.isfinite(ratings).all():
        return False
    return scale is None or bool(scale.mask(ratings).all())


def _lean_chunk(frame: pd.DataFrame, use: dict[str, str], scale: RatingScale | None) -> dict[str, np.ndarray] | None:
    """role -> column of one parsed chunk in lean dtypes (ids int32 when they fit, exact float32 ratings,
    int64 timestamps and contexts); None when a rating is bad."""
    cols = {role: frame[name].to_numpy() for role, name in use.items()}
    if not _chunk_ok(cols["rating"], scale):
        return None
    cols["rating"] = _lean_ratings(cols["rating"])
    for role in ("user", "item"):
        cols[role] = _lean_ids(cols[role])
    return cols


def _concat(parts: list[dict[str, np.ndarray]], roles) -> dict[str, np.ndarray]:
    """Chunks joined per role; a role whose chunks differ in dtype takes the wider one (exactly)."""
    if not parts:
        return {role: np.zeros(0, dtype=np.float64 if role == "rating" else np.int64) for role in roles}
    return {role: np.concatenate([p[role] for p in parts]) for role in roles}


def _fast_read(source: Source, fmt: TableFormat, layout: _Layout, scale: RatingScale | None = None,
               show_progress: bool = False) -> dict[str, np.ndarray] | None:
    """Parse with the pandas C engine in chunks of ``_CHUNK_ROWS`` rows; None when anything about the file is
    not as expected (a line with another number of fields, a value that does not parse, a bad rating)."""
    sep = _INTERNAL_SEP if len(fmt.sep) > 1 else fmt.sep
    names = [f"f{j}" for j in range(layout.num_fields)]
    use = {role: names[pos] for role, pos in layout.positions.items()}
    dtype = {name: ("float64" if role == "rating" else "int64") for role, name in use.items()}
    bar = _progress_bar(source, show_progress)
    handle = _CountingReader(source.open_binary(), fmt.sep.encode(fmt.encoding), sep.encode(fmt.encoding), bar)
    parts, rows = [], int(bool(fmt.header))
    try:
        with handle, pd.read_csv(handle, sep=sep, header=0 if fmt.header else None, names=names,
                                 usecols=list(use.values()), dtype=dtype, engine="c", encoding=fmt.encoding,
                                 chunksize=_CHUNK_ROWS) as chunks:
            for frame in chunks:
                part = _lean_chunk(frame, use, scale)
                if part is None or not isinstance(frame.index, pd.RangeIndex):
                    return None      # a bad rating, or a line with more fields (pandas made an index of them)
                parts.append(part)
                rows += len(frame)
            num_seps = handle.num_seps
    except (ValueError, OverflowError, TypeError):
        return None
    finally:
        if bar is not None:
            bar.close()
    if num_seps != (layout.num_fields - 1) * rows:
        return None  # some line had a different number of fields
    return _concat(parts, use)


# ---------------------------------------------------------------------------------------- careful path
def _parse_row(fields: list[str], layout: _Layout, sep: str,
               scale: RatingScale | None) -> tuple[dict | None, tuple[str, str] | None]:
    """(values, None) for a good row, (None, (reason, message)) for a bad one."""
    if len(fields) != layout.num_fields:
        line = sep.join(fields)
        return None, ("wrong number of fields",
                      f"expected {layout.num_fields} fields separated by {sep!r}, found {len(fields)}"
                      f"{_sep_hint(line, sep)}: {line[:100]!r}")
    values = {}
    for role, pos in layout.positions.items():
        text = fields[pos]
        try:
            values[role] = float(text) if role == "rating" else _to_int(text)
        except ValueError:
            kind = "a number" if role == "rating" else "an int64 integer"
            return None, ("not a number", f"expected {kind} for {role} (field {pos + 1}), found {text!r}")
    rating = values["rating"]
    if not math.isfinite(rating):
        text = fields[layout.positions["rating"]]
        return None, ("non-finite rating", f"expected a finite rating, found {text!r}")
    problem = None if scale is None else scale.problem(rating)
    if problem is not None:
        return None, ("rating outside scale", problem)
    return values, None


def _careful_read(source: Source, fmt: TableFormat, layout: _Layout,
                  scale: RatingScale | None, drop_invalid: bool) -> Table:
    """Line-by-line parse; raise at the first bad row, or drop bad rows when ``drop_invalid``."""
    out: dict[str, list] = {role: [] for role in layout.positions}
    lines: list[int] = []
    dropped: Counter = Counter()
    reader, skip_header = _reader(source, fmt), fmt.header
    for fields in reader:
        if not fields:
            continue
        if skip_header:
            skip_header = False
            continue
        values, problem = _parse_row(fields, layout, fmt.sep, scale)
        if problem is not None:
            if not drop_invalid:
                raise ValueError(f"{source.label}, line {reader.line_num}: {problem[1]}")
            dropped[problem[0]] += 1
            continue
        for role, value in values.items():
            out[role].append(value)
        lines.append(reader.line_num)
    cols = {r: np.asarray(v, dtype=np.float64 if r == "rating" else np.int64) for r, v in out.items()}
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
                     f"(drop_invalid=True keeps the first)")


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
    cols = _fast_read(source, fmt, layout, scale, show_progress)
    if cols is not None and len(cols["rating"]) and not has_duplicates(cols):  # ratings checked per chunk
        return Table(cols)
    try:
        table = _careful_read(source, fmt, layout, scale, drop_invalid)
    except UnicodeDecodeError:
        raise ValueError(decode_error(source, fmt.encoding)) from None
    return _finish(table, source.label, drop_invalid, fmt.header)


# --------------------------------------------------------------------------------------------- parquet
def _frame_column(series: pd.Series, role: str) -> tuple[np.ndarray, np.ndarray]:
    """(values, bad mask) for one column of a frame; ids as int64, ratings as float64."""
    if role != "rating" and pd.api.types.is_integer_dtype(series.dtype) and not series.isna().any():
        return series.to_numpy(dtype=np.int64), np.zeros(len(series), dtype=bool)
    numbers = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    if role == "rating":
        return numbers, np.isnan(numbers) & series.notna().to_numpy()
    bad = ~np.isfinite(numbers) | (numbers != np.round(numbers)) | (np.abs(numbers) >= 2.0**63)
    return np.where(bad, 0, numbers).astype(np.int64), bad


def _frame_problems(cols: dict[str, np.ndarray], bad: dict[str, np.ndarray],
                    scale: RatingScale | None) -> dict[str, np.ndarray]:
    """reason -> (n,) bool mask of rows with that problem (first matching reason wins)."""
    ratings = cols["rating"]
    problems = {"not a number": np.logical_or.reduce(list(bad.values()))}
    problems["non-finite rating"] = ~np.isfinite(ratings) & ~problems["not a number"]
    outside = np.zeros(len(ratings), dtype=bool)
    if scale is not None:
        outside = np.isfinite(ratings) & ~scale.mask(ratings)
    problems["rating outside scale"] = outside & ~problems["not a number"]
    return problems


def read_parquet_table(source: Source, columns: Mapping[str, str | int] | None,
                       scale: RatingScale | None, drop_invalid: bool) -> Table:
    """Read and validate a Parquet file; problems are reported by 1-based row number.

    ``columns`` None: the columns are found by name (see ``ROLE_ALIASES``).
    """
    source.check()
    scale = RatingScale.parse(scale)
    frame = pd.read_parquet(source.path)
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
    parsed = {role: _frame_column(frame[name], role) for role, name in names.items()}
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
