"""Recommenders in the style of scikit-learn and ``implicit``: ``fit`` / ``predict`` / ``recommend`` / ``save`` /
``load`` on one base class, shared by SIF (search + stand-alone training) and every baseline.

``__init__`` only stores settings; ``fit(train, valid)`` validates, fits the train-only rating scaler, trains,
sets learned attributes ending in ``_`` and returns ``self``. ``random_state`` seeds everything inside ``fit``.
Indices are the dataset's contiguous user/item indices (``RatingDataset.users``); ``user_ids``/``item_ids``
of the training dataset map them back to original ids. ``save`` writes JSON + a state_dict (no pickle).

``task="bpr"`` or ``"bce"`` trains on implicit feedback instead of ratings (see :mod:`sif.implicit_feedback`): the
positives are the ratings >= ``positive_threshold`` (every rating when None), ``num_negatives`` sampled negatives
per positive, early stopping (and SIF's architecture choice) on validation NDCG@10 with the user's training
positives filtered; ``predict`` then returns scores (logits), not ratings.
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
import scipy.sparse as sp
import torch
from torch import nn

from data_loaders import BatchIterator, RatingDataset, RatingScaler, random_split, to_csr
from nasp.checkpoint import load_checkpoint, save_checkpoint
from nasp.config import config_from_dict
from nasp.distributed import ShardedLoader, make_searcher, shard_if_distributed
from nasp.genotype import Genotype
from nasp.search import SearchConfig

from .baselines import BASELINES, create_baseline
from .config import DataConfig, ModelConfig, SIFSearchConfig
from .implicit_feedback import (
    RANKING_OPS,
    ImplicitTask,
    NegativeSampler,
    RankingData,
    positive_iterator,
    score_all_items,
    split_matrices,
)
from .ranking import topk_by_score_then_index
from .space import SIFSpace
from .task import RatingTask
from .train import TrainConfig, train_model

__all__ = ["BaseRecommender", "SIFRecommender", "FixedInteractionRecommender", "BaselineRecommender",
           "RECOMMENDERS", "SIF_VARIANTS", "create_recommender", "recommender_class", "constructor_params",
           "load_recommender"]

log = logging.getLogger("sif.recommender")
_M, _D = ModelConfig(), DataConfig()    # the one home of the settings' defaults
RECOMMENDERS: dict[str, type[BaseRecommender]] = {}


def _register(cls):
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
    refit)."""

    def __init__(self, embedding_dim: int = _M.embedding_dim, use_bias: bool = _M.use_bias, reg: float = _M.reg,
                 penalty: str = _M.penalty, penalize_transformed: bool = _M.penalize_transformed, train: Any = None,
                 valid_fraction: float = _D.valid_fraction, clip_predictions: bool = _M.clip_predictions,
                 device: str = "cpu", random_state: int = 0, task: str = _M.task,
                 num_negatives: int = _M.num_negatives, positive_threshold: float | None = _M.positive_threshold,
                 neighbourhood: str | None = _M.neighbourhood, neighbourhood_reg: float = _M.neighbourhood_reg,
                 refit: bool = _M.refit):
        if task not in ("rating", "bpr", "bce"):
            raise ValueError(f"task must be 'rating', 'bpr' or 'bce', got {task!r}")
        self.task, self.num_negatives, self.positive_threshold = task, num_negatives, positive_threshold
        self.embedding_dim, self.use_bias, self.reg, self.train = embedding_dim, use_bias, reg, train
        self.penalty, self.penalize_transformed = penalty, penalize_transformed
        self.valid_fraction, self.clip_predictions = valid_fraction, clip_predictions
        self.device, self.random_state = device, random_state
        self.neighbourhood, self.neighbourhood_reg, self.refit = neighbourhood, neighbourhood_reg, refit

    # ---- parameters -----------------------------------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        """The constructor arguments (JSON-friendly)."""
        out = {}
        for n in constructor_params(type(self)):
            v = getattr(self, n)
            out[n] = asdict(v) if hasattr(v, "__dataclass_fields__") else v
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_params().items())})"

    # ---- fitting --------------------------------------------------------------------------------------------
    def fit(self, train: RatingDataset, valid: RatingDataset | None = None, show_progress: bool = True,
            callback: Callable | None = None, run_dir: str | Path | None = None) -> BaseRecommender:
        """Fit on ``train``; ``valid`` drives early stopping and every choice made on data (a ``valid_fraction``
        of ``train`` is held out when it is None). Returns self."""
        _check_dataset(train, "train")
        if valid is None:
            train, valid, _ = random_split(train, (1 - self.valid_fraction, self.valid_fraction, 0.0),
                                           seed=self.random_state)
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
        if self.implicit:
            self.positives_ = split_matrices(train, valid, self.positive_threshold)    # (train, valid) CSR
            self.samplers_ = {"train": NegativeSampler(self.positives_[0], device=self.device),
                              "valid": NegativeSampler(self.positives_[0] + self.positives_[1], device=self.device)}
        self.task_ = self._task()
        loaders = self._loaders(train, valid)
        self._interactions = (train.users, train.items)           # the neighbourhoods' lists (train only)
        self.model_, self.train_result_ = self._fit_model(*loaders, show_progress, callback, run_dir)
        if self.refit:
            train = train.concat(valid)
            self.model_, self.refit_result_ = self._refit(train, loaders[2], show_progress, callback, run_dir)
        del self._interactions
        self.model_.eval()
        self.rated_ = self.positives_[0] if self.implicit else to_csr(train, binary=True)
        return self

    def _refit(self, full: RatingDataset, eval_it, show_progress, callback, run_dir):
        """Train a fresh model of the fitted kind on train + valid for the number of epochs early stopping chose
        (the validation set is then training data: its metrics in the log are in-sample)."""
        if self.implicit:
            raise ValueError("refit=True is implemented for the rating task only")
        epochs = self.train_result_.best_epoch + 1
        if epochs < 1:
            raise RuntimeError("refit: the first fit recorded no best epoch")
        self._interactions = (full.users, full.items)
        model = self._prepared(self._build_model())
        cfg = replace(self.train_config_, max_epochs=epochs)
        full_it = shard_if_distributed(self._iterator(full, True, cfg.batch_size, self.random_state + 3))
        refit_dir = Path(run_dir) / "refit" if run_dir is not None else None
        log.info("refit on train + valid (%d ratings) for %d epochs", len(full), epochs)
        result = train_model(model, self.task_, full_it, eval_it, cfg, self.device, run_dir=refit_dir,
                             show_progress=show_progress, callback=callback, select_best=False)
        return model, result

    def _prepared(self, model: nn.Module) -> nn.Module:
        """Give a freshly built model its neighbour lists (models built with a ``neighbourhood``)."""
        if len(getattr(model, "neighbourhoods", ())):
            model.set_neighbours(*self._interactions)
        return model

    @property
    def implicit(self) -> bool:
        """True for the implicit-feedback tasks ("bpr", "bce")."""
        return self.task != "rating"

    def _task(self, **kw) -> RatingTask | ImplicitTask:
        if self.implicit:
            return ImplicitTask(self.task, self.num_negatives, getattr(self, "samplers_", None), self.reg, **kw)
        scale = self.rating_scale_ if self.clip_predictions else None
        return RatingTask(self.scaler_.mean_, self.scaler_.std_, scale, self.reg, penalty=self.penalty,
                          on_transformed=self.penalize_transformed, **kw)

    def _fields(self) -> tuple[str, ...]:
        if self.implicit:
            return ("users", "items")
        return ("users", "items", "ratings", "contexts") if self.num_contexts_ else ("users", "items", "ratings")

    def _iterator(self, ds: RatingDataset, shuffle: bool, batch_size: int, seed: int) -> BatchIterator:
        data = {"users": ds.users, "items": ds.items, "ratings": self.scaler_.transform(ds.ratings).float()}
        if self.num_contexts_:
            if ds.contexts is None:
                raise ValueError(f"{ds.name}: the model was fitted with contexts but this dataset has none")
            data["contexts"] = ds.contexts
        return BatchIterator(data, batch_size=batch_size, shuffle=shuffle, seed=seed, device=self.device,
                             fields=self._fields())

    def _loaders(self, train: RatingDataset, valid: RatingDataset):
        bs, seed = self.train_config_.batch_size, self.random_state
        if self.implicit:
            tr, va = self.positives_
            return (positive_iterator(tr, bs, True, seed, self.device), positive_iterator(va, bs, True, seed + 1,
                                                                                         self.device),
                    RankingData(tr, va))
        # data parallel (torchrun): each rank takes its slice of every global batch; evaluation sees everything
        return (shard_if_distributed(self._iterator(train, True, bs, seed)),
                shard_if_distributed(self._iterator(valid, True, bs, seed + 1)),
                self._iterator(valid, False, 8192, seed))

    def _fit_model(self, train_it, valid_it, eval_it, show_progress, callback, run_dir):
        model = self._prepared(self._build_model())
        result = train_model(model, self.task_, train_it, eval_it, self.train_config_, self.device,
                             run_dir=run_dir, show_progress=show_progress, callback=callback)
        return model, result

    def _build_model(self) -> nn.Module:
        raise NotImplementedError(f"{type(self).__name__} must implement _build_model")   # abstract

    def _model_kwargs(self) -> dict[str, Any]:
        kw = dict(num_users=self.num_users_, num_items=self.num_items_, num_contexts=self.num_contexts_,
                  embedding_dim=self.embedding_dim, use_bias=self.use_bias, seed=self.random_state,
                  neighbourhood_reg=self.neighbourhood_reg)
        return kw if self.neighbourhood is None else {**kw, "neighbourhood": self.neighbourhood}

    # ---- using a fitted model -------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(train, valid) first")

    @torch.no_grad()
    def predict(self, users, items, contexts=None, batch_size: int = 65536) -> np.ndarray:
        """Predicted ratings on the raw scale (clipped to the rating scale unless clip_predictions=False)."""
        self._check_fitted()
        u, i = _index_tensor(users, "users", self.num_users_), _index_tensor(items, "items", self.num_items_)
        if u.shape != i.shape:
            raise ValueError(f"users and items must have the same shape, got {tuple(u.shape)} and {tuple(i.shape)}")
        c = None
        if self.num_contexts_:
            if contexts is None:
                raise ValueError("this model was fitted with contexts: pass contexts=")
            c = _index_tensor(contexts, "contexts", self.num_contexts_)
        out = []
        for s in range(0, len(u), batch_size):
            sl = slice(s, s + batch_size)
            args = [t[sl].to(self.device) for t in (u, i)] + ([c[sl].to(self.device)] if c is not None else [None])
            out.append(self.task_.to_raw(self.model_(*args)).cpu())
        return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)

    def score(self, dataset: RatingDataset) -> dict[str, float]:
        """rmse, mae (raw scale) and rmse_z on a dataset with the same id maps; for implicit tasks the ranking
        metrics (K=10, AUC) of its positives with the training positives filtered."""
        self._check_fitted()
        _check_dataset(dataset, "dataset")
        if self.implicit:
            target = to_csr(dataset, threshold=self.positive_threshold, binary=True)
            return self.task_.evaluate(self.model_, RankingData(self.rated_, target, auc=True))
        return self.task_.evaluate(self.model_, self._iterator(dataset, False, 8192, 0))

    @torch.no_grad()
    def recommend(self, user_or_users, N: int = 10, filter_already_rated: bool = True, context: int | None = None,
                  batch_size: int = 256, original_ids: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Top-N items per user: (item indices, predicted ratings), shapes (N,) for one user or (n, N).

        Items the user rated in the training data (its positives for implicit tasks) are excluded when
        ``filter_already_rated``. Scores are ratings for the rating task, logits for implicit tasks. Equal
        scores are ordered by the lower item index. ``original_ids``: return the items' original ids
        (``item_ids_``) instead of indices.
        """
        self._check_fitted()
        single = np.ndim(user_or_users) == 0
        users = _index_tensor(np.atleast_1d(user_or_users), "users", self.num_users_)
        n_items = self.num_items_
        N = min(N, n_items)
        all_items = torch.arange(n_items, device=self.device)
        ids, scores = [], []
        for s in range(0, len(users), batch_size):
            ub = users[s: s + batch_size].to(self.device)                         # (b,)
            if self.num_contexts_:
                uu = ub.repeat_interleave(n_items)                                 # (b * m,)
                ii = all_items.repeat(len(ub))
                cc = torch.full_like(uu, 0 if context is None else context)
                pred = self.model_(uu, ii, cc).view(len(ub), n_items).float()      # (b, m)
            else:
                pred = score_all_items(self.model_, ub).float()                    # (b, m)
            if filter_already_rated:
                rated = torch.from_numpy(self.rated_[ub.cpu().numpy()].toarray() > 0).to(self.device)
                pred = pred.masked_fill(rated, float("-inf"))
            top = topk_by_score_then_index(pred, N)                                # (b, N)
            ids.append(top.cpu())
            scores.append(self.task_.to_raw(pred.gather(1, top)).cpu())
        ids_np, scores_np = torch.cat(ids).numpy(), torch.cat(scores).numpy()
        if original_ids:
            ids_np = np.asarray(self.item_ids_)[ids_np]
        return (ids_np[0], scores_np[0]) if single else (ids_np, scores_np)

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
        (path / "recommender.json").write_text(json.dumps(meta, indent=2) + "\n")
        save_checkpoint(self.model_.state_dict(), path / "model.pt")
        sp.save_npz(path / "rated.npz", self.rated_)
        np.savez(path / "ids.npz", user_ids=np.asarray(self.user_ids_), item_ids=np.asarray(self.item_ids_))
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> BaseRecommender:
        """Read a recommender written by :meth:`save` (no pickle: JSON, npz and a weights-only state_dict)."""
        path = Path(path)
        meta_file = path / "recommender.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"{meta_file} does not exist (not a folder written by save())")
        meta = json.loads(meta_file.read_text())
        klass = RECOMMENDERS.get(meta["class"])
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
        ids = np.load(path / "ids.npz", allow_pickle=False)
        rec.user_ids_, rec.item_ids_ = ids["user_ids"], ids["item_ids"]
        return rec


def load_recommender(path: str | Path, device: str | None = None) -> BaseRecommender:
    """Load any saved recommender (the class is read from its recommender.json)."""
    return BaseRecommender.load(path, device)


def _check_dataset(ds, name: str) -> None:
    if not isinstance(ds, RatingDataset):
        raise TypeError(f"{name} must be a data_loaders.RatingDataset, got {type(ds).__name__}")
    if len(ds) == 0:
        raise ValueError(f"{name} is empty")


def _index_tensor(x, name: str, bound: int) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).long().reshape(-1)
    if len(t) and (int(t.min()) < 0 or int(t.max()) >= bound):
        raise ValueError(f"{name}: indices must lie in [0, {bound}), got range [{int(t.min())}, {int(t.max())}]")
    return t


@_register
class BaselineRecommender(BaseRecommender):
    """A classic model from :data:`sif.baselines.BASELINES` ("mf", "gmf", "ncf", "neumf", "outer", "bias_only",
    "cp", "tucker") trained stand-alone."""

    def __init__(self, model: str = "mf", **kwargs):
        super().__init__(**kwargs)
        if model not in BASELINES:
            raise ValueError(f"model={model!r}: unknown baseline; registered: {sorted(BASELINES)}")
        self.model = model

    def _build_model(self) -> nn.Module:
        return create_baseline(self.model, **self._model_kwargs())


@_register
class FixedInteractionRecommender(BaseRecommender):
    """The SIF model with one fixed interaction function (e.g. op="multiply"), trained stand-alone."""

    def __init__(self, op: str = "multiply", g_hidden: int = _M.g_hidden, g_skip: bool = _M.g_skip,
                 head_radius: float | None = _M.head_radius, head_init: str = _M.head_init, penalty: str = _M.penalty,
                 **kwargs):
        super().__init__(penalty=penalty, **kwargs)
        self.op, self.g_hidden, self.g_skip = op, g_hidden, g_skip
        self.head_radius, self.head_init = head_radius, head_init

    def _build_model(self) -> nn.Module:
        return SIFSpace(ops=(self.op,), g_hidden=self.g_hidden, g_skip=self.g_skip, head_init=self.head_init,
                        head_radius=_head_radius(self.head_radius, self.embedding_dim, self.implicit),
                        **self._model_kwargs())


def _head_radius(value: float | None, dim: int, implicit: bool) -> float:
    """The radius of the heads' L2 ball. None: 1 (the paper) for ratings; sqrt(dim) for the implicit tasks, the
    smallest ball holding the all-ones head (a plain dot product). Under BPR on ML-100K (dim 32, seed-0 split, fixed
    multiply, 20 epochs) the unit ball kept the scores so small that validation NDCG@10 stayed at the popularity
    level for the first 8 epochs (0.093) and reached 0.146; radius sqrt(dim) reached 0.171 (GMF: 0.155)."""
    if value is not None:
        return float(value)
    return math.sqrt(dim) if implicit else 1.0


@_register
class SIFRecommender(BaseRecommender):
    """Searches the interaction function with the proximal core, then trains the found model stand-alone.

    search: a :class:`nasp.search.SearchConfig` or dict (defaults: NASP, 10 epochs, Adam lr 0.002 on the
    weights, Adam lr 1e-3 on alpha and g; the reference used Adagrad 0.05 and alpha lr 3e-4 over 100 epochs).
    select: "best" (architecture of the epoch with the best validation RMSE, or NDCG@10 for the implicit tasks)
    or "last" (the last prox).
    search_on: "valid" (alpha steps on validation batches) or "train" (the "no validation split" ablation).
    train_all_heads: train every op's head on detached features during the search, so that unselected ops are
    judged with trained heads. keep_g: stand-alone training starts from the searched g (the paper) rather than a
    fresh one. g_skip: g is residual and starts as the identity (the paper: a random MLP); with
    ``train.g_lr_scale`` (default 0.05) g then learns slowly, which on ML-100K u1 took fixed multiply from 0.953
    to 0.936 test RMSE, because a fast-learning g rescales every embedding past the L2 penalty.
    head_radius: radius of the heads' L2 ball; None: 1 (the paper) for ratings, sqrt(embedding_dim) for the
    implicit tasks (see ``_head_radius``). ops: the candidate ops (None: all five for ratings; for the implicit
    tasks only multiply, max and min, since plus and concat cannot personalise a ranking, see ``search_ops``).
    """

    def __init__(self, search: Any = None, select: str = _M.select, search_on: str = _M.search_on,
                 train_all_heads: bool = _M.train_all_heads, g_hidden: int = _M.g_hidden, g_skip: bool = _M.g_skip,
                 ops: Any = _M.ops, keep_g: bool = _M.keep_g, head_radius: float | None = _M.head_radius,
                 head_init: str = _M.head_init, **kwargs):
        super().__init__(**kwargs)
        self.head_radius, self.head_init = head_radius, head_init
        if select not in ("best", "last"):
            raise ValueError(f"select must be 'best' or 'last', got {select!r}")
        if search_on not in ("valid", "train"):
            raise ValueError(f"search_on must be 'valid' or 'train', got {search_on!r}")
        self.search, self.select, self.search_on = search, select, search_on
        self.train_all_heads, self.g_hidden, self.g_skip = train_all_heads, g_hidden, g_skip
        self.ops, self.keep_g = ops, keep_g

    def _search_config(self) -> SearchConfig:
        """``search`` over SIF's defaults (:class:`sif.config.SIFSearchConfig`), seeded by ``random_state``."""
        given = self.search if isinstance(self.search, dict) else (asdict(self.search) if self.search else {})
        if isinstance(self.search, dict) and given.get("seed", self.random_state) != self.random_state:
            raise ValueError(f"search['seed']={given['seed']}: the search is seeded by random_state "
                             f"({self.random_state})")
        cfg = config_from_dict(SIFSearchConfig, {k: v for k, v in given.items() if k != "seed"})
        cfg.seed = self.random_state
        return cfg

    @property
    def search_ops(self) -> Any:
        """The candidate ops of the search: ``ops``; when None, every primitive for ratings and
        :data:`sif.implicit_feedback.RANKING_OPS` (multiply, max, min) for the implicit tasks."""
        if self.ops is None and self.implicit:
            return RANKING_OPS
        return self.ops

    def _space(self, ops) -> SIFSpace:
        kw = self._model_kwargs()
        return SIFSpace(ops=ops, g_hidden=self.g_hidden, g_skip=self.g_skip, head_init=self.head_init,
                        head_radius=_head_radius(self.head_radius, self.embedding_dim, self.implicit), **kw)

    def _fit_model(self, train_it, valid_it, eval_it, show_progress, callback, run_dir):
        cfg = self._search_config()
        self.search_config_ = cfg
        space = self._prepared(self._space(self.search_ops))
        self.search_candidates_ = tuple(space.names)
        task = self._task(train_all_heads=self.train_all_heads)
        search_dir = Path(run_dir) / "search" if run_dir is not None else None
        searcher = make_searcher(space, task, cfg, device=self.device, run_dir=search_dir,
                                 show_progress=show_progress)
        alpha_it = train_it if self.search_on == "train" else valid_it
        if self.search_on == "train":    # a second, differently shuffled pass over train for the alpha steps
            base = train_it.loader if isinstance(train_it, ShardedLoader) else train_it
            alpha_it = shard_if_distributed(BatchIterator(dict(zip(self._fields(), base.tensors, strict=True)),
                                                          batch_size=base.batch_size, seed=self.random_state + 2,
                                                          device=self.device, fields=self._fields()))
        self.search_result_ = searcher.fit(train_it, alpha_it, eval_loader=eval_it)
        genotype = self.search_result_.best_genotype if self.select == "best" else self.search_result_.genotype
        self.genotype_ = genotype
        self.op_ = genotype.choices("interaction")[0].op
        model = self._prepared(self._build_model())
        if self.keep_g:
            model.g.load_state_dict(space.g.state_dict())
        train_dir = Path(run_dir) / "train" if run_dir is not None else None
        result = train_model(model, self.task_, train_it, eval_it, self.train_config_, self.device,
                             run_dir=train_dir, show_progress=show_progress, callback=callback)
        return model, result

    def _build_model(self) -> nn.Module:
        return self._space((self.op_,))

    def _fitted_state(self) -> dict[str, Any]:
        return {**super()._fitted_state(), "genotype": self.genotype_.to_dict(), "op": self.op_}

    def _restore_fitted(self, state: dict[str, Any]) -> None:
        super()._restore_fitted(state)
        self.genotype_ = Genotype.from_dict(state["genotype"])
        self.op_ = state["op"]


SIF_VARIANTS: dict[str, dict[str, Any]] = {
    "sif": {},
    "sif_random": {"search": {"strategy": "random"}},   # weight-sharing random search over the same space
    "sif_noval": {"search_on": "train"},                # ablation: no validation split for the alpha steps
    "sif_noheads": {"train_all_heads": False},          # ablation: unselected ops judged with untrained heads
    "sif_last": {"select": "last"},                     # ablation: the last prox instead of the epoch best
}


def recommender_class(name: str) -> type[BaseRecommender]:
    """The class behind a short name (see :func:`create_recommender`)."""
    if name in SIF_VARIANTS:
        return SIFRecommender
    if name.startswith("fixed:"):
        return FixedInteractionRecommender
    if name in BASELINES:
        return BaselineRecommender
    raise KeyError(f"unknown recommender {name!r}: use {', '.join(SIF_VARIANTS)}, fixed:<op> or one of "
                   f"{', '.join(sorted(BASELINES))}")


def constructor_params(cls: type) -> list[str]:
    """Every named constructor argument of ``cls`` and its bases (the estimator's parameters)."""
    import inspect

    names = [name for c in cls.__mro__ if c is not object
             for name, p in inspect.signature(c.__init__).parameters.items()
             if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    return list(dict.fromkeys(names))


def create_recommender(name: str, **kwargs) -> BaseRecommender:
    """Build a recommender from a short name: "sif", "sif_random" (random search over the same space),
    "sif_noval" (the no-validation-split ablation), "sif_noheads" (only the selected head trains during the
    search), "sif_last" (last prox instead of the best epoch), "fixed:<op>", or a baseline name ("mf", "gmf", ...)."""
    cls = recommender_class(name)
    if cls is SIFRecommender:
        variant = SIF_VARIANTS[name]
        if "search" in variant:
            kwargs["search"] = {**dict(kwargs.get("search") or {}), **variant["search"]}
        return SIFRecommender(**{**kwargs, **{k: v for k, v in variant.items() if k != "search"}})
    if cls is FixedInteractionRecommender:
        return FixedInteractionRecommender(op=name.split(":", 1)[1], **kwargs)
    return BaselineRecommender(model=name, **kwargs)
