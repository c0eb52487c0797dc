"""The recommenders: SIF (search + stand-alone training), one fixed interaction function, and the classic
baselines, all on :class:`sif.estimator.BaseRecommender` (``fit`` / ``predict`` / ``recommend`` / ``save`` /
``load``, scikit-learn and ``implicit`` style), plus the short-name registry (:func:`create_recommender`).

Indices are the dataset's contiguous user/item indices (``RatingDataset.users``); ``user_ids``/``item_ids``
of the training dataset map them back to original ids.

``task="bpr"``, ``"bce"`` or ``"softmax"`` trains on implicit feedback instead of ratings (see :mod:`sif.feedback`): the
positives are the ratings >= ``positive_threshold`` (every rating when None), ``num_negatives`` sampled negatives
per positive, early stopping (and SIF's architecture choice) on validation NDCG@10 with the user's training
positives filtered; ``predict`` then returns scores (logits), not ratings.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from data_loaders import BatchIterator
from nasp.config import config_from_dict
from nasp.distributed import ShardedLoader, make_searcher, shard_if_distributed
from nasp.genotype import Genotype
from nasp.search import SearchConfig

from .baselines import BASELINES, create_baseline
from .config import ModelConfig, SIFSearchConfig
from .ensemble import AveragedModel
from .estimator import RECOMMENDERS, BaseRecommender, constructor_params, register
from .peers import SURPRISE_PEERS, SurpriseRecommender
from .selection import race_fit
from .space import SIFSpace
from .train import train_model

__all__ = ["BaseRecommender", "SIFRecommender", "FixedInteractionRecommender", "BaselineRecommender",
           "RECOMMENDERS", "SIF_VARIANTS", "create_recommender", "recommender_class", "constructor_params",
           "load_recommender"]

log = logging.getLogger("sif.recommender")
_M = ModelConfig()    # the one home of the settings' defaults


def load_recommender(path: str | Path, device: str | None = None) -> BaseRecommender:
    """Load any saved recommender (the class is read from its recommender.json)."""
    return BaseRecommender.load(path, device)



@register
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


@register
class FixedInteractionRecommender(BaseRecommender):
    """The SIF model with one fixed interaction function (e.g. op="multiply"), trained stand-alone."""

    def __init__(self, op: str = "multiply", g_hidden: int = _M.g_hidden, g_skip: bool = _M.g_skip,
                 head_radius: float | None = _M.head_radius, head_init: str | None = _M.head_init,
                 penalty: str = _M.penalty,
                 **kwargs):
        super().__init__(penalty=penalty, **kwargs)
        self.op, self.g_hidden, self.g_skip = op, g_hidden, g_skip
        self.head_radius, self.head_init = head_radius, head_init

    def _build_model(self) -> nn.Module:
        return SIFSpace(ops=(self.op,), g_hidden=self.g_hidden, g_skip=self.g_skip, head_init=self._head_init(),
                        head_radius=self._head_radius(), **self._model_kwargs())


@register
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
    head_init / head_radius: None: for ratings the heads start at all-ones (multiply is then a dot product), for
    bpr/bce uniform(+-1/sqrt(width)) (the paper), inside an L2 ball of radius sqrt(embedding_dim); the paper's
    uniform heads in the unit ball trained fixed multiply to 0.9357 on ML-100K u1 against 0.9293 with all-ones
    heads (benchmarks/README.md), while under BPR all-ones heads cost 0.02 NDCG@10. ops: the candidate ops (None:
    for ratings the five primitives and the learned mixture multiply+max, ``sif.interactions.SEARCH_SPACE``; for
    the implicit tasks only multiply, max and min, since plus and concat cannot personalise a ranking, see
    ``search_ops``).
    race_k: after the search, the ``race_k`` ops with the largest final alpha (ties within ``alpha_tol`` join)
    race as stand-alone fits on the validation split (:func:`sif.selection.race_fit`: rounds of
    ``race_first_budget`` epochs, doubling; a fit is dropped once it has plateaued behind the leader or cannot
    reach it at its recent rate continued for ``race_horizon`` x its epochs), and the winner's fit is the model.
    Default 6 (every op of the default space): on ML-100K (6 splits, the five primitives) it picked the
    validation-best op on 6 of 6 at 0.78x the cost of training the five fixed ops; the search's own choice
    (``race_k=0``, then ``select``) picked it on 0 of 6. ``race_horizon`` 3 (1 until 2026-12-04) keeps a slow but
    steady learner such as multiply+max in the race (benchmarks/README.md, "The quick start with neighbourhoods").
    race_tie_z (ranking tasks only): when the race ends, every fully trained candidate whose validation NDCG is
    within ``race_tie_z`` standard errors of the winner's (paired over users) is a tie, and the tie goes to the
    best validation AUC (:func:`sif.selection.tie_break`; 1: the one-standard-error rule; 0: off). With 5
    validation positives per user NDCG@10 does not separate close ops; AUC ranks every item.
    race_ensemble: when the race ends, its fully trained fits (the winner and every candidate that reached its own
    early stop) are averaged where that improves the validation metric: greedy forward selection from the winner
    (:func:`sif.ensemble.greedy_members`, by more than ``train.min_delta``); with ``refit`` each member is refit for
    its own epochs (ranking tasks have no refit). ``op_`` and ``genotype_`` stay the winner's; the members are
    ``ensemble_``. On ML-100K u1..u5 (benchmarks/README.md, "The race's ensemble") it took the search from 0.8889 to
    0.8857 test RMSE (multiply+max + multiply on 5 of 5 folds), at the cost of the extra members' refits; on top-N
    (sampled softmax, 3 seeds) from NDCG@10 0.2281 to 0.2325 (multiply with max or min).
    On tensor data (53 two-stage candidates) ``tensor_race_k`` (4) replaces ``race_k`` (0 still means no race),
    one op per function class races, and no race round trains beyond ``tensor_race_cap`` (8) epochs, chosen on
    validation to bring the search and race below the cost of training the five symmetric fixed classes: on
    ML-100K (4 contexts x 5 folds) 0.86-0.97x in CPU seconds (about 1.5x before), at a regret of 0.0047 against the
    validation-best fixed candidate (0.0029 before; benchmarks/README.md, "SIF tensor search").
    """

    def __init__(self, search: Any = None, select: str = _M.select, search_on: str = _M.search_on,
                 train_all_heads: bool = _M.train_all_heads, g_hidden: int = _M.g_hidden, g_skip: bool = _M.g_skip,
                 ops: Any = _M.ops, keep_g: bool = _M.keep_g, head_radius: float | None = _M.head_radius,
                 head_init: str | None = _M.head_init, race_k: int = _M.race_k, alpha_tol: float = _M.alpha_tol,
                 race_first_budget: int = _M.race_first_budget, race_horizon: float = _M.race_horizon,
                 race_tie_z: float = _M.race_tie_z, race_ensemble: bool = _M.race_ensemble,
                 tensor_race_k: int = _M.tensor_race_k,
                 tensor_race_cap: int | None = _M.tensor_race_cap, **kwargs):
        super().__init__(**kwargs)
        self.head_radius, self.head_init = head_radius, head_init
        if race_k < 0 or race_first_budget < 1 or alpha_tol < 0 or race_horizon < 0 or race_tie_z < 0:
            raise ValueError(f"race_k={race_k}, race_first_budget={race_first_budget}, alpha_tol={alpha_tol}, "
                             f"race_horizon={race_horizon}, race_tie_z={race_tie_z}: need race_k >= 0, "
                             "race_first_budget >= 1 and the others >= 0")
        self.race_k, self.alpha_tol = race_k, alpha_tol
        self.race_first_budget, self.race_horizon, self.race_tie_z = race_first_budget, race_horizon, race_tie_z
        if not isinstance(race_ensemble, (bool, np.bool_)):
            raise ValueError(f"race_ensemble must be True or False, got {race_ensemble!r}")
        self.race_ensemble = race_ensemble
        if tensor_race_k < 1 or (tensor_race_cap is not None and tensor_race_cap < 1):
            raise ValueError(f"tensor_race_k={tensor_race_k}, tensor_race_cap={tensor_race_cap}: need >= 1 (the cap "
                             "may be None)")
        self.tensor_race_k, self.tensor_race_cap = tensor_race_k, tensor_race_cap
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
        return self.feedback.default_ops if self.ops is None else self.ops

    def _space(self, ops) -> SIFSpace:
        kw = self._model_kwargs()
        return SIFSpace(ops=ops, g_hidden=self.g_hidden, g_skip=self.g_skip, head_init=self._head_init(),
                        head_radius=self._head_radius(), **kw)

    def _search(self, train_it, valid_it, eval_it, show_progress, run_dir) -> SIFSpace:
        """Run the architecture search (sets ``search_config_``, ``search_candidates_`` and ``search_result_``);
        returns the searched space."""
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
        return space

    def _fit_model(self, train_it, valid_it, eval_it, show_progress, callback, run_dir):
        space = self._search(train_it, valid_it, eval_it, show_progress, run_dir)
        if self.race_k:
            race_dir = Path(run_dir) / "race" if run_dir is not None else None
            return race_fit(self, space, train_it, eval_it, race_dir, show_progress)
        genotype = self.search_result_.best_genotype if self.select == "best" else self.search_result_.genotype
        self.genotype_ = genotype
        self.op_ = genotype.choices("interaction")[0].op
        self.ensemble_ = [self.op_]
        model = self._prepared(self._build_model())
        if self.keep_g:
            model.g.load_state_dict(space.g.state_dict())
        train_dir = Path(run_dir) / "train" if run_dir is not None else None
        result = train_model(model, self.task_, train_it, eval_it, self.train_config_, self.device,
                             run_dir=train_dir, show_progress=show_progress, callback=callback)
        return model, result

    def _build_model(self) -> nn.Module:
        """A fresh model of the fitted kind: the op found, or the average of the race's ensemble (``ensemble_``)."""
        models = [self._space((op,)) for op in self.ensemble_]
        return models[0] if len(models) == 1 else AveragedModel(models)

    def _refit_plan(self) -> list[tuple[str, Callable[[], nn.Module], int]]:
        ensemble = getattr(getattr(self, "selection_", None), "ensemble", None)
        if not ensemble or len(ensemble["members"]) == 1:
            return super()._refit_plan()
        return [(op if k else "", lambda op=op: self._space((op,)), epochs)
                for k, (op, epochs) in enumerate(zip(ensemble["members"], ensemble["epochs"], strict=True))]

    def _race_model(self, op: str, space: SIFSpace) -> nn.Module:
        """A fresh stand-alone model of ``op`` for the race (starting from the searched g with ``keep_g``)."""
        model = self._prepared(self._space((op,)))
        if self.keep_g:
            model.g.load_state_dict(space.g.state_dict())
        return model

    def _fitted_state(self) -> dict[str, Any]:
        return {**super()._fitted_state(), "genotype": self.genotype_.to_dict(), "op": self.op_,
                "ensemble": list(self.ensemble_)}

    def _restore_fitted(self, state: dict[str, Any]) -> None:
        super()._restore_fitted(state)
        self.genotype_ = Genotype.from_dict(state["genotype"])
        self.op_ = state["op"]
        self.ensemble_ = list(state.get("ensemble") or [self.op_])     # saved before the ensemble: the op alone


SIF_VARIANTS: dict[str, dict[str, Any]] = {
    "sif": {},                                          # search, then a race of stand-alone fits (sif.selection)
    "sif_search": {"race_k": 0},                        # the search's own choice, no race
    # the search's own choice under other rules (no race, which would hide them):
    "sif_random": {"search": {"strategy": "random"}, "race_k": 0},   # weight-sharing random search, same space
    "sif_noval": {"search_on": "train", "race_k": 0},   # ablation: no validation split for the alpha steps
    "sif_noheads": {"train_all_heads": False, "race_k": 0},   # ablation: unselected ops judged with untrained heads
    "sif_last": {"select": "last", "race_k": 0},        # ablation: the last prox instead of the epoch best
}


def recommender_class(name: str) -> type[BaseRecommender] | type[SurpriseRecommender]:
    """The class behind a short name (see :func:`create_recommender`)."""
    if name in SURPRISE_PEERS:
        return SurpriseRecommender
    if name in SIF_VARIANTS:
        return SIFRecommender
    if name.startswith("fixed:"):
        return FixedInteractionRecommender
    if name in BASELINES:
        return BaselineRecommender
    raise KeyError(f"unknown recommender {name!r}: use {', '.join(SIF_VARIANTS)}, fixed:<op>, one of "
                   f"{', '.join(sorted(BASELINES))} or a peer ({', '.join(SURPRISE_PEERS)})")


def create_recommender(name: str, **kwargs) -> BaseRecommender:
    """Build a recommender from a short name: "sif" (the search, then a race of stand-alone fits of the top ops by
    alpha, :func:`sif.selection.race_fit`), "sif_search" (the search's own choice, no race), "sif_random" (random
    search over the same space),
    "sif_noval" (the no-validation-split ablation), "sif_noheads" (only the selected head trains during the
    search), "sif_last" (last prox instead of the best epoch), "fixed:<op>", a baseline name ("mf",
    "gmf", ...), or a Surprise peer ("surprise_svd", "surprise_svdpp", "surprise_baseline": :mod:`sif.peers`)."""
    cls = recommender_class(name)
    if cls is SurpriseRecommender:
        return SurpriseRecommender(model=name, **kwargs)
    if issubclass(cls, SIFRecommender):
        variant = SIF_VARIANTS[name]
        if "search" in variant:
            kwargs["search"] = {**dict(kwargs.get("search") or {}), **variant["search"]}
        return cls(**{**kwargs, **{k: v for k, v in variant.items() if k != "search"}})
    if cls is FixedInteractionRecommender:
        return FixedInteractionRecommender(op=name.split(":", 1)[1], **kwargs)
    return BaselineRecommender(model=name, **kwargs)
