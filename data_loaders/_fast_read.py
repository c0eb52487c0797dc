"""The fast path of the delimited reader: the pandas C engine over a streamed, separator-counting view of the
file (which proves every line had the expected number of fields), lean column types, and a progress bar by
bytes for large files. It returns None whenever the careful path must decide."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pandas as pd

from . import _format
from ._format import _INTERNAL_SEP, FLOAT32_MAX, RatingScale, TableFormat, _Layout
from ._source import Source

_CHUNK_ROWS = 1 << 20   # rows per pandas chunk of the fast path
PROGRESS_MIN_BYTES = 50 * 2**20   # files at least this large show a progress bar while they are read
_INT32 = np.iinfo(np.int32)


def _count_byte(data: bytes, value: bytes) -> int:
    """Occurrences of the one-byte ``value`` in ``data`` (numpy compares 3x faster than bytes.count)."""
    return int(np.count_nonzero(np.frombuffer(data, dtype=np.uint8) == value[0])) if data else 0


def _zero_padded(data: bytes, starts: tuple[int, ...]) -> bool:
    """Whether a field of ``data`` (bytes after a field start such as the separator or a newline, ``starts``)
    begins with a zero followed by a digit ("007"), or any field has a '+': integer ids written so may alias
    others ("7"), which only the careful path sees. The byte pairs are compared as uint16: two numpy passes per
    field start, the dearest of the reader's checks (~35 ms of a 0.55 s read of 80 MB, by cProfile)."""
    if b"+" in data:
        return True
    a = np.frombuffer(data, dtype=np.uint8)
    hits = []
    for off in (0, 1):
        pairs = a[off: off + 2 * ((len(a) - off) // 2)].view("<u2")     # (m,) a[k] + 256 * a[k + 1], k = off + 2j
        hits += [np.flatnonzero(pairs == s + (ord("0") << 8)) * 2 + off + 2 for s in starts]
    after = np.concatenate(hits)                                          # positions right after a leading zero
    after = after[after < len(a)]
    return bool(((a[after] - ord("0")) < 10).any())      # uint8 wrap-around: only '0'..'9' are < 10


def _extra_starts(data: bytes) -> tuple[int, ...]:
    """Field starts besides the separator and a newline, only where ``data`` has them (each costs a pass of
    :func:`_zero_padded`): a blank (" 007") and a quote ('"007"')."""
    return tuple(c for c in b' "' if bytes((c,)) in data)


class _CountingReader(io.RawIOBase):
    """The bytes of a source, streamed: a multi-byte separator replaced by one byte, the (one-byte) separator
    counted, and a progress bar (by bytes of the source) advanced as pandas reads. ``int_ids``: look for integer
    id spellings the careful path must judge ("007", "+7"); string ids are kept as written, so they need not."""

    def __init__(self, raw, sep: bytes, internal: bytes, bar=None, int_ids: bool = True, header: bool = False):
        super().__init__()
        self._raw, self._sep, self._internal, self._bar = raw, sep, internal, bar
        self._pending = b""          # a tail that may be the start of a multi-byte separator
        self._out, self._pos = memoryview(b""), 0     # converted bytes; those before _pos are handed out
        self.num_seps = 0
        self.zero_padded = False     # a field like "007" or "+7" was seen (see _zero_padded)
        self._int_ids = int_ids
        self.boolish = False         # text like True/false was seen (pandas reads an all-boolean column as 1.0/0.0)
        self._in_header = header     # the header line is not looked at for True/False ("userId" has a 'u')
        self.blanks = False          # a space or tab that is not the separator was seen (string ids are stripped)
        self._blanks = [b for b in (b" ", b"\t") if b != internal]
        self._starts = (internal[0], ord("\n"))
        self._before = b"\n"        # the last 2 bytes read before this chunk (a field starts the file)

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
        chunk = self._raw.read(_format._CHUNK)
        if self._bar is not None:
            self._bar.update(len(chunk))
        data, self._pending = self._pending + chunk, b""
        if len(self._sep) > 1:
            data = data.replace(self._sep, self._internal)
            if chunk:
                data, self._pending = self._split_tail(data)
        self.num_seps += _count_byte(data, self._internal)
        if self._int_ids and not self.zero_padded and data:
            joined = self._before + data                              # a field may start at the chunk boundary
            self.zero_padded = _zero_padded(joined, self._starts + _extra_starts(joined))
            self._before = joined[-2:]                               # (a chunk may be shorter than 2 bytes)
        if not self.blanks and data:
            self.blanks = any(b in data for b in self._blanks)
        if not self.boolish and data:
            body = self._past_header(data)
            self.boolish = any(letter in body for letter in (b"u", b"U", b"l", b"L"))     # of True, False
        self._out, self._pos = memoryview(data), 0
        return bool(data) or bool(chunk)

    def _past_header(self, data: bytes) -> bytes:
        """``data`` less the first line of the stream, the header, while that has not ended yet (blank lines before
        the header leave it in the scan: a needless fall-back to the careful path, never a missed True)."""
        if not self._in_header:
            return data
        end = data.find(b"\n")
        if end < 0:
            return b""
        self._in_header = False
        return data[end + 1:]

    def _take(self, size: int) -> memoryview:
        while self._pos >= len(self._out) and self._fill():
            pass
        end = len(self._out) if size is None or size < 0 else min(len(self._out), self._pos + size)
        view, self._pos = self._out[self._pos:end], end
        return view

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return b"".join(iter(lambda: bytes(self._take(_format._CHUNK)), b""))
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

    total = None if source.compression else total      # the bar counts decompressed bytes
    return tqdm(total=total, unit="B", unit_scale=True, desc=f"reading {source.path.name}", leave=False,
                dynamic_ncols=True)


def _lean_ids(values: np.ndarray) -> np.ndarray:
    """int32 when every value fits, else the int64 values."""
    if len(values) and _INT32.min <= values.min() and values.max() <= _INT32.max:
        return values.astype(np.int32)
    return values


def _lean_ratings(values: np.ndarray) -> np.ndarray:
    """float32 when every value survives the round trip exactly (e.g. whole or half stars), else float64."""
    with np.errstate(over="ignore"):                  # beyond float32: kept as float64 (and refused later)
        single = values.astype(np.float32)
    return single if np.array_equal(single, values) else values


def _chunk_ok(ratings: np.ndarray, scale: RatingScale | None) -> bool:
    """Every rating of the chunk is finite (in float32's range, where ratings are stored) and inside the scale."""
    if not (np.abs(ratings) <= FLOAT32_MAX).all():          # False for NaN too
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
        if cols[role].dtype.kind == "O":            # string ids: an empty field (NaN) goes to the careful path
            if pd.isna(cols[role]).any():
                return None
            cols[role] = cols[role].astype(str)
        else:
            cols[role] = _lean_ids(cols[role])
    return cols


def _concat(parts: list[dict[str, np.ndarray]], roles) -> dict[str, np.ndarray]:
    """Chunks joined per role; a role whose chunks differ in dtype takes the wider one (exactly)."""
    if not parts:
        return {role: np.zeros(0, dtype=np.float64 if role == "rating" else np.int64) for role in roles}
    return {role: np.concatenate([p[role] for p in parts]) for role in roles}


def fast_read(source: Source, fmt: TableFormat, layout: _Layout, scale: RatingScale | None = None,
               show_progress: bool = False) -> dict[str, np.ndarray] | None:
    """Parse with the pandas C engine in chunks of ``_CHUNK_ROWS`` rows; None when anything about the file is
    not as expected (a line with another number of fields, a value that does not parse, a bad rating)."""
    sep = _INTERNAL_SEP if len(fmt.sep) > 1 else fmt.sep
    names = [f"f{j}" for j in range(layout.num_fields)]
    use = {role: names[pos] for role, pos in layout.positions.items()}
    dtype = {name: ("float64" if role == "rating" else "str" if fmt.string_ids and role in ("user", "item")
                    else "int64") for role, name in use.items()}
    bar = _progress_bar(source, show_progress)
    handle = _CountingReader(source.open_binary(), fmt.sep.encode(fmt.encoding), sep.encode(fmt.encoding), bar,
                             int_ids=not fmt.string_ids, header=bool(fmt.header))
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
    if handle.boolish and any(np.isin(part["rating"], (0.0, 1.0)).all() for part in parts):
        return None  # True/False ratings: the careful path refuses them, as it refuses any text
    if handle.zero_padded:
        return None  # "007" or "+7": the careful path checks that no two spellings of one integer id occur
    cols = _concat(parts, use)
    if fmt.string_ids and handle.blanks:
        for role in ("user", "item"):
            cols[role] = np.strings.strip(cols[role])   # " a" and "a" are one id, as " 7" and "7" are
            if (cols[role] == "").any():
                return None      # a blank id: the careful path names its line
    return cols

