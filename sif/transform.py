"""g, SIF's element-wise transform (:class:`ElementwiseMLP`), and its math in closed form (:class:`MLPClosedForm`):
the forward on preallocated buffers and the hand-written backward that the fused NASP step (:mod:`sif.fused`) runs
instead of autograd.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["ElementwiseMLP", "MLPClosedForm", "HAS_CLOSED_FORM"]

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
        h = torch.tanh(torch.baddbmm(b1.transpose(1, 2), w1.transpose(1, 2), flat))    # (S', hidden, B*k)
        y = torch.baddbmm(b2, w2.transpose(1, 2), h).view_as(x)                        # (S', B, k)
        return x + y if self.skip else y

    def closed_form(self, side: int | None = None) -> MLPClosedForm:
        """g's closed form on the current parameters (remake it when a parameter moved): every side stacked, or
        side ``side``'s MLP alone."""
        return MLPClosedForm(self, side)


class MLPClosedForm:
    """g's forward and backward without autograd, for S sides on N = B*k scalars each, laid out (S, 1, N) with
    the hidden layer (S, H, N) (the same values as :meth:`ElementwiseMLP.forward` up to float rounding); with
    ``side``, that side's MLP alone (S = 1), so that the sides can run on different numbers of scalars.

    Holds views of g's parameters in the shapes the hand-written ops use; ``grad_shapes`` are the shapes in which
    :meth:`backward_` writes the gradients of (w1, b1, w2, b2) (views of a flat buffer, say)."""

    def __init__(self, mlp: ElementwiseMLP, side: int | None = None):
        params = (mlp.w1, mlp.b1, mlp.w2, mlp.b2)
        if side is not None:                                     # one side's MLP: views of its slices (S = 1)
            params = tuple(p[side:side + 1] for p in params)
        w1, b1, w2, b2 = params
        self.skip, (s, _, hid) = mlp.skip, w1.shape
        self.w1, self.w2, self.b2 = w1, w2, b2                                               # (S,1,H) (S,H,1) (S,1,1)
        self.w1t, self.b1t, self.w2t = w1.view(s, hid, 1), b1.view(s, hid, 1), w2.view(s, 1, hid)
        self.grad_shapes = ((s, hid, 1), (s, hid), (s, hid, 1), (s, 1, 1))   # bmm / sum output shapes

    def forward_(self, x: Tensor, h: Tensor, z: Tensor) -> None:
        """z = g(x) into ``z`` (S, 1, N); keeps the hidden tanh in ``h`` (S, H, N) for :meth:`backward_`."""
        torch.mul(self.w1t, x, out=h).add_(self.b1t).tanh_()        # broadcasts along the contiguous N axis
        torch.baddbmm(self.b2, self.w2t, h, out=z)
        if self.skip:
            z.add_(x)

    def backward_(self, x: Tensor, h: Tensor, dz: Tensor, dpre: Tensor, grads: tuple[Tensor, ...],
                  need_dx: bool) -> Tensor | None:
        """g's four gradients from dL/dz (S, 1, N) into ``grads`` (shaped ``grad_shapes``), with ``x`` and ``h`` of
        :meth:`forward_` and ``dpre`` (S, H, N) scratch; returns dL/dx (S, 1, N) when ``need_dx``."""
        torch.mul(self.w2, dz, out=dpre)
        _TANH_BACKWARD.grad_input(dpre, h, grad_input=dpre)                                 # (S, H, N)
        o1, ob1, o2, ob2 = grads
        torch.bmm(h, dz.transpose(1, 2), out=o2)
        torch.sum(dz, 2, keepdim=True, out=ob2)
        torch.bmm(dpre, x.transpose(1, 2), out=o1)
        torch.sum(dpre, 2, out=ob1)
        if not need_dx:
            return None
        dx = torch.bmm(self.w1, dpre)
        return dx + dz if self.skip else dx
