"""Contract tests over the registries (the pattern of timm's and implicit's tests): every search space, every
recommender and every baseline passes the same shared checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import nasp.spaces.cnn  # noqa: F401  (registers the cnn space)
import nasp.spaces.rnn  # noqa: F401  (registers the darts_rnn space)
import nasp.spaces.toy  # noqa: F401
from nasp.genotype import Genotype
from nasp.search import SearchConfig, Searcher
from nasp.space import SPACES, create_space
from sif.baselines import BASELINES, create_baseline
from sif.model import RatingModule
from sif.recommender import SIF_VARIANTS, create_recommender, load_recommender
from sif.synthetic import planted_ratings


# ---- search spaces -------------------------------------------------------------------------------------------
def _toy():
    from nasp.spaces.toy import ToyTask, make_toy_data, random_planted

    x, y = make_toy_data(64, random_planted(3, 2, 0), seed=0)
    return {"seed": 0}, ToyTask(), [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]


def _sif():
    from sif.task import RatingTask

    g = torch.Generator().manual_seed(0)
    u, i = torch.randint(0, 10, (64,), generator=g), torch.randint(0, 12, (64,), generator=g)
    r = torch.randn(64, generator=g)
    return ({"num_users": 10, "num_items": 12, "embedding_dim": 3, "seed": 0}, RatingTask(),
            [(u[k:k + 16], i[k:k + 16], r[k:k + 16]) for k in range(0, 64, 16)])


def _cnn():
    from nasp.spaces.cnn import ImageClassificationTask

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)
    return ({"C": 4, "layers": 2, "steps": 2, "multiplier": 2, "seed": 0}, ImageClassificationTask(),
            [(x[k:k + 4], y[k:k + 4]) for k in range(0, 16, 4)])


def _rnn():
    from nasp.spaces.rnn import LanguageModelTask

    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 20, (9, 4), generator=g)
    batches = [(tokens[k:k + 4], tokens[k + 1:k + 5], k == 0) for k in (0, 4)]
    return ({"vocab_size": 20, "ninp": 6, "nhid": 6, "num_nodes": 2, "seed": 0}, LanguageModelTask(), batches)


SPACE_CASES = {"toy": _toy, "sif": _sif, "cnn": _cnn, "darts_rnn": _rnn}


def test_every_registered_space_has_a_contract_case():
    assert set(SPACES) == set(SPACE_CASES)


@pytest.mark.parametrize("name", sorted(SPACE_CASES))
class TestSearchSpaceContract:
    def _make(self, name):
        kwargs, task, batches = SPACE_CASES[name]()
        return create_space(name, **kwargs), task, batches, kwargs

    def test_alphas_are_parameters_in_the_state_dict_and_apart_from_the_weights(self, name):
        space, *_ = self._make(name)
        alphas, weights = list(space.alphas()), list(space.weights())
        assert alphas and weights
        assert all(isinstance(a, torch.nn.Parameter) for a in alphas)
        ids = {id(a) for a in alphas}
        assert not ids & {id(w) for w in weights}
        assert ids | {id(w) for w in weights} == {id(p) for p in space.parameters()}
        in_state = {id(t) for t in space.state_dict(keep_vars=True).values()}
        assert ids <= in_state                        # alphas are saved and restored with the weights

    def test_the_sparse_loss_is_finite_and_reproducible_after_a_state_dict_roundtrip(self, name):
        space, task, batches, kwargs = self._make(name)
        space.eval()
        loss = task.loss(space, batches[0], space.sparse_view(), "valid")
        assert torch.isfinite(loss)
        twin = create_space(name, **{**kwargs, "seed": 1})
        twin.load_state_dict(space.state_dict())
        twin.eval()
        torch.testing.assert_close(task.loss(twin, batches[0], twin.sparse_view(), "valid"), loss)

    def test_one_nasp_search_epoch_gives_a_json_genotype(self, name, tmp_path):
        space, task, batches, _ = self._make(name)
        result = Searcher(space, task, SearchConfig(epochs=1, w_lr=0.01, seed=0), run_dir=tmp_path,
                          show_progress=False).fit(batches, batches)
        assert isinstance(result.genotype, Genotype)
        assert Genotype.from_json(result.genotype.to_json()) == result.genotype
        assert (tmp_path / "checkpoint.pt").is_file() and len(result.history) == 1


# ---- recommenders ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def planted():
    ds = planted_ratings("multiply", num_users=30, num_items=25, n=600, seed=0)
    from data_loaders import random_split

    return random_split(ds, (0.8, 0.1, 0.1), seed=0)


RECOMMENDER_NAMES = [*SIF_VARIANTS, "fixed:multiply", *sorted(n for n in BASELINES if n not in ("cp", "tucker"))]


@pytest.mark.parametrize("name", RECOMMENDER_NAMES)
def test_recommender_contract(name, planted, tmp_path):
    """fit returns self and sets learned attributes; predict/score/recommend agree in shape and are finite;
    save/load gives the same predictions; get_params rebuilds an equal estimator."""
    tr, va, te = planted
    kw = {"embedding_dim": 3, "train": {"max_epochs": 2, "batch_size": 128}}
    if name.startswith("sif"):
        kw["search"] = {"epochs": 2}
    rec = create_recommender(name, **kw)
    assert rec.fit(tr, va, show_progress=False) is rec
    assert hasattr(rec, "model_") and hasattr(rec, "train_result_")
    assert isinstance(rec.model_, RatingModule)           # one model interface, SIF or baseline
    assert rec.model_.searchable == (name.startswith("sif") or name.startswith("fixed:"))
    assert {id(p) for p in rec.model_.slow_parameters()} <= {id(p) for p in rec.model_.weights()}
    users, items = tr.user_ids[te.users], tr.item_ids[te.items]
    pred = rec.predict(users, items)
    assert pred.shape == (len(te),) and np.isfinite(pred).all()
    lo, hi = tr.rating_scale
    assert pred.min() >= lo and pred.max() <= hi
    scores = rec.score(te)
    assert {"rmse", "mae"} <= set(scores) and np.isfinite(scores["rmse"])
    top, top_scores = rec.recommend(tr.user_ids[:3], N=4)
    assert top.shape == (3, 4) and top_scores.shape == (3, 4)
    rec.save(tmp_path / "m")
    back = load_recommender(tmp_path / "m")
    np.testing.assert_array_equal(back.predict(users, items), pred)
    assert type(rec)(**rec.get_params()).get_params() == rec.get_params()


# ---- baselines -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baseline_contract(name):
    """Every baseline maps (users, items[, contexts]) to one finite score per rating and has weights to train."""
    contexts = 3 if name in ("cp", "tucker") else 0
    model = create_baseline(name, num_users=7, num_items=5, num_contexts=contexts, embedding_dim=4, seed=0)
    u, i = torch.tensor([0, 3, 6]), torch.tensor([4, 0, 2])
    c = torch.tensor([0, 1, 2]) if contexts else None
    out = model(u, i, c)
    assert out.shape == (3,) and torch.isfinite(out).all()
    assert isinstance(model, RatingModule) and not model.searchable and model.sparse_view() is None
    assert list(model.slow_parameters()) == []
    out.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
