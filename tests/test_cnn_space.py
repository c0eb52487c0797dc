import pytest
import torch

from nasp.arch import DENSE, ArchView
from nasp.search import SearchConfig, Searcher
from nasp.space import create_space
from nasp.spaces.cnn import CNNSearchSpace, ImageClassificationTask
from nasp.spaces.cnn.genotypes import from_core
from nasp.strategies import STRATEGIES, nasp_alpha_grads


def _space(op_set="darts", **kw):
    torch.manual_seed(0)
    return CNNSearchSpace(C=4, layers=3, steps=3, multiplier=3, num_classes=5, op_set=op_set, **kw)


def _batch(n=4, device="cpu"):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 8, 8, generator=g).to(device), torch.randint(0, 5, (n,), generator=g).to(device)


def test_registered_and_shapes(device):
    m = create_space("cnn", C=4, layers=3, steps=2, multiplier=2, num_classes=7).to(device)
    x, _ = _batch(device=device)
    for view in (m.arch.sparse_view(), m.arch.nasp_view(), m.arch.softmax_view()):
        assert m(x, view).shape == (4, 7)
    assert m.arch.specs["normal"].shape == (5, 8) and m.arch.specs["normal"].k == 2


@pytest.mark.parametrize("op_set", ["darts", "nasp"])
def test_sparse_forward_equals_dense_forward_with_one_hot_weights(op_set, device):
    m = _space(op_set).to(device).double()
    x, _ = _batch(device=device)
    x = x.double()
    for seed in range(3):
        with torch.no_grad():
            for _, a in m.arch:
                a.copy_(torch.rand(a.shape, generator=torch.Generator().manual_seed(seed)).double())
        sparse = m.arch.sparse_view()
        dense = ArchView(DENSE, {n: w.double() for n, w in sparse.weights.items()})
        torch.testing.assert_close(m(x, sparse), m(x, dense), rtol=0, atol=1e-10)


@pytest.mark.parametrize("op_set", ["darts", "nasp"])
def test_nasp_alpha_gradient_is_exact(op_set, device):
    """The deferred NASP alpha step equals plain autograd w.r.t. the one-hot Ā with every op in the graph."""
    m = _space(op_set).to(device).double()
    x, y = _batch(device=device)
    batch = (x.double(), y)
    task = ImageClassificationTask()
    view = m.arch.nasp_view()
    loss = task.loss(m, batch, view, "valid")
    grads = torch.autograd.grad(loss, list(view.weights.values()))
    onehot = {n: w.detach().clone().requires_grad_(True) for n, w in view.weights.items()}
    ref_loss = task.loss(m, batch, ArchView(DENSE, onehot), "valid")
    refs = torch.autograd.grad(ref_loss, list(onehot.values()))
    torch.testing.assert_close(loss, ref_loss)
    for g, r in zip(grads, refs, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12)
        assert (r != 0).sum() > r.shape[0]           # non-selected ops and dropped rows get gradients


def test_subbatch_estimate_with_full_batch_is_exact():
    m = _space().double()
    x, y = _batch(8)
    task = ImageClassificationTask()
    view = m.arch.nasp_view()
    exact = torch.autograd.grad(task.loss(m, (x.double(), y), view, "v"), list(view.weights.values()))
    m.alpha_subbatch = 8
    view = m.arch.nasp_view()
    same = torch.autograd.grad(task.loss(m, (x.double(), y), view, "v"), list(view.weights.values()))
    for a, b in zip(exact, same, strict=True):
        torch.testing.assert_close(a, b)
    m.alpha_subbatch = 2
    view = m.arch.nasp_view()
    est = torch.autograd.grad(task.loss(m, (x.double(), y), view, "v"), list(view.weights.values()))
    assert all(torch.isfinite(e).all() for e in est)


def test_weight_step_touches_only_selected_ops(device):
    m = _space().to(device)
    s = Searcher(m, ImageClassificationTask(), SearchConfig(strategy="nasp", epochs=1), device=device,
                 show_progress=False)
    view = m.arch.sparse_view()
    before = {n: p.detach().clone() for n, p in m.named_weights()}
    loss = s.task.loss(m, _batch(device=device), view, "train")
    loss.backward()
    selected = m.selected_parameters(view)
    op_params = {id(p) for c in m.cells for edge in c.edges for p in edge.parameters()}
    for n, p in m.named_weights():
        if id(p) in op_params and id(p) not in selected:
            assert p.grad is None, n
        if id(p) in selected:
            assert p.grad is not None, n
    # and a full NASP step changes no non-selected op weight
    m.zero_grad(set_to_none=True)
    STRATEGIES["nasp"](s, _batch(device=device), _batch(device=device), False)
    for n, p in m.named_weights():
        if id(p) in op_params and id(p) not in selected:
            torch.testing.assert_close(p.detach(), before[n], rtol=0, atol=0, msg=n)


def test_nasp_alpha_step_through_the_core(device):
    m = _space().to(device)
    s = Searcher(m, ImageClassificationTask(), SearchConfig(strategy="nasp", epochs=1), device=device,
                 show_progress=False)
    loss, grads, _ = nasp_alpha_grads(s, _batch(device=device))
    assert torch.isfinite(loss) and [g.shape for g in grads] == [a.shape for a in s.alpha_params]


def test_darts_rule_excludes_none():
    m = _space(derive_rule="darts")
    with torch.no_grad():
        for _, a in m.arch:
            a.zero_()
            a[:, 0] = 5.0             # 'none' dominates every edge
            a[:, 4] = 1.0             # sep_conv_3x3 second
    cell = from_core(m.genotype(), steps=3)
    assert all(op == "sep_conv_3x3" for op, _ in cell.normal + cell.reduce)
    assert m.sparse_view().selected["normal"].count(4) == 6


def test_op_costs_shape():
    m = _space("nasp")
    costs = m.op_costs()
    assert costs["normal"].shape == (9, 8) and costs["reduce"].shape == (9, 5)
    assert costs["reduce"].sum() > 0          # skip_connect at stride 2 is a FactorizedReduce


@pytest.mark.parametrize("strategy", ["nasp", "darts1"])
def test_bf16_autocast_step(strategy):
    """The deferred alpha gradient re-enters the caller's autocast inside backward (bf16 inputs, fp32 weights)."""
    m = _space(alpha_init="darts" if strategy == "darts1" else "nasp")
    s = Searcher(m, ImageClassificationTask(), SearchConfig(strategy=strategy, epochs=1, amp="bf16"),
                 show_progress=False)
    out = STRATEGIES[strategy](s, _batch(), _batch(), True)
    assert torch.isfinite(out["alpha_loss"]) and torch.isfinite(out["train_loss"])
    assert all(torch.isfinite(a).all() for a in s.alpha_params)
