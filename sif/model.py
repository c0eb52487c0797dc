"""The one interface of sif's rating models: the SIF search space and fixed-op models
(:class:`sif.space.SIFSpace`) and the classic baselines (:class:`sif.baselines.RatingModel`).

Training, the tasks and the command line talk to a model only through this interface, never by looking for
attributes: ``forward(users, items, contexts=None) -> (B,)`` predictions, and

- ``searchable``: True for a SIF space (interaction alphas, the element-wise transform g, per-op heads; the tasks
  then score through ``encode_parts`` / ``transform`` / ``interact``), False for a baseline (``forward_with_rows``);
- ``weights()``: what stand-alone training updates (a SIF space: everything but the alphas);
- ``slow_parameters()``: weights trained at ``lr * train.g_lr_scale`` (SIF's g; none for baselines);
- ``sparse_view()``: the architecture view the tasks score with (None for baselines);
- ``after_weight_step()``: projections after every optimiser step (SIF's head balls; none for baselines);
- ``neighbourhoods`` (an ``nn.ModuleDict``, empty without SVD++-style vectors) and ``set_neighbours``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import ClassVar

from torch import Tensor, nn

from .neighbourhood import set_neighbours

__all__ = ["RatingModule"]


class RatingModule(nn.Module):
    """Base of every sif rating model; subclasses set ``self.neighbourhoods`` (an ``nn.ModuleDict``) in
    ``__init__``. See the module docstring for the contract."""

    searchable: ClassVar[bool] = False

    def weights(self) -> Iterator[nn.Parameter]:
        """The parameters stand-alone training updates."""
        return self.parameters()

    def slow_parameters(self) -> Iterable[nn.Parameter]:
        """Weights trained at ``lr * train.g_lr_scale``."""
        return ()

    def sparse_view(self):
        """The architecture view to score with (None: no architecture)."""
        return None

    def after_weight_step(self) -> None:
        """Called after every weight-optimiser step (no projection by default)."""

    def set_neighbours(self, users: Tensor, items: Tensor) -> None:
        """Build the neighbourhoods' lists from training interactions (no-op without ``neighbourhood``)."""
        set_neighbours(self.neighbourhoods, users, items)
