import numpy as np
import pytest
import scipy.sparse as sp
import torch

from sif.ranking import evaluate_ranking

pytest.importorskip("cornac")

from sif.peers import fit_ease  # noqa: E402


def _matrix(seed=0, num_users=30, num_items=12):
    rng = np.random.default_rng(seed)
    x = (rng.random((num_users, num_items)) < 0.3).astype(np.float64)
    x[:, 5] = 0.0                      # an item with no training positives
    return x


def _closed_form(x, lamb):
    p = np.linalg.inv(x.T @ x + lamb * np.eye(x.shape[1]))
    b = -p / np.diag(p)
    np.fill_diagonal(b, 0.0)
    return b


@pytest.mark.parametrize("lamb", [0.5, 2.0, 50.0])
def test_ease_matches_the_numpy_closed_form(lamb):
    x = _matrix()
    fit = fit_ease(sp.csr_matrix(x), lamb=lamb)
    np.testing.assert_allclose(fit.B, _closed_form(x, lamb), rtol=1e-9, atol=1e-12)
    assert np.all(np.diag(fit.B) == 0) and np.all(fit.B[5] == 0) and np.all(fit.B[:, 5] == 0)
    users = torch.tensor([0, 7, 29])
    np.testing.assert_allclose(fit.score_fn()(users).numpy(), (x @ _closed_form(x, lamb))[[0, 7, 29]],
                               rtol=1e-4, atol=1e-5)


def test_ease_positive_only_clips_negative_weights():
    x = _matrix(1)
    fit = fit_ease(sp.csr_matrix(x), lamb=1.0, positive_only=True)
    np.testing.assert_allclose(fit.B, np.clip(_closed_form(x, 1.0), 0, None), rtol=1e-9, atol=1e-12)


def test_ease_ranks_a_planted_co_occurrence_through_the_shared_evaluation():
    # users who like item 0 also like item 1; held-out item 1 must be ranked first for those users
    x = np.zeros((20, 6))
    x[:10, [0, 1]] = 1.0
    x[10:, [2, 3]] = 1.0
    train = x.copy()
    train[0, 1] = 0.0
    held = np.zeros_like(x)
    held[0, 1] = 1.0
    fit = fit_ease(sp.csr_matrix(train), lamb=1.0)
    m = evaluate_ranking(fit.score_fn(), sp.csr_matrix(train), sp.csr_matrix(held), ks=(1,))
    assert m["hr@1"] == 1.0


def test_ease_rejects_a_bad_lambda():
    with pytest.raises(ValueError, match="lamb"):
        fit_ease(sp.csr_matrix(_matrix()), lamb=0.0)


def test_missing_cornac_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "cornac", None)
    with pytest.raises(ImportError, match=r"nasp-sif\[peers\]"):
        fit_ease(sp.csr_matrix(_matrix()), lamb=1.0)
