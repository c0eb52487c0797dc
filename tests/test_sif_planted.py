"""Planted interaction functions and the default search (search + race of stand-alone fits)."""

from __future__ import annotations

import pytest

from data_loaders import random_split
from sif.recommender import SIFRecommender
from sif.synthetic import planted_ratings


def _fit(op: str, seed: int) -> SIFRecommender:
    ds = planted_ratings(op, num_users=60, num_items=80, dim=4, n=3000, noise=0.1, seed=seed)
    tr, va, _ = random_split(ds, (0.8, 0.1, 0.1), seed=seed)
    return SIFRecommender(embedding_dim=4, random_state=seed, search={"epochs": 2, "w_lr": 0.01},
                          train={"max_epochs": 30, "patience": 4, "batch_size": 256, "lr": 0.01}
                          ).fit(tr, va, show_progress=False)


@pytest.mark.parametrize("seed", range(5))
def test_default_search_recovers_a_planted_dot_product(seed):
    """On data made by a planted multiply (a dot product with a positive head), the library's default procedure
    finds multiply on every seed, and the race drops the additive ops before their own early stop."""
    rec = _fit("multiply", seed)
    assert rec.op_ == "multiply", rec.selection_.curves
    assert min(rec.selection_.curves["multiply"]) < min(min(c) for op, c in rec.selection_.curves.items()
                                                        if op != "multiply")
    dropped = {op: e for op, e, _ in rec.selection_.eliminated}
    assert set(dropped) == {"plus", "max", "min", "concat"}
    assert dropped["plus"] < len(rec.selection_.curves["multiply"])
