"""Atomic, checked checkpoints and exact resume.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts. The file is one header line,
``NASPCKPT1 <sha256 of the payload>``, then the payload (``torch.save``). It is written to a temporary file in the
same folder, flushed to disk and renamed over the target (``os.replace`` is atomic), so a crash never leaves a
half-written checkpoint; temporary files of writers that were killed are removed by the next save. At load the
digest is checked before anything is unpacked (a mismatch is a one-line :class:`CheckpointError` naming the
file), then the payload is read with ``torch.load(..., weights_only=True)``: no pickle of arbitrary objects. RNG
states (python, numpy, torch CPU, every CUDA device) are stored as tensors and lists.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["save_checkpoint", "load_checkpoint", "CheckpointError", "rng_state", "set_rng_state",
           "seed_everything", "unhealthy_parameter", "WEIGHT_BOUND"]

WEIGHT_BOUND = 1e15     # a weight this large has diverged: no checkpoint keeps it as a "last good" state

MAGIC = b"NASPCKPT1 "


class CheckpointError(ValueError):
    """A checkpoint file is corrupt, truncated, foreign or not weights-only data; the message names the file."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically (temp file + fsync + rename), with the payload's sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getbuffer()
    for stale in path.parent.glob(f".{path.name}.*.tmp"):     # left by a writer that was killed mid-save
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n")
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`: the sha256 is checked first, then the payload is read
    weights-only (tensors and plain data only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        raise CheckpointError(f"checkpoint {path} is not a nasp checkpoint (no checksum header); it was not "
                              "written by this library's save_checkpoint: delete it or start the run afresh")
    end = data.find(b"\n", len(MAGIC))
    digest, payload = data[len(MAGIC):end].decode("ascii", "replace"), memoryview(data)[end + 1:]
    if end < 0 or hashlib.sha256(payload).hexdigest() != digest:
        raise CheckpointError(f"checkpoint {path} is corrupt: its sha256 does not match the stored one (the file "
                              "was changed or truncated after it was written); delete it or start the run afresh")
    try:
        return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as e:  # foreign objects inside a checksummed file: say which file, not torch's advice
        reason = str(e).split("\n")[0].split(". ")[0][:200]
        raise CheckpointError(f"checkpoint {path} could not be read as weights-only data ({type(e).__name__}: "
                              f"{reason})") from None


def rng_state() -> dict[str, Any]:
    """Every global RNG state as checkpoint-safe data."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) from one integer."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def unhealthy_parameter(module: torch.nn.Module, bound: float = WEIGHT_BOUND) -> str | None:
    """The name of the first parameter of ``module`` that is NaN, infinite or larger than ``bound`` in absolute
    value (a diverged state no checkpoint should keep), else None. One host read for all parameters."""
    params = [(n, p) for n, p in module.named_parameters() if p.numel()]
    if not params:
        return None
    peaks = torch.stack([p.detach().abs().amax().float().cpu() for _, p in params])
    bad = ~(peaks <= bound)                 # NaN compares False: counted as bad
    if not bool(bad.any()):
        return None
    return params[int(bad.nonzero()[0])][0]
