"""Mixed precision of the stand-alone trainers: one set of ``amp`` values, None | "bf16" | "fp16".

bf16 is autocast alone (any device that autocasts to bfloat16); fp16 is autocast with a GradScaler (loss scaling
against fp16 underflow) and runs on CUDA only.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["AMP_VALUES", "check_amp", "autocast", "grad_scaler"]

AMP_VALUES = (None, "bf16", "fp16")


def check_amp(amp: str | None, where: str = "amp") -> None:
    """One-line error unless ``amp`` is one of :data:`AMP_VALUES`."""
    if amp not in AMP_VALUES:
        raise ValueError(f"{where} must be null (None), 'bf16' or 'fp16' (fp16 with a GradScaler, on CUDA only), "
                         f"got {amp!r}")


def autocast(device: torch.device, amp: str | None):
    """The autocast region of ``amp`` on ``device`` (a no-op context for None)."""
    check_amp(amp)
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def grad_scaler(device: torch.device, amp: str | None) -> torch.amp.GradScaler:
    """A GradScaler, enabled for fp16 only; fp16 is refused off CUDA (its loss scaling is a CUDA recipe)."""
    check_amp(amp)
    if amp == "fp16" and device.type != "cuda":
        raise ValueError(f"amp='fp16' needs a CUDA device (fp16 with a GradScaler runs on CUDA only), got device "
                         f"{device.type!r}; use amp='bf16' or amp=null")
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")
