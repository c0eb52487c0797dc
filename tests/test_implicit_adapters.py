import numpy as np
import pytest
import scipy.sparse as sp
import torch

from sif.implicit_feedback import ImplicitTask, RankingData, model_score_fn
from sif.ranking import evaluate_ranking
from sif.space import SIFSpace

pytest.importorskip("implicit")

from sif.implicit_adapters import IMPLICIT_MODELS, factor_score_fn, fit_implicit  # noqa: E402


def _matrices(seed=0, num_users=30, num_items=20):
    rng = np.random.default_rng(seed)
    dense = rng.random((num_users, num_items)) < 0.3
    held = dense & (rng.random(dense.shape) < 0.3)
    return sp.csr_matrix((dense & ~held).astype(np.float32)), sp.csr_matrix(held.astype(np.float32))


PARAMS = {"als": dict(factors=4, iterations=3), "bpr": dict(factors=4, iterations=5),
          "lmf": dict(factors=4, iterations=3)}


@pytest.mark.parametrize("name", IMPLICIT_MODELS)
def test_implicit_models_score_by_factor_dot_products(name):
    train, _ = _matrices()
    fit = fit_implicit(name, train, random_state=0, **PARAMS[name])
    assert fit.seconds >= 0 and fit.name == name
    users = torch.tensor([0, 5, 29])
    got = fit.score_fn()(users)
    uf, itf = np.asarray(fit.model.user_factors), np.asarray(fit.model.item_factors)
    assert got.shape == (3, train.shape[1])
    np.testing.assert_allclose(got.numpy(), uf[[0, 5, 29]] @ itf.T, rtol=1e-5, atol=1e-6)


def test_implicit_and_sif_go_through_the_same_evaluation_call():
    train, test = _matrices(1)
    als = fit_implicit("als", train, factors=4, iterations=3, random_state=0)
    sif = SIFSpace(train.shape[0], train.shape[1], embedding_dim=4, use_bias=True)
    results = {}
    for label, score_fn in (("als", als.score_fn()), ("sif", model_score_fn(sif))):
        results[label] = evaluate_ranking(score_fn, train, test, ks=(5, 10), auc=True)
    assert set(results["als"]) == set(results["sif"])
    assert results["als"]["users"] == results["sif"]["users"] == (np.diff(test.indptr) > 0).sum()
    # the task adapter of the search loop is that same call on the SIF model
    assert ImplicitTask().evaluate(sif, RankingData(train, test, ks=(5, 10), auc=True)) == results["sif"]
    # and the implicit model's numbers follow from its factors: NDCG@10 recomputed by hand
    scores = np.asarray(als.model.user_factors) @ np.asarray(als.model.item_factors).T
    ndcgs = []
    for u in np.flatnonzero(np.diff(test.indptr) > 0):
        s = np.where(train[u].toarray()[0] > 0, -np.inf, scores[u])
        top = sorted(range(len(s)), key=lambda j: (-s[j], j))[:10]
        rel = test[u].toarray()[0] > 0
        dcg = sum(1 / np.log2(r + 2) for r, j in enumerate(top) if rel[j])
        ndcgs.append(dcg / sum(1 / np.log2(r + 2) for r in range(min(rel.sum(), 10))))
    assert results["als"]["ndcg@10"] == pytest.approx(float(np.mean(ndcgs)), rel=1e-5)


def test_unknown_implicit_model_is_rejected():
    train, _ = _matrices()
    with pytest.raises(ValueError, match="unknown implicit model"):
        fit_implicit("svd", train)


def test_factor_score_fn_on_plain_arrays():
    class Fake:
        user_factors = np.arange(6, dtype=np.float32).reshape(3, 2)
        item_factors = np.ones((4, 2), dtype=np.float32)

    out = factor_score_fn(Fake())(torch.tensor([2, 0]))
    np.testing.assert_array_equal(out.numpy(), [[9, 9, 9, 9], [1, 1, 1, 1]])
