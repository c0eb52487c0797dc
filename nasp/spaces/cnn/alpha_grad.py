"""The deferred alpha gradient of the NASP alpha step in a CNN search cell.

In NASP mode an edge's output is ``w[sel] * y`` with y the selected op's output (:class:`DeferredAlphaGrad`).
Its backward pass knows g = dL/d(edge out) and asks the cell (``SearchCell.row_alpha_grad``) for
dL/dĀ_k = <g, op_k(x)> of every op; the non-selected ops run there, under no_grad, and are reduced at once, so
no output of theirs is stored between forward and backward. :class:`PendingCache` holds the work shared by the
edges of one cell during that backward pass; :func:`split_edges` and :func:`inner` are the layout-aware pieces
of the reduction.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

__all__ = ["DeferredAlphaGrad", "PendingCache", "inner", "split_edges"]


def split_edges(full: Tensor, E: int) -> list[Tensor]:
    """(B, E * C, H, W) -> E dense tensors (B, C, H, W) in the same memory format (one copy), so that the alpha
    gradient's dot products run on flat views (a matrix product or a product-and-sum on a strided channel
    block of full measured 2-8x slower than this copy and a dot, at C = 8-32)."""
    B, EC, H, W = full.shape
    C = EC // E
    if full.is_contiguous(memory_format=torch.channels_last):
        blocks = full.permute(0, 2, 3, 1).reshape(B, H, W, E, C).permute(3, 0, 1, 2, 4).contiguous()
        return [blk.permute(0, 3, 1, 2) for blk in blocks]                    # channels_last views
    return list(full.reshape(B, E, C, H, W).transpose(0, 1).contiguous())


def inner(a: Tensor, b: Tensor, dtype: torch.dtype) -> Tensor:
    """<a, b> (a scalar in ``dtype``). One dot kernel on flat views when both tensors have the same dense layout
    (contiguous or channels_last), else an element-wise product and a sum."""
    if a.shape == b.shape and a.stride() == b.stride():
        for fmt, perm in ((torch.contiguous_format, (0, 1, 2, 3)), (torch.channels_last, (0, 2, 3, 1))):
            if a.dim() == 4 and a.is_contiguous(memory_format=fmt):
                return torch.dot(a.permute(perm).reshape(-1).to(dtype), b.permute(perm).reshape(-1).to(dtype))
    return (a.to(dtype) * b.to(dtype)).sum()


class PendingCache:
    """Work shared by the edges of a cell during the backward pass: per (source, op or "relu", sub-batch) the
    outputs of parameter-free ops and the ReLU of the input, freed once every edge leaving that source has been
    reduced; per ("batched", op, stride, sub-batch) the per-row outputs of one batched run, each taken once by
    its row. ``selected``: the selected op of every row (-1 dropped); ``inputs``: source node -> its tensor,
    registered by the forward pass. Everything is released when the cell's last edge is reduced."""

    def __init__(self, sources: list[int], selected: tuple[int, ...]):
        self.sources, self.selected = sources, selected
        self.left = {j: sources.count(j) for j in set(sources)}
        self.rows_left = len(sources)
        self.store: dict[tuple, object] = {}
        self.inputs: dict[int, Tensor] = {}

    def get(self, key, make):
        if key not in self.store:
            self.store[key] = make()
        return self.store[key]

    def done(self, r: int) -> None:
        j = self.sources[r]
        self.left[j] -= 1
        self.rows_left -= 1
        if self.rows_left == 0:
            self.store.clear()
            self.inputs.clear()
        elif self.left[j] == 0:
            for key in [k for k in self.store if k[0] == j]:
                del self.store[key]


class DeferredAlphaGrad(torch.autograd.Function):
    """out = w[sel] * y (y = the selected op's output, zeros for a dropped row). Backward: dL/dy = w[sel] * g and
    dL/dw computed by ``cell.row_alpha_grad`` (the non-selected ops run there, under no_grad); nothing of them
    is kept between forward and backward, so the alpha step's memory stays close to the sparse network's."""

    @staticmethod
    def forward(ctx, w: Tensor, x: Tensor, y: Tensor, info) -> Tensor:
        cell, r, sel, pending = info
        ctx.info = info
        dev = x.device.type
        # the non-selected ops run in backward, outside the caller's autocast region: re-enter the same one
        ctx.amp = (dev, torch.get_autocast_dtype(dev)) if torch.is_autocast_enabled(dev) else None
        ctx.save_for_backward(w, x, y)
        scale = w[sel] if sel >= 0 else w.new_zeros(())
        return y * scale.to(y.dtype)

    @staticmethod
    def backward(ctx, g: Tensor):
        w, x, y = ctx.saved_tensors
        cell, r, sel, pending = ctx.info
        amp = torch.autocast(ctx.amp[0], dtype=ctx.amp[1]) if ctx.amp else contextlib.nullcontext()
        with torch.no_grad(), amp:
            grad_w = cell.row_alpha_grad(r, sel, x, y, g, pending).to(w.dtype)
        grad_y = g * w[sel].to(g.dtype) if sel >= 0 and ctx.needs_input_grad[2] else None
        return grad_w, None, grad_y, None
