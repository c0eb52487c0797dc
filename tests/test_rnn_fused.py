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
    orig = fused.needed_grads
    monkeypatch.setattr(fused, "needed_grads", lambda ctx: seen.append(orig(ctx)) or seen[-1])
    space = _space()
    onehot = _onehot(space, seed=1)
    x = torch.randint(V, (4, 3))
    h = space.init_hidden(3)
    view = space.arch.nasp_view({"cell": onehot})
    torch.autograd.grad(space(x, h, view)[0].sum(), [view.weights["cell"]])
    torch.autograd.grad(space(x, h, view)[0].sum(), [view.weights["cell"], space.lm.cell.Ws])
    assert seen == [(False, False, False, False, True, False, False, False),
                    (False, False, False, True, True, False, False, False)]


def _forward(space, mode, onehot, x, y, h, seed):
    """(loss, leaves) of one forward: every weight, h and (NASP mode) Ā."""
    view = space.arch.sparse_view({"cell": onehot}) if mode == "sparse" else space.arch.nasp_view({"cell": onehot})
    h = h.clone().requires_grad_(True)
    torch.manual_seed(seed)
    logits, hidden, raw = space(x, h, view)
    loss = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1)) + 0.3 * hidden.pow(2).sum() + raw[-1].sum()
    return loss, list(space.weights()) + [h] + ([view.weights["cell"]] if mode == "nasp" else [])


def _grads(loss, leaves, retain=False):
    grads = torch.autograd.grad(loss, leaves, allow_unused=True, retain_graph=retain)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, leaves, strict=True)]


def _poison(pool):
    """Overwrite every storage the pool may hand out (referenced by the pool alone) with NaN bytes: whatever a
    reused buffer held must not matter."""
    from nasp.buffers import _use_count

    for stores in pool._free.values():
        for st in stores:
            if _use_count(st._cdata) == 1:
                torch.empty(0, dtype=torch.uint8).set_(st).fill_(255)


def _inputs(seed, T=6, B=4):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(V, (T, B), generator=g), torch.randint(V, (T, B), generator=g),
            torch.randn(B, H, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("mode", ["sparse", "nasp"])
def test_reused_buffers_give_the_same_results_as_fresh_ones(mode):
    """Two consecutive forward/backward passes on pooled buffers (the second on the first's storages, poisoned
    in between) give bit for bit the outputs and gradients of the cell with freshly allocated buffers."""
    from nasp.buffers import BufferPool

    pooled, fresh = _space(), _space()
    fresh.load_state_dict(pooled.state_dict())
    pool = pooled.lm.cell.buffer_pool = BufferPool(min_bytes=0)
    fresh.lm.cell.buffer_pool = None
    onehots = [_onehot(pooled, seed=1, none_nodes=(4,)), _onehot(pooled, seed=2)]
    sizes = []
    for k, onehot in enumerate(onehots):
        x, y, h = _inputs(10 + k)
        loss, leaves = _forward(pooled, mode, onehot, x, y, h, seed=k)
        got = [loss] + _grads(loss, leaves)
        loss, leaves = _forward(fresh, mode, onehot, x, y, h, seed=k)
        want = [loss] + _grads(loss, leaves)
        for a, b in zip(got, want, strict=True):
            assert torch.equal(a, b)
        sizes.append(sum(len(v) for v in pool._free.values()))
        _poison(pool)
    assert sizes[0] > 0 and sizes[1] == sizes[0]                 # the second pass ran on the first's storages


@pytest.mark.parametrize("mode", ["sparse", "nasp"])
@pytest.mark.parametrize("order", ["lifo", "fifo"])
def test_two_forwards_before_their_backwards_do_not_share_buffers(mode, order):
    """Two graphs in flight at once (as the alpha step's and the weight step's may be), backwards in either
    order, and a graph kept for a second backward (retain_graph) while a third forward runs: each equals its
    own run on fresh buffers."""
    from nasp.buffers import BufferPool

    pooled, fresh = _space(), _space()
    fresh.load_state_dict(pooled.state_dict())
    pool = pooled.lm.cell.buffer_pool = BufferPool(min_bytes=0)
    fresh.lm.cell.buffer_pool = None
    onehots = [_onehot(pooled, seed=3, none_nodes=(2,)), _onehot(pooled, seed=4)]
    inputs = [_inputs(20), _inputs(21)]
    want = []
    for k in range(2):
        loss, leaves = _forward(fresh, mode, onehots[k], *inputs[k], seed=k)
        want.append([loss] + _grads(loss, leaves))
    _forward(pooled, mode, onehots[1], *inputs[1], seed=5)           # a finished call: its storages are free
    _poison(pool)
    runs = [_forward(pooled, mode, onehots[k], *inputs[k], seed=k) for k in range(2)]
    for k in ([1, 0] if order == "lifo" else [0, 1]):
        loss, leaves = runs[k]
        got = [loss] + _grads(loss, leaves, retain=k == 0)
        for a, b in zip(got, want[k], strict=True):
            assert torch.equal(a, b)
    _poison(pool)                                                    # graph 0 is retained: its buffers are busy
    loss2, leaves2 = _forward(pooled, mode, onehots[1], *inputs[1], seed=1)
    _poison(pool)
    loss, leaves = runs[0]
    for a, b in zip(_grads(loss, leaves), want[0][1:], strict=True):
        assert torch.equal(a, b)
    for a, b in zip([loss2] + _grads(loss2, leaves2), want[1], strict=True):
        assert torch.equal(a, b)


def test_buffer_pool_is_not_copied_and_releases_sizes():
    import copy
    import pickle

    from nasp.buffers import BufferPool

    space = _space()
    pool = space.lm.cell.buffer_pool = BufferPool(min_bytes=0, max_sizes=2)
    loss, leaves = _forward(space, "sparse", _onehot(space, seed=1), *_inputs(1), seed=0)
    _grads(loss, leaves)
    assert pool.held_bytes() > 0 and len(pool._free) <= 2
    assert copy.deepcopy(space).lm.cell.buffer_pool.held_bytes() == 0
    assert pickle.loads(pickle.dumps(pool)).held_bytes() == 0
    busy = pool.empty((3, 5), torch.float64, torch.device("cpu"))
    assert pool.empty((3, 5), torch.float64, torch.device("cpu")).data_ptr() != busy.data_ptr()
    ptr = busy.data_ptr()
    del busy
    assert pool.empty((5, 3), torch.float64, torch.device("cpu")).data_ptr() == ptr      # free again: reused
    pool.clear()
    assert pool.held_bytes() == 0


@pytest.mark.parametrize("mode", ["sparse", "nasp"])
@pytest.mark.parametrize("steps", [1, 4])
def test_backward_factor_blocks_do_not_change_results(monkeypatch, mode, steps):
    """The backward's derivative factors formed for blocks of 1 or 4 of the 6 time steps (as at large sizes)
    instead of all at once: bit for bit the same outputs and gradients."""
    from nasp.spaces.rnn import fused

    space = _space()
    onehot = _onehot(space, seed=5, none_nodes=(6,))
    x, y, h = _inputs(30)
    loss, leaves = _forward(space, mode, onehot, x, y, h, seed=0)
    want = [loss] + _grads(loss, leaves)
    per_step = (space.num_nodes + 1) * 4 * H * 8                    # bytes of one time step's factors (float64)
    monkeypatch.setattr(fused, "FACTOR_BYTES", steps * per_step)
    loss, leaves = _forward(space, mode, onehot, x, y, h, seed=0)
    for a, b in zip([loss] + _grads(loss, leaves), want, strict=True):
        assert torch.equal(a, b)
