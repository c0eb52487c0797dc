"""Rating-table formats: roles and their header aliases, the rating scale, the separator / header / column
layout of a delimited file and its detection from the first line, and the one-line decoding error."""

from __future__ import annotations

import codecs
import csv
import dataclasses
import io
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from ._source import Source

ROLES = ("user", "item", "rating", "timestamp", "context")
REQUIRED_ROLES = ("user", "item", "rating")
_COMMON_SEPS = ("\t", ",", ";", "::", "|", " ")
_CHUNK = 1 << 22
FLOAT32_MAX = float(np.finfo(np.float32).max)   # ratings are stored as float32: larger ones would become inf
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
    ``string_ids``: user and item ids are kept as the text of their fields (non-empty), not parsed as integers.
    """

    sep: str
    header: bool | None
    columns: Mapping[str, str | int] | None
    num_fields: int | None = None
    encoding: str = "utf-8"
    string_ids: bool = False    # user and item ids are read as strings (any text), not as integers


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


def to_float(text: str) -> float:
    """Parse a number the way the pandas C engine accepts one; Python's digit separators ('4_5') are refused."""
    if "_" in text:
        raise ValueError(text)
    return float(text)


def _to_int(text: str) -> int:
    """Parse an integer the way the pandas C engine accepts one ('7', ' 7', '7.0'; not '1_000')."""
    if "_" in text:
        raise ValueError(text)
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
    with source.open_binary() as fh:
        head = fh.read(4)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return (f"{source.label}: the file starts with a UTF-16 byte-order mark, so it is UTF-16 text, not "
                f"{encoding}; pass encoding='utf-16' (config key data.encoding)")
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
    """``encoding`` when Python knows it; ValueError naming the argument otherwise (its first word is the argument's
    name, so a config's check reads "data.encoding 'x' is not ...")."""
    try:
        codecs.lookup(encoding)
    except (LookupError, TypeError):
        raise ValueError(f"encoding {encoding!r} is not a known text encoding (e.g. 'utf-8', 'latin-1')") from None
    return encoding


def _first_row(source: Source, fmt: TableFormat) -> list[str]:
    """Fields of the first non-blank line; ValueError when there is none, or when it holds NUL characters (UTF-16
    text read as a one-byte encoding)."""
    try:
        for fields in _reader(source, fmt):
            if fields:
                if any("\x00" in f for f in fields):
                    raise ValueError(f"{source.label}, line 1: NUL characters in the text, as in UTF-16 read as "
                                     f"{fmt.encoding}; pass encoding='utf-16' (config key data.encoding)")
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


