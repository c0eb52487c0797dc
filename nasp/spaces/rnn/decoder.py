"""The tied decoder and its cross-entropy as one autograd function (:func:`decoder_nll`), for every strategy.

``nll = mean_n( logsumexp(z_n) - z_n[y_n] )`` with ``z = out W^T + b`` over a 10,000-word vocabulary is most of a
search step on a CPU at small hidden sizes. Through ``F.linear`` + ``F.cross_entropy`` autograd writes and reads
the (rows, V) logits several times: a bias pre-fill, the log-softmax, a zero-filled one-hot gradient from the NLL,
the log-softmax backward (another exp pass). Here: one matmul into a reused buffer, then per block of rows while
still in cache the bias, the row maximum, the exp (as exp2 of log2(e)-scaled logits), the row sum, the softmax and
``D = softmax - onehot(y)`` (a scatter of one entry per row) left in the buffer; the backward is ``D dL / rows``
applied through the products it needs (no exp, no (rows, V) pass besides the products and the bias's row sum).
What is asked for decides what the backward computes (the NASP alpha step needs only dL/d(out), not the
decoder's weight gradient; autograd skipped it there already, and this function does too). Same values as the
autograd path up to float rounding (float64 to 1e-12 in tests/test_rnn_decoder.py).

``low`` (the search's ``amp: bf16``, see :class:`.cell.LanguageModelShell`): the three products take bfloat16
operands (``out``, the weight and D rounded to bfloat16; accumulation inside the product in float32, the logits
rounded to bfloat16); bias, maximum, exp, sums, the NLL and every returned gradient stay float32. D is rounded
after the one-hot is subtracted, so that the gradient of a well-predicted word is not the small difference of two
rounded terms (the same order as autocast's). About 2.3x faster products on a CPU with AVX512-BF16; the values
agree with float32 to bfloat16 rounding (tests/test_rnn_decoder.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from nasp.buffers import BufferPool

from .fused import needed_grads

__all__ = ["decoder_nll", "decoder_fused_ok", "low_linear"]

LOG2E, LN2 = 1.4426950408889634, 0.6931471805599453
BLOCK_BYTES = 1 << 19       # rows of the (rows, V) logits handled per block: at most this many bytes (in L2)


def decoder_fused_ok(out: Tensor) -> bool:
    """Whether :func:`decoder_nll` runs fused for ``out``: CPU float32/float64, no autocast, not compiling."""
    return (out.device.type == "cpu" and out.dtype in (torch.float32, torch.float64)
            and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling())


def _low(t: Tensor, low: torch.dtype | None) -> Tensor:
    return t if low is None else t.to(low)


def _empty(pool: BufferPool | None, shape: tuple[int, ...], like: Tensor) -> Tensor:
    return torch.empty(shape, dtype=like.dtype) if pool is None else pool.empty(shape, like.dtype, like.device)


class _DecoderNLL(torch.autograd.Function):

    @staticmethod
    def forward(ctx, out: Tensor, weight: Tensor, bias: Tensor, y: Tensor, pool: BufferPool | None,
                low: torch.dtype | None) -> Tensor:
        n, V = out.shape[0], weight.shape[0]
        out_l, w_l = _low(out, low), _low(weight, low)
        P = torch.mm(out_l, w_l.t(), out=_empty(pool, (n, V), out_l))       # logits, then softmax, in place
        rows = max(1, BLOCK_BYTES // (V * out.element_size()))
        nll = out.new_empty(n)
        block = None if low is None else out.new_empty(rows, V)              # float32 copy of a low block
        bias2 = bias.detach().to(out.dtype) * LOG2E
        minus_one = out.new_full((rows, 1), -1.0)
        for a in range(0, n, rows):
            b = min(n, a + rows)
            z = P[a:b] if low is None else block[: b - a].copy_(P[a:b])
            torch.add(bias2, z, alpha=LOG2E, out=z)             # (logits + bias) log2(e): exp2 is cheaper than exp
            zy = z.gather(1, y[a:b, None]).squeeze(1)
            m = z.amax(1)
            z.sub_(m[:, None]).exp2_()
            s = z.sum(1)
            z.mul_(s.reciprocal()[:, None])                     # (a multiply is several times cheaper than div_)
            z.scatter_add_(1, y[a:b, None], minus_one[: b - a])   # softmax - onehot(y): dL/dz * rows
            if low is not None:
                P[a:b].copy_(z)                                   # rounded after the one-hot: no cancellation
            torch.sub(s.log2_().add_(m), zy, out=nll[a:b]).mul_(LN2)
        ctx.save_for_backward(out, P, out_l, w_l)
        return nll.mean()

    @staticmethod
    def backward(ctx, g: Tensor):
        """dL/dz = (softmax - onehot(y)) g / n (left in the buffer by the forward), applied through the products:
        d_out = D W, d_W = D^T out, d_b = sum of D's rows."""
        out, D, out_l, w_l = ctx.saved_tensors
        need = needed_grads(ctx)
        scale = g / D.shape[0]
        dt = out.dtype
        d_out = torch.mm(D, w_l).to(dt).mul_(scale) if need[0] else None
        d_w = torch.mm(D.t(), out_l).to(dt).mul_(scale) if need[1] else None
        d_b = D.sum(0, dtype=dt).mul_(scale) if need[2] else None
        return d_out, d_w, d_b, None, None, None


def decoder_nll(out: Tensor, weight: Tensor, bias: Tensor, y: Tensor, pool: BufferPool | None = None,
                fused: bool = True, low: torch.dtype | None = None) -> Tensor:
    """Mean cross-entropy of ``out @ weight.T + bias`` against ``y``: out (n, H), weight (V, H), bias (V,),
    y (n,) int64 -> scalar (float32 at least). Fused (see the module) when ``fused`` and
    :func:`decoder_fused_ok`, else ``F.linear`` + ``F.cross_entropy``; pool: where the (n, V) buffers come from
    (None: allocated); low: the products' operand dtype (bfloat16; None: out's dtype, see the module)."""
    if not fused or not decoder_fused_ok(out) or out.dtype != weight.dtype or (low and out.dtype != torch.float32):
        return F.cross_entropy(low_linear(out, weight, bias, low).float(), y)
    if weight.requires_grad:
        weight = weight.view_as(weight)     # a non-leaf, so that the backward can ask whether it is needed
    if bias.requires_grad:
        bias = bias.view_as(bias)
    return _DecoderNLL.apply(out, weight, bias, y, pool, low)


def low_linear(out: Tensor, weight: Tensor, bias: Tensor, low: torch.dtype | None = None) -> Tensor:
    """``F.linear(out, weight, bias)`` with the product's operands in ``low`` (None: as they are); the logits
    are in ``low`` then, as under autocast."""
    if low is None:
        return F.linear(out, weight, bias)
    return F.linear(out.to(low), weight.to(low), bias.to(low))
