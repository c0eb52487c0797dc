"""The fused one-hot recurrent cell (nasp/spaces/rnn/fused.py) equals autograd through the per-node path (float64):
outputs, every weight gradient, the input gradient and (NASP alpha step) dL/dĀ."""

import pytest
import torch
import torch.nn.functional as F
from test_rnn_alpha_step import _onehot  # the same random one-hot C1 points

from nasp.arch import DENSE, ArchView
from nasp.spaces.rnn import PRIMITIVES_DARTS, PRIMITIVES_NASP, RNNSearchSpace

V, H = 30, 10
DROPOUTS = {"dropout": 0.5, "dropout_h": 0.3, "dropout_x": 0.4, "dropout_i": 0.2, "dropout_e": 0.1,
            "weight_drop": 0.2}


def _space(ops=PRIMITIVES_DARTS, batchnorm=True, fused=True):
    space = RNNSearchSpace(V, H, H, ops=ops, batchnorm=batchnorm, seed=3, fused_cell=fused,
                           **DROPOUTS).double().train()
    with torch.no_grad():                      # larger node maps than the init: gates far from 0.5, relu both ways
        space.lm.cell.Ws.normal_(0, 0.4)
        space.lm.cell.W0.normal_(0, 0.3)
    return space


def _chain(space):
    """Node j on node j - 1, activations cycling through all four: the longest dependency chain."""
    a = torch.zeros(len(space.pairs), len(space.ops), dtype=torch.float64)
    acts = [k for k, o in enumerate(space.ops) if o != "none"]
    for j in range(1, space.num_nodes + 1):
        r = next(r for r, i in space.rows_of[j] if i == j - 1)
        a[r, acts[j % len(acts)]] = 1.0
    return a


def _run(space, mode, onehot, x, y, h, seed):
    """(outputs, hidden, grads of every weight and of h, dL/dĀ or None)."""
    view = space.arch.sparse_view({"cell": onehot}) if mode == "sparse" else space.arch.nasp_view({"cell": onehot})
    h = h.clone().requires_grad_(True)
    torch.manual_seed(seed)                    # the same dropout masks in every run
    logits, hidden, raw = space(x, h, view)
    loss = (F.cross_entropy(logits.reshape(-1, V), y.reshape(-1)) + 0.3 * hidden.pow(2).sum()
            + (raw[1:] - raw[:-1]).pow(2).mean() + raw[-1].sum())
    params = [p for p in space.weights()]
    leaves = params + [h] + ([view.weights["cell"]] if mode == "nasp" else [])
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, leaves, strict=True)]
    return logits, hidden, grads


@pytest.mark.parametrize("mode", ["sparse", "nasp"])
@pytest.mark.parametrize("batchnorm", [True, False])
@pytest.mark.parametrize("cell", ["random0", "random1_none", "chain"])
def test_fused_cell_equals_per_node_autograd(mode, batchnorm, cell):
    ops = PRIMITIVES_DARTS if cell != "chain" else PRIMITIVES_NASP
    fused, plain = _space(ops, batchnorm), _space(ops, batchnorm, fused=False)
    plain.load_state_dict(fused.state_dict())
    onehot = (_chain(fused) if cell == "chain"
              else _onehot(fused, seed=int(cell[6]), none_nodes=(3, 6) if "none" in cell else ()))
    g = torch.Generator().manual_seed(5)
    x, y = torch.randint(V, (6, 4), generator=g), torch.randint(V, (6, 4), generator=g)
    h = torch.randn(4, H, generator=g, dtype=torch.float64)
    got = _run(fused, mode, onehot, x, y, h, seed=1)
    want = _run(plain, mode, onehot, x, y, h, seed=1)
    torch.testing.assert_close(got[0], want[0], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got[1], want[1], rtol=1e-9, atol=1e-9)
    assert len(got[2]) == len(want[2])
    for a, b in zip(got[2], want[2], strict=True):
        # batch norm of a 'none' node's zero state scales its gradient by 1/sqrt(eps): relative tolerance as well
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    assert got[2][-1].abs().max() > 1e-3                       # non-trivial (dL/dh, or dL/dĀ in NASP mode)


@pytest.mark.parametrize("mode", ["sparse", "nasp"])
def test_fused_cell_equals_per_node_autograd_in_eval_mode(mode):
    """No dropout masks; batch norm still on the batch statistics."""
    fused, plain = _space().eval(), _space(fused=False).eval()
    plain.load_state_dict(fused.state_dict())
    onehot = _onehot(fused, seed=2, none_nodes=(5,))
    g = torch.Generator().manual_seed(7)
    x, y = torch.randint(V, (5, 3), generator=g), torch.randint(V, (5, 3), generator=g)
    h = torch.randn(3, H, generator=g, dtype=torch.float64)
    got, want = _run(fused, mode, onehot, x, y, h, seed=0), _run(plain, mode, onehot, x, y, h, seed=0)
    torch.testing.assert_close(got[0], want[0], rtol=1e-9, atol=1e-9)
    for a, b in zip(got[2], want[2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_fused_nasp_alpha_grad_equals_dense_onehot_autograd_in_eval_mode():
    """No dropout masks (eval mode): the fused alpha step against autograd through the dense one-hot mixture."""
    space = _space().eval()
    onehot = _onehot(space, seed=8, none_nodes=(2,))
    g = torch.Generator().manual_seed(6)
    x, y = torch.randint(V, (5, 3), generator=g), torch.randint(V, (5, 3), generator=g)
    h = torch.randn(3, H, generator=g, dtype=torch.float64)
    grads = []
    for view in (space.arch.nasp_view({"cell": onehot}),
                 ArchView(DENSE, {"cell": onehot.clone().requires_grad_(True)})):
        logits, _, _ = space(x, h, view)
        grads.append(torch.autograd.grad(F.cross_entropy(logits.reshape(-1, V), y.reshape(-1)),
                                         view.weights["cell"])[0])
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-9)


def test_autocast_uses_the_per_node_path():
    space = RNNSearchSpace(V, H, H, seed=0)
    view = space.arch.sparse_view()
    assert space._fused(view, "cpu") is not None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert space._fused(view, "cpu") is None
    assert space._fused(space.arch.softmax_view(), "cpu") is None


def test_alpha_only_backward_skips_the_weight_gradients(monkeypatch):
    """autograd.grad w.r.t. Ā alone (the NASP alpha step) computes no weight gradients in the fused backward;
    asking for W_j as well computes it (and only what is asked)."""
    from nasp.spaces.rnn import fused

    seen = []
    orig = fused._needed
    monkeypatch.setattr(fused, "_needed", lambda ctx: seen.append(orig(ctx)) or seen[-1])
    space = _space()
    onehot = _onehot(space, seed=1)
    x = torch.randint(V, (4, 3))
    h = space.init_hidden(3)
    view = space.arch.nasp_view({"cell": onehot})
    torch.autograd.grad(space(x, h, view)[0].sum(), [view.weights["cell"]])
    torch.autograd.grad(space(x, h, view)[0].sum(), [view.weights["cell"], space.lm.cell.Ws])
    assert seen == [(False, False, False, False, True, False, False), (False, False, False, True, True, False, False)]
