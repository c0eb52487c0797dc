"""SIF's effective penalty, head initialisation and head ball: hand-checked values and the rescaling invariance."""

import math

import pytest
import torch

from sif.interactions import MIXTURES, PRIMITIVES
from sif.space import SIFSpace
from sif.task import RatingTask


def _z(dim=3, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"u": torch.randn(n, dim, generator=g), "v": torch.randn(n, dim, generator=g)}


def _onehot_view(m, op):
    w = torch.zeros(1, len(m.names))
    w[0, m.names.index(op)] = 1.0
    return m.arch.sparse_view({"interaction": w})


def test_effective_penalty_values():
    m = SIFSpace(3, 3, embedding_dim=2)
    z = {"u": torch.tensor([[1.0, 2.0]]), "v": torch.tensor([[3.0, -1.0]])}
    with torch.no_grad():
        for h in m.heads:
            h.weight.copy_(torch.arange(1.0, h.in_features + 1).neg() if h.in_features == 2 else
                           torch.tensor([1.0, -2.0, 0.5, 3.0]))
    # multiply: |w| . (u^2 + v^2) = 1*(1+9) + 2*(4+1) = 20
    assert m.effective_penalty(z, _onehot_view(m, "multiply")).item() == pytest.approx(20.0)
    # plus: k w^2 . (u^2 + v^2) = 2 * (1*10 + 4*5) = 60
    assert m.effective_penalty(z, _onehot_view(m, "plus")).item() == pytest.approx(60.0)
    # concat (w_u = [1, -2], w_v = [0.5, 3]): 2 * (1*1 + 4*4 + 0.25*9 + 9*1) = 56.5
    assert m.effective_penalty(z, _onehot_view(m, "concat")).item() == pytest.approx(56.5)
    # multiply+max (w_mul = [1, -2], w_max = [0.5, 3]): (|w_mul| + k w_max^2) . (u^2 + v^2) = 1.5*10 + 20*5 = 115
    mix = SIFSpace(3, 3, embedding_dim=2, ops=("multiply+max",))
    with torch.no_grad():
        mix.heads[0].weight.copy_(torch.tensor([1.0, -2.0, 0.5, 3.0]))
    assert mix.effective_penalty(z, mix.sparse_view()).item() == pytest.approx(115.0)


@pytest.mark.parametrize("op", PRIMITIVES + MIXTURES)
def test_effective_penalty_is_invariant_to_head_rescaling(op):
    """Scaling the head up and the embeddings down leaves prediction AND penalty unchanged (no escape route)."""
    m = SIFSpace(3, 3, embedding_dim=3, ops=(op,), g_skip=True)
    z = _z()
    view = m.sparse_view()
    c = 3.0
    p0, out0 = m.effective_penalty(z, view), m.interact(z, view)
    with torch.no_grad():
        w = m.heads[0].weight.view(-1, 3)                  # one block of k = 3 per part (a mixture has two)
        parts = op.split("+") if "+" in op else [op] * w.shape[0]
        for part, block in zip(parts, w, strict=True):
            block.mul_(c * c if part == "multiply" else c)
    zs = {s: t / c for s, t in z.items()}
    torch.testing.assert_close(m.interact(zs, view), out0)
    torch.testing.assert_close(m.effective_penalty(zs, view), p0)


def test_effective_penalty_weights_ops_under_nasp_view():
    m = SIFSpace(3, 3, embedding_dim=2, ops=PRIMITIVES)
    z = _z(dim=2)
    onehot = torch.zeros(1, 5)
    onehot[0, 1] = 1.0
    view = m.arch.nasp_view({"interaction": onehot})
    p = m.effective_penalty(z, view)
    (grad,) = torch.autograd.grad(p, [view.weights["interaction"]])
    per_op = torch.stack([m.effective_penalty(z, _onehot_view(m, op)) for op in m.names]).detach()
    torch.testing.assert_close(p.detach(), per_op[1])
    torch.testing.assert_close(grad[0], per_op)          # d/dĀ_k = penalty of op k


def test_effective_penalty_in_task_and_tensor_fallback():
    m = SIFSpace(5, 6, embedding_dim=2, use_bias=True)
    batch = (torch.tensor([0, 1, 4]), torch.tensor([2, 5, 0]), torch.tensor([0.5, -1.0, 2.0]))
    a = RatingTask(reg=0.0).loss(m, batch, None, "train")
    b = RatingTask(reg=0.5, penalty="effective").loss(m, batch, None, "train")
    emb, _ = m.encode(*batch[:2])
    expect = 0.5 * m.effective_penalty(m.transform(emb), m.sparse_view())
    torch.testing.assert_close(b - a, expect)
    t = SIFSpace(3, 3, num_contexts=2, embedding_dim=2)
    zt = {"u": torch.ones(2, 2), "v": 2 * torch.ones(2, 2), "c": torch.zeros(2, 2)}
    assert t.effective_penalty(zt, t.sparse_view()).item() == pytest.approx((4 + 16) / 2)


def test_head_init_and_radius():
    m = SIFSpace(3, 3, embedding_dim=4, head_init="ones", head_radius=math.sqrt(4))
    assert all(torch.equal(h.weight, torch.ones_like(h.weight)) for h in m.heads)
    m.after_weight_step()              # multiply/plus heads (norm 2) stay; concat's (norm sqrt 8) is projected
    assert torch.equal(m.heads[1].weight, torch.ones(1, 4))
    torch.testing.assert_close(m.heads[4].weight.norm(), torch.tensor(2.0))
    free = SIFSpace(3, 3, embedding_dim=4, head_init="ones", head_radius=math.inf)
    free.after_weight_step()
    assert torch.equal(free.heads[4].weight, torch.ones(1, 8))
    with pytest.raises(ValueError, match="head_init"):
        SIFSpace(3, 3, head_init="zeros")
    with pytest.raises(ValueError, match="head_radius"):
        SIFSpace(3, 3, head_radius=0.0)


def test_recommenders_pass_the_options_to_the_space():
    from data_loaders import random_split
    from sif.recommender import FixedInteractionRecommender, SIFRecommender
    from sif.synthetic import planted_ratings

    data = planted_ratings("multiply", num_users=20, num_items=30, n=400, seed=1)
    train, valid, _ = random_split(data, (0.8, 0.2, 0.0), seed=0)
    kw = dict(embedding_dim=4, head_init="ones", head_radius=2.0, penalty="effective",
              train={"max_epochs": 1, "batch_size": 128})
    fixed = FixedInteractionRecommender("multiply", **kw).fit(train, valid, show_progress=False)
    sif = SIFRecommender(search={"epochs": 1}, **kw).fit(train, valid, show_progress=False)
    for rec in (fixed, sif):
        assert rec.model_.head_init == "ones" and rec.model_.head_radius == 2.0
        assert rec.task_.penalty == "effective"
        assert rec.get_params()["penalty"] == "effective"
