"""The thin base class of every recommender (scikit-learn / ``implicit`` style): ``fit`` / ``predict`` /
``recommend`` / ``score`` / ``save`` / ``load``. Subclasses (:mod:`sif.recommender`) build the model.

``__init__`` only stores settings; ``fit(train, valid)`` validates, fits the train-only rating scaler, trains,
sets learned attributes ending in ``_`` and returns ``self``. ``random_state`` seeds everything inside ``fit``.
What differs between ratings and implicit feedback lives in one strategy per task (:mod:`sif.feedback`).
``save`` writes JSON + a state_dict (no pickle).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from torch import nn

from data_loaders import RatingDataset, RatingScaler, random_split
from nasp.checkpoint import load_checkpoint, save_checkpoint
from nasp.config import config_from_dict
from nasp.device import check_device
from nasp.distributed import shard_if_distributed

from .config import DataConfig, ModelConfig, check_numbers
from .ensemble import AveragedModel
from .feedback import ImplicitFeedback, RatingFeedback, feedback_strategy
from .ids import to_index
from .implicit_feedback import ImplicitTask, score_all_items
from .ranking import topk_by_score_then_index
from .task import RatingTask
from .train import TrainConfig, train_model

__all__ = ["BaseRecommender", "RECOMMENDERS", "register", "constructor_params"]

log = logging.getLogger("sif.recommender")
_M, _D = ModelConfig(), DataConfig()    # the one home of the settings' defaults
RECOMMENDERS: dict[str, type[BaseRecommender]] = {}


def register(cls):
    """Class decorator: make ``cls`` loadable by :meth:`BaseRecommender.load` (by its name)."""
    RECOMMENDERS[cls.__name__] = cls
    return cls


def _as_config(cls, value):
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        return config_from_dict(cls, value)
    raise TypeError(f"expected a {cls.__name__} or dict, got {type(value).__name__}")


class BaseRecommender:
    """Shared fit/predict/recommend/save/load. Subclasses implement ``_build_model`` and may override
    ``_fit_model`` (SIF searches first).

    neighbourhood: None, "user", "item" or "both": SVD++-style implicit-feedback vectors built from the training
    interactions (:mod:`sif.neighbourhood`; models without the option raise), with L2 ``neighbourhood_reg * reg``.
    refit: after the fit, train a fresh model of the fitted kind on train + valid for the epochs early stopping
    chose (rating task; ``train_result_`` keeps the first fit and its validation scores, ``refit_result_`` the
    refit). init_std: the std of the Gaussian start of the embedding tables (SIF and baselines). sparse_rows:
    row-wise updates of the embedding tables (only the batch's rows and their optimiser state
    change; Adagrad exact, Adam lazy: :class:`nasp.optim.RowSparseOptimizer`)."""

    def __init__(self, embedding_dim: int = _M.embedding_dim, use_bias: bool = _M.use_bias, reg: float = _M.reg,
                 penalty: str = _M.penalty, penalize_transformed: bool = _M.penalize_transformed, train: Any = None,
                 valid_fraction: float = _D.valid_fraction, clip_predictions: bool = _M.clip_predictions,
                 device: str = "cpu", random_state: int = 0, task: str = _M.task,
                 num_negatives: int = _M.num_negatives, positive_threshold: float | None = _M.positive_threshold,
                 neighbourhood: str | None = _M.neighbourhood, neighbourhood_reg: float = _M.neighbourhood_reg,
                 refit: bool = _M.refit, sparse_rows: bool = _M.sparse_rows, init_std: float = _M.init_std):
        feedback_strategy(task)                     # validates the name
        check_numbers(embedding_dim=embedding_dim, num_negatives=num_negatives, init_std=init_std, reg=reg,
                      neighbourhood_reg=neighbourhood_reg, valid_fraction=valid_fraction)
        self.init_std = init_std
        self.task, self.num_negatives, self.positive_threshold = task, num_negatives, positive_threshold
        self.embedding_dim, self.use_bias, self.reg, self.train = embedding_dim, use_bias, reg, train
        self.penalty, self.penalize_transformed = penalty, penalize_transformed
        self.valid_fraction, self.clip_predictions = valid_fraction, clip_predictions
        self.device, self.random_state = device, random_state
        self.neighbourhood, self.neighbourhood_reg, self.refit = neighbourhood, neighbourhood_reg, refit
        self.sparse_rows = sparse_rows

    # ---- parameters -----------------------------------------------------------------------------------------
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor arguments (JSON-friendly; ``deep`` is accepted for scikit-learn's ``clone`` and has no
        effect: no parameter is itself an estimator)."""
        out = {}
        for n in constructor_params(type(self)):
            v = getattr(self, n)
            out[n] = asdict(v) if hasattr(v, "__dataclass_fields__") else v
        return out

    def set_params(self, **params) -> BaseRecommender:
        """Set constructor arguments by name (scikit-learn style); an unknown name is refused, naming the valid
        ones. The next ``fit`` uses them (a fitted model is not changed). Returns self."""
        valid = constructor_params(type(self))
        unknown = sorted(set(params) - set(valid))
        if unknown:
            raise ValueError(f"{type(self).__name__}.set_params: unknown parameter(s) {unknown}; valid: "
                             f"{', '.join(valid)}")
        type(self)(**{**self.get_params(), **params})     # the constructor's checks, before anything changes
        for name, value in params.items():
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_params().items())})"

    # ---- fitting --------------------------------------------------------------------------------------------
    def fit(self, train: RatingDataset, valid: RatingDataset | None = None, show_progress: bool = True,
            callback: Callable | None = None, run_dir: str | Path | None = None) -> BaseRecommender:
        """Fit on ``train``; ``valid`` drives early stopping and every choice made on data (a ``valid_fraction``
        of ``train`` is held out when it is None). Both are RatingDatasets split from one dataset, or pandas
        DataFrames (:meth:`data_loaders.RatingDataset.from_frame`: columns found by name, e.g. userId, movieId,
        rating; the id maps are built from both frames). Returns self."""
        check_device_available(self.device)
        train, valid = _as_datasets(train, valid)
        _check_dataset(train, "train")
        for name in [n for n in vars(self) if n.endswith("_") and not n.startswith("_")]:
            delattr(self, name)                     # a refit starts clean: nothing learned before survives
        if valid is None:
            train, valid, _ = random_split(train, (1 - self.valid_fraction, self.valid_fraction, 0.0),
                                           seed=self.random_state)
            if len(valid) == 0:
                raise ValueError(f"valid_fraction={self.valid_fraction} of {len(train) + len(valid)} training ratings "
                                 "holds out none for validation; pass valid= or more ratings")
        _check_dataset(valid, "valid")
        if (valid.num_users, valid.num_items) != (train.num_users, train.num_items):
            raise ValueError("train and valid must share their id maps (split one RatingDataset, or use subset())")
        self.train_config_ = _as_config(TrainConfig, self.train)
        self.train_config_.seed = self.random_state
        torch.manual_seed(self.random_state)
        self.scaler_ = RatingScaler().fit(train)
        self.rating_scale_ = train.rating_scale
        self.num_users_, self.num_items_, self.num_contexts_ = train.num_users, train.num_items, train.num_contexts
        self.user_ids_, self.item_ids_ = train.user_ids, train.item_ids
        self.feedback.prepare(self, train, valid)
        for part, matrix in zip(("train", "valid"), getattr(self, "positives_", ()), strict=False):
            if matrix.nnz == 0:
                raise ValueError(f"task={self.task!r}: the {part} split has no positives (ratings >= "
                                 f"positive_threshold={self.positive_threshold}; its ratings lie in "
                                 f"{train.rating_scale}), so there is nothing to rank; lower model.positive_threshold")
        self.task_ = self._task()
        loaders = self.feedback.loaders(self, train, valid)
        self._interactions = (train.users, train.items)           # the neighbourhoods' lists (train only)
        self.model_, self.train_result_ = self._fit_model(*loaders, show_progress, callback, run_dir)
        if self.refit:
            train = train.concat(valid)
            self.model_, self.refit_result_ = self._refit(train, loaders[2], show_progress, callback, run_dir)
        del self._interactions
        self.model_.eval()
        self.rated_ = self.feedback.rated(self, train)
        self.rated_valid_ = self.feedback.rated(self, valid, "valid")
        return self

    def _refit(self, full: RatingDataset, eval_it, show_progress, callback, run_dir):
        """Train a fresh model of the fitted kind on train + valid for the number of epochs early stopping chose
        (the validation set is then training data: its metrics in the log are in-sample); each member of an
        ensemble (:meth:`_refit_plan`) for its own epochs, in ``run_dir/refit-<op>``."""
        if not self.feedback.supports_refit:
            raise ValueError(f"refit=True is implemented for the rating task only (task={self.task!r})")
        self._interactions = (full.users, full.items)
        models, results = [], []
        for name, build, epochs in self._refit_plan():
            if epochs < 1:
                raise RuntimeError(f"refit: the first fit of {name or 'the model'} recorded no best epoch")
            model = self._prepared(build())
            cfg = replace(self.train_config_, max_epochs=epochs)
            full_it = shard_if_distributed(self.feedback.iterator(self, full, True, cfg.batch_size,
                                                                  self.random_state + 3))   # each member's own
            refit_dir = Path(run_dir) / ("refit-" + name if name else "refit") if run_dir is not None else None
            log.info("refit %son train + valid (%d ratings) for %d epochs", name + " " if name else "", len(full),
                     epochs)
            results.append(train_model(model, self.task_, full_it, eval_it, cfg, self.device, run_dir=refit_dir,
                                       show_progress=show_progress, callback=callback, select_best=False))
            models.append(model)
        if len(models) == 1:
            return models[0], results[0]
        return AveragedModel(models), replace(results[0], seconds=sum(r.seconds for r in results))

    def _refit_plan(self) -> list[tuple[str, Callable[[], nn.Module], int]]:
        """What the refit trains: (name, build a fresh model, epochs) per model; the name is empty for the fitted
        model itself, else it names an ensemble member (and its run folder)."""
        return [("", self._build_model, self.train_result_.best_epoch + 1)]

    def _prepared(self, model: nn.Module) -> nn.Module:
        """Give a freshly built model its neighbour lists (models built with a ``neighbourhood``)."""
        if len(model.neighbourhoods):
            model.set_neighbours(*self._interactions)
        return model

    @property
    def feedback(self) -> RatingFeedback | ImplicitFeedback:
        """The task's strategy (:mod:`sif.feedback`): ratings, or implicit feedback for "bpr"/"bce"/"softmax"."""
        return feedback_strategy(self.task)

    def _task(self, **kw) -> RatingTask | ImplicitTask:
        return self.feedback.task(self, **kw)

    def _fields(self) -> tuple[str, ...]:
        return self.feedback.fields(self)

    def _fit_model(self, train_it, valid_it, eval_it, show_progress, callback, run_dir):
        model = self._prepared(self._build_model())
        result = train_model(model, self.task_, train_it, eval_it, self.train_config_, self.device,
                             run_dir=run_dir, show_progress=show_progress, callback=callback)
        return model, result

    def _build_model(self) -> nn.Module:
        raise NotImplementedError(f"{type(self).__name__} must implement _build_model")   # abstract

    def _head_radius(self) -> float:
        """The SIF heads' L2-ball radius: ``head_radius``, else sqrt(embedding_dim), the smallest ball that holds
        the all-ones head (a plain dot product). The paper's unit ball kept the scores small: under BPR on ML-100K
        (dim 32, fixed multiply, 20 epochs) validation NDCG@10 stayed at the popularity level for 8 epochs and reached
        0.146, against 0.171 with radius sqrt(dim); for ratings see benchmarks/README.md ("SIF search quality")."""
        value = getattr(self, "head_radius", None)
        return float(value) if value is not None else math.sqrt(self.embedding_dim)

    def _head_init(self) -> str:
        """The SIF heads' start: ``head_init``, else the task's (:attr:`sif.feedback.RatingFeedback.head_init`:
        all-ones for ratings; uniform for the implicit tasks)."""
        value = getattr(self, "head_init", None)
        return value if value is not None else self.feedback.head_init

    def _model_kwargs(self) -> dict[str, Any]:
        kw = dict(num_users=self.num_users_, num_items=self.num_items_, num_contexts=self.num_contexts_,
                  embedding_dim=self.embedding_dim, use_bias=self.use_bias, init_std=self.init_std,
                  seed=self.random_state,
                  neighbourhood_reg=self.neighbourhood_reg, sparse_rows=self.sparse_rows)
        return kw if self.neighbourhood is None else {**kw, "neighbourhood": self.neighbourhood}

    # ---- using a fitted model -------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(train, valid) first")

    @torch.no_grad()
    def predict(self, users, items, contexts=None, ids: str = "raw", batch_size: int = 65536) -> np.ndarray:
        """Predicted ratings on the raw scale (clipped to the rating scale unless clip_predictions=False).

        ``ids="raw"`` (default): ``users`` and ``items`` are the training data's ids (``user_ids_``,
        ``item_ids_``); ``ids="index"``: 0-based indices. Unknown, out-of-range or non-integer ids are refused.
        Contexts are always indices."""
        self._check_fitted()
        u = to_index(users, self.user_ids_, "users", ids, self.num_users_)
        i = to_index(items, self.item_ids_, "items", ids, self.num_items_)
        if u.shape != i.shape:
            raise ValueError(f"users and items must have the same shape, got {tuple(u.shape)} and {tuple(i.shape)}")
        c = self._context_index(contexts, "contexts")
        if c is not None and c.shape != u.shape:
            raise ValueError(f"contexts must have the shape of users, got {tuple(c.shape)} and {tuple(u.shape)}")
        out = []
        for s in range(0, len(u), batch_size):
            sl = slice(s, s + batch_size)
            args = [t[sl].to(self.device) for t in (u, i)] + ([c[sl].to(self.device)] if c is not None else [None])
            out.append(self.task_.to_raw(self.model_(*args)).cpu())
        return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)

    def _context_index(self, contexts, name: str) -> torch.Tensor | None:
        """Context indices checked against the fitted model: required (0..num_contexts_-1) when it was fitted with
        contexts, refused when it was not (they would be ignored)."""
        if not self.num_contexts_:
            if contexts is not None:
                raise ValueError(f"{name}: this model was fitted without contexts, so {name}= would be ignored; "
                                 "leave it out")
            return None
        if contexts is None:
            raise ValueError(f"this model was fitted with {self.num_contexts_} contexts: pass {name}= (0-based "
                             "context indices)")
        return to_index(contexts, None, name, "index", self.num_contexts_)

    def score(self, dataset: RatingDataset) -> dict[str, float]:
        """rmse, mae (raw scale) and rmse_z on a dataset split from the training data (the same id maps); for
        implicit tasks the ranking metrics (K=10, AUC) of its positives with the training positives filtered. A pandas
        DataFrame (columns as for ``fit``) is read with the model's id maps; an id the model does not know is refused.
        """
        self._check_fitted()
        if isinstance(dataset, pd.DataFrame):
            dataset = self._frame_on_maps(dataset)
        _check_dataset(dataset, "dataset")
        if not (np.array_equal(dataset.user_ids, self.user_ids_) and np.array_equal(dataset.item_ids, self.item_ids_)):
            raise ValueError(f"dataset {dataset.name!r} has other user/item id maps than the training data; split "
                             "one RatingDataset (or use subset()), or predict(users, items) with raw ids")
        return self.feedback.score(self, dataset)

    def _frame_on_maps(self, frame: pd.DataFrame) -> RatingDataset:
        """A DataFrame of ratings as a dataset on this model's user/item id maps (unknown ids refused)."""
        ds = RatingDataset.from_frame(frame, name="dataset")
        users, items = ds.user_ids[ds.users.numpy()], ds.item_ids[ds.items.numpy()]
        for what, ids, known in (("user", users, self.user_ids_), ("item", items, self.item_ids_)):
            to_index(ids, known, f"score: DataFrame {what}s")             # refuses unknown ids, naming them
        return RatingDataset.from_arrays(users, items, ds.ratings.numpy(), timestamps=ds.timestamps,
                                         rating_scale=self.rating_scale_, user_ids=self.user_ids_,
                                         item_ids=self.item_ids_, name="dataset")

    @torch.no_grad()
    def recommend(self, user_or_users, N: int = 10, filter_already_rated: bool | str = True,
                  context: int | None = None, ids: str = "raw", batch_size: int = 256
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Top-N items per user: (items, scores), shapes (N,) for one user or (n, N).

        ``ids="raw"`` (default): users are given and items returned as the training data's ids; ``"index"``:
        0-based indices. ``filter_already_rated``: True or "train" excludes what the user has in the training
        data (its positives for implicit tasks), "train+valid" also the validation ratings given to ``fit``,
        False nothing. The scores are the ones ranked by: ratings on the raw scale, not clipped to the rating
        scale (``predict`` clips), or logits for implicit tasks. Equal scores are ordered by the lower item index.
        When fewer than N items are left after filtering, one user gets only those; in the (n, N) array of several
        users the filtered items fill the row's end with score -inf.
        """
        self._check_fitted()
        if isinstance(N, (bool, np.bool_)) or not isinstance(N, (int, np.integer)) or N < 1:
            raise ValueError(f"N must be an integer >= 1 (items per user), got {N!r}")
        single = np.ndim(user_or_users) == 0
        users = to_index(np.atleast_1d(user_or_users), self.user_ids_, "users", ids, self.num_users_)
        ctx = self._context_index(None if context is None else [context], "context")
        mask = self._filter_matrix(filter_already_rated)
        n_items = self.num_items_
        N = min(N, n_items)
        all_items = torch.arange(n_items, device=self.device)
        out_ids, scores = [], []
        for s in range(0, len(users), batch_size):
            ub = users[s: s + batch_size].to(self.device)                         # (b,)
            if self.num_contexts_:
                uu = ub.repeat_interleave(n_items)                                 # (b * m,)
                ii = all_items.repeat(len(ub))
                cc = torch.full_like(uu, int(ctx[0]))
                pred = self.model_(uu, ii, cc).view(len(ub), n_items).float()      # (b, m)
            else:
                pred = score_all_items(self.model_, ub).float()                    # (b, m)
            pred = self.task_.to_raw(pred, clip=False)                             # what is ranked is returned
            if mask is not None:
                rated = torch.from_numpy(mask[ub.cpu().numpy()].toarray() > 0).to(self.device)
                pred = pred.masked_fill(rated, float("-inf"))
            top = topk_by_score_then_index(pred, N)                                # (b, N)
            out_ids.append(top.cpu())
            scores.append(pred.gather(1, top).cpu())
        ids_np, scores_np = torch.cat(out_ids).numpy(), torch.cat(scores).numpy()
        if ids == "raw":
            ids_np = np.asarray(self.item_ids_)[ids_np]
        if single:                                  # only the items left after filtering (may be fewer than N)
            keep = scores_np[0] > -np.inf
            return ids_np[0][keep], scores_np[0][keep]
        return ids_np, scores_np

    def _filter_matrix(self, which: bool | str):
        """The (users x items) CSR of items ``recommend`` leaves out (None: none)."""
        if which is False:
            return None
        if which is True or which == "train":
            return self.rated_
        if which == "train+valid":
            return self.rated_ + self.rated_valid_
        raise ValueError(f"filter_already_rated must be True, False, 'train' or 'train+valid', got {which!r}")

    # ---- persistence ----------------------------------------------------------------------------------------
    def _fitted_state(self) -> dict[str, Any]:
        return {"scaler": self.scaler_.state_dict(), "rating_scale": list(self.rating_scale_),
                "num_users": self.num_users_, "num_items": self.num_items_, "num_contexts": self.num_contexts_}

    def _restore_fitted(self, state: dict[str, Any]) -> None:
        self.scaler_ = RatingScaler.from_state_dict(state["scaler"])
        self.rating_scale_ = tuple(state["rating_scale"])
        self.num_users_, self.num_items_ = state["num_users"], state["num_items"]
        self.num_contexts_ = state["num_contexts"]
        self.train_config_ = _as_config(TrainConfig, self.train)
        self.task_ = self._task()

    def save(self, path: str | Path) -> Path:
        """Write the fitted recommender to folder ``path``: recommender.json, model.pt (state_dict), rated.npz,
        ids.npz."""
        self._check_fitted()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = {"class": type(self).__name__, "params": self.get_params(), "fitted": self._fitted_state()}
        (path / "recommender.json").write_text(json.dumps(meta, indent=2, default=_json_scalar) + "\n")
        save_checkpoint(self.model_.state_dict(), path / "model.pt")
        sp.save_npz(path / "rated.npz", self.rated_)
        sp.save_npz(path / "rated_valid.npz", self.rated_valid_)
        np.savez(path / "ids.npz", user_ids=np.asarray(self.user_ids_), item_ids=np.asarray(self.item_ids_))
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> BaseRecommender:
        """Read a recommender written by :meth:`save` (no pickle: JSON, npz and a weights-only state_dict)."""
        path = Path(path)
        meta_file = path / "recommender.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"{meta_file} does not exist (not a folder written by save())")
        try:
            meta = json.loads(meta_file.read_text())
            klass = RECOMMENDERS.get(meta["class"])
            missing = [k for k in ("params", "fitted") if k not in meta]
            if missing:
                raise KeyError(", ".join(missing))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{meta_file}: not a recommender.json written by save() ({type(e).__name__}: "
                             f"{e})") from None
        if klass is None:
            raise ValueError(f"{meta_file}: unknown recommender class {meta['class']!r}")
        params = dict(meta["params"])
        if device is not None:
            params["device"] = device
        rec = klass(**params)
        rec._restore_fitted(meta["fitted"])
        rec.model_ = rec._build_model().to(rec.device)
        rec.model_.load_state_dict(load_checkpoint(path / "model.pt", rec.device))
        rec.model_.eval()
        rec.rated_ = sp.load_npz(path / "rated.npz").tocsr()
        rec.rated_valid_ = sp.load_npz(path / "rated_valid.npz").tocsr()
        ids = np.load(path / "ids.npz", allow_pickle=False)
        rec.user_ids_, rec.item_ids_ = ids["user_ids"], ids["item_ids"]
        return rec


def _json_scalar(x: Any) -> Any:
    """A numpy scalar (np.int64, np.float32, np.bool_: accepted by the constructors) as its Python value for
    recommender.json; anything else is refused as json refuses it."""
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"Object of type {type(x).__name__} is not JSON serializable")


def check_device_available(device: str) -> None:
    """``device`` must be a valid name (cpu, cuda, cuda:N, mps) that this machine has; else one ValueError line
    naming it (torch would fail later with a traceback, after a run folder was made)."""
    check_device(device)
    kind, _, index = str(device).partition(":")
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count <= (int(index) if index else 0):
            raise ValueError(f"device={device!r}: this machine has {count} CUDA device(s) visible to torch "
                             f"(torch {torch.__version__}, CUDA build: {torch.version.cuda is not None}); use "
                             "device=cpu or another device")
    elif kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device!r}: MPS is not available on this machine; use device=cpu")


def _as_datasets(train, valid):
    """(train, valid) as RatingDatasets sharing one id map: DataFrames are converted together."""
    if not isinstance(train, pd.DataFrame):
        if isinstance(valid, pd.DataFrame):
            raise TypeError("valid is a DataFrame but train is not: pass both as DataFrames or both as RatingDatasets")
        return train, valid
    if valid is not None and not isinstance(valid, pd.DataFrame):
        raise TypeError(f"train is a DataFrame, so valid must be one too (or None), got {type(valid).__name__}")
    frames = [train] if valid is None else [train, valid]
    both = RatingDataset.from_frame(pd.concat(frames, ignore_index=True), name="train+valid" if valid is not None
                                    else "train")
    cut = np.arange(len(both))
    return both.subset(cut[:len(train)]), (None if valid is None else both.subset(cut[len(train):]))


def _check_dataset(ds, name: str) -> None:
    if not isinstance(ds, RatingDataset):
        raise TypeError(f"{name} must be a data_loaders.RatingDataset or a pandas DataFrame, got "
                        f"{type(ds).__name__}")
    if len(ds) == 0:
        raise ValueError(f"{name} is empty")



def constructor_params(cls: type) -> list[str]:
    """Every named constructor argument of ``cls`` and its bases (the estimator's parameters)."""
    import inspect

    names = [name for c in cls.__mro__ if c is not object
             for name, p in inspect.signature(c.__init__).parameters.items()
             if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    return list(dict.fromkeys(names))


