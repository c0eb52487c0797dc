"""Small pieces of the training and search loops: device moves of batches, phase timers without host syncs,
a deferred host read of device values, progress bars, and the reload of the last good checkpoint."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .checkpoint import load_checkpoint

__all__ = ["to_device", "PhaseTimer", "HostProbe", "progress", "reload_last_good"]


def to_device(batch: Any, device: torch.device) -> Any:
    """Move tensors in a (nested) batch to ``device`` (non-blocking)."""
    if isinstance(batch, Tensor):
        return batch if batch.device == device else batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        if all(isinstance(b, Tensor) and b.device == device for b in batch):
            return batch                    # the common case (loaders already on the device): no op dispatched
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


class PhaseTimer:
    """Seconds spent per phase. On CUDA it records events and reads them once per epoch (no host syncs in the
    step: the only synchronisation is at the epoch end, where the epoch's metrics are read anyway).
    ``with timer("alpha"): ...`` (a plain context object, not a generator: it runs twice per step)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.totals: dict[str, float] = {}
        self.events: list[tuple[str, Any, Any]] = []
        self._open: list[tuple[str, Any]] = []

    def __call__(self, phase: str) -> PhaseTimer:
        if self.cuda:
            start = torch.cuda.Event(enable_timing=True)
            start.record()
            self._open.append((phase, start))
        else:
            self._open.append((phase, time.perf_counter()))
        return self

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc) -> None:
        phase, start = self._open.pop()
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.events.append((phase, start, end))
        else:
            self.totals[phase] = self.totals.get(phase, 0.0) + time.perf_counter() - start

    def collect(self) -> dict[str, float]:
        if self.events:
            torch.cuda.synchronize()
            for phase, s, e in self.events:
                self.totals[phase] = self.totals.get(phase, 0.0) + s.elapsed_time(e) / 1000.0
            self.events.clear()
        out, self.totals = self.totals, {}
        return out


class HostProbe:
    """Reads a small device vector on the host without blocking the step loop.

    ``post(t)`` starts a copy of ``t``: on CUDA into pinned host memory with ``non_blocking`` plus an event, so
    :meth:`read` returns the newest copy that has finished (possibly one period old) and never waits for the
    device; elsewhere the copy is immediate (on the CPU it costs nothing). A newer post replaces an unfinished one.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.pending: tuple[Tensor, Any, Any] | None = None          # (host buffer, event, tag)
        self.ready: tuple[list[float], Any] | None = None            # (values, tag)

    def post(self, t: Tensor, tag: Any = None) -> None:
        t = t.detach().reshape(-1)
        if not self.cuda:
            self.ready = (t.tolist(), tag)
            return
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        host.copy_(t, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.pending = (host, event, tag)

    def read(self) -> tuple[list[float], Any] | None:
        """(values, tag) of the newest finished post, or None before the first one finished."""
        if self.pending is not None and self.pending[1].query():
            self.ready = (self.pending[0].tolist(), self.pending[2])
            self.pending = None
        return self.ready


def progress(total, initial, desc, enabled):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)



def reload_last_good(model: torch.nn.Module, checkpoint: Path | None, device) -> Path | None:
    """After a divergence: load the model weights of ``checkpoint`` (the last good state) back into ``model`` and
    return its path; None (nothing loaded) when there is no such file."""
    if checkpoint is None or not checkpoint.is_file():
        return None
    model.load_state_dict(load_checkpoint(checkpoint, device)["model"])
    return checkpoint
