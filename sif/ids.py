"""User, item and context ids at the recommender API: raw ids (those of the training data's files) by default,
contiguous indices on request; anything unknown, out of range or not an integer is refused, never truncated."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

__all__ = ["ID_MODES", "to_index", "check_mode"]

ID_MODES = ("raw", "index")


def check_mode(ids: str) -> None:
    if ids not in ID_MODES:
        raise ValueError(f"ids must be 'raw' (the training data's ids) or 'index' (0-based indices), got {ids!r}")


def _as_array(x) -> np.ndarray:
    return (x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)).reshape(-1)


def _integral(a: np.ndarray, name: str) -> np.ndarray:
    """``a`` as int64; floats only when every value is integral, anything else refused."""
    if a.dtype.kind == "u" and len(a) and a.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name}: ids must be integers below 2**63, got {a.max().item()}")   # would wrap around
    if a.dtype.kind in "iu":
        return a.astype(np.int64)
    if a.dtype.kind == "f":
        bad = ~np.isfinite(a) | (a != np.round(a)) | (np.abs(a) >= 2.0**63)
        if bad.any():
            raise ValueError(f"{name}: ids must be integers, got {a[bad][0].item()!r}")
        return a.astype(np.int64)
    if a.dtype.kind == "b":
        raise ValueError(f"{name}: ids must be integers, got booleans")
    raise ValueError(f"{name}: ids must be integers, got {a.dtype} values such as {a[0]!r}" if len(a) else
                     f"{name}: ids must be integers")


def to_index(values, id_map: np.ndarray | None, name: str, ids: str = "raw", bound: int | None = None
             ) -> torch.Tensor:
    """Indices (int64, flat) of ``values``: raw ids looked up in ``id_map`` (index k has raw id ``id_map[k]``),
    or, with ``ids="index"`` (or no map: contexts), 0-based indices checked against ``bound``."""
    check_mode(ids)
    a = _as_array(values)
    if ids == "index" or id_map is None:
        idx = _integral(a, name)
        bound = len(id_map) if bound is None else bound
        if len(idx) and (idx.min() < 0 or idx.max() >= bound):
            raise ValueError(f"{name}: indices must lie in [0, {bound}), got range [{idx.min()}, {idx.max()}]")
        return torch.from_numpy(idx)
    id_map = np.asarray(id_map)
    if id_map.dtype.kind in "iuf":
        a = _integral(a, name)
    idx = pd.Index(id_map).get_indexer(a)
    if (idx < 0).any():
        unknown = pd.unique(a[idx < 0])
        shown = ", ".join(repr(x.item() if hasattr(x, "item") else x) for x in unknown[:5])
        shown += ", ..." if len(unknown) > 5 else ""
        hint = ("; this model's ids are text (id_type str): pass them as strings" if id_map.dtype.kind == "U"
                and a.dtype.kind in "iuf" else "")
        raise ValueError(f"{name}: {len(unknown)} id(s) unknown to the model ({shown}); raw ids of the training "
                         f"data are expected (pass ids='index' for 0-based indices){hint}")
    return torch.from_numpy(idx.astype(np.int64))
