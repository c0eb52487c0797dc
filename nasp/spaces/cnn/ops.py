"""Candidate operations of the CNN cells, with DARTS' exact internals, in an ``OPS`` registry.

Every entry of ``OPS`` is a factory ``(C, stride, affine) -> nn.Module`` mapping (B, C, H, W) to
(B, C, H / stride, W / stride). Two op sets:

- ``PRIMITIVES`` (DARTS, 7 + none): none, max_pool_3x3, avg_pool_3x3, skip_connect, sep_conv_3x3, sep_conv_5x5,
  dil_conv_3x3, dil_conv_5x5.
- NASP's larger space (12 distinct ops, no 'none'): ``NASP_NORMAL_PRIMITIVES`` for the normal cell and
  ``NASP_REDUCE_PRIMITIVES`` for the reduction cell.

Internals: SepConv = (ReLU, depthwise kxk, 1x1, BN) twice (stride only in the first); DilConv = ReLU, depthwise
kxk dilation 2, 1x1, BN; ReLUConvBN = ReLU, conv, BN; skip at stride 2 = FactorizedReduce (ReLU, two 1x1
stride-2 convs on the input and on the input shifted by one pixel, concatenated, BN); pools pad to keep shape
(average pooling excludes padding). While searching, BN has affine=False and a BN follows every pooling op
(:func:`search_op`).

The depthwise and 1x1 convolutions are :class:`~.fastconv.DepthwiseConv2d` / :class:`~.fastconv.PointwiseConv2d`
(``nn.Conv2d`` subclasses, same parameters and state_dict, faster CPU kernels for the same function).

Speed helpers for the NASP alpha step (results identical): :class:`MaxPool2d` takes a separable path (a max over
k shifted columns, then over k shifted rows: the same maximum, bit for bit) when no gradient is needed;
:func:`starts_with_relu` / :func:`after_relu` let the search cell apply the leading ReLU of the parametric ops
once per input node instead of once per op and edge.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .fastconv import DepthwiseConv2d, PointwiseConv2d

__all__ = ["OPS", "PRIMITIVES", "NASP_NORMAL_PRIMITIVES", "NASP_REDUCE_PRIMITIVES", "OP_SETS", "ReLUConvBN",
           "DilConv", "SepConv", "FactorizedReduce", "Zero", "Identity", "MaxPool2d", "search_op", "is_pool",
           "starts_with_relu", "after_relu"]


class ReLUConvBN(nn.Sequential):
    """ReLU -> conv(kernel, stride, padding, no bias) -> BN. (B, C_in, H, W) -> (B, C_out, H', W')."""

    def __init__(self, C_in: int, C_out: int, kernel, stride, padding, affine: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            (PointwiseConv2d(C_in, C_out, stride) if kernel == 1 and padding == 0
             else nn.Conv2d(C_in, C_out, kernel, stride=stride, padding=padding, bias=False)),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class DilConv(nn.Sequential):
    """ReLU -> depthwise conv (kernel, stride, padding, dilation) -> 1x1 conv -> BN."""

    def __init__(self, C_in: int, C_out: int, kernel: int, stride: int, padding: int, dilation: int,
                 affine: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            DepthwiseConv2d(C_in, kernel, stride=stride, padding=padding, dilation=dilation),
            PointwiseConv2d(C_in, C_out),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two DilConv blocks with dilation 1; the first carries the stride, the second maps C_in -> C_out."""

    def __init__(self, C_in: int, C_out: int, kernel: int, stride: int, padding: int, affine: bool = True):
        super().__init__(
            DilConv(C_in, C_in, kernel, stride, padding, 1, affine),
            DilConv(C_in, C_out, kernel, 1, padding, 1, affine),
        )


class Conv1xkKx1(nn.Sequential):
    """ReLU -> conv (1, k) -> conv (k, 1) -> BN; the stride is split over the two convs (NASP's conv_3x1_1x3)."""

    def __init__(self, C_in: int, C_out: int, k: int, stride: int, affine: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, (1, k), stride=(1, stride), padding=(0, k // 2), bias=False),
            nn.Conv2d(C_in, C_out, (k, 1), stride=(stride, 1), padding=(k // 2, 0), bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class Identity(nn.Module):
    """x -> x."""

    def forward(self, x: Tensor) -> Tensor:
        return x


class Zero(nn.Module):
    """x -> zeros of the output shape (DARTS' 'none'); searching never runs it (see ``nasp.mixed.mix`` skip)."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """Halve H and W: ReLU, two 1x1 stride-2 convs (C_out // 2 each; the second on x shifted by one pixel),
    concatenated along channels, BN. (B, C_in, H, W) -> (B, C_out, ceil(H/2), ceil(W/2)) for even H, W."""

    def __init__(self, C_in: int, C_out: int, affine: bool = True):
        super().__init__()
        if C_out % 2:
            raise ValueError(f"FactorizedReduce: C_out must be even, got {C_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = PointwiseConv2d(C_in, C_out // 2, stride=2)
        self.conv_2 = PointwiseConv2d(C_in, C_out // 2, stride=2)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_after_relu(self.relu(x))

    def forward_after_relu(self, x: Tensor) -> Tensor:
        """The forward pass on an input that has already been through the ReLU."""
        shifted = nn.functional.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))      # same output size for odd H, W too
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` (square kernel, padding k // 2) with a faster path when no gradient is needed: a max over
    the k shifted columns of the -inf-padded input, then over k shifted rows. Every output is the maximum of the
    same k x k window, so the values are identical; the autograd path keeps torch's kernel (its tie-breaking
    in backward). The separable path is used at stride 1, and at stride 2 for non-channels_last inputs (where
    it is faster than torch's CPU kernel)."""

    def forward(self, x: Tensor) -> Tensor:
        plain = (isinstance(self.kernel_size, int) and self.stride in (1, 2) and self.padding == self.kernel_size // 2
                 and self.dilation == 1 and not self.ceil_mode and not self.return_indices)
        if not plain or (torch.is_grad_enabled() and x.requires_grad) or x.dim() != 4 or x.device.type != "cpu":
            return super().forward(x)
        if self.stride != 1 and x.is_contiguous(memory_format=torch.channels_last):
            return super().forward(x)
        return _separable_max_pool(x, self.kernel_size, self.stride, self.padding)


def _separable_max_pool(x: Tensor, k: int, s: int, p: int) -> Tensor:
    """(B, C, H, W) -> (B, C, H', W'): max over k x k windows, stride s, padding p (padding never wins)."""
    H, W = x.shape[-2:]
    Ho, Wo = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    xp = nn.functional.pad(x, (p, p, p, p), value=float("-inf"))
    cols = xp[..., 0: s * (Wo - 1) + 1: s]                                     # (B, C, H + 2p, Wo)
    for j in range(1, k):
        cols = torch.maximum(cols, xp[..., j: j + s * (Wo - 1) + 1: s])
    out = cols[..., 0: s * (Ho - 1) + 1: s, :]                                 # (B, C, Ho, Wo)
    for i in range(1, k):
        out = torch.maximum(out, cols[..., i: i + s * (Ho - 1) + 1: s, :])
    return out


def starts_with_relu(op: nn.Module) -> bool:
    """Whether ``op`` begins with a (non in-place) ReLU that :func:`after_relu` can skip."""
    if isinstance(op, FactorizedReduce):
        return True
    if isinstance(op, SepConv):
        return starts_with_relu(op[0])
    return isinstance(op, nn.Sequential) and len(op) > 1 and type(op[0]) is nn.ReLU and not op[0].inplace


def after_relu(op: nn.Module, x_relu: Tensor) -> Tensor:
    """``op(x)`` given ``x_relu = relu(x)``, for an op with :func:`starts_with_relu`; ``x_relu`` is not modified."""
    if isinstance(op, FactorizedReduce):
        return op.forward_after_relu(x_relu)
    if isinstance(op, SepConv):
        return op[1](after_relu(op[0], x_relu))
    for m in list(op)[1:]:
        x_relu = m(x_relu)
    return x_relu


def _skip(C: int, stride: int, affine: bool) -> nn.Module:
    return Identity() if stride == 1 else FactorizedReduce(C, C, affine)


OPS: dict[str, Callable[[int, int, bool], nn.Module]] = {
    "none": lambda C, stride, affine: Zero(stride),
    "avg_pool_3x3": lambda C, stride, affine: nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False),
    "max_pool_3x3": lambda C, stride, affine: MaxPool2d(3, stride=stride, padding=1),
    "max_pool_5x5": lambda C, stride, affine: MaxPool2d(5, stride=stride, padding=2),
    "max_pool_7x7": lambda C, stride, affine: MaxPool2d(7, stride=stride, padding=3),
    "skip_connect": _skip,
    "sep_conv_3x3": lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine),
    "sep_conv_5x5": lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine),
    "sep_conv_7x7": lambda C, stride, affine: SepConv(C, C, 7, stride, 3, affine),
    "dil_conv_3x3": lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine),
    "dil_conv_5x5": lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine),
    "conv_1x1": lambda C, stride, affine: ReLUConvBN(C, C, 1, stride, 0, affine),
    "conv_3x3": lambda C, stride, affine: ReLUConvBN(C, C, 3, stride, 1, affine),
    "conv_3x1_1x3": lambda C, stride, affine: Conv1xkKx1(C, C, 3, stride, affine),
}

PRIMITIVES: tuple[str, ...] = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3",
                               "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
NASP_NORMAL_PRIMITIVES: tuple[str, ...] = ("skip_connect", "conv_3x1_1x3", "dil_conv_3x3", "conv_1x1", "conv_3x3",
                                           "sep_conv_3x3", "sep_conv_5x5", "sep_conv_7x7")
NASP_REDUCE_PRIMITIVES: tuple[str, ...] = ("skip_connect", "avg_pool_3x3", "max_pool_3x3", "max_pool_5x5",
                                           "max_pool_7x7")

#: op set name -> (normal-cell ops, reduction-cell ops)
OP_SETS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "darts": (PRIMITIVES, PRIMITIVES),
    "nasp": (NASP_NORMAL_PRIMITIVES, NASP_REDUCE_PRIMITIVES),
}


def is_pool(name: str) -> bool:
    return "pool" in name


def search_op(name: str, C: int, stride: int) -> nn.Module:
    """An op as the search supernet uses it: BN affine=False, a BN (affine=False) after every pooling op."""
    op = OPS[name](C, stride, False)
    if is_pool(name):
        op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
    return op
