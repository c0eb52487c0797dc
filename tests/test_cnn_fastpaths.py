"""The NASP alpha step's speed paths give the same results as the plain computation.

- the separable no-grad max pool equals torch's max pool bit for bit;
- ``after_relu(op, relu(x))`` equals ``op(x)``;
- ``run_batched`` (one op type over several edges as one grouped call) equals the ops run one by one, BN running
  statistics and counters included;
- the whole alpha step with batching equals it without (alpha gradients and every buffer), in both memory
  formats and both op sets.
"""

import copy

import pytest
import torch

from nasp.spaces.cnn import CNNSearchSpace, ImageClassificationTask
from nasp.spaces.cnn.batched import batchable, run_batched
from nasp.spaces.cnn.ops import OPS, MaxPool2d, after_relu, search_op, starts_with_relu

CL = torch.channels_last


@pytest.mark.parametrize("k", [3, 5, 7])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True])
def test_separable_max_pool_is_bit_identical(k, stride, channels_last):
    x = torch.randn(3, 5, 9, 10)
    if channels_last:
        x = x.contiguous(memory_format=CL)
    pool = MaxPool2d(k, stride=stride, padding=k // 2)
    ref = torch.nn.functional.max_pool2d(x, k, stride, k // 2)
    with torch.no_grad():
        out = pool(x)
    assert out.shape == ref.shape and torch.equal(out, ref)
    xg = x.clone().requires_grad_(True)
    pool(xg).sum().backward()                                   # the autograd path is torch's own kernel
    assert xg.grad is not None and xg.grad.sum().item() == ref.numel()


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("stride", [1, 2])
def test_after_relu_equals_the_op(name, stride):
    torch.manual_seed(0)
    op = search_op(name, 6, stride)
    if not starts_with_relu(op):
        return
    x = torch.randn(4, 6, 8, 8)
    ref_op = copy.deepcopy(op)
    with torch.no_grad():
        torch.testing.assert_close(after_relu(op, torch.relu(x)), ref_op(x), rtol=0, atol=0)
    for a, b in zip(op.buffers(), ref_op.buffers(), strict=True):       # BN running statistics alike
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5", "conv_1x1",
                                  "conv_3x3", "conv_3x1_1x3"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True])
def test_run_batched_equals_ops_one_by_one(name, stride, channels_last):
    torch.manual_seed(0)
    ops = [search_op(name, 6, stride) for _ in range(3)]
    assert all(batchable(op) for op in ops)
    refs = copy.deepcopy(ops)
    x = torch.randn(4, 6, 8, 8)
    if channels_last:
        x = x.contiguous(memory_format=CL)
    full = run_batched(ops, torch.relu(x))
    with torch.no_grad():
        outs = [op(x) for op in refs]
    assert full.shape == (4, 18, 8 // stride, 8 // stride)
    for e, ref in enumerate(outs):
        torch.testing.assert_close(full[:, 6 * e: 6 * (e + 1)], ref, rtol=1e-5, atol=1e-5)
    for op, ref in zip(ops, refs, strict=True):
        for (n, a), b in zip(op.named_buffers(), ref.buffers(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=n)


def test_pools_and_skip_are_not_batched():
    assert not batchable(search_op("max_pool_3x3", 4, 1))
    assert not batchable(search_op("skip_connect", 4, 2))           # FactorizedReduce runs edge by edge
    assert not batchable(OPS["sep_conv_3x3"](4, 1, True).eval())     # eval-mode BN: not the search path


def _alpha_step(m, batch):
    task = ImageClassificationTask(channels_last=batch[0].is_contiguous(memory_format=CL))
    view = m.arch.nasp_view()
    loss = task.loss(m, batch, view, "valid")
    return torch.autograd.grad(loss, list(view.weights.values()))


@pytest.mark.parametrize("op_set", ["darts", "nasp"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_batched_alpha_step_equals_unbatched(op_set, channels_last, monkeypatch):
    import nasp.spaces.cnn.supernet as supernet

    calls = []
    monkeypatch.setattr(supernet, "run_batched", lambda ops, xs: calls.append(len(ops)) or run_batched(ops, xs))
    torch.manual_seed(0)
    m = CNNSearchSpace(C=4, layers=3, steps=3, multiplier=3, num_classes=5, op_set=op_set).double()
    with torch.no_grad():
        for _, a in m.arch:
            a.copy_(torch.rand(a.shape, generator=torch.Generator().manual_seed(3)).double())
    ref = copy.deepcopy(m)
    for cell in ref.cells:                                  # the plain per-edge path
        cell.batchable = [tuple(False for _ in row) for row in cell.batchable]
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 3, 8, 8, generator=g).double(), torch.randint(0, 5, (4,), generator=g)
    if channels_last:
        x = x.contiguous(memory_format=CL)
        m, ref = m.to(memory_format=CL), ref.to(memory_format=CL)
    grads = _alpha_step(m, (x, y))
    assert calls and max(calls) > 1                          # the batched path ran
    n_batched = len(calls)
    for a, b in zip(grads, _alpha_step(ref, (x, y)), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert len(calls) == n_batched                            # ... and the reference never used it
    for (n, a), b in zip(m.named_buffers(), ref.buffers(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=n)


# ---- fastconv: the depthwise / pointwise modules equal nn.Conv2d (values and gradients) ----------------------

def _conv_pair(new, **conv_kwargs):
    ref = torch.nn.Conv2d(**conv_kwargs, bias=False).double()
    new = new.double()
    with torch.no_grad():
        ref.weight.copy_(new.weight)
    return new, ref


def _compare_with_grads(new, ref, x):
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y1, y2 = new(x1), ref(x2)
    assert y1.shape == y2.shape
    g = torch.randn(y2.shape, dtype=y2.dtype, generator=torch.Generator().manual_seed(5))
    y1.backward(g)
    y2.backward(g)
    torch.testing.assert_close(y1, y2, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(new.weight.grad, ref.weight.grad, rtol=1e-10, atol=1e-10)
    with torch.no_grad():
        torch.testing.assert_close(new(x), ref(x), rtol=1e-10, atol=1e-10)
    return y1


@pytest.mark.parametrize("k", [3, 5, 7])
@pytest.mark.parametrize("dilation", [1, 2])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("size", [(9, 9), (8, 11)])
def test_depthwise_conv_equals_torch(k, dilation, stride, channels_last, size, monkeypatch):
    import nasp.spaces.cnn.fastconv as fastconv
    from nasp.spaces.cnn.fastconv import DepthwiseConv2d

    calls = []
    even_phase_conv = fastconv._even_phase_conv
    monkeypatch.setattr(fastconv, "_even_phase_conv", lambda *a: calls.append(1) or even_phase_conv(*a))
    torch.manual_seed(0)
    p = dilation * (k - 1) // 2
    new, ref = _conv_pair(DepthwiseConv2d(6, k, stride, p, dilation), in_channels=6, out_channels=6,
                          kernel_size=k, stride=stride, padding=p, dilation=dilation, groups=6)
    x = torch.randn(3, 6, *size, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=CL)
    _compare_with_grads(new, ref, x)
    assert len(calls) == (1 if stride == 2 and dilation == 2 else 0)     # the fast path, only with a gradient


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("size", [(8, 8), (7, 10)])
def test_pointwise_conv_equals_torch(stride, channels_last, size):
    from nasp.spaces.cnn.fastconv import PointwiseConv2d

    torch.manual_seed(0)
    new, ref = _conv_pair(PointwiseConv2d(5, 7, stride), in_channels=5, out_channels=7, kernel_size=1,
                          stride=stride)
    x = torch.randn(3, 5, *size, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=CL)
    y = _compare_with_grads(new, ref, x)
    assert ("Convolution" not in type(y.grad_fn).__name__) == channels_last      # mm on the pixel matrix
    if channels_last:
        assert y.is_contiguous(memory_format=CL)


def test_fast_conv_modules_keep_the_state_dict_of_nn_conv2d():
    op = OPS["dil_conv_3x3"](4, 2, True)
    plain = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3, 2, 2, 2, groups=4, bias=False),
                                torch.nn.Conv2d(4, 4, 1, bias=False), torch.nn.BatchNorm2d(4))
    assert {k: v.shape for k, v in op.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    plain.load_state_dict(op.state_dict())
    x = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(op(x), plain(x))


def test_alpha_step_batches_across_source_nodes(monkeypatch):
    import nasp.spaces.cnn.supernet as supernet

    calls = []
    monkeypatch.setattr(supernet, "run_batched", lambda ops, xs: calls.append(len(ops)) or run_batched(ops, xs))
    m = CNNSearchSpace(C=4, layers=3, steps=3, multiplier=3, num_classes=5, op_set="darts")
    sources = m.cells[0].sources
    per_source = max(sources.count(j) for j in set(sources))                           # 3 edges leave c_{k-2}
    x, y = torch.randn(2, 3, 8, 8), torch.randint(0, 5, (2,))
    _alpha_step(m, (x, y))
    assert max(calls) > per_source                  # one call spans the edges of several source nodes
