"""Optional download of the official MovieLens zips into a cache folder, with checksum verification.

Nothing here runs unless asked: every reader works on a local path without network.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from ._movielens import SPECS, get_spec

DEFAULT_BASE_URL = "https://files.grouplens.org/datasets/movielens/"

# Known checksums ("sha256:<hex>" or "md5:<hex>") per official zip. Left empty where they could not be
# verified here; a checksum passed by the caller is always checked.
KNOWN_CHECKSUMS: dict[str, str | None] = {spec.zip_name: None for spec in SPECS.values()}

_CHUNK = 1 << 20


def default_cache_dir() -> Path:
    """$NASP_CACHE_DIR/movielens, else ~/.cache/nasp-sif/movielens."""
    base = os.environ.get("NASP_CACHE_DIR")
    return Path(base) / "movielens" if base else Path.home() / ".cache" / "nasp-sif" / "movielens"


def _parse_checksum(checksum: str) -> tuple[str, str]:
    """('sha256' | 'md5', lower-case hex) from 'algo:hex' or a bare hex digest (its length picks)."""
    algo, _, digest = checksum.strip().rpartition(":")
    digest = digest.lower()
    algo = algo.lower() or {32: "md5", 64: "sha256"}.get(len(digest), "")
    if algo not in ("md5", "sha256"):
        raise ValueError(f"checksum {checksum!r}: expected 'sha256:<64 hex>' or 'md5:<32 hex>'")
    return algo, digest


def file_digest(path, algo: str = "sha256") -> str:
    """Hex digest of a file, read in chunks."""
    h = hashlib.new(algo)
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def verify_checksum(path, checksum: str) -> None:
    """Raise ValueError when the file's digest differs from ``checksum``."""
    algo, expected = _parse_checksum(checksum)
    actual = file_digest(path, algo)
    if actual != expected:
        raise ValueError(f"{path}: {algo} checksum mismatch: expected {expected}, got {actual}")


def download_file(url: str, dest, checksum: str | None = None, progress: bool = True,
                  timeout: float = 60.0) -> Path:
    """Fetch ``url`` to ``dest`` through a temporary ``.part`` file; verify, then move into place."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
        if checksum:
            verify_checksum(part, checksum)
    except urllib.error.URLError as err:
        part.unlink(missing_ok=True)
        raise OSError(f"download of {url} to {dest} failed: {err}") from err
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    part.replace(dest)
    return dest


def download_movielens(variant: str, dest=None, cache_dir=None, base_url: str = DEFAULT_BASE_URL,
                       checksum: str | None = None, progress: bool = True, timeout: float = 60.0) -> Path:
    """Path of the official zip of ``variant``, downloaded unless already present and valid.

    ``dest`` is the zip's path (default: ``cache_dir`` or :func:`default_cache_dir`, plus the official name).
    ``checksum`` defaults to the known one for that zip (if any); a cached file failing it is fetched again.
    """
    spec = get_spec(variant)
    dest = Path(dest) if dest is not None else Path(cache_dir or default_cache_dir()) / spec.zip_name
    checksum = checksum or KNOWN_CHECKSUMS.get(spec.zip_name)
    if dest.is_file():
        try:
            if checksum:
                verify_checksum(dest, checksum)
            return dest
        except ValueError:
            dest.unlink()
    url = base_url.rstrip("/") + "/" + spec.zip_name
    return download_file(url, dest, checksum=checksum, progress=progress, timeout=timeout)
