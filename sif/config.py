"""The sif run configuration: dataclasses read by :mod:`nasp.config`'s one loader (defaults, then a YAML file,
then ``--set key=value ...``). Unknown keys and values of the wrong type are rejected in one line naming the key
and the nearest valid ones. The resolved configuration is written into every run folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from data_loaders.contexts import CONTEXTS
from nasp.commands import check_threads
from nasp.config import load, merge, parse_assignments, to_dict
from nasp.device import check_device
from nasp.search import SearchConfig

from .interactions import EMBEDDING_DIM
from .train import TrainConfig

__all__ = ["DataConfig", "ModelConfig", "SIFSearchConfig", "BenchmarkConfig", "RunConfig", "load_config",
           "apply_override"]


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
    id_type: str = "int"            # dataset "file": "int" user/item ids, or "str" (any text: ISBNs, hashes, ...)
    drop_invalid: bool = False      # bad rows (unparsable, off the scale, repeated (user, item)) are dropped and
    #                                 counted (a warning and results.json "dropped"), not refused
    split: str = "random"           # random | fold | time | leave_k_out
    ratios: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    fold: Any = 1                   # canonical MovieLens fold: 1-5, "a" or "b"
    valid_fraction: float = 0.1     # fold split: share of the base file held out for validation
    leave_k: int = 1                # split leave_k_out: ratings per user held out for test, and as many for valid
    context: str = "none"           # none | time_bins | weekday | hour | genre (data_loaders.contexts; UTC times)
    context_bins: int = 8           # context time_bins: the number of quantile bins, fitted on the training split
    item_file: str | None = None    # context genre: the item file (u.item, movies.dat, movies.csv); None: the
    #                                 MovieLens release's own, found next to its ratings

    def __post_init__(self):
        if self.context not in CONTEXTS:
            raise ValueError(f"data.context must be one of {', '.join(CONTEXTS)}, got {self.context!r}")
        if self.context_bins < 1:
            raise ValueError(f"data.context_bins must be >= 1 (the number of time bins), got {self.context_bins}")
        if self.leave_k < 1:
            raise ValueError(f"data.leave_k must be >= 1 (ratings per user held out for test and for valid), "
                             f"got {self.leave_k}")
        if self.id_type not in ("int", "str"):
            raise ValueError(f"data.id_type must be 'int' or 'str', got {self.id_type!r}")
        if len(self.ratios) != 3 or not all(r > 0 for r in self.ratios) or abs(sum(self.ratios) - 1.0) > 1e-6:
            raise ValueError(f"data.ratios must be three fractions [train, valid, test], each > 0, summing to 1; "
                             f"got {list(self.ratios)}")
        if not 0.0 < self.valid_fraction < 1.0:
            raise ValueError(f"data.valid_fraction must lie in (0, 1), got {self.valid_fraction}")


@dataclass
class ModelConfig:
    """Which recommender and its settings: the one home of every recommender setting's default (the
    recommenders in :mod:`sif.recommender` read their constructor defaults from here).

    ``name``: "sif" (and its variants, see :func:`sif.recommender.create_recommender`), "fixed:<op>" or a baseline.
    Every other field is the constructor argument of the same name; ``device`` and ``seed`` (the recommender's
    ``random_state``) are the top-level keys, ``train`` and ``search`` their sections, and the recommender's
    ``valid_fraction`` is ``data.valid_fraction``."""

    name: str = "sif"
    task: str = "rating"            # rating | bpr | bce | softmax (implicit feedback: top-N metrics)
    embedding_dim: int = EMBEDDING_DIM
    use_bias: bool = True
    init_std: float = 0.1           # std of the Gaussian start of every embedding table (SIF and the baselines)
    reg: float = 0.1
    penalty: str = "effective"      # effective (SIF: L2 as the head sees the embeddings; l2 for baselines)
    #                                 | l2 (per-rating squared norms) | norm (the reference's ||U_b|| + ||V_b||)
    penalize_transformed: bool = False  # baselines: put the L2 penalty on the transformed embeddings
    ops: list[str] | None = None    # SIF search: candidate ops (None: all five; multiply/max/min for implicit tasks)
    head_init: str | None = None    # SIF heads: ones (multiply = a dot product) | uniform(+-1/sqrt(width)) (paper);
    #                                 None: the task's (ones for ratings, uniform for implicit tasks; sif.feedback)
    head_radius: float | None = None    # L2 ball of the heads; None: sqrt(embedding_dim) (holds the all-ones head)
    g_hidden: int = 8
    g_skip: bool = True             # g starts as the identity and learns a residual (paper: random MLP)
    train_all_heads: bool = True
    select: str = "best"            # best (epoch best on validation) | last (the last prox)
    search_on: str = "valid"        # valid | train (the no-validation-split ablation)
    keep_g: bool = False
    clip_predictions: bool = True
    neighbourhood: str | None = None    # SVD++-style implicit feedback: user | item | both (models that support it)
    neighbourhood_reg: float = 0.5      # its L2 coefficient relative to reg
    refit: bool = False             # retrain on train + valid for the epochs early stopping chose (rating task)
    num_negatives: int = 4          # implicit tasks: sampled negatives per positive
    positive_threshold: float | None = None  # implicit tasks: ratings >= this are positives (None: every rating)
    race_k: int = 6                 # SIF: ops raced as stand-alone fits after the search (top race_k by alpha,
    #                                 sif.selection); 0: no race, the search's own choice (``select``)
    alpha_tol: float = 1e-3         # SIF race: alphas this close to the race_k-th are a tie and join the race
    race_first_budget: int = 2      # SIF race: epochs of the first race round (doubling after)
    race_horizon: float = 3.0       # SIF race: how far (x epochs trained) a candidate's recent rate is continued
    race_tie_z: float = 1.0         # SIF race, ranking tasks: fully trained candidates within this many standard
    #                                 errors (paired, per user) of the winner's validation metric are a tie, won by
    #                                 the best validation AUC (sif.selection.tie_break; 0: off)
    race_ensemble: bool = True      # SIF race: average the race's fully trained fits that improve the validation
    #                                 metric (sif.ensemble; greedy forward selection from the winner)
    tensor_race_k: int = 4          # SIF race on (user, item, context) data: race_k for the 53 two-stage candidates
    #                                 (one op per function class races; sif.selection.function_class)
    tensor_race_cap: int | None = 8  # SIF race on tensor data: no race round trains beyond this many epochs; the
    #                                 leader then wins and trains on to its own early stop (null: no cap)
    sparse_rows: bool = False       # row-wise table updates: a step costs O(batch), not O(table) (Adam: lazy Adam;
    #                                 nasp.optim.RowSparseOptimizer, benchmarks/README.md "SIF at scale")

    def __post_init__(self):
        check_numbers(embedding_dim=self.embedding_dim, num_negatives=self.num_negatives, init_std=self.init_std,
                      reg=self.reg, neighbourhood_reg=self.neighbourhood_reg)
        _positive(self, "g_hidden", "race_first_budget", "tensor_race_k")
        _non_negative(self, "race_k", "alpha_tol", "race_horizon", "race_tie_z")
        _one_of(self, "task", ("rating", "bpr", "bce", "softmax"))
        _one_of(self, "penalty", ("l2", "norm", "effective"))
        _one_of(self, "head_init", (None, "uniform", "ones"))
        _one_of(self, "select", ("best", "last"))
        _one_of(self, "search_on", ("valid", "train"))
        _one_of(self, "neighbourhood", (None, "user", "item", "both"))
        if self.tensor_race_cap is not None and self.tensor_race_cap < 1:
            raise ValueError(f"tensor_race_cap must be >= 1 (or null), got {self.tensor_race_cap}")
        if self.head_radius is not None and not self.head_radius > 0:
            raise ValueError(f"head_radius must be > 0 (or null), got {self.head_radius}")


@dataclass
class SIFSearchConfig(SearchConfig):
    """The search loop's settings with SIF's defaults (NASP, 10 epochs, Adam lr 0.002 on the weights, constant,
    Adam lr 1e-3 on alpha and g; the reference used Adagrad 0.05 and alpha lr 3e-4 over 100 epochs). Its
    ``seed`` is the run's (the recommender's ``random_state``)."""

    epochs: int = 10
    w_optimizer: str = "adam"
    w_lr: float = 0.002
    w_lr_schedule: str = "constant"
    w_momentum: float = 0.0
    w_weight_decay: float = 0.0
    a_lr: float = 1e-3


def check_numbers(**values) -> None:
    """The one home of the numeric settings' ranges shared by :class:`ModelConfig` and the recommenders'
    constructors: one ValueError line naming the first value outside its range (embedding_dim, num_negatives: an
    integer >= 1; init_std > 0; reg, neighbourhood_reg >= 0; valid_fraction in (0, 1))."""
    for name, v in values.items():
        is_int = isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
        is_num = is_int or isinstance(v, (float, np.floating))
        ok, want = _RANGES[name](v, is_int, is_num)
        if not ok:
            raise ValueError(f"{name} must be {want}, got {v if is_num else repr(v)}")


_RANGES = {     # name -> (value, is an integer, is a number) -> (in range, what the range is)
    "embedding_dim": lambda v, i, n: (i and v >= 1, "an integer >= 1"),
    "num_negatives": lambda v, i, n: (i and v >= 1, "an integer >= 1"),
    "init_std": lambda v, i, n: (n and v > 0, "> 0"),
    "reg": lambda v, i, n: (n and v >= 0, ">= 0"),
    "neighbourhood_reg": lambda v, i, n: (n and v >= 0, ">= 0"),
    "valid_fraction": lambda v, i, n: (n and 0 < v < 1, "in (0, 1)"),
}


def _positive(cfg, *names: str) -> None:
    for n in names:
        v = getattr(cfg, n)
        if not v > 0:
            raise ValueError(f"{n} must be > 0, got {v}")


def _non_negative(cfg, *names: str) -> None:
    for n in names:
        v = getattr(cfg, n)
        if not v >= 0:
            raise ValueError(f"{n} must be >= 0, got {v}")


def _one_of(cfg, name: str, allowed: tuple) -> None:
    if getattr(cfg, name) not in allowed:
        shown = ", ".join("null" if a is None else str(a) for a in allowed)
        raise ValueError(f"{name} must be one of {shown}, got {getattr(cfg, name)!r}")


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
    threads: int | None = 0         # torch intra-op threads (0: torch's default), as in the nasp commands
    out_dir: str = "runs/sif"
    show_progress: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    search: SIFSearchConfig = field(default_factory=SIFSearchConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)

    # nested keys set from a top-level one (nasp.config refuses them as input): one seed drives everything
    __derived__: ClassVar[dict[str, str]] = {"search.seed": "seed", "train.seed": "seed"}

    def __post_init__(self):
        check_device(self.device)
        if self.threads is None:        # the run folders' config.yaml before 2026-12-05 held null for the default
            self.threads = 0
        check_threads(self.threads)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)



def apply_override(cfg: RunConfig, assignment: str) -> None:
    """Apply one ``dotted.key=value`` (the value is parsed as YAML: numbers, booleans, lists, null)."""
    merge(cfg, parse_assignments([assignment]))


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    """Defaults, then the YAML file (if any), then the ``key=value`` overrides (:func:`nasp.config.load`)."""
    return load(RunConfig, path, overrides)
