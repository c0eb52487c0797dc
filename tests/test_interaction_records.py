"""Contract test over the INTERACTIONS registry (one record per op): every record's closed-form gradient and
effective-penalty derivative agree with autograd in float64, its head width is k (2k for concat), and every
registered op is usable by the search space, the fused step and a fixed-op model."""

import pytest
import torch

from nasp.search import SearchConfig, Searcher
from nasp.streams import TensorLoader
from sif.baselines import CP, GMF, NCF, BiasedMF
from sif.fused import FusedSIFStep
from sif.interactions import INTERACTIONS, MIXTURES, PRIMITIVES, mixture, tensor_candidates
from sif.space import SIFSpace
from sif.task import RatingTask

TOL = {"rtol": 1e-12, "atol": 1e-12}


def _inputs(seed, shape=(7, 4), ties=False):
    g = torch.Generator().manual_seed(seed)
    a, b = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(2))
    if ties:
        b[:, :2] = a[:, :2]                      # max/min split tied gradients evenly, like torch
    return a.requires_grad_(), b.requires_grad_()


def test_registry_holds_the_primitives_with_their_widths():
    assert tuple(INTERACTIONS) == PRIMITIVES + MIXTURES
    a, b = _inputs(0)
    for name, op in INTERACTIONS.items():
        assert op.name == name
        assert op.out_dim(4) == (8 if name == "concat" or "+" in name else 4) == op(a, b).shape[1]
        assert op.split_sides == (name == "concat")


def test_mixture_is_its_parts_side_by_side():
    a, b = _inputs(6)
    mix = INTERACTIONS["multiply+max"]
    torch.testing.assert_close(mix(a, b), torch.cat([a * b, torch.maximum(a, b)], dim=-1))
    with pytest.raises(ValueError, match="element-wise"):
        mixture("multiply", "concat")


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("name", list(INTERACTIONS))
def test_closed_form_gradient_matches_autograd(name, ties):
    op = INTERACTIONS[name]
    a, b = _inputs(1, ties=ties)
    dout = torch.randn(op(a, b).shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    expected = torch.autograd.grad((op(a, b) * dout).sum(), (a, b))
    for got, want in zip(op.grad(a.detach(), b.detach(), dout), expected, strict=True):
        torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("name", list(INTERACTIONS))
def test_effective_penalty_scale_derivative_matches_autograd(name):
    op = INTERACTIONS[name]
    w = torch.randn(op.out_dim(3), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    w.requires_grad_()
    dscale = torch.linspace(0.5, 2.0, w.numel(), dtype=torch.float64)
    (want,) = torch.autograd.grad((op.penalty_scale(w, 3) * dscale).sum(), w)
    torch.testing.assert_close(op.penalty_scale_grad(w.detach(), 3) * dscale, want, **TOL)


def test_two_stage_candidates_compose_the_records_gradients():
    g = torch.Generator().manual_seed(4)
    cands = tensor_candidates()
    assert len(cands) == 53
    for cand in cands:
        inputs = {s: torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True) for s in "uvc"}
        out = cand(inputs)
        assert out.shape[1] == cand.out_dim(3)
        dout = torch.randn(out.shape, generator=g, dtype=torch.float64)
        want = torch.autograd.grad((out * dout).sum(), [inputs[s] for s in "uvc"])
        got = cand.grad({s: t.detach() for s, t in inputs.items()}, dout)
        for s, w in zip("uvc", want, strict=True):
            torch.testing.assert_close(got[s], w, **TOL, msg=lambda m, c=cand.name, s=s: f"{c} d/d{s}: {m}")


@pytest.mark.parametrize("name", list(INTERACTIONS))
def test_every_op_is_usable_by_the_space_the_fused_step_and_a_fixed_model(name):
    nu, ni, n = 6, 7, 64
    g = torch.Generator().manual_seed(5)
    u, i = torch.randint(nu, (n,), generator=g), torch.randint(ni, (n,), generator=g)
    y = torch.randn(n, generator=g, dtype=torch.float64)
    space = SIFSpace(nu, ni, embedding_dim=3, ops=(name,)).double()
    assert space(u, i).shape == (n,) and space.heads[0].in_features == INTERACTIONS[name].out_dim(3)
    with torch.no_grad():                                   # evaluation: the g(table) path gives the same values
        space.eval()
        torch.testing.assert_close(space(u, i), space.interact(space.transform(space.encode(u, i)[0]),
                                                               space.sparse_view()))
    s = Searcher(space, RatingTask(), SearchConfig(epochs=1, w_optimizer="adagrad", fused=True), show_progress=False)
    s.fit(TensorLoader(u, i, y, batch_size=32, seed=0), TensorLoader(u, i, y, batch_size=32, seed=1))
    assert isinstance(s.fused_step, FusedSIFStep)
    fixed = SIFSpace(nu, ni, embedding_dim=3, ops=name)      # a fixed interaction function: the space with one op
    assert fixed.names == (name,) and fixed(u, i).shape == (n,)


def test_classic_models_use_the_records():
    """MF, GMF, NCF and CP combine embeddings with the records' multiply / concat / multiply_multiply."""
    u, i, c = torch.tensor([0, 1, 2]), torch.tensor([1, 0, 2]), torch.tensor([0, 0, 1])
    mf, gmf, ncf = BiasedMF(3, 3, use_bias=False), GMF(3, 3), NCF(3, 3)
    torch.testing.assert_close(mf(u, i), INTERACTIONS["multiply"](mf.user(u), mf.item(i)).sum(-1))
    torch.testing.assert_close(gmf(u, i), gmf.head(INTERACTIONS["multiply"](gmf.user(u), gmf.item(i))).squeeze(-1))
    torch.testing.assert_close(ncf(u, i), ncf.out(ncf.mlp(INTERACTIONS["concat"](ncf.user(u), ncf.item(i))))
                               .squeeze(-1))
    cp = CP(3, 3, num_contexts=2, use_bias=False)
    mm = next(t for t in tensor_candidates() if t.name == "multiply_multiply")
    torch.testing.assert_close(cp(u, i, c), mm({"u": cp.user(u), "v": cp.item(i), "c": cp.context(c)}).sum(-1))
