"""One op type on several edges of a cell, run as ONE batched call (the NASP alpha step).

In the alpha step every non-selected op of every edge runs once, without a graph, only to be reduced to
<dL/d(edge out), op(x)>. An op type has the same layers on every edge of a cell (only the weights differ), so
E copies of a (ReLU -> conv -> ... -> BN) chain on inputs of one shape can run as one chain on E * C channels:
the E inputs (the same tensor for edges leaving one node) are concatenated along channels, every conv becomes
a grouped conv with the E weight tensors concatenated (groups x E), every BN one batch norm over E * C channels
with the E running statistics concatenated and written back. Channel block e of the result is edge e's output,
computed by the same per-channel arithmetic; the saving is in per-call overhead (a oneDNN convolution call
costs 0.1-0.2 ms on this CPU before any arithmetic), not in arithmetic.

Only chains of ReLU / Conv2d (no bias, zero padding) / BatchNorm2d (training mode, fixed momentum) qualify
(:func:`batchable`); everything else (pools, identity, FactorizedReduce) runs edge by edge as before.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .fastconv import DepthwiseConv2d, PointwiseConv2d

__all__ = ["batchable", "leaves", "run_batched"]


def leaves(op: nn.Module) -> list[nn.Module]:
    """The op's leaf modules in execution order (nested ``nn.Sequential`` flattened)."""
    if isinstance(op, nn.Sequential):
        return [leaf for child in op for leaf in leaves(child)]
    return [op]


def _plain(m: nn.Module) -> bool:
    if type(m) is nn.ReLU:
        return not m.inplace
    if type(m) in (nn.Conv2d, DepthwiseConv2d, PointwiseConv2d):
        return m.bias is None and m.padding_mode == "zeros" and not isinstance(m.padding, str)
    if type(m) is nn.BatchNorm2d:
        return m.training and m.track_running_stats and m.momentum is not None
    return False


def batchable(op: nn.Module) -> bool:
    """Whether ``op`` is a chain ReLU -> (ReLU | Conv2d | BatchNorm2d)* that :func:`run_batched` can stack."""
    chain = leaves(op)
    return len(chain) > 1 and type(chain[0]) is nn.ReLU and all(_plain(m) for m in chain)


@torch.no_grad()
def run_batched(ops: list[nn.Module], x_relu: Tensor | list[Tensor]) -> Tensor:
    """ops: E modules of one op type (same layers, own weights), all :func:`batchable`; x_relu: the relu of
    their common input (B, C, H, W), or a list of E such inputs (one per op, all of one shape: edges leaving
    different nodes). Returns (B, E * C_out, H', W'): channel block e = ``ops[e](x_e)``. BN running statistics
    and counters of every op are updated exactly as E separate calls would."""
    E = len(ops)
    xs = list(x_relu) if isinstance(x_relu, (list, tuple)) else [x_relu] * E
    chains = [leaves(op)[1:] for op in ops]           # the leading ReLU is already applied
    fmt = torch.channels_last if xs[0].is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    h = torch.cat(xs, dim=1).contiguous(memory_format=fmt)                         # (B, E * C, H, W)
    for layer in zip(*chains, strict=True):
        m = layer[0]
        if type(m) is nn.ReLU:
            h = torch.relu(h)
        elif isinstance(m, nn.Conv2d):
            w = torch.cat([c.weight for c in layer], dim=0)                        # (E * C_out, C_in / g, k, k)
            h = nn.functional.conv2d(h, w, None, m.stride, m.padding, m.dilation, m.groups * E)
        else:
            h = _batch_norm(list(layer), h)
    return h


def _batch_norm(bns: list[nn.BatchNorm2d], h: Tensor) -> Tensor:
    m = bns[0]
    mean = torch.cat([bn.running_mean for bn in bns])
    var = torch.cat([bn.running_var for bn in bns])
    weight = torch.cat([bn.weight for bn in bns]) if m.affine else None
    bias = torch.cat([bn.bias for bn in bns]) if m.affine else None
    out = nn.functional.batch_norm(h, mean, var, weight, bias, True, m.momentum, m.eps)
    C = m.num_features
    torch._foreach_copy_([bn.running_mean for bn in bns], list(mean.split(C)))
    torch._foreach_copy_([bn.running_var for bn in bns], list(var.split(C)))
    torch._foreach_add_([bn.num_batches_tracked for bn in bns], 1)
    return out
