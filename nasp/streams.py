"""A resumable, persistent batch stream over any loader.

The search loop draws validation batches (alpha steps) from ONE persistent iterator that rolls over epochs of
the validation loader, instead of ``next(iter(loader))`` per step. The stream knows its (epoch, offset), so a
checkpoint can store it and a resumed run continues with exactly the next batch:

- loaders with ``set_epoch(e)`` get it at every epoch start (deterministic order per epoch);
- loaders with ``iter_from(offset)`` skip to a batch in O(1); others are skipped by iterating.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

__all__ = ["ResumableStream"]


class ResumableStream:
    """Infinite stream of batches over epochs of ``loader``, with ``state_dict`` / ``load_state_dict``."""

    def __init__(self, loader: Iterable, start_epoch: int = 0):
        self.loader = loader
        self.epoch = start_epoch
        self.offset = 0          # batches already taken from the current epoch
        self._it: Iterator | None = None

    def _open(self) -> None:
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(self.epoch)
        if self.offset and hasattr(self.loader, "iter_from"):
            self._it = iter(self.loader.iter_from(self.offset))
        else:
            self._it = islice(iter(self.loader), self.offset, None)

    def __next__(self) -> Any:
        if self._it is None:
            self._open()
        for _ in range(2):
            try:
                batch = next(self._it)
                self.offset += 1
                return batch
            except StopIteration:
                self.epoch, self.offset = self.epoch + 1, 0
                self._open()
        raise ValueError("the loader yields no batches (is the dataset empty or smaller than one batch "
                         "with drop_last=True?)")

    def __iter__(self) -> ResumableStream:
        return self

    def take_epoch(self) -> Iterator[Any]:
        """The remaining batches of the current epoch, then move to the next epoch."""
        if self._it is None:
            self._open()
        for batch in self._it:
            self.offset += 1
            yield batch
        self.epoch, self.offset, self._it = self.epoch + 1, 0, None

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.offset, self._it = int(state["epoch"]), int(state["offset"]), None


class TensorLoader:
    """Mini-batches of equal-length tensors in a seeded order that is a pure function of (seed, epoch).

    A small dependency-free loader for synthetic data and examples; it has ``set_epoch`` and ``iter_from``
    so that :class:`ResumableStream` resumes it exactly. (Rating data has its own
    ``data_loaders.BatchIterator``.)
    """

    def __init__(self, *tensors, batch_size: int, shuffle: bool = True, seed: int = 0, drop_last: bool = False):
        n = len(tensors[0])
        if any(len(t) != n for t in tensors):
            raise ValueError(f"TensorLoader: tensors have different lengths {[len(t) for t in tensors]}")
        if batch_size < 1:
            raise ValueError(f"TensorLoader: batch_size must be >= 1, got {batch_size}")
        self.tensors, self.batch_size, self.shuffle = tensors, batch_size, shuffle
        self.seed, self.drop_last, self.epoch, self.n = seed, drop_last, 0, n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def _order(self):
        import torch

        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.n, generator=g)

    def iter_from(self, start: int) -> Iterator[tuple]:
        order = self._order()
        for b in range(start, len(self)):
            idx = order[b * self.batch_size: (b + 1) * self.batch_size]
            yield tuple(t[idx] for t in self.tensors)

    def __iter__(self) -> Iterator[tuple]:
        return self.iter_from(0)
