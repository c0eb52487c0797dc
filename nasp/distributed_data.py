"""Data sharding for data-parallel runs (see :mod:`nasp.distributed`, which re-exports these): every rank's equal
slice of each global batch (:class:`ShardedLoader`) and pinned host batches for CUDA copies (:class:`PinnedLoader`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

import torch.distributed as dist
from torch import Tensor

__all__ = ["ShardedLoader", "shard_if_distributed", "PinnedLoader"]


def _world() -> tuple[int, int]:
    """(rank, world size) of the process group; (0, 1) outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


# ---- data sharding ----------------------------------------------------------------------------------------------
def _rows(batch: Any) -> int | None:
    if isinstance(batch, Tensor):
        return batch.shape[0] if batch.dim() else None
    if isinstance(batch, (list, tuple)):
        return next((r for r in (_rows(b) for b in batch) if r is not None), None)
    if isinstance(batch, dict):
        return next((r for r in (_rows(b) for b in batch.values()) if r is not None), None)
    return None


def _slice(batch: Any, lo: int, hi: int, n: int) -> Any:
    if isinstance(batch, Tensor):
        return batch[lo:hi] if batch.dim() and batch.shape[0] == n else batch
    if isinstance(batch, (list, tuple)):
        return type(batch)(_slice(b, lo, hi, n) for b in batch)
    if isinstance(batch, dict):
        return {k: _slice(v, lo, hi, n) for k, v in batch.items()}
    return batch


class ShardedLoader:
    """This rank's equal slice of every global batch of ``loader``.

    A global batch of B rows is cut into ``world_size`` contiguous slices of ``B // world_size`` rows; rank r takes
    slice r. Every rank iterates the same global order (the wrapped loader is seeded identically everywhere), so
    together the ranks see each global batch once, and a batch holding fewer rows than ranks is skipped on all
    ranks. ``set_epoch`` and ``iter_from`` are forwarded, so :class:`~nasp.streams.ResumableStream` resumes it
    exactly. Batches are tensors or (nested) tuples/lists/dicts of tensors sharing their first dimension.
    """

    def __init__(self, loader: Iterable, rank: int | None = None, world_size: int | None = None):
        self.loader = loader
        group_rank, group_world = _world()
        self.rank = group_rank if rank is None else int(rank)
        self.world_size = group_world if world_size is None else int(world_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"ShardedLoader: rank {self.rank} outside [0, {self.world_size})")

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def shard(self, batch: Any) -> Any | None:
        """This rank's slice of one global batch (None when the batch has fewer rows than ranks)."""
        n = _rows(batch)
        if n is None:
            raise TypeError(f"ShardedLoader: cannot find the batch dimension of a {type(batch).__name__}")
        per = n // self.world_size
        if per == 0:
            return None
        return _slice(batch, self.rank * per, (self.rank + 1) * per, n)

    def iter_from(self, start: int) -> Iterator[Any]:
        """Shards of the current epoch's global batches from batch index ``start`` on."""
        inner = self.loader.iter_from(start) if hasattr(self.loader, "iter_from") else islice(iter(self.loader),
                                                                                            start, None)
        for batch in inner:
            part = self.shard(batch)
            if part is not None:
                yield part

    def __iter__(self) -> Iterator[Any]:
        return self.iter_from(0)


def shard_if_distributed(loader: Iterable) -> Iterable:
    """``ShardedLoader(loader)`` inside a process group of several ranks, else ``loader`` itself."""
    return ShardedLoader(loader) if _world()[1] > 1 else loader


class PinnedLoader:
    """Yields the batches of a CPU loader in pinned memory, so ``to(device, non_blocking=True)`` overlaps the copy
    with compute on CUDA. Forwards ``set_epoch``/``iter_from``/``len``."""

    def __init__(self, loader: Iterable):
        self.loader = loader

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    @staticmethod
    def _pin(b: Any) -> Any:
        if isinstance(b, Tensor):
            return b.pin_memory() if b.device.type == "cpu" else b
        if isinstance(b, (list, tuple)):
            return type(b)(PinnedLoader._pin(x) for x in b)
        if isinstance(b, dict):
            return {k: PinnedLoader._pin(v) for k, v in b.items()}
        return b

    def iter_from(self, start: int) -> Iterator[Any]:
        inner = self.loader.iter_from(start) if hasattr(self.loader, "iter_from") else islice(iter(self.loader),
                                                                                            start, None)
        for b in inner:
            yield self._pin(b)

    def __iter__(self) -> Iterator[Any]:
        return self.iter_from(0)
