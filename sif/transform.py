"""g, SIF's element-wise transform (:class:`ElementwiseMLP`), and its math in closed form (:class:`MLPClosedForm`):
the forward on preallocated buffers and the hand-written backward, which the fused NASP step (:mod:`sif.fused`) runs
directly and autograd runs on the CPU (:class:`_MLPFunction`: one saved hidden layer, no copies of it).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from nasp.buffers import BufferPool
from nasp.fastmath import numpy_ok as _numpy_ok
from nasp.fastmath import tanh_  # g's tanh, in place: numpy's on CPU (see nasp.fastmath)

__all__ = ["ElementwiseMLP", "MLPClosedForm", "HAS_CLOSED_FORM", "tanh_"]

_TANH_BACKWARD = getattr(getattr(torch.ops, "aten", None), "tanh_backward", None)    # feature-detected
HAS_CLOSED_FORM = _TANH_BACKWARD is not None     # this torch has what MLPClosedForm.backward_ needs


class ElementwiseMLP(nn.Module):
    """g: a tiny MLP 1 -> hidden -> 1 (tanh) applied to every scalar of its input, one MLP per side.

    The sides' MLPs are stored stacked (sides, hidden) and evaluated in one pass over a stacked input
    (sides, B, k); ``skip`` makes g residual (x + mlp(x)).
    """

    def __init__(self, sides: int, hidden: int = 8, skip: bool = False):
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(sides, 1, hidden))
        self.b1 = nn.Parameter(torch.empty(sides, 1, hidden))
        self.w2 = nn.Parameter(torch.empty(sides, hidden, 1))
        self.b2 = nn.Parameter(torch.zeros(sides, 1, 1))
        self.skip = skip
        # the hidden layers of the autograd path, reused across steps (CPU): a fresh (S, H, B*k) allocation costs
        # ~5x the addcmul that fills it (page faults); few sizes (_pooled rounds them up), so it holds little
        self.pool = BufferPool(max_sizes=4, max_per_size=4)
        self.reset_parameters(torch.Generator().manual_seed(0))

    @torch.no_grad()
    def reset_parameters(self, g: torch.Generator) -> None:
        """Random MLP (the paper); with ``skip`` the output layer starts at zero, so g starts as the identity
        and learns a residual non-linearity (measured on ML-100K u1: a random g costs about 0.02 RMSE)."""
        self.w1.copy_(torch.randn(self.w1.shape, generator=g))
        self.b1.copy_(0.1 * torch.randn(self.b1.shape, generator=g))
        w2 = torch.randn(self.w2.shape, generator=g) / math.sqrt(self.w2.shape[1])
        self.w2.copy_(torch.zeros_like(w2) if self.skip else w2)
        self.b2.zero_()

    def forward(self, x: Tensor) -> Tensor:                     # (S, B, k) -> (S, B, k)
        return self._mlp(x, self.w1, self.b1, self.w2, self.b2)

    def forward_side(self, side: int, x: Tensor) -> Tensor:     # (N, k) -> (N, k), side ``side``'s MLP only
        one = slice(side, side + 1)
        return self._mlp(x.unsqueeze(0), self.w1[one], self.b1[one], self.w2[one], self.b2[one]).squeeze(0)

    def _mlp(self, x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:   # (S', B, k), S' sides
        # the hidden layer is laid out (S', hidden, B*k): its broadcasts run along the contiguous B*k axis
        # (measured on the 2-core CPU: the forward 2-3.4x faster than in the (S', B*k, hidden) layout)
        flat = x.reshape(x.shape[0], 1, -1)                                             # (S', 1, B*k)
        if _closed_form_ok(flat, w1):               # autograd through the closed form (one saved hidden layer)
            return _MLPFunction.apply(flat, w1, b1, w2, b2, self.skip, self.pool).view_as(x)
        h = torch.tanh(torch.baddbmm(b1.transpose(1, 2), w1.transpose(1, 2), flat))    # (S', hidden, B*k)
        y = torch.baddbmm(b2, w2.transpose(1, 2), h).view_as(x)                        # (S', B, k)
        return x + y if self.skip else y

    def closed_form(self, side: int | None = None) -> MLPClosedForm:
        """g's closed form on the current parameters (remake it when a parameter moved): every side stacked, or
        side ``side``'s MLP alone."""
        params = (self.w1, self.b1, self.w2, self.b2)
        if side is not None:                                     # one side's MLP: views of its slices (S = 1)
            params = tuple(p[side:side + 1] for p in params)
        return MLPClosedForm(*params, skip=self.skip)


def _closed_form_ok(x: Tensor, w1: Tensor) -> bool:
    """Whether autograd may go through :class:`MLPClosedForm` (:class:`_MLPFunction`): a CPU float32/float64 input
    of the parameters' dtype, no autocast, outside torch.compile; elsewhere g is plain torch ops."""
    return (HAS_CLOSED_FORM and _numpy_ok(x) and x.dtype == w1.dtype
            and not torch.is_autocast_enabled(x.device.type))


class MLPClosedForm:
    """g's forward and backward without autograd, for S sides on N = B*k scalars each, laid out (S, 1, N) with
    the hidden layer (S, H, N), from g's parameters (w1, b1 (S, 1, H), w2 (S, H, 1), b2 (S, 1, 1); views of one
    side's slices give that side's MLP alone, so that the sides can run on different numbers of scalars).
    :class:`ElementwiseMLP` runs it under autograd on the CPU and the fused NASP step (:mod:`sif.fused`) directly.

    Holds views of g's parameters in the shapes the hand-written ops use; ``grad_shapes`` are the shapes in which
    :meth:`backward_` writes the gradients of (w1, b1, w2, b2) (views of a flat buffer, say)."""

    def __init__(self, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, skip: bool):
        self.skip, (s, _, hid) = skip, w1.shape
        self.w1, self.w2, self.b2 = w1, w2, b2                                               # (S,1,H) (S,H,1) (S,1,1)
        self.w1t, self.b1t, self.w2t = w1.view(s, hid, 1), b1.view(s, hid, 1), w2.view(s, 1, hid)
        self.grad_shapes = ((s, hid, 1), (s, hid), (s, hid, 1), (s, 1, 1))   # bmm / sum output shapes

    def forward_(self, x: Tensor, h: Tensor, z: Tensor) -> None:
        """z = g(x) into ``z`` (S, 1, N); keeps the hidden tanh in ``h`` (S, H, N) for :meth:`backward_`."""
        tanh_(torch.addcmul(self.b1t, self.w1t, x, out=h))          # broadcasts along the contiguous N axis
        torch.baddbmm(self.b2, self.w2t, h, out=z)
        if self.skip:
            z.add_(x)

    def backward_(self, x: Tensor, h: Tensor, dz: Tensor, dpre: Tensor, grads: tuple[Tensor, ...],
                  need_dx: bool) -> Tensor | None:
        """g's four gradients from dL/dz (S, 1, N) into ``grads`` (shaped ``grad_shapes``), with ``x`` and ``h`` of
        :meth:`forward_` and ``dpre`` (S, H, N) scratch; returns dL/dx (S, 1, N) when ``need_dx``.

        ``dpre`` holds dL/dz * tanh' (one broadcast pass); the factor w2 of dL/d(pre-activation) is applied to the
        (S, H) sums instead of to every scalar."""
        _TANH_BACKWARD.grad_input(dz, h, grad_input=dpre)                                  # (S, H, N)
        o1, ob1, o2, ob2 = grads
        torch.bmm(h, dz.transpose(1, 2), out=o2)
        torch.sum(dz, 2, keepdim=True, out=ob2)
        torch.bmm(dpre, x.transpose(1, 2), out=o1).mul_(self.w2)
        torch.sum(dpre, 2, out=ob1).mul_(self.w2t.view(ob1.shape))
        if not need_dx:
            return None
        dx = torch.bmm(self.w1 * self.w2t, dpre)                                           # (S, 1, N)
        return dx.add_(dz) if self.skip else dx


def _pooled(pool: BufferPool, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """An uninitialised contiguous tensor of ``shape`` on a pooled storage whose size is rounded up to a multiple of
    1/8 of its leading power of two, so that batches with slightly different numbers of distinct rows share one."""
    n = math.prod(shape)
    step = 1 << max(n.bit_length() - 4, 0)
    return pool.empty((-(-n // step) * step,), like.dtype, like.device)[:n].view(shape)


class _MLPFunction(torch.autograd.Function):
    """g under autograd through :class:`MLPClosedForm`: (x (S, 1, N), w1, b1, w2, b2, skip, pool) -> z (S, 1, N);
    saves x and the hidden tanh (S, H, N) only (first-order gradients); the large buffers come from ``pool``
    (a :class:`~nasp.spaces.rnn.fused.BufferPool`: never one that is still referenced)."""

    @staticmethod
    def forward(ctx, x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, skip: bool,
                pool: BufferPool) -> Tensor:
        x = x.contiguous()
        cf = MLPClosedForm(w1, b1, w2, b2, skip)
        h, z = _pooled(pool, (x.shape[0], w1.shape[2], x.shape[2]), x), _pooled(pool, tuple(x.shape), x)
        cf.forward_(x, h, z)
        ctx.save_for_backward(x, h, w1, b1, w2, b2)
        ctx.skip, ctx.pool = skip, pool
        return z

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dz: Tensor):
        x, h, w1, b1, w2, b2 = ctx.saved_tensors
        cf = MLPClosedForm(w1, b1, w2, b2, ctx.skip)
        grads = tuple(x.new_empty(shape) for shape in cf.grad_shapes)
        dpre = _pooled(ctx.pool, tuple(h.shape), h)
        dx = cf.backward_(x, h, dz.contiguous(), dpre, grads, ctx.needs_input_grad[0])
        o1, ob1, o2, ob2 = grads
        return dx, o1.view(w1.shape), ob1.view(b1.shape), o2.view(w2.shape), ob2.view(b2.shape), None, None
