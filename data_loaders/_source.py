"""Where rating bytes come from: a plain file on disk or one member of a zip archive."""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

_CHUNK = 1 << 22


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
        """Lower-case suffix of the file (of the member for a zip member)."""
        return Path(self.member or self.path.name).suffix.lower()

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

    def open_binary(self) -> BinaryIO:
        """Open for binary reading (caller closes)."""
        if self.member is None:
            return open(self.path, "rb")
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
