"""Where rating bytes come from: a plain file on disk (gzip, bz2 or xz compressed ones are decompressed as they are
read, recognised by their first bytes), or one member of a zip archive."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

_CHUNK = 1 << 22
# compression -> (magic bytes at the start of the file, opener of the decompressed stream)
_COMPRESSIONS = {"gzip": (b"\x1f\x8b", gzip.open), "bz2": (b"BZh", bz2.open),
                 "xz": (b"\xfd7zXZ\x00", lzma.open)}
_COMPRESSED_SUFFIXES = (".gz", ".gzip", ".bz2", ".xz")
ZIP_MAGIC = b"PK\x03\x04"
_DECOMPRESSION_ERRORS = (OSError, EOFError, lzma.LZMAError, zlib.error)


def sniff(path: Path) -> bytes:
    """The first bytes of a file (enough to recognise a compression or a zip archive)."""
    with open(path, "rb") as fh:
        return fh.read(8)


@dataclass(frozen=True)
class Source:
    """A readable file: ``path`` itself, or the member ``member`` of the zip archive at ``path``."""

    path: Path
    member: str | None = None

    @property
    def label(self) -> str:
        """Human-readable name used in every error message."""
        return str(self.path) if self.member is None else f"{self.path}[{self.member}]"

    @property
    def suffix(self) -> str:
        """Lower-case suffix of the file (of the member for a zip member; ``r.csv.gz``: ``.csv``)."""
        name = Path(self.member or self.path.name)
        if self.member is None and name.suffix.lower() in _COMPRESSED_SUFFIXES:
            name = name.with_suffix("")
        return name.suffix.lower()

    @property
    def compression(self) -> str | None:
        """"gzip", "bz2" or "xz" when the (plain) file starts with that format's magic bytes, else None."""
        if self.member is not None or not self.path.is_file():
            return None
        head = sniff(self.path)
        return next((name for name, (magic, _) in _COMPRESSIONS.items() if head.startswith(magic)), None)

    def check(self) -> None:
        """Raise FileNotFoundError / ValueError when the file or the zip member is missing."""
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no such file")
        if self.path.is_dir():
            raise ValueError(f"{self.path}: expected a file, found a directory")
        if self.member is not None:
            with zipfile.ZipFile(self.path) as zf:
                names = zf.namelist()
            if self.member not in names:
                shown = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
                raise ValueError(f"{self.path}: expected a zip member {self.member!r}, found only: {shown}")

    def sole_member(self) -> Source:
        """This source, or for a plain path to a zip archive the source of its one data file (directories and
        macOS resource forks ignored); ValueError listing the members when there are several."""
        self.check()
        if self.member is not None or not sniff(self.path).startswith(ZIP_MAGIC):
            return self
        with zipfile.ZipFile(self.path) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/") and not n.startswith("__MACOSX/")]
        if len(names) != 1:
            shown = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
            raise ValueError(f"{self.path}: a zip archive with {len(names)} files ({shown}); expected exactly one "
                             "rating file in it (extract the one to read)")
        return Source(self.path, names[0])

    def open_binary(self) -> BinaryIO:
        """Open for binary reading (caller closes)."""
        if self.member is None:
            compression = self.compression
            if compression is None:
                return open(self.path, "rb")
            return _Decompressed(_COMPRESSIONS[compression][1](self.path, "rb"), self.label, compression)
        zf = zipfile.ZipFile(self.path)
        return _ZipMemberReader(zf, zf.open(self.member))

    def read_bytes(self) -> bytes:
        """The whole content as bytes."""
        with self.open_binary() as fh:
            return fh.read()

    def count_byte(self, value: bytes) -> int:
        """Number of occurrences of a one-byte ``value`` in the content, read in chunks."""
        total = 0
        with self.open_binary() as fh:
            while chunk := fh.read(_CHUNK):
                total += chunk.count(value)
        return total


class _ZipMemberReader(io.RawIOBase):
    """A zip member stream that also closes its archive."""

    def __init__(self, zf: zipfile.ZipFile, stream: BinaryIO):
        super().__init__()
        self._zf, self._stream = zf, stream

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self._stream.read(size)

    def readinto(self, buffer) -> int:
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readline(self, size: int = -1) -> bytes:
        return self._stream.readline(size)

    def close(self) -> None:
        if not self.closed:
            self._stream.close()
            self._zf.close()
        super().close()


class _Decompressed(io.RawIOBase):
    """A decompressing stream whose read errors (a corrupt or truncated file) become one-line ValueErrors naming
    the file."""

    def __init__(self, stream: BinaryIO, label: str, compression: str):
        super().__init__()
        self._stream, self._label, self._compression = stream, label, compression

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        try:
            return self._stream.read(size)
        except _DECOMPRESSION_ERRORS as err:
            raise ValueError(f"{self._label}: not a readable {self._compression} file (corrupt or truncated: "
                             f"{err})") from None

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._stream.close()
        super().close()
