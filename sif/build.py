"""A recommender from a run configuration: every constructor argument from the ``model.*`` key of the same name
(``device``, ``seed``, ``train``, ``search`` and ``data.valid_fraction`` from theirs), with the strict checks that
no accepted key is ignored."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from nasp.config import ConfigError, to_dict

from .baselines import BASELINES
from .config import ModelConfig, RunConfig
from .recommender import SIF_VARIANTS, constructor_params, create_recommender, recommender_class

__all__ = ["build_recommender", "recommender_kwargs"]

_MODEL_DEFAULTS = ModelConfig()


def build_recommender(cfg: RunConfig, name: str | None = None, strict: bool = True, **overrides: Any):
    """The recommender a config describes (``name`` overrides ``cfg.model.name``).

    Every constructor argument comes from the config key of the same name (:func:`recommender_kwargs`). With
    ``strict``, a ``model.*`` setting changed from its default that this model does not take is an error (no
    accepted key is ignored); ``sif benchmark`` runs many models from one config and passes ``strict=False``,
    so that each model takes the settings that apply to it."""
    name = name or cfg.model.name
    kw = recommender_kwargs(cfg, name, strict)
    kw.update(overrides)
    return create_recommender(name, **kw)


def recommender_kwargs(cfg: RunConfig, name: str, strict: bool = True) -> dict[str, Any]:
    """The constructor arguments of recommender ``name`` from ``cfg``: ``model.<arg>``, except ``device``,
    ``random_state`` (``seed``), ``train``, ``search`` and ``valid_fraction`` (``data.valid_fraction``); ``op``
    and ``model`` are part of the name."""
    taken = constructor_params(recommender_class(name))
    if cfg.train.amp == "fp16" and not str(cfg.device).startswith("cuda"):     # refused before any search or fit
        raise ConfigError(f"train.amp='fp16' needs a CUDA device (fp16 with a GradScaler runs on CUDA only), got "
                          f"device {cfg.device!r}; use train.amp=bf16 or null")
    special = {"device": cfg.device, "random_state": cfg.seed, "train": to_dict(cfg.train),
               "search": {k: v for k, v in to_dict(cfg.search).items() if k != "seed"},
               "valid_fraction": cfg.data.valid_fraction}
    kw = {p: special[p] if p in special else getattr(cfg.model, p) for p in taken if p not in ("op", "model")}
    if kw.get("neighbourhood") is not None and not _supports_neighbourhood(name):
        if strict:
            raise ConfigError(f"model.neighbourhood: model {name!r} does not take neighbourhoods")
        kw.pop("neighbourhood")
    if strict:
        unused = [f"model.{f.name}" for f in fields(ModelConfig) if f.name != "name" and f.name not in taken
                  and getattr(cfg.model, f.name) != getattr(_MODEL_DEFAULTS, f.name)]
        if unused:
            raise ConfigError(f"{', '.join(unused)}: not a setting of model {name!r} (only of other models)")
        fixed = {k: v for k, v in SIF_VARIANTS.get(name, {}).items() if k != "search"}
        clash = [f"model.{k}" for k, v in fixed.items()
                 if getattr(cfg.model, k) not in (v, getattr(_MODEL_DEFAULTS, k))]
        if clash:
            raise ConfigError(f"{', '.join(clash)}: model {name!r} fixes it ({fixed}); use model.name=sif to set it")
    return kw


def _supports_neighbourhood(name: str) -> bool:
    """SIF models, fixed ops and the MF-type baselines take ``model.neighbourhood``; NeuMF and bias_only do not."""
    base = BASELINES.get(name)
    return base is None or getattr(base, "supports_neighbourhood", False)
