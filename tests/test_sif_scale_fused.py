"""The fused SIF step at scale (issue 17): g on a side's distinct rows only when they are few, every op's output
as a sum of per-basis products (sif.fused.op_terms). Float64, 1e-9: the fused step equals the generic one whether
each side goes through g on its distinct rows or on every rating, with dense and with row-wise tables."""

import math

import pytest
import torch

from nasp.search import SearchConfig, Searcher
from nasp.streams import TensorLoader
from sif.fused import SUPPORTED, op_terms
from sif.interactions import INTERACTIONS
from sif.space import UNIQUE_ROWS_FRACTION, SIFSpace
from sif.task import RatingTask


@pytest.mark.parametrize("name", SUPPORTED["ops"])
def test_op_terms_give_the_records_output(name):
    """op(u, v) @ w equals the sum over the op's terms of basis @ (its block of w), for every supported op."""
    g = torch.Generator().manual_seed(0)
    k = 5
    u, v = torch.randn(40, k, generator=g, dtype=torch.float64), torch.randn(40, k, generator=g, dtype=torch.float64)
    op = INTERACTIONS[name]
    w = torch.randn(op.out_dim(k), generator=g, dtype=torch.float64)
    bases = {"u": u, "v": v, "uv": u * v, "max": torch.maximum(u, v), "min": torch.minimum(u, v)}
    total = sum(bases[b] @ w[blk * k:(blk + 1) * k] for b, blk in op_terms(name))
    torch.testing.assert_close(total, op(u, v) @ w, rtol=1e-12, atol=1e-12)


def _loaders(nu, ni, batch=64, n_train=640, n_valid=384):
    g = torch.Generator().manual_seed(3)
    n = n_train + n_valid
    u, i = torch.randint(nu, (n,), generator=g), torch.randint(ni, (n,), generator=g)
    y = torch.randn(n, generator=g, dtype=torch.float64)
    return (TensorLoader(u[:n_train], i[:n_train], y[:n_train], batch_size=batch, seed=0),
            TensorLoader(u[n_train:], i[n_train:], y[n_train:], batch_size=batch, seed=1))


def _fit(fused, nu, ni, sparse, task_kw):
    space = SIFSpace(nu, ni, embedding_dim=3, seed=0, use_bias=True, g_skip=True, sparse_rows=sparse).double()
    cfg = SearchConfig(epochs=2, seed=0, w_optimizer="adagrad", w_lr=0.05, w_lr_schedule="constant", a_lr=3e-2,
                       log_every=10_000, fused=fused, grad_clip=0.5)
    s = Searcher(space, RatingTask(reg=1e-2, **task_kw), cfg, show_progress=False)
    return s, s.fit(*_loaders(nu, ni))


# users: few distinct rows per batch of 64 (30 users) or nearly all distinct (5000)
SIZES = [pytest.param(30, 5000, id="users-distinct-items-all"), pytest.param(5000, 5000, id="both-all"),
         pytest.param(5000, 30, id="users-all-items-distinct")]
TASKS = [pytest.param({"penalty": "l2", "train_all_heads": True}, id="l2-on-e-all-heads"),
         pytest.param({"penalty": "effective"}, id="effective"),
         pytest.param({"penalty": "norm", "on_transformed": True, "train_all_heads": True}, id="norm-on-z")]


@pytest.mark.parametrize("task_kw", TASKS)
@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize(("nu", "ni"), SIZES)
def test_fused_equals_generic_with_and_without_distinct_rows(nu, ni, sparse, task_kw):
    few = {n: SIFSpace.distinct_rows(torch.randint(n, (64,), generator=torch.Generator().manual_seed(0)))[2]
           for n in (30, 5000)}
    assert few == {30: True, 5000: False}, UNIQUE_ROWS_FRACTION            # both paths are exercised
    (g, rg), (f, rf) = (_fit(fused, nu, ni, sparse, task_kw) for fused in (False, True))
    assert g.fused_step is None and f.fused_step is not None
    for key, a in g.model.state_dict().items():
        torch.testing.assert_close(a, f.model.state_dict()[key], rtol=1e-9, atol=1e-9, msg=key)
    for p, q in zip(g.model.weights(), f.model.weights(), strict=True):
        for name, a in g.w_opt.state[p].items():
            torch.testing.assert_close(a, f.w_opt.state[q][name], rtol=1e-9, atol=1e-9, msg=name)
    for hg, hf in zip(rg.history, rf.history, strict=True):
        for key in ("train_loss", "alpha_loss", "valid_rmse"):
            assert math.isclose(hg[key], hf[key], rel_tol=1e-9), (key, hg[key], hf[key])
        assert hg["genotype"] == hf["genotype"]


@pytest.mark.parametrize("skip", [False, True])
def test_g_through_the_closed_form_equals_plain_torch_ops(monkeypatch, skip):
    """g under autograd on the CPU runs MLPClosedForm (numpy's tanh, the hand-written backward): its output and
    every gradient equal those of g in plain torch ops (float64, 1e-12), and gradcheck passes."""
    from sif import transform

    g = transform.ElementwiseMLP(2, hidden=4, skip=skip).double()
    with torch.no_grad():
        g.w2.normal_(generator=torch.Generator().manual_seed(1))          # a non-zero output layer with skip too
    x = torch.randn(2, 7, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2), requires_grad=True)
    dz = torch.randn(2, 7, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))

    def run():
        out = g(x)
        grads = torch.autograd.grad(out, [x, *g.parameters()], dz)
        return out.detach(), grads

    out, grads = run()
    assert transform._closed_form_ok(x.reshape(2, 1, -1), g.w1)
    monkeypatch.setattr(transform, "_closed_form_ok", lambda *a: False)
    ref_out, ref_grads = run()
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    monkeypatch.undo()
    fn = transform._MLPFunction.apply
    assert torch.autograd.gradcheck(lambda *t: fn(*t, skip, g.pool), (x.detach().reshape(2, 1, -1).requires_grad_(),
                                                             *(p.detach().requires_grad_() for p in g.parameters())))


def test_tanh_is_torch_tanh_up_to_rounding():
    from sif.transform import tanh_

    x = torch.cat([torch.randn(1000, dtype=torch.float64) * s for s in (1e-8, 0.1, 1, 5, 40)])
    for dtype, tol in ((torch.float32, 1e-6), (torch.float64, 1e-15)):
        t = x.to(dtype)
        y = t.clone()
        assert tanh_(y) is y                                       # in place
        torch.testing.assert_close(y, torch.tanh(t), rtol=tol, atol=tol)
    assert tanh_(torch.tensor([float("nan")])).isnan().all()
    bf = x.to(torch.bfloat16)
    assert torch.equal(tanh_(bf.clone()), torch.tanh(bf))          # other dtypes: torch's own


@pytest.mark.parametrize("sparse", [False, True])
def test_encode_splits_rows_and_biases_with_the_same_values_and_gradients(sparse):
    """encode_parts' split of each looked-up row into (embedding, bias) gives bit-identical outputs and table
    gradients to slicing the rows (the split's backward is one cat instead of two zero-filled copies)."""
    model = SIFSpace(50, 40, embedding_dim=4, use_bias=True, sparse_rows=sparse).double()
    u, i = torch.randint(50, (200,)), torch.randint(40, (200,))
    enc = model.encode_parts(u, i)
    rows = {"u": model.embeddings["u"](u), "v": model.embeddings["v"](i)}
    bias = model.global_bias + sum(r[:, 4] for r in rows.values())
    assert torch.equal(enc.bias, bias)
    (enc.bias.sum() + sum((r * r).sum() for r in enc.rows)).backward()
    got = [model.embeddings[s].weight.grad.to_dense().clone() for s in "uv"]
    model.zero_grad()
    (bias.sum() + sum((r[:, :4] ** 2).sum() for r in rows.values())).backward()
    for s, g in zip("uv", got, strict=True):
        assert torch.equal(g, model.embeddings[s].weight.grad.to_dense())
