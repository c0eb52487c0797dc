"""Devices: the accepted device names and model placement (the accelerator fast path)."""

from __future__ import annotations

import re

import torch
from torch import nn

__all__ = ["check_device", "prepare_model"]


def check_device(device: str | torch.device) -> None:
    """``device`` must be cpu, cuda, cuda:N or mps; otherwise a one-line ValueError naming the value."""
    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", str(device)):
        raise ValueError(f"device must be cpu, cuda, cuda:N or mps, got {device!r}")


def prepare_model(model: nn.Module, device: torch.device | str, channels_last: bool | None = None) -> nn.Module:
    """Move ``model`` to ``device``; on CUDA, models with 2-D convolutions go to ``channels_last`` memory format
    (``channels_last=None``: decide by the model; feed NCHW inputs with ``x.to(memory_format=torch.channels_last)``).
    """
    device = torch.device(device)
    model = model.to(device)
    has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    if (has_conv and device.type == "cuda") if channels_last is None else channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model
