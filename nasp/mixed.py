"""How one decision row turns candidate-op outputs into its output, in each :class:`~nasp.arch.ArchView` mode.

``mix(view, name, r, compute, num_ops)`` is the single place where the three modes differ:

- SPARSE: only the selected op runs: ``w[sel] * op_sel(x)`` (``w[sel]`` is exactly 1); a dropped row returns None.
- NASP (the alpha step): the selected op runs with a full graph; every other op runs under ``torch.no_grad``.
  This is exact, not an approximation: dL/dĀ_k = <dL/d(out), op_k(x)> needs only the value of op_k(x), and the
  gradient through op_k to its weights and input is multiplied by Ā_k = 0.
- DENSE (DARTS): ``sum_k w_k * op_k(x)`` with full graphs.

``compute(k)`` returns op k's output; ops named in ``skip`` (e.g. DARTS' ``none``) contribute zeros without
being computed.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import torch
from torch import Tensor

from .arch import DENSE, NASP, SPARSE, ArchView

__all__ = ["mix"]


def _weighted_sum(w: Tensor, outs: list[Tensor], ks: list[int]) -> Tensor:
    stacked = torch.stack(outs)                                          # (K, *out_shape)
    # w[ks] with a Python list would copy the index to the device with a blocking (host-syncing) copy
    wk = w if len(ks) == w.shape[0] else torch.stack([w[k] for k in ks])  # (K,)
    wk = wk.to(stacked.dtype).view(-1, *([1] * (stacked.dim() - 1)))     # (K, 1, ...)
    return (wk * stacked).sum(0)


def mix(
    view: ArchView,
    name: str,
    r: int,
    compute: Callable[[int], Tensor],
    num_ops: int,
    skip: Collection[int] = (),
) -> Tensor | None:
    """Output of row ``r`` of matrix ``name`` under ``view``; None when the row is dropped (SPARSE mode)
    or when every op is skipped."""
    w, sel = view.row(name, r)
    if view.mode == SPARSE:
        if sel < 0 or sel in skip:
            return None
        out = compute(sel)
        return w[sel].to(out.dtype) * out
    ks = [k for k in range(num_ops) if k not in skip]
    if not ks:
        return None
    if view.mode == DENSE:
        return _weighted_sum(w, [compute(k) for k in ks], ks)
    if view.mode == NASP:
        outs = []
        for k in ks:
            if k == sel:
                outs.append(compute(k))
            else:
                with torch.no_grad():
                    outs.append(compute(k))
        return _weighted_sum(w, outs, ks)
    raise ValueError(f"unknown ArchView mode {view.mode!r}")
