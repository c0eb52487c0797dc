"""NASP's contracted alpha step on the recurrent cell equals autograd through the dense one-hot mixture (float64)."""

import pytest
import torch
import torch.nn.functional as F

from nasp.arch import DENSE, ArchView
from nasp.spaces.rnn import PRIMITIVES_DARTS, PRIMITIVES_NASP, LanguageModelTask, RNNSearchSpace
from nasp.strategies import nasp_alpha_grads

V, H = 30, 10
DROPOUTS = {"dropout": 0.5, "dropout_h": 0.3, "dropout_x": 0.4, "dropout_i": 0.2, "dropout_e": 0.1,
            "weight_drop": 0.2}


def _space(ops=PRIMITIVES_DARTS, batchnorm=True, **kw):
    space = RNNSearchSpace(V, H, H, ops=ops, batchnorm=batchnorm, seed=3, **{**DROPOUTS, **kw}).double().train()
    with torch.no_grad():                      # larger node maps than the init: gates far from 0.5, relu both ways
        space.lm.cell.Ws.normal_(0, 0.4)
        space.lm.cell.W0.normal_(0, 0.3)
    return space


def _onehot(space, seed: int, none_nodes=()) -> torch.Tensor:
    """A random C1 point: per node one random predecessor and op ('none' for the nodes in none_nodes)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.zeros(len(space.pairs), len(space.ops), dtype=torch.float64)
    real = [k for k, o in enumerate(space.ops) if o != "none"]
    for j in range(1, space.num_nodes + 1):
        r, _ = space.rows_of[j][int(torch.randint(j, (1,), generator=g))]
        k = space.ops.index("none") if j in none_nodes else real[int(torch.randint(len(real), (1,), generator=g))]
        a[r, k] = 1.0
    return a


def _loss(out, y):
    logits, hidden, raw = out
    return F.cross_entropy(logits.reshape(-1, V), y.reshape(-1)) + 0.3 * hidden.pow(2).sum() + raw[-1].sum()


def _grads(space, view, x, y, h, seed):
    torch.manual_seed(seed)                    # the same dropout masks in every run
    return torch.autograd.grad(_loss(space(x, h, view), y), view.weights["cell"])[0]


def _data(T=7, B=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randint(V, (T, B), generator=g), torch.randint(V, (T, B), generator=g)
    return x, y, torch.randn(B, H, generator=g, dtype=torch.float64)       # carried (non-zero) hidden state


@pytest.mark.parametrize("selection", range(4))
@pytest.mark.parametrize("batchnorm", [True, False])
def test_contracted_alpha_grad_equals_dense_onehot_autograd(selection, batchnorm):
    space = _space(batchnorm=batchnorm)
    x, y, h = _data(seed=selection)
    onehot = _onehot(space, seed=10 + selection, none_nodes=(3,) if selection % 2 else ())
    nasp = space.arch.nasp_view({"cell": onehot})
    assert space.nasp_alpha_step == "contract"
    got = _grads(space, nasp, x, y, h, seed=selection)
    want = _grads(space, ArchView(DENSE, {"cell": onehot.clone().requires_grad_(True)}), x, y, h, seed=selection)
    # non-trivial: most entries non-zero (a 'none' node's state is 0, so its successors' tanh/relu/identity are 0)
    assert want.abs().max() > 1e-2 and (want[:, 1:] != 0).float().mean() > 0.75
    # batch norm of a 'none' node's zero state scales its gradient by 1/sqrt(eps): relative tolerance as well
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_contracted_equals_graph_alpha_step_and_forward():
    space = _space(ops=PRIMITIVES_NASP)
    x, y, h = _data(T=5, B=3, seed=5)
    onehot = _onehot(space, seed=2)
    torch.manual_seed(1)
    out_contract = space(x, h, space.arch.nasp_view({"cell": onehot}))
    torch.manual_seed(1)
    out_sparse = space(x, h, space.arch.sparse_view({"cell": onehot}))
    for u, v in zip(out_contract, out_sparse, strict=True):
        torch.testing.assert_close(u, v, rtol=0, atol=1e-12)
    got = _grads(space, space.arch.nasp_view({"cell": onehot}), x, y, h, seed=4)
    space.nasp_alpha_step = "graph"
    want = _grads(space, space.arch.nasp_view({"cell": onehot}), x, y, h, seed=4)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-9)


def test_alpha_step_through_the_task_with_a_carried_hidden_state():
    """Two validation windows of one stream: the second starts from the first's final hidden state."""
    space = _space()
    task = LanguageModelTask()
    onehot = _onehot(space, seed=7)
    b1, b2 = (_data(seed=s)[:2] + (s == 0,) for s in (0, 1))
    grads = []
    for mode in ("contract", "dense"):
        task.reset()
        torch.manual_seed(0)
        task.loss(space, b1, space.arch.sparse_view({"cell": onehot}), "valid")
        assert task.hidden("valid").abs().sum() > 0
        view = (space.arch.nasp_view({"cell": onehot}) if mode == "contract"
                else ArchView(DENSE, {"cell": onehot.clone().requires_grad_(True)}))
        torch.manual_seed(1)
        grads.append(torch.autograd.grad(task.loss(space, b2, view, "valid"), view.weights["cell"])[0])
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-9)


def test_search_alpha_grads_use_the_contraction_and_leave_no_weight_grads():
    """nasp_alpha_grads (the search's NASP alpha step) goes through the contraction: the same gradient as the
    per-time-step graph version, and no gradient lands on the network weights."""

    class _S:
        pass

    space = _space(ops=PRIMITIVES_NASP)
    with torch.no_grad():
        space.arch.alphas["cell"].uniform_(0, 1)
    s = _S()
    s.model, s.task_loss, s.extra_params, s.op_costs = space, LanguageModelTask().loss, [], {}
    s.config = type("C", (), {"eta": 0.0})()
    s.autocast = lambda: torch.autocast("cpu", enabled=False)
    x, y, _ = _data()
    grads = []
    for mode in ("contract", "graph"):
        space.nasp_alpha_step = mode
        torch.manual_seed(0)
        _, ga, _ = nasp_alpha_grads(s, (x, y, True))
        grads.append(ga[0])
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-9)
    assert all(p.grad is None for p in space.weights())


def test_bad_alpha_step_name_is_rejected():
    with pytest.raises(ValueError, match="nasp_alpha_step"):
        RNNSearchSpace(V, H, H, nasp_alpha_step="fast")


def test_chunked_contraction_gives_the_same_gradient(monkeypatch):
    """Long sequences are contracted in chunks of time steps x batch rows: same result as one chunk."""
    from nasp.spaces.rnn import alpha_step

    space = _space()
    x, y, h = _data(T=6, B=5, seed=9)
    onehot = _onehot(space, seed=4)
    whole = _grads(space, space.arch.nasp_view({"cell": onehot}), x, y, h, seed=2)
    monkeypatch.setattr(alpha_step, "CHUNK_ELEMENTS", 7 * 2 * H)       # 7 columns of T*B = 30 at a time (or fewer)
    chunked = _grads(space, space.arch.nasp_view({"cell": onehot}), x, y, h, seed=2)
    want = _grads(space, ArchView(DENSE, {"cell": onehot.clone().requires_grad_(True)}), x, y, h, seed=2)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-12)
    torch.testing.assert_close(chunked, want, rtol=1e-9, atol=1e-9)
