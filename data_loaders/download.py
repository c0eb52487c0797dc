"""Optional download of the official MovieLens zips into a cache folder, with checksum verification.

Nothing here runs unless asked: every reader works on a local path without network. A download is checked
against a digest before it is moved into place (so before any member is read); a release without a known
digest is not fetched unless the caller passes one or opts out with ``allow_unverified=True``.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from ._movielens import get_spec

DEFAULT_BASE_URL = "https://files.grouplens.org/datasets/movielens/"

# MD5 digests of the official zips, as GroupLens publishes them next to each zip (<zip>.md5). They were not
# downloaded here (no network); each was found quoted in public loaders:
#   ml-100k, ml-1m, ml-10m, ml-20m, ml-25m: eli-osherovich/papers_with_code, datasets/movielens/dl_config.py;
#   ml-1m, ml-20m, ml-25m also in numericalalgorithmsgroup/MLFirstSteps_Azure, ncf/verify_dataset.sh (quoting
#   the .md5 files); ml-10m also in several loaders quoting ml-10m.zip.md5; ml-100k also matches the copy
#   checked by a public test; ml-32m: public download scripts and pooch registries quoting ml-32m.zip.md5.
# ml-latest and ml-latest-small are rebuilt by GroupLens from time to time, so no fixed digest exists: they
# are fetched only with a caller's checksum or allow_unverified=True.
KNOWN_CHECKSUMS: dict[str, str | None] = {
    "ml-100k.zip": "md5:0e33842e24a9c977be4e0107933c0723",
    "ml-1m.zip": "md5:c4d9eecfca2ab87c1945afe126590906",
    "ml-10m.zip": "md5:ce571fd55effeba0271552578f2648bd",
    "ml-20m.zip": "md5:cd245b17a1ae2cc31bb14903e1204af3",
    "ml-25m.zip": "md5:6b51fb2759a8657d3bfcbfc42b592ada",
    "ml-32m.zip": "md5:d472be332d4daa821edc399621853b57",
    "ml-latest.zip": None,
    "ml-latest-small.zip": None,
}

_CHUNK = 1 << 20


class DownloadError(FileNotFoundError):
    """A data set is not on disk and fetching it failed (offline, timeout, HTTP error); one-line message."""


class ChecksumError(ValueError):
    """A file's digest differs from the expected one (the message names file, expected and actual digest)."""


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


def verify_checksum(path, checksum: str, label: str | None = None) -> None:
    """Raise :class:`ChecksumError` (a ValueError) naming ``label`` (default: the path) when the digest differs."""
    algo, expected = _parse_checksum(checksum)
    actual = file_digest(path, algo)
    if actual != expected:
        raise ChecksumError(f"{label or path}: {algo} checksum mismatch: expected {expected}, actual {actual}")


def _reason(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        return str(err.reason)
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def download_file(url: str, dest, checksum: str | None = None, progress: bool = True,
                  timeout: float = 60.0) -> Path:
    """Fetch ``url`` to ``dest`` through a temporary ``.part`` file; verify, then move into place.

    A network failure raises :class:`DownloadError`, a digest mismatch :class:`ChecksumError`; either way
    nothing is left at ``dest``.
    """
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
            verify_checksum(part, checksum, label=f"{dest.name} downloaded from {url} (deleted)")
    except (OSError, http.client.HTTPException) as err:
        part.unlink(missing_ok=True)
        raise DownloadError(f"download of {url} to {dest} failed ({_reason(err)})") from err
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    part.replace(dest)
    return dest


def download_movielens(variant: str, dest=None, cache_dir=None, base_url: str = DEFAULT_BASE_URL,
                       checksum: str | None = None, progress: bool = True, timeout: float = 60.0,
                       allow_unverified: bool = False) -> Path:
    """Path of the official zip of ``variant``, downloaded unless already present and valid.

    ``dest`` is the zip's path (default: ``cache_dir`` or :func:`default_cache_dir`, plus the official name).
    ``checksum`` defaults to the known one for that zip; a cached file failing it is fetched again. A zip
    without a known digest is fetched only with ``checksum`` or ``allow_unverified=True`` (ValueError else).
    """
    spec = get_spec(variant)
    dest = Path(dest) if dest is not None else Path(cache_dir or default_cache_dir()) / spec.zip_name
    checksum = checksum or KNOWN_CHECKSUMS.get(spec.zip_name)
    url = base_url.rstrip("/") + "/" + spec.zip_name
    if dest.is_file():
        try:
            if checksum:
                verify_checksum(dest, checksum)
            return dest
        except ChecksumError:
            dest.unlink()
    if not checksum and not allow_unverified:
        raise ValueError(f"{spec.zip_name}: no known digest (GroupLens rebuilds it from time to time), so a "
                         f"download could not be checked; pass checksum='md5:<hex>' (published at {url}.md5) "
                         f"or allow_unverified=True")
    return download_file(url, dest, checksum=checksum, progress=progress, timeout=timeout)
