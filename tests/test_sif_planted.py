"""Planted interaction functions and the default search (search + race of stand-alone fits)."""

from __future__ import annotations

import pytest

from data_loaders import random_split
from sif.interactions import SEARCH_SPACE
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
    assert set(dropped) == set(SEARCH_SPACE) - {"multiply"}
    assert dropped["plus"] < len(rec.selection_.curves["multiply"])


@pytest.mark.slow
def test_quick_start_config_finds_a_non_additive_op_on_planted_multiply(tmp_path):
    """The main job's config (configs/sif_ml100k.yaml: neighbourhoods, refit, search + race) on a planted
    dot-product data set in MovieLens' CSV shape: only the data and its size-bound settings (dimension, batch, epoch
    cap) are changed; the search must find a personalising (non-additive) op and beat the bias-only level."""
    import json
    from pathlib import Path

    from sif.cli import main

    ds = planted_ratings("multiply", num_users=60, num_items=80, dim=4, n=3000, noise=0.1, seed=0)
    csv = tmp_path / "ratings.csv"
    csv.write_text("userId,movieId,rating\n" + "".join(
        f"{u},{i},{r:.4f}\n" for u, i, r in zip(ds.users.tolist(), ds.items.tolist(), ds.ratings.tolist(),
                                                 strict=True)))
    config = Path(__file__).resolve().parents[1] / "configs" / "sif_ml100k.yaml"
    assert main(["search", "--config", str(config), "--set", "data.dataset=file", f"data.path={csv}",
                 f"out_dir={tmp_path / 'run'}", "show_progress=false", "model.embedding_dim=4",
                 "train.batch_size=128", "search.epochs=3", "train.max_epochs=60", "threads=1"]) == 0
    results = json.loads((tmp_path / "run" / "search" / "results.json").read_text())
    assert results["op"] not in ("plus", "concat"), results["race"]
    spread = float(ds.ratings.std())
    assert results["test"]["rmse"] < 0.5 * spread, (results["test"], spread)
