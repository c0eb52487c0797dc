"""Model-complexity regulariser R(A) = eta * sum_{rows, ops} a^2 * p_op / sum(p).

``p`` are per-op costs measured from the op modules themselves (parameter counts, or FLOPs when a space
provides them), normalised per row so that rows of different width weigh the same. The regulariser applies to
every alpha matrix of an :class:`~nasp.arch.ArchParameters`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["count_params", "cost_matrix", "complexity", "complexity_grad", "normalise_costs"]


def count_params(modules: nn.Module | Iterable[nn.Module] | None) -> int:
    """Number of trainable parameters in a module (or several, e.g. the same op in every cell)."""
    if modules is None:
        return 0
    if isinstance(modules, nn.Module):
        modules = [modules]
    return sum(p.numel() for m in modules for p in m.parameters() if p.requires_grad)


def cost_matrix(ops_per_row: Sequence[Sequence[nn.Module | Iterable[nn.Module] | None]]) -> Tensor:
    """(rows, ops) float tensor of parameter counts from a nested list of op modules (None = no parameters)."""
    return torch.tensor([[float(count_params(m)) for m in row] for row in ops_per_row])


def normalise_costs(cost: Tensor) -> Tensor:
    """p_op / sum(p) per row; rows whose ops cost nothing get zeros."""
    total = cost.sum(dim=1, keepdim=True)
    return torch.where(total > 0, cost / total.clamp_min(1e-12), torch.zeros_like(cost))


def complexity(weights: dict[str, Tensor], costs: dict[str, Tensor], eta: float) -> Tensor | None:
    """R = eta * sum_m sum_{r,k} w[m]_{rk}^2 * normalised_cost[m]_{rk}; None when eta == 0 or no costs."""
    if eta == 0 or not costs:
        return None
    terms = [(w.pow(2) * normalise_costs(costs[n]).to(w.device, w.dtype)).sum()
             for n, w in weights.items() if n in costs]
    return eta * torch.stack(terms).sum() if terms else None


def complexity_grad(cost: Tensor, eta: float, like: Tensor) -> Tensor:
    """dR/dw / w = 2 eta normalised_cost for one cost matrix (rows, ops), on ``like``'s device and dtype: the
    gradient of :func:`complexity` at a one-hot row w is this tensor's entry at the selected op (closed form)."""
    return normalise_costs(cost).to(like.device, like.dtype) * (2 * eta)
