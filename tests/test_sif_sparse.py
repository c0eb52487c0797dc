"""Row-wise sparse updates of embedding tables (``sparse_rows``, nasp.optim.RowSparseOptimizer): where the
semantics coincide (Adagrad, SGD without momentum or weight decay) the sparse path equals the dense one in float64,
in the generic and the fused search step and in stand-alone training; lazy Adam changes only the batch's rows and
their state (and equals torch's SparseAdam); checkpoints with row-wise state resume exactly. The neighbourhood
vectors (SVD++-style, sif.neighbourhood) follow ``sparse_rows`` too: the same equalities with neighbourhoods."""

import math

import pytest
import torch
from test_sif_fused import NI, NU, _loaders  # the same random float64 rating batches
from torch import nn

from nasp.optim import RowSparseOptimizer, clip_grad_norm_, coalesce_rows, is_row_sparse, make_optimizer
from nasp.search import SearchConfig, Searcher
from sif.baselines import create_baseline
from sif.neighbourhood import Neighbourhood, neighbour_lists, set_neighbours
from sif.space import SIFSpace
from sif.task import RatingTask
from sif.train import TrainConfig, train_model


def _searcher(sparse, fused, opt="adagrad", run_dir=None, **cfg):
    space = SIFSpace(NU, NI, embedding_dim=3, seed=0, use_bias=True, g_skip=True, sparse_rows=sparse).double()
    config = SearchConfig(**{"epochs": 2, "seed": 0, "w_optimizer": opt, "w_lr": 0.05, "w_lr_schedule": "constant",
                             "w_momentum": 0.0, "w_weight_decay": 0.0, "a_lr": 3e-2, "log_every": 10_000,
                             "fused": fused, "grad_clip": 0.05, **cfg})
    return Searcher(space, RatingTask(reg=1e-2, train_all_heads=True), config, run_dir=run_dir, show_progress=False)


def _close(a: dict, b: dict, tol=1e-10) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=tol, atol=tol, msg=lambda m, k=k: f"{k}: {m}")


def _rows_state(opt, p) -> dict:
    return {k: v for k, v in opt.state[p].items() if k != "step"}


# ---- the optimiser on its own ---------------------------------------------------------------------------------
def _table_steps(name, steps=6, **kw):
    """(dense table after ``steps`` updates with torch's optimiser, the same with the row-wise one, the row-wise
    optimiser); gradients of random lookups with repeated rows, float64."""
    g = torch.Generator().manual_seed(1)
    init = torch.randn(50, 4, generator=g, dtype=torch.float64)
    dense, sparse = nn.Embedding.from_pretrained(init.clone(), freeze=False), nn.Embedding.from_pretrained(
        init.clone(), freeze=False, sparse=True)
    sparse.weight._nasp_row_sparse = True
    d_opt = make_optimizer(name, [dense.weight], 0.1, **kw)
    s_opt = make_optimizer(name, [sparse.weight], 0.1, **kw)
    assert isinstance(s_opt, RowSparseOptimizer) and not isinstance(d_opt, RowSparseOptimizer)
    for _ in range(steps):
        idx = torch.randint(0, 20, (16,), generator=g)                # rows 20..49 are never touched
        target = torch.randn(16, 4, generator=g, dtype=torch.float64)
        for emb, opt in ((dense, d_opt), (sparse, s_opt)):
            opt.zero_grad()
            ((emb(idx) - target) ** 2).sum().backward()
            opt.step()
    return dense.weight.detach(), sparse.weight.detach(), s_opt, init


@pytest.mark.parametrize("name", ["adagrad", "sgd"])
def test_row_wise_adagrad_and_plain_sgd_equal_the_dense_optimiser(name):
    dense, sparse, opt, init = _table_steps(name)
    torch.testing.assert_close(sparse, dense, rtol=1e-12, atol=1e-12)
    assert torch.equal(sparse[20:], init[20:])                       # untouched rows: bit-identical
    if name == "adagrad":
        s = opt.state[opt.tables[0]]["sum"]
        assert torch.all(s[20:] == 0) and torch.all(s[:20].sum(1) > 0)


def test_lazy_adam_touches_only_the_batch_rows():
    g = torch.Generator().manual_seed(2)
    ours = nn.Parameter(torch.randn(30, 3, generator=g, dtype=torch.float64))
    ours._nasp_row_sparse = True
    opt = make_optimizer("adam", [ours], 0.01)
    for step in range(5):
        idx = torch.unique(torch.randint(0, 10 if step < 3 else 30, (8,), generator=g))
        rows = torch.randn(len(idx), 3, generator=g, dtype=torch.float64)
        before = {k: v.clone() for k, v in _rows_state(opt, ours).items()}
        p_before = ours.detach().clone()
        ours.grad = torch.sparse_coo_tensor(idx.unsqueeze(0), rows, ours.shape, check_invariants=True)
        opt.step()
        untouched = torch.ones(30, dtype=torch.bool)
        untouched[idx] = False
        assert torch.equal(ours.detach()[untouched], p_before[untouched])
        assert (ours.detach()[idx] != p_before[idx]).all()
        for k, v in _rows_state(opt, ours).items():
            assert (v[idx] != 0).all(), k
            if before:
                assert torch.equal(v[untouched], before[k][untouched]), k    # untouched rows' moments unchanged
    assert opt.state[ours]["step"].item() == 5


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_lazy_adam_equals_adam_when_every_row_is_touched(name):
    """Lazy Adam differs from Adam only by skipping untouched rows (eps placed as in torch.optim.Adam)."""
    g = torch.Generator().manual_seed(3)
    init = torch.randn(12, 3, generator=g, dtype=torch.float64)
    dense, rows = nn.Parameter(init.clone()), nn.Parameter(init.clone())
    rows._nasp_row_sparse = True
    d_opt, r_opt = (make_optimizer(name, [p], 0.01, weight_decay=0.1) for p in (dense, rows))
    idx = torch.arange(12)
    for _ in range(4):
        grad = torch.randn(12, 3, generator=g, dtype=torch.float64)
        dense.grad = grad.clone()
        rows.grad = torch.sparse_coo_tensor(idx.unsqueeze(0), grad.clone(), rows.shape, check_invariants=True)
        d_opt.step()
        r_opt.step()
    torch.testing.assert_close(rows.detach(), dense.detach(), rtol=1e-12, atol=1e-12)


def test_weight_decay_applies_to_touched_rows_only():
    dense, sparse, _, init = _table_steps("adagrad", weight_decay=0.1)
    assert torch.equal(sparse[20:], init[20:])
    assert not torch.allclose(dense[20:], init[20:])                  # dense Adagrad decays every row
    torch.testing.assert_close(coalesce_rows(torch.tensor([3, 1, 3]), torch.ones(3, 2))[1],
                               torch.tensor([[1.0, 1.0], [2.0, 2.0]]))


def test_clip_takes_sparse_gradients_like_their_dense_form():
    emb, lin = nn.Embedding(10, 3, sparse=True), nn.Linear(3, 1)
    idx = torch.tensor([1, 1, 4, 7])
    lin(emb(idx)).pow(2).sum().backward()
    dense = [emb.weight.grad.to_dense(), lin.weight.grad.clone(), lin.bias.grad.clone()]
    norm = clip_grad_norm_([emb.weight, lin.weight, lin.bias], 0.01)
    ref_norm = torch.linalg.vector_norm(torch.cat([d.reshape(-1) for d in dense]))
    torch.testing.assert_close(norm, ref_norm)
    scale = 0.01 / (ref_norm + 1e-6)
    torch.testing.assert_close(emb.weight.grad.to_dense(), dense[0] * scale)
    torch.testing.assert_close(lin.weight.grad, dense[1] * scale)


# ---- the search: generic and fused step -------------------------------------------------------------------------
@pytest.mark.parametrize("opt", ["adagrad", "sgd"])
@pytest.mark.parametrize("fused", [False, True])
def test_search_with_row_wise_tables_equals_the_dense_search(opt, fused):
    runs = []
    for sparse in (False, True):
        s = _searcher(sparse, fused, opt)
        result = s.fit(*_loaders())
        assert (s.fused_step is not None) == fused
        assert isinstance(s.w_opt, RowSparseOptimizer) == sparse
        runs.append((s, result))
    (d, rd), (s, rs) = runs
    _close(d.model.state_dict(), s.model.state_dict())
    assert [h["genotype"] for h in rd.history] == [h["genotype"] for h in rs.history]
    for hd, hs in zip(rd.history, rs.history, strict=True):
        assert math.isclose(hd["valid_rmse"], hs["valid_rmse"], rel_tol=1e-10)


def test_fused_and_generic_row_wise_steps_agree_under_lazy_adam():
    a, b = _searcher(True, False, "adam"), _searcher(True, True, "adam")
    a.fit(*_loaders())
    b.fit(*_loaders())
    assert b.fused_step is not None and a.fused_step is None
    _close(a.model.state_dict(), b.model.state_dict(), tol=1e-9)
    for p, q in zip(a.model.weights(), b.model.weights(), strict=True):
        _close(a.w_opt.state[p], b.w_opt.state[q], tol=1e-9)


def test_search_step_changes_only_the_batch_rows():
    s = _searcher(True, True, "adam", epochs=1)
    tables = [s.model.embeddings[k].weight for k in "uv"]
    before = [t.detach().clone() for t in tables]
    u, i = torch.tensor([0, 0, 5]), torch.tensor([2, 3, 3])
    y = torch.zeros(3, dtype=torch.float64)
    s.fused_step = s.model.fused_nasp_step(s)
    s.fused_step((u, i, y), (u, i, y), update_alpha=False)
    for t, b, idx in zip(tables, before, (u, i), strict=True):
        changed = (t.detach() != b).any(1).nonzero().view(-1)
        assert changed.tolist() == torch.unique(idx).tolist()
        st = s.w_opt.state[t]["exp_avg"]
        assert (st != 0).any(1).nonzero().view(-1).tolist() == torch.unique(idx).tolist()


@pytest.mark.parametrize("fused", [False, True])
def test_checkpoint_with_row_wise_state_resumes_exactly(tmp_path, fused):
    whole = _searcher(True, fused, "adam")
    whole.fit(*_loaders())
    first = _searcher(True, fused, "adam", run_dir=tmp_path)
    first.callbacks = [lambda epoch, elapsed, metrics: True]          # stop after the first epoch
    first.fit(*_loaders())
    second = _searcher(True, fused, "adam", run_dir=tmp_path)
    result = second.fit(*_loaders())
    assert [h["epoch"] for h in result.history] == [0, 1]
    _close(whole.model.state_dict(), second.model.state_dict(), tol=0)
    for p, q in zip(whole.model.weights(), second.model.weights(), strict=True):
        _close(whole.w_opt.state[p], second.w_opt.state[q], tol=0)


# ---- stand-alone training ---------------------------------------------------------------------------------------
def _train(model, run_dir=None, epochs=3, **cfg):
    task = RatingTask(reg=1e-2)
    train, valid = _loaders()
    config = TrainConfig(**{"max_epochs": epochs, "batch_size": 64, "optimizer": "adagrad", "lr": 0.05,
                            "grad_clip": 0.1, "patience": 10, **cfg})
    return train_model(model, task, train, valid, config, run_dir=run_dir, show_progress=False)


@pytest.mark.parametrize("name", ["sif", "mf", "neumf"])
def test_training_with_row_wise_tables_equals_dense_training(name):
    def build(sparse):
        torch.manual_seed(0)                      # NCF-style output layers take torch's default init
        if name == "sif":
            return SIFSpace(NU, NI, embedding_dim=3, ops=("multiply",), use_bias=True, sparse_rows=sparse).double()
        return create_baseline(name, num_users=NU, num_items=NI, embedding_dim=3, sparse_rows=sparse).double()

    dense, sparse = build(False), build(True)
    assert any(is_row_sparse(p) for p in sparse.parameters()) and not any(is_row_sparse(p) for p in dense.parameters())
    rd, rs = _train(dense), _train(sparse)
    _close(dense.state_dict(), sparse.state_dict())
    assert math.isclose(rd.best_valid["rmse"], rs.best_valid["rmse"], rel_tol=1e-10)


def test_training_resumes_exactly_with_row_wise_state(tmp_path):
    def build():
        return create_baseline("mf", num_users=NU, num_items=NI, embedding_dim=3, sparse_rows=True).double()

    whole = build()
    _train(whole, optimizer="adam", lr=0.01)
    first = build()
    _train(first, run_dir=tmp_path, epochs=2, optimizer="adam", lr=0.01)
    resumed = build()
    result = _train(resumed, run_dir=tmp_path, optimizer="adam", lr=0.01)
    assert len(result.history) == 3
    _close(whole.state_dict(), resumed.state_dict(), tol=0)


def test_cosine_schedule_reaches_the_row_wise_tables():
    """A scheduler writes the lr into the row-wise optimiser's groups; both parts (tables, dense weights) follow."""
    runs = [_searcher(sparse, True, "adagrad", w_lr_schedule="cosine", w_lr_min=0.01) for sparse in (False, True)]
    for s in runs:
        s.fit(*_loaders())
    _close(runs[0].model.state_dict(), runs[1].model.state_dict())
    assert runs[1].w_opt.param_groups[0]["lr"] == runs[0].w_opt.param_groups[0]["lr"] < 0.05


def test_recommender_setting_builds_row_wise_tables_with_the_dense_result():
    from sif.recommender import create_recommender
    from sif.synthetic import planted_ratings

    ds = planted_ratings("multiply", num_users=60, num_items=80, n=3000, seed=0)
    recs = [create_recommender("mf", embedding_dim=4, sparse_rows=sparse, random_state=0,
                               train={"max_epochs": 3, "optimizer": "adagrad", "lr": 0.05, "batch_size": 256})
            .fit(ds, show_progress=False) for sparse in (False, True)]
    assert [r.sparse_rows for r in recs] == [False, True]
    assert all(is_row_sparse(p) for p in (recs[1].model_.user.weight, recs[1].model_.item_bias.weight))
    users, items = ds.users[:200], ds.items[:200]
    a, b = (r.predict(users, items, ids="index") for r in recs)
    assert abs(a - b).max() < 1e-4 and recs[1].train_result_.best_valid["rmse"] < 1.5 * ds.ratings.std()


# ---- row-wise neighbourhood vectors -----------------------------------------------------------------------------
def _with_neighbours(model: nn.Module) -> nn.Module:
    """``model`` with its neighbour lists from the training ratings of :func:`_loaders`."""
    u, i, _ = _loaders()[0].tensors
    set_neighbours(model.neighbourhoods, u, i)
    return model


def test_row_wise_neighbourhood_matches_the_dense_one_and_touches_only_the_batch_neighbours():
    g = torch.Generator().manual_seed(4)
    rows, cols = torch.randint(0, 12, (60,), generator=g), torch.randint(0, 25, (60,), generator=g)
    indptr, indices = neighbour_lists(rows, cols, 12)
    dense, sparse = (Neighbourhood(12, 25, 3, indptr, indices, init_std=0.5, generator=torch.Generator().manual_seed(0),
                                   sparse=sp).double() for sp in (False, True))
    assert is_row_sparse(sparse.weight) and not is_row_sparse(dense.weight)
    ids = torch.tensor([3, 1, 3, 7, 1])
    target = torch.randn(5, 3, generator=g, dtype=torch.float64)
    for nb in (dense, sparse):
        ((nb(ids) - target) ** 2).sum().backward()
    assert sparse.weight.grad.is_sparse and not dense.weight.grad.is_sparse
    torch.testing.assert_close(sparse.weight.grad.to_dense(), dense.weight.grad, rtol=1e-12, atol=1e-12)
    touched = torch.unique(sparse.weight.grad.coalesce().indices()[0])
    expected = torch.unique(torch.cat([indices[indptr[x]:indptr[x + 1]] for x in torch.unique(ids).tolist()]))
    assert touched.tolist() == expected.tolist()                  # the batch's neighbours, not the table
    opt = make_optimizer("adam", sparse.parameters(), 0.01)
    before = sparse.weight.detach().clone()
    opt.step()
    changed = (sparse.weight.detach() != before).any(1).nonzero().view(-1)
    assert changed.tolist() == expected.tolist()
    with pytest.raises(ValueError, match="matmul"):
        Neighbourhood(12, 25, 3, indptr, indices, mode="matmul", sparse=True)


@pytest.mark.parametrize("opt", ["adagrad", "sgd"])
def test_search_with_row_wise_neighbourhoods_equals_the_dense_search(opt):
    init = 0.1 * torch.randn(max(NU, NI), 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    runs = []
    for sparse in (False, True):
        base = _searcher(sparse, False, opt)                          # neighbourhoods take the generic step
        space = SIFSpace(NU, NI, embedding_dim=3, seed=0, use_bias=True, g_skip=True, sparse_rows=sparse,
                         neighbourhood="both").double()
        with torch.no_grad():                               # nonzero vectors: they matter from the first step
            for nb in space.neighbourhoods.values():
                nb.weight.copy_(init[:nb.num_cols])
        s = Searcher(_with_neighbours(space), base.task, base.config, show_progress=False)
        result = s.fit(*_loaders())
        assert all(is_row_sparse(nb.weight) == sparse for nb in space.neighbourhoods.values())
        assert not torch.equal(space.neighbourhoods["u"].weight.detach(), init[:NI])            # trained
        runs.append((s, result))
    (d, rd), (s, rs) = runs
    _close(d.model.state_dict(), s.model.state_dict())
    for hd, hs in zip(rd.history, rs.history, strict=True):
        assert math.isclose(hd["valid_rmse"], hs["valid_rmse"], rel_tol=1e-10)


@pytest.mark.parametrize("name", ["sif", "svdpp"])
def test_training_with_row_wise_neighbourhoods_equals_dense_training(name):
    def build(sparse):
        if name == "sif":
            model = SIFSpace(NU, NI, embedding_dim=3, ops=("multiply",), use_bias=True, sparse_rows=sparse,
                             neighbourhood="both")
        else:
            model = create_baseline(name, num_users=NU, num_items=NI, embedding_dim=3, sparse_rows=sparse)
        return _with_neighbours(model.double())

    dense, sparse = build(False), build(True)
    assert all(is_row_sparse(nb.weight) for nb in sparse.neighbourhoods.values())
    rd, rs = _train(dense), _train(sparse)
    _close(dense.state_dict(), sparse.state_dict())
    assert sparse.neighbourhoods["u"].weight.abs().sum() > 0                  # trained away from zero
    assert math.isclose(rd.best_valid["rmse"], rs.best_valid["rmse"], rel_tol=1e-10)
