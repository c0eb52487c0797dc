"""Turn a :class:`sif.config.DataConfig` into (train, valid, test) rating datasets."""

from __future__ import annotations

import os
from pathlib import Path

from data_loaders import (
    RatingDataset,
    leave_k_out_split,
    load_movielens,
    movielens_fold,
    random_split,
    read_ratings_file,
    time_split,
)
from data_loaders._movielens import find_file, get_spec
from data_loaders._source import Source
from data_loaders.contexts import ITEM_FILES, read_item_genres, with_context
from data_loaders.ratings import _default_root

from .config import DataConfig

__all__ = ["load_splits", "MOVIELENS"]

MOVIELENS = {"ml-100k": "100k", "ml-1m": "1m", "ml-10m": "10m", "ml-20m": "20m", "ml-25m": "25m", "ml-32m": "32m",
             "ml-latest": "latest", "ml-latest-small": "latest-small"}


def _read(cfg: DataConfig) -> RatingDataset:
    scale = tuple(cfg.rating_scale) if cfg.rating_scale else None
    if cfg.dataset == "file":
        if not cfg.path:
            raise ValueError("data.dataset=file needs data.path (a CSV, TSV or Parquet file)")
        return read_ratings_file(cfg.path, sep=cfg.sep, columns=cfg.columns, header=cfg.header, rating_scale=scale,
                                 encoding=cfg.encoding, id_type=cfg.id_type, drop_invalid=cfg.drop_invalid)
    if cfg.dataset not in MOVIELENS:
        raise ValueError(f"data.dataset={cfg.dataset!r}: expected 'file' or one of {sorted(MOVIELENS)}")
    return load_movielens(MOVIELENS[cfg.dataset], root=cfg.root, download=cfg.download, rating_scale=scale,
                          drop_invalid=cfg.drop_invalid)


def _fold_root(cfg: DataConfig) -> Path:
    if cfg.root:
        return Path(cfg.root).expanduser()
    env = os.environ.get("NASP_DATA_DIR")
    if env and (Path(env) / "ml-100k").is_dir():
        return Path(env) / "ml-100k"
    raise ValueError("data.split=fold needs data.root (the ml-100k folder) or NASP_DATA_DIR holding ml-100k/")


def load_splits(cfg: DataConfig, seed: int) -> tuple[RatingDataset, RatingDataset, RatingDataset]:
    """(train, valid, test) as the config asks, with the context ``cfg.context`` (:mod:`data_loaders.contexts`;
    time bins are fitted on train only)."""
    if cfg.split == "fold":
        if cfg.dataset != "ml-100k":
            raise ValueError("data.split=fold (canonical u1..u5, ua, ub folds) exists for ml-100k only")
        base, test = movielens_fold(_fold_root(cfg), fold=cfg.fold)
        v = cfg.valid_fraction
        train, valid, _ = random_split(base, (1.0 - v, v, 0.0), seed=seed)
    else:
        ds = _read(cfg)
        if cfg.split == "time" and ds.timestamps is None:
            raise ValueError(f"data.split=time: {ds.name} has no timestamps (give the file a timestamp column, e.g. "
                             "data.columns.timestamp, or choose data.split=random)")
        if cfg.split == "random":
            train, valid, test = random_split(ds, tuple(cfg.ratios), seed=seed)
        elif cfg.split == "time":
            train, valid, test = time_split(ds, tuple(cfg.ratios))
        elif cfg.split == "leave_k_out":
            train, valid, test = leave_k_out_split(ds, k=cfg.leave_k, seed=seed, valid_k=cfg.leave_k)
        else:
            raise ValueError(f"data.split={cfg.split!r}: expected random, fold, time or leave_k_out")
        _check_not_empty((train, valid, test), cfg, len(ds))
    genres = read_item_genres(_item_source(cfg)) if cfg.context == "genre" else None
    return with_context((train, valid, test), cfg.context, cfg.context_bins, genres)


def _check_not_empty(splits, cfg: DataConfig, total: int) -> None:
    """Refuse a split that leaves train, valid or test without ratings, naming the setting that made it so."""
    for part, ds in zip(("train", "valid", "test"), splits, strict=True):
        if len(ds):
            continue
        if cfg.split == "leave_k_out":
            why = (f"no user has more than {2 * cfg.leave_k} ratings (data.leave_k={cfg.leave_k} holds out that many "
                   "per user for test and for valid, and keeps one for train)")
        else:
            why = f"data.ratios={list(cfg.ratios)} of {total} ratings leaves it none"
        raise ValueError(f"data.split={cfg.split}: the {part} split of {ds.name} is empty: {why}")


def _item_source(cfg: DataConfig) -> Source:
    """The item file of context genre: ``data.item_file``, else the MovieLens release's own (u.item, movies.dat,
    movies.csv) found where its ratings are."""
    if cfg.item_file:
        if not Path(cfg.item_file).expanduser().is_file():
            raise FileNotFoundError(f"data.item_file={cfg.item_file}: no such file (context genre reads it)")
        return Source(Path(cfg.item_file).expanduser())
    if cfg.dataset not in MOVIELENS:
        raise ValueError("data.context=genre needs data.item_file (u.item, movies.dat or movies.csv) for "
                         f"data.dataset={cfg.dataset!r}")
    spec = get_spec(MOVIELENS[cfg.dataset])
    root = _fold_root(cfg) if cfg.split == "fold" else (Path(cfg.root).expanduser() if cfg.root else _default_root())
    name = ITEM_FILES[spec.name]
    source = find_file(root, spec, name)
    if source is None:
        raise FileNotFoundError(f"data.context=genre: no {name} under {root} (the {spec.folder} item file); "
                                "set data.item_file or data.root")
    return source
