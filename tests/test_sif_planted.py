"""Planted interaction functions and the library's default procedure (search + race of stand-alone fits).

Recovery means the op found is in the planted op's function class (``sif.synthetic.OP_CLASS``). The classes, for
the SIF model ``y = b + b_u + b_v + w^T o(g(u), g(v))`` with free embeddings, a learned head and biases (g maps
free embeddings, so it changes no class):

- additive = {plus, concat}: ``w^T (u + v) = w^T u + w^T v`` and ``[w1; w2]^T [u; v] = w1^T u + w2^T v`` are both a
  user score plus an item score, which the biases alone already span; data planted by either is fitted exactly by
  both, so no validation score can tell them apart.
- max/min = {max, min}: ``w^T max(u, v) = (-w)^T min(-u, -v)``: negating the embeddings (or g) and the head turns
  one into the other.
- product = {multiply}: ``w^T (u * v)`` is a rank-k factorisation; it is not additive, a rank-k product does not
  contain max(a, b) = (a + b) / 2 + |a - b| / 2, whose interaction |a - b| has unbounded rank, and a sum of max
  terms (piecewise linear in each input) is not the bilinear u * v.
- product+max = {multiply+max}: ``w1^T (u * v) + w2^T max(u, v)`` strictly contains product and max/min (a zero
  block), and every op contains the additive class (through the biases). A mixture found on planted max is
  therefore a correct but not minimal model; it is NOT counted as recovery.

Data (``RECOVERY_DATA``): one planted dimension, 60 users x 80 items, 4,000 ratings (53 per user, 40 per item),
noise 0.05 against rating stds of 0.5-2.0 (max: 0.54-1.04). The model (``RECOVERY_FIT``) has 2 dimensions:
over-parameterised, because with as many model as planted dimensions a max fit stalls in a local minimum (in
exploration, not recorded: 100 x 150 users x items, 12,000 ratings, dimension 4, a max model without penalty: train
RMSE 0.26 from a random start, 0.10 from the planted values). Its L2 is 1e-4: the default 0.1 is for ML-100K's
noise, and on near-noiseless data it shrinks max's embeddings (effective penalty k w^2) harder than multiply's.
benchmarks/README.md ("Planted interaction functions") has the measured table, each fixed op trained alone, and what
fails at the older sizes (max 0/5, not identifiable there) and at noise 0.1 (max 4/5: the mixture, by 0.0003).
"""

from __future__ import annotations

import pytest
import torch

from data_loaders import random_split
from sif.interactions import INTERACTIONS, SEARCH_SPACE
from sif.recommender import SIFRecommender
from sif.synthetic import OP_CLASS, RECOVERY_DATA, RECOVERY_FIT, planted_ratings

PLANTED = ("multiply", "max", "plus", "concat")


def _fit(op: str, seed: int) -> SIFRecommender:
    ds = planted_ratings(op, seed=seed, **RECOVERY_DATA)
    tr, va, _ = random_split(ds, (0.8, 0.1, 0.1), seed=seed)
    return SIFRecommender(random_state=seed, **RECOVERY_FIT).fit(tr, va, show_progress=False)


def test_op_classes_are_the_stated_identities():
    """Every op of the default space has a class; min is max with negated inputs and head; plus and concat are a user
    score plus an item score (what the classes in this module's docstring rest on)."""
    assert set(OP_CLASS) == set(SEARCH_SPACE)
    g = torch.Generator().manual_seed(0)
    u, v, w = (torch.randn(5, 3, generator=g) for _ in range(3))
    assert torch.allclose((w * INTERACTIONS["max"](u, v)).sum(1), (-w * INTERACTIONS["min"](-u, -v)).sum(1))
    w2 = torch.randn(5, 6, generator=g)
    assert torch.allclose((w2 * INTERACTIONS["concat"](u, v)).sum(1), (w2[:, :3] * u).sum(1) + (w2[:, 3:] * v).sum(1))
    assert torch.allclose((w * INTERACTIONS["plus"](u, v)).sum(1), (w * u).sum(1) + (w * v).sum(1))


@pytest.mark.parametrize("op, seed", [pytest.param(op, seed, marks=[pytest.mark.slow] if seed else [])
                                      for op in PLANTED for seed in range(5)])
def test_default_procedure_recovers_the_planted_class(op, seed):
    """On data planted by ``op``, the library's default procedure (search, then the race of every op's stand-alone
    fit) finds an op of the planted class on every seed; its model is the validation-best of the race and its validation
    RMSE is within twice the planted noise (on planted multiply, the additive ops are dropped before multiply's own
    early stop)."""
    rec = _fit(op, seed)
    curves = rec.selection_.curves
    assert OP_CLASS[rec.op_] == OP_CLASS[op], (rec.op_, {o: min(c) for o, c in curves.items()})
    assert min(curves[rec.op_]) == min(min(c) for c in curves.values())
    assert rec.train_result_.best_valid["rmse"] < 2 * RECOVERY_DATA["noise"]     # it fits down to the noise
    if op == "multiply":        # the additive ops plateau at once: the race drops them before multiply's own stop
        dropped = {o: e for o, e, _ in rec.selection_.eliminated}
        assert max(dropped["plus"], dropped["concat"]) < len(curves["multiply"]), (dropped, len(curves["multiply"]))


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
    assert OP_CLASS[results["op"]] != "additive", results["race"]
    spread = float(ds.ratings.std())
    assert results["test"]["rmse"] < 0.5 * spread, (results["test"], spread)
