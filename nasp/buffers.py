"""A pool of large CPU work buffers reused across steps (:class:`BufferPool`): a fresh allocation of 100+ MB costs
several times the op that fills it (page faults). Used by the fused RNN cell (:mod:`nasp.spaces.rnn.fused`) and by
SIF's g (:mod:`sif.transform`)."""

from __future__ import annotations

import math
import threading

import torch
from torch import Tensor

__all__ = ["BufferPool"]

_use_count = getattr(torch._C, "_storage_Use_Count", None)     # references to a storage (C++ and Python)


class BufferPool:
    """Storages of large CPU work buffers (the fused RNN cell's, SIF's g), reused across calls instead of freshly
    allocated.

    The pool keeps one reference to each storage and hands a storage out again only while that is its only
    reference (torch's storage use count is 1). Anything that may still read a buffer holds a reference: a tensor
    saved for a backward that has not run yet (or for a retained graph), a view, a gradient returned from it. So
    two forwards before their backwards get different buffers, and nothing still readable is overwritten; a
    buffer comes back once its graph is freed. Buffers under ``min_bytes`` and off-CPU tensors (CUDA has its
    caching allocator) are allocated as usual. At most ``max_per_size`` storages per size and ``max_sizes``
    sizes are kept (the least recently used size is dropped); :meth:`clear` releases them all. Copies and
    pickles of the owning module get an empty pool."""

    def __init__(self, min_bytes: int = 1 << 20, max_sizes: int = 16, max_per_size: int = 16):
        self.min_bytes, self.max_sizes, self.max_per_size = min_bytes, max_sizes, max_per_size
        self._free: dict[int, list] = {}              # nbytes -> storages; most recently used size last
        self._lock = threading.Lock()

    def __reduce__(self):
        return type(self), (self.min_bytes, self.max_sizes, self.max_per_size)

    def clear(self) -> None:
        with self._lock:
            self._free.clear()

    def held_bytes(self) -> int:
        return sum(n * len(v) for n, v in self._free.items())

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        """An uninitialised contiguous tensor, on a pooled storage where possible."""
        nbytes = math.prod(shape) * dtype.itemsize
        if device.type != "cpu" or _use_count is None or nbytes < self.min_bytes:
            return torch.empty(shape, dtype=dtype, device=device)
        with self._lock:
            stores = self._free.pop(nbytes, [])
            self._free[nbytes] = stores
            for st in stores:
                if _use_count(st._cdata) == 1:
                    return torch.empty(0, dtype=dtype, device=device).set_(st, 0, shape)
            out = torch.empty(shape, dtype=dtype, device=device)
            if len(stores) < self.max_per_size:
                stores.append(out.untyped_storage())
            while len(self._free) > self.max_sizes:
                del self._free[next(iter(self._free))]
            return out
