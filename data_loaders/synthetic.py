"""Synthetic rating data in the MovieLens file formats, for tests and benchmarks (no real data needed)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from ._movielens import get_spec


def synthetic_ratings(num_ratings: int, num_users: int, num_items: int, seed: int = 0,
                      half_stars: bool = False) -> pd.DataFrame:
    """Random ratings with distinct (user, item) pairs; 1-based ids; columns user, item, rating, timestamp."""
    if num_ratings > num_users * num_items:
        raise ValueError("more ratings than (user, item) pairs")
    rng = np.random.default_rng(seed)
    keys = np.empty(0, dtype=np.int64)
    while len(keys) < num_ratings:
        draw = rng.integers(0, num_users * num_items, size=int((num_ratings - len(keys)) * 1.1) + 16)
        keys = pd.unique(np.concatenate([keys, draw]))
    keys = keys[:num_ratings]
    stars = rng.integers(1, 11 if half_stars else 6, size=num_ratings)
    return pd.DataFrame({
        "user": keys // num_items + 1,
        "item": keys % num_items + 1,
        "rating": stars / 2.0 if half_stars else stars.astype(np.float64),
        "timestamp": rng.integers(874_724_710, 1_700_000_000, size=num_ratings),
    })


def _text(frame: pd.DataFrame, sep: str, header: str | None, int_ratings: bool) -> str:
    rating = frame["rating"].astype(np.int64) if int_ratings else frame["rating"]
    cols = [frame["user"], frame["item"], rating, frame["timestamp"]]
    body = cols[0].astype(str).str.cat([c.astype(str) for c in cols[1:]], sep=sep)
    return (header + "\n" if header else "") + "\n".join(body) + "\n"


def _fold_files(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The ML-100K split files: u1..u5 (contiguous fifths as test) and ua/ub (10 test ratings per user)."""
    files, n = {}, len(frame)
    order = lambda f: f.sort_values(["user", "item"], kind="stable")  # noqa: E731
    for k in range(1, 6):
        lo, hi = (k - 1) * n // 5, k * n // 5
        files[f"u{k}.test"] = order(frame.iloc[lo:hi])
        files[f"u{k}.base"] = order(pd.concat([frame.iloc[:lo], frame.iloc[hi:]]))
    for name, keep in (("ua", "first"), ("ub", "last")):
        rank = frame.groupby("user").cumcount(ascending=keep == "first")
        test = (rank < 10) & (frame.groupby("user")["user"].transform("size") > 10)
        files[f"{name}.test"], files[f"{name}.base"] = order(frame[test]), order(frame[~test])
    return files


def movielens_files(variant: str, frame: pd.DataFrame, folds: bool = True) -> dict[str, bytes]:
    """File name -> content of a MovieLens release holding ``frame`` (ML-100K also gets its fold files)."""
    spec = get_spec(variant)
    fmt = spec.fmt
    int_ratings = spec.scale[0] == 1.0
    header = ",".join(fmt.columns[r] for r in ("user", "item", "rating", "timestamp")) if fmt.header else None
    files = {spec.ratings_file: _text(frame, fmt.sep, header, int_ratings).encode(fmt.encoding)}
    if spec.name == "100k" and folds:
        for name, part in _fold_files(frame).items():
            files[name] = _text(part, "\t", None, True).encode()
    return files


def write_movielens(root, variant: str, frame: pd.DataFrame, as_zip: bool = False,
                    folds: bool = True) -> Path:
    """Write a synthetic release under ``root`` like the official one: its folder, or its zip."""
    spec = get_spec(variant)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    files = movielens_files(variant, frame, folds)
    if as_zip:
        path = root / spec.zip_name
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, data in files.items():
                zf.writestr(f"{spec.folder}/{name}", data)
        return path
    folder = root / spec.folder
    folder.mkdir(exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder
