"""The MovieLens family: file layouts, rating scales, and finding the files under a root path."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

from ._format import RatingScale, TableFormat
from ._source import Source


@dataclass(frozen=True)
class MovieLensSpec:
    """One MovieLens release: its zip, the folder inside it, its ratings file, layout and declared scale."""

    name: str  # canonical variant key, e.g. "100k"
    zip_name: str  # official archive name, e.g. "ml-100k.zip"
    folder: str  # folder inside the zip and after extraction, e.g. "ml-100k"
    ratings_file: str  # ratings file inside the folder
    fmt: TableFormat
    scale: RatingScale  # every rating must lie on it (file and line named otherwise)


_COLS = {"user": 0, "item": 1, "rating": 2, "timestamp": 3}
_TSV = TableFormat(sep="\t", header=False, columns=_COLS, num_fields=4)
_DAT = TableFormat(sep="::", header=False, columns=_COLS, num_fields=4, encoding="latin-1")
_CSV_COLS = {"user": "userId", "item": "movieId", "rating": "rating", "timestamp": "timestamp"}
_CSV = TableFormat(sep=",", header=True, num_fields=4, columns=_CSV_COLS)


def _spec(name: str, folder: str, ratings_file: str, fmt: TableFormat, scale: RatingScale):
    zip_name = ("ml-10m" if name == "10m" else folder) + ".zip"
    return MovieLensSpec(name, zip_name, folder, ratings_file, fmt, scale)


# Rating scales as the releases' READMEs state them: whole stars 1-5 (100K, 1M), half stars 0.5-5 (10M on).
_STARS = RatingScale(1.0, 5.0, 1.0)
_HALF_STARS = RatingScale(0.5, 5.0, 0.5)

SPECS: dict[str, MovieLensSpec] = {s.name: s for s in (
    _spec("100k", "ml-100k", "u.data", _TSV, _STARS),
    _spec("1m", "ml-1m", "ratings.dat", _DAT, _STARS),
    _spec("10m", "ml-10M100K", "ratings.dat", _DAT, _HALF_STARS),
    _spec("20m", "ml-20m", "ratings.csv", _CSV, _HALF_STARS),
    _spec("25m", "ml-25m", "ratings.csv", _CSV, _HALF_STARS),
    _spec("32m", "ml-32m", "ratings.csv", _CSV, _HALF_STARS),
    _spec("latest", "ml-latest", "ratings.csv", _CSV, _HALF_STARS),
    _spec("latest-small", "ml-latest-small", "ratings.csv", _CSV, _HALF_STARS),
)}


def get_spec(variant: str) -> MovieLensSpec:
    """The spec of a variant given as '100k', 'ml-100k', '1M', 'ml-latest-small', ..."""
    key = variant.lower().removeprefix("ml-").removeprefix("ml")
    key = {"10m100k": "10m"}.get(key, key)
    if key not in SPECS:
        raise ValueError(f"unknown MovieLens variant {variant!r}; expected one of {sorted(SPECS)}")
    return SPECS[key]


def find_file(root: Path, spec: MovieLensSpec, filename: str) -> Source | None:
    """Locate ``filename`` of a release under ``root``; None when nothing matching exists.

    ``root`` may be the extracted folder, a folder holding it, the official zip, a folder holding the zip, or one
    of the release's files (its folder is then searched: ``data.root=.../ml-1m/ratings.dat`` works).
    """
    root = Path(root)
    if root.is_file() and root.name == filename:
        return Source(root)
    if root.is_file() and root.suffix.lower() != ".zip" and not zipfile.is_zipfile(root):
        root = root.parent                      # a file of the extracted release: look next to it
    elif root.is_file():
        return Source(root, _member(root, spec, filename))
    for folder in (root, root / spec.folder):
        if (folder / filename).is_file():
            return Source(folder / filename)
    if (root / spec.zip_name).is_file():
        return Source(root / spec.zip_name, _member(root / spec.zip_name, spec, filename))
    return None


def _member(zip_path: Path, spec: MovieLensSpec, filename: str) -> str:
    """The member name of ``filename`` inside the zip (the official prefix, or a lone file at the top)."""
    if not zipfile.is_zipfile(zip_path):
        raise ValueError(f"{zip_path}: expected a zip archive of MovieLens {spec.name} ({spec.zip_name})")
    expected = f"{spec.folder}/{filename}"
    with zipfile.ZipFile(zip_path) as zf:
        names = set(zf.namelist())
    if expected not in names and filename in names:
        return filename
    return expected  # Source.check() reports a missing member with the expected name
