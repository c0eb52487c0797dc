"""The fused decoder + cross-entropy (nasp/spaces/rnn/decoder.py) against F.linear + F.cross_entropy."""

import pytest
import torch
import torch.nn.functional as F

from nasp.buffers import BufferPool
from nasp.spaces.rnn import RNNSearchSpace
from nasp.spaces.rnn import decoder as dec
from nasp.spaces.rnn.decoder import decoder_nll


def _case(dtype, n=37, H=5, V=23, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = torch.randn(n, H, generator=g, dtype=dtype).requires_grad_()
    w = (torch.randn(V, H, generator=g, dtype=dtype) * 2).requires_grad_()
    b = torch.randn(V, generator=g, dtype=dtype).requires_grad_()
    y = torch.randint(V, (n,), generator=g)
    y[:3] = y[3]                                        # repeated targets
    return out, w, b, y


def _reference(out, w, b, y):
    loss = F.cross_entropy(F.linear(out, w, b), y)
    return loss, torch.autograd.grad(loss, [out, w, b])


@pytest.mark.parametrize("block_bytes", [1 << 19, 64])     # one block / one row per block
@pytest.mark.parametrize("pool", [None, BufferPool(min_bytes=0)])
def test_float64_matches_autograd(monkeypatch, block_bytes, pool):
    monkeypatch.setattr(dec, "BLOCK_BYTES", block_bytes)
    out, w, b, y = _case(torch.float64)
    ref, ref_g = _reference(out, w, b, y)
    for _ in range(2):                                  # the second pass reuses the pool's buffers
        loss = decoder_nll(out, w, b, y, pool)
        got = torch.autograd.grad(loss * 3.0, [out, w, b])
        torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
        for a, r in zip(got, ref_g, strict=True):
            torch.testing.assert_close(a, 3.0 * r, rtol=1e-12, atol=1e-12)


def test_float32_within_rounding():
    out, w, b, y = _case(torch.float32, n=64, H=16, V=1000)
    ref, ref_g = _reference(out, w, b, y)
    loss = decoder_nll(out, w, b, y, BufferPool(min_bytes=0))
    got = torch.autograd.grad(loss, [out, w, b])
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    for a, r in zip(got, ref_g, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-6)


def test_interleaved_forwards_keep_their_buffers():
    """Two forwards before their backwards (pooled buffers): each backward sees its own softmax."""
    pool = BufferPool(min_bytes=0)
    out, w, b, y = _case(torch.float64)
    out2, _, _, y2 = _case(torch.float64, seed=1)
    l1, l2 = decoder_nll(out, w, b, y, pool), decoder_nll(out2, w, b, y2, pool)
    g2 = torch.autograd.grad(l2, [out2, w])
    g1 = torch.autograd.grad(l1, [out, w])
    for got, (o, yy) in ((g1, (out, y)), (g2, (out2, y2))):
        ref = torch.autograd.grad(F.cross_entropy(F.linear(o, w, b), yy), [o, w])
        for a, r in zip(got, ref, strict=True):
            torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)


def test_only_what_is_asked_is_computed(monkeypatch):
    seen = []
    orig = dec.needed_grads
    monkeypatch.setattr(dec, "needed_grads", lambda ctx: seen.append(orig(ctx)[:3]) or orig(ctx))
    out, w, b, y = _case(torch.float64)
    torch.autograd.grad(decoder_nll(out, w, b, y), [out])
    torch.autograd.grad(decoder_nll(out, w, b, y), [out, w, b])
    assert seen == [(True, False, False), (True, True, True)]


def test_autocast_falls_back_to_autograd():
    out, w, b, y = _case(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not dec.decoder_fused_ok(out)
        got = decoder_nll(out, w, b, y)
        ref = F.cross_entropy(F.linear(out, w, b).float(), y)
    assert torch.equal(got, ref)


def test_model_targets_give_the_logits_nll():
    """RNNSearchSpace(targets=y) returns the NLL of its own logits, with the same weight gradients (float64)."""
    V, H = 30, 6
    space = RNNSearchSpace(V, H, H, seed=0).double()
    x, y = torch.randint(V, (5, 3)), torch.randint(V, (5, 3))
    view = space.arch.sparse_view()
    params = [space.lm.encoder.weight, space.lm.decoder_bias, space.lm.cell.Ws]
    h = space.init_hidden(3)
    torch.manual_seed(4)
    logits, _, _ = space(x, h, view)
    ref = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
    ref_g = torch.autograd.grad(ref, params)
    torch.manual_seed(4)                                        # the same dropout masks
    nll, _, _ = space(x, h, view, targets=y)
    got = torch.autograd.grad(nll, params)
    torch.testing.assert_close(nll, ref, rtol=1e-12, atol=1e-12)
    for a, r in zip(got, ref_g, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("pool", [None, BufferPool(min_bytes=0)])
def test_bfloat16_products_agree_with_float32(monkeypatch, pool):
    """low=bfloat16 (the search's amp: bf16): the loss and all three float32 gradients agree with float32's to
    bfloat16 rounding, over several blocks; the autograd fallback (low_linear + cross-entropy) agrees too."""
    monkeypatch.setattr(dec, "BLOCK_BYTES", 1 << 15)            # 8 rows per block
    out, w, b, y = _case(torch.float32, n=64, H=16, V=1000)
    ref, ref_g = _reference(out, w, b, y)
    for fused in (True, False):
        loss = decoder_nll(out, w, b, y, pool, fused=fused, low=torch.bfloat16)
        got = torch.autograd.grad(loss, [out, w, b])
        assert loss.dtype == torch.float32 and all(g.dtype == torch.float32 for g in got)
        assert abs(loss.item() - ref.item()) < 2e-2 * ref.item()
        for a, r in zip(got, ref_g, strict=True):
            assert (a - r).abs().max() < 5e-2 * r.abs().max()     # logits up to ~20 here: bf16 steps of 0.06
            assert torch.nn.functional.cosine_similarity(a.flatten(), r.flatten(), dim=0) > 0.999
    assert not torch.equal(decoder_nll(out, w, b, y, low=torch.bfloat16), ref)     # the low path did run


@pytest.mark.parametrize("mode", ["sparse", "nasp", "dense"])
def test_autocast_runs_only_the_decoder_in_bfloat16(mode):
    """Under autocast (the search's amp: bf16) the recurrent model's cell runs in float32 exactly as without it
    (the fused cell where it applies), and only the decoder's products in bfloat16: the same raw outputs and
    hidden state bit for bit, a loss that agrees to bfloat16 rounding, float32 weight gradients."""
    V, H = 300, 16
    space = RNNSearchSpace(V, H, H, seed=0)
    view = {"sparse": space.arch.sparse_view, "nasp": space.arch.nasp_view,
            "dense": space.arch.softmax_view}[mode]()
    x, y = torch.randint(V, (7, 5)), torch.randint(V, (7, 5))
    h = space.init_hidden(5)
    res = []
    for amp in (False, True):
        torch.manual_seed(3)                                        # the same dropout masks
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            nll, hid, raw = space(x, h, view, targets=y)
        grads = torch.autograd.grad(nll, [space.lm.encoder.weight, space.lm.cell.Ws])
        res.append((nll, hid, raw, grads))
    (n0, h0, r0, g0), (n1, h1, r1, g1) = res
    assert torch.equal(r0, r1) and torch.equal(h0, h1) and r1.dtype == torch.float32
    assert n1.dtype == torch.float32 and not torch.equal(n0, n1)
    assert abs(n1.item() - n0.item()) < 1e-2 * n0.item()
    for a, r in zip(g1, g0, strict=True):
        assert a.dtype == torch.float32
        assert torch.nn.functional.cosine_similarity(a.flatten(), r.flatten(), dim=0) > 0.99
