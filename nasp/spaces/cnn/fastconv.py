"""Faster CPU paths for the two convolutions the cells are built from: depthwise kxk and pointwise 1x1.

Both modules subclass ``nn.Conv2d`` (same parameters, same ``state_dict``) and compute the same function; they
only choose cheaper kernels on the CPU, where oneDNN's convolution backward costs several times its forward at
the search sizes (C = 8-32 channels, 8-32 px, batch 16, one thread; ``benchmarks/README.md``, CNN section):

- :class:`DepthwiseConv2d` (groups == channels), stride 2 with dilation 2 (``dil_conv`` on the input edges
  of a reduction cell; oneDNN's backward took 7-20 ms there against 3-5 ms for the form below): such a conv
  only ever reads the even rows and columns of the padded input, so it is an undilated stride-1 conv of that
  even phase (a quarter of the padded input); autograd then runs oneDNN's fast stride-1 backward and scatters
  the input gradient back to those positions (zero elsewhere). Every other depthwise conv runs ``nn.Conv2d``
  (a stride-1 variant whose input gradient was a conv with the flipped kernel measured no faster: the one
  fused oneDNN call beats two separate ones at these sizes).
- :class:`PointwiseConv2d` (1x1, groups 1): on a channels_last input the conv is a matrix product of the
  (B*H*W, C_in) pixel matrix with the (C_in, C_out) weight: one ``mm`` forward (a view in and out, no copy at
  stride 1; stride s takes every s-th pixel first), and autograd's ``mm`` backward.

The fast paths run on CPU tensors outside autocast; everything else (other devices, autocast, NCHW input for
the 1x1 conv) runs the plain ``nn.Conv2d`` forward. Tests compare values and gradients with ``nn.Conv2d`` in
float64 (``tests/test_cnn_fastpaths.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["DepthwiseConv2d", "PointwiseConv2d"]

CL = torch.channels_last


def _cpu_eager(x: Tensor) -> bool:
    return x.device.type == "cpu" and x.dim() == 4 and not torch.is_autocast_enabled("cpu")


def _fmt(x: Tensor) -> torch.memory_format:
    return CL if x.is_contiguous(memory_format=CL) and not x.is_contiguous() else torch.contiguous_format


class DepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d(C, C, k, stride, padding, dilation, groups=C, bias=False)``; with stride 2 and dilation 2 and
    a gradient to compute, the even-phase form of the module docstring. (B, C, H, W) -> (B, C, H', W')."""

    def __init__(self, channels: int, kernel_size, stride=1, padding=0, dilation=1):
        super().__init__(channels, channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
                         groups=channels, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        if (self.stride == (2, 2) and self.dilation == (2, 2) and not isinstance(self.padding, str)
                and self.padding_mode == "zeros" and _cpu_eager(x) and torch.is_grad_enabled()
                and (x.requires_grad or self.weight.requires_grad)):
            return _even_phase_conv(x, self.weight, self.padding)
        return super().forward(x)                  # forward only: oneDNN's strided dilated kernel is faster


def _even_phase_conv(x: Tensor, w: Tensor, padding: tuple[int, int]) -> Tensor:
    """Depthwise conv, stride 2, dilation 2 = undilated stride-1 conv of the padded input's even phase."""
    B, C, H, W = x.shape
    ph, pw = padding
    He, We = (H + 2 * ph + 1) // 2, (W + 2 * pw + 1) // 2
    oh, ow = (ph + 1) // 2, (pw + 1) // 2          # first phase row / column holding input row / column
    sh, sw = 2 * oh - ph, 2 * ow - pw              # ... namely input row sh (0 or 1), column sw
    xs = x[:, :, sh::2, sw::2]                     # (B, C, nh, nw): the input pixels the conv reads
    nh, nw = xs.shape[-2:]
    xe = F.pad(xs, (ow, We - ow - nw, oh, He - oh - nh))                              # (B, C, He, We)
    return F.conv2d(xe.contiguous(memory_format=_fmt(x)), w, None, 1, 0, 1, C)


class PointwiseConv2d(nn.Conv2d):
    """``nn.Conv2d(C_in, C_out, 1, stride, bias=False)``; on channels_last CPU input a matrix product of the
    (B*H'*W', C_in) pixel matrix with the weight. (B, C_in, H, W) -> (B, C_out, H', W'), channels_last."""

    def __init__(self, C_in: int, C_out: int, stride: int = 1):
        super().__init__(C_in, C_out, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        if not _cpu_eager(x) or not x.is_contiguous(memory_format=CL) or self.padding != (0, 0):
            return super().forward(x)
        sh, sw = self.stride
        xs = x if (sh, sw) == (1, 1) else x[:, :, ::sh, ::sw]
        B, C, H, W = xs.shape
        y = xs.permute(0, 2, 3, 1).reshape(B * H * W, C) @ self.weight.view(self.out_channels, C).t()
        return y.view(B, H, W, self.out_channels).permute(0, 3, 1, 2)                 # channels_last view
