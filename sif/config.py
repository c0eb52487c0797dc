"""Run configuration: dataclass defaults, then a YAML file, then ``--set key=value`` overrides (nanoGPT style).

Unknown keys and values of the wrong type are rejected with a message naming the key (and the file). YAML is read
with ``yaml.safe_load``. The resolved configuration is written into every run folder.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nasp.search import SearchConfig

from .train import TrainConfig

__all__ = ["DataConfig", "ModelConfig", "BenchmarkConfig", "RunConfig", "load_config", "apply_override"]


@dataclass
class DataConfig:
    """Where the ratings come from and how they are split."""

    dataset: str = "ml-100k"        # ml-100k, ml-1m, ml-10m, ml-20m, ml-25m, ml-32m, ml-latest(-small), or "file"
    root: str | None = None         # extracted folder or zip; default: $NASP_DATA_DIR, then the download cache
    download: bool = True           # fetch the official zip into the cache when it is not found locally
    path: str | None = None         # dataset "file": a CSV/TSV/Parquet file
    sep: str | None = None
    columns: dict[str, Any] | None = None
    header: bool | None = None     # None: detected (a first row with non-numeric id/rating fields is a header)
    rating_scale: list[float] | None = None     # [low, high] or [low, high, step]; None: declared or inferred
    encoding: str = "utf-8"         # dataset "file": text encoding, e.g. latin-1
    split: str = "random"           # random | fold | time | leave_k_out
    ratios: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    fold: Any = 1                   # canonical MovieLens fold: 1-5, "a" or "b"
    valid_fraction: float = 0.1     # fold split: share of the base file held out for validation
    leave_k: int = 1
    context_bins: int = 0           # > 0: tensor data, context = time bin fitted on the training split


@dataclass
class ModelConfig:
    """Which recommender and its settings (see :func:`sif.recommender.create_recommender`)."""

    name: str = "sif"
    embedding_dim: int = 32
    use_bias: bool = True
    reg: float = 0.1
    penalty: str = "l2"             # l2 (per-rating squared norms) | norm (the reference's ||U_b|| + ||V_b||)
    #                                 | effective (SIF: L2 as the head sees the embeddings; l2 for baselines)
    head_init: str = "uniform"      # SIF heads: uniform(+-1/sqrt(width)) (paper) | ones (multiply = a dot product)
    head_radius: float | None = None    # L2 ball of the heads; None: 1 (paper) for ratings, sqrt(dim) for bpr/bce
    g_hidden: int = 8
    g_skip: bool = True             # g starts as the identity and learns a residual (paper: random MLP)
    train_all_heads: bool = True
    select: str = "best"
    search_on: str = "valid"
    keep_g: bool = False
    clip_predictions: bool = True
    neighbourhood: str | None = None    # SVD++-style implicit feedback: user | item | both (models that support it)
    neighbourhood_reg: float = 0.5      # its L2 coefficient relative to reg
    refit: bool = False             # retrain on train + valid for the epochs early stopping chose (rating task)


@dataclass
class BenchmarkConfig:
    """``sif benchmark``: models x folds (or seeds) in one table."""

    models: list[str] = field(default_factory=lambda: ["sif", "fixed:plus", "fixed:multiply", "fixed:max",
                                                       "fixed:min", "fixed:concat", "gmf", "mf", "ncf", "neumf",
                                                       "outer", "bias_only", "sif_random"])
    folds: list[Any] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    seeds: list[int] = field(default_factory=lambda: [0])
    tune: dict[str, dict[str, list]] = field(default_factory=dict)   # model -> {setting: [candidates]}


@dataclass
class RunConfig:
    """Everything a run needs; ``seed`` drives all randomness."""

    seed: int = 0
    device: str = "cpu"
    threads: int | None = None      # torch intra-op threads (None: torch's default)
    out_dir: str = "runs/sif"
    show_progress: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    search: SearchConfig = field(default_factory=lambda: SearchConfig(
        epochs=10, w_optimizer="adam", w_lr=0.002, w_lr_schedule="constant", w_momentum=0.0,
        w_weight_decay=0.0, a_lr=1e-3))
    train: TrainConfig = field(default_factory=TrainConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_type(value: Any, annotation: Any, key: str) -> Any:
    """Return ``value`` converted to ``annotation`` where that is lossless, else raise naming ``key``."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            try:
                return _check_type(value, arg, key)
            except (TypeError, ValueError):
                continue
        raise TypeError(f"{key}: expected {annotation}, got {value!r} ({type(value).__name__})")
    if annotation is type(None):
        if value is None:
            return None
        raise TypeError(f"{key}: expected None, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{key}: expected a list, got {value!r} ({type(value).__name__})")
        args = typing.get_args(annotation)
        item = args[0] if args else Any
        return type(value)(_check_type(v, item, key) for v in value) if origin is list else tuple(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeError(f"{key}: expected a mapping, got {value!r}")
        return value
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float, str, bool):
        if type(value) is not annotation:
            raise TypeError(f"{key}: expected {annotation.__name__}, got {value!r} ({type(value).__name__})")
        return value
    return value


def _merge(obj: Any, values: dict[str, Any], prefix: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise KeyError(f"unknown config key {full!r}; known under {prefix or 'the top level'}: {sorted(names)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise TypeError(f"{full}: expected a mapping of {type(current).__name__} settings, got {value!r}")
            _merge(current, value, f"{full}.")
        else:
            setattr(obj, key, _check_type(value, hints[key], full))
    if hasattr(obj, "__post_init__"):
        obj.__post_init__()


def apply_override(cfg: RunConfig, assignment: str) -> None:
    """Apply one ``dotted.key=value`` (the value is parsed as YAML: numbers, booleans, lists, null)."""
    if "=" not in assignment:
        raise ValueError(f"--set expects key=value, got {assignment!r}")
    key, raw = assignment.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else ""
    node: dict[str, Any] = {}
    cursor = node
    parts = key.strip().split(".")
    for p in parts[:-1]:
        cursor = cursor.setdefault(p, {})
    cursor[parts[-1]] = value
    _merge(cfg, node, "")


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    """Defaults, then the YAML file (if any), then the overrides."""
    cfg = RunConfig()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML ({e})") from e
        if not isinstance(values, dict):
            raise ValueError(f"{path}: the top level must be a mapping of settings")
        try:
            _merge(cfg, values, "")
        except (KeyError, TypeError, ValueError) as e:
            raise type(e)(f"{path}: {e.args[0]}") from e
    for o in overrides:
        apply_override(cfg, o)
    return cfg
