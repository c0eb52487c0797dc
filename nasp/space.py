"""The contract between the search core and a search space, plus the task adapter protocol.

A search space is an ``nn.Module`` (the supernet) that owns its weights and an :class:`ArchParameters` in the
attribute ``arch``. Its ``forward(*inputs, view=...)`` runs the architecture given as an
:class:`~nasp.arch.ArchView` (use :func:`nasp.mixed.mix` for every decision row). A :class:`Task` turns a batch
into a loss (and evaluates on a loader); the search loop never knows which space it drives.

Spaces are registered with :func:`register_space` and built with :func:`create_space` (timm style).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from .arch import ArchParameters, ArchView
from .genotype import Genotype, derive

__all__ = ["SearchSpace", "Task", "register_space", "create_space", "SPACES", "mean_loss_evaluate"]

SPACES: dict[str, Callable[..., SearchSpace]] = {}


def register_space(name: str):
    """Class or factory decorator: ``@register_space("toy")``."""

    def deco(fn):
        if name in SPACES:
            raise ValueError(f"search space {name!r} is already registered")
        SPACES[name] = fn
        return fn

    return deco


def create_space(name: str, **kwargs) -> SearchSpace:
    """Build a registered search space by name."""
    if name not in SPACES:
        raise KeyError(f"unknown search space {name!r}; registered: {sorted(SPACES)}")
    return SPACES[name](**kwargs)


class SearchSpace(nn.Module):
    """Base class of supernets. Subclasses set ``self.arch`` and implement ``forward(*inputs, view)``.

    Hooks with defaults: ``alpha_step_parameters`` (weights also trained by the alpha optimiser, e.g. SIF's g),
    ``op_costs`` (per-op costs for the complexity regulariser), ``after_weight_step`` (projections after the
    weight optimiser, e.g. SIF's unit-ball heads).
    """

    arch: ArchParameters

    def alphas(self) -> Iterator[nn.Parameter]:
        """The architecture parameters (for the alpha optimiser)."""
        return iter(self.arch.alphas.values())

    def weights(self) -> Iterator[nn.Parameter]:
        """Every parameter that is not an alpha (for the weight optimiser)."""
        alpha_ids = {id(p) for p in self.alphas()}
        return (p for p in self.parameters() if id(p) not in alpha_ids)

    def named_weights(self) -> Iterator[tuple[str, nn.Parameter]]:
        alpha_ids = {id(p) for p in self.alphas()}
        return ((n, p) for n, p in self.named_parameters() if id(p) not in alpha_ids)

    def alpha_step_parameters(self) -> Iterable[nn.Parameter]:
        """Extra weights trained together with the alphas in the alpha step (none by default)."""
        return ()

    def op_costs(self) -> dict[str, Tensor]:
        """name -> (rows, ops) cost of each candidate op (parameter counts); empty = no regulariser."""
        return {}

    def after_weight_step(self) -> None:
        """Called after every weight-optimiser step (projections, constraints)."""

    def genotype(self) -> Genotype:
        """The current discrete architecture (last prox_C1)."""
        return derive(self.arch)

    def sparse_view(self) -> ArchView:
        return self.arch.sparse_view()


@runtime_checkable
class Task(Protocol):
    """Task adapter: the loss of one batch under an architecture view, and evaluation on a loader.

    ``stream`` is "train" or "valid" (tasks with carried state, e.g. a language model's hidden state, keep one
    state per stream). ``metric`` names the key of ``evaluate``'s dict used to select architectures and
    epochs; ``maximize`` says its direction.
    """

    metric: str
    maximize: bool

    def loss(self, model: SearchSpace, batch: Any, view: ArchView, stream: str) -> Tensor: ...

    def evaluate(self, model: SearchSpace, loader: Iterable, view: ArchView) -> dict[str, float]: ...


@torch.no_grad()
def mean_loss_evaluate(task: Task, model: SearchSpace, loader: Iterable, view: ArchView,
                       device: torch.device | str = "cpu", max_batches: int | None = None) -> dict[str, float]:
    """Helper for tasks: the mean of ``task.loss`` over a loader (one host sync at the end)."""
    total, n = torch.zeros((), device=device), 0
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        total += task.loss(model, batch, view, "eval").detach().float()
        n += 1
    return {"loss": (total / max(n, 1)).item()}
