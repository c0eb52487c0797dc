"""The race's ensemble: the fully trained fits of the race, averaged where that helps on validation.

The race (:func:`sif.selection.race_fit`) trains several interaction functions to their own early stop and keeps only
the winner. Fits of different functions make different errors, so their average can predict better than any one of
them: on ML-100K u1..u5 (benchmarks/README.md, "The race's ensemble") multiply+max averaged with multiply scored
0.8856 test RMSE against 0.8889 for multiply+max alone (level with two seeds of multiply+max, 0.8861, at a fraction
of the cost: the race has trained multiply already), while averaging with max or min was worse than multiply+max
alone (0.893).

:func:`greedy_members` chooses the members by forward selection on the validation metric (Caruana et al., 2004,
without replacement and with equal weights): start from the race's winner, add the fit that improves the average most,
stop when no fit improves it by more than ``min_delta``. :class:`AveragedModel` is the resulting model: the mean of
its members' outputs (standardised ratings, or ranking scores).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["AveragedModel", "greedy_members", "lead_model"]


class AveragedModel(nn.Module):
    """The mean of ``members``' outputs; the first member is the race's winner (the model drawn and described by the
    run's genotype)."""

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("AveragedModel needs at least one member")
        self.members = nn.ModuleList(members)

    @property
    def searchable(self) -> bool:
        return bool(getattr(self.members[0], "searchable", False))

    def forward(self, users: Tensor, items: Tensor, contexts: Tensor | None = None) -> Tensor:   # (B,) -> (B,)
        out = [m(users, items, contexts) for m in self.members]
        return torch.stack(out).mean(dim=0)


def lead_model(model: nn.Module) -> nn.Module:
    """The model that describes ``model``: its first member for an :class:`AveragedModel`, else itself."""
    return model.members[0] if isinstance(model, AveragedModel) else model


def greedy_members(winner: str, pool: Sequence[str], loss: Callable[[list[str]], float],
                   min_delta: float) -> tuple[list[str], list[dict]]:
    """Forward selection of the ensemble's members: ``[winner]``, then repeatedly the op of ``pool`` whose addition
    gives the lowest ``loss`` (the validation metric of the members' average, lower is better), while it improves
    the loss by more than ``min_delta``. Equal losses go to the op earlier in ``pool``; deterministic. Returns the
    members and one record per step (members, loss)."""
    members, best = [winner], loss([winner])
    steps = [{"members": list(members), "loss": best}]
    rest = [op for op in pool if op != winner]
    while rest:
        trials = [(loss(members + [op]), k) for k, op in enumerate(rest)]
        value, k = min(trials)
        if not value < best - min_delta:
            break
        members.append(rest.pop(k))
        best = value
        steps.append({"members": list(members), "loss": best})
    return members, steps
