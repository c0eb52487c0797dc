"""``model.init_std``: one config key, validated in one line, reaching the embedding tables of the matrix and tensor
models (SIF spaces, fixed ops and the baselines) through the recommenders."""

from __future__ import annotations

import pytest
import torch

from data_loaders import random_split
from sif.build import build_recommender
from sif.config import ModelConfig, load_config
from sif.recommender import create_recommender
from sif.synthetic import planted_ratings


def _tables(model) -> list[torch.Tensor]:
    """The embedding rows (bias columns dropped) of a SIF space or a baseline."""
    if hasattr(model, "embeddings"):
        k = model.embedding_dim
        return [e.weight[:, :k] for e in model.embeddings.values()]
    return [m.weight for m in (model.user, model.item, model.context) if m is not None]


def _start_std(name: str, init_std: float, contexts: int) -> float:
    """The std of the embedding tables after a fit that cannot move them (learning rate 1e-12, one epoch)."""
    op = "multiply_multiply" if contexts else "multiply"
    data = planted_ratings(op, num_users=300, num_items=400, num_contexts=contexts, dim=2, n=3000, seed=0)
    tr, va, _ = random_split(data, (0.9, 0.1, 0.0), seed=0)
    rec = create_recommender(name, embedding_dim=16, init_std=init_std, race_k=0, search={"epochs": 1},
                             train={"max_epochs": 1, "lr": 1e-12}) if name == "sif" else create_recommender(
        name, embedding_dim=16, init_std=init_std, train={"max_epochs": 1, "lr": 1e-12})
    rec.fit(tr, va, show_progress=False)
    return float(torch.cat([t.detach().flatten() for t in _tables(rec.model_)]).std())


def test_init_std_key_has_one_default_and_a_one_line_error():
    assert ModelConfig().init_std == 0.1 == create_recommender("mf").init_std
    assert load_config(None, ["model.init_std=0.3"]).model.init_std == 0.3
    with pytest.raises(Exception, match=r"model.init_std must be > 0, got 0.0$"):
        load_config(None, ["model.init_std=0.0"])
    with pytest.raises(ValueError, match=r"^init_std must be > 0, got -1$"):
        create_recommender("fixed:multiply", init_std=-1)


@pytest.mark.parametrize("name,contexts", [("fixed:multiply", 0), ("mf", 0), ("fixed:multiply_multiply", 4),
                                           ("cp", 4), ("tucker", 4)])
def test_init_std_reaches_the_embedding_tables(name, contexts):
    for std in (0.1, 0.5):
        assert _start_std(name, std, contexts) == pytest.approx(std, rel=0.05)


def test_config_key_reaches_the_recommender():
    cfg = load_config(None, ["model.init_std=0.4", "model.name=cp"])
    assert build_recommender(cfg).init_std == 0.4
    assert build_recommender(cfg, "sif").init_std == 0.4
