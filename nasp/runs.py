"""Fingerprints of run folders: the pieces shared by the ``nasp`` and ``sif`` commands.

A run folder's ``fingerprint.json`` holds ``{"command", "config", "data"}``: the command, its settings as flat
dotted keys (:func:`flatten`) and a sha256 per data split (:func:`digest`). Two fingerprints are compared with
:func:`differences`, whose lines name what differs; a command refuses a folder made differently with a
:class:`RunFolderError`. What each command leaves out of its settings and what it does with a folder made
differently (refuse, or move it aside) is its own policy (``nasp.commands.runs``, ``sif.runs``).

:func:`digest` hashes arrays in the format ``sif`` run folders were fingerprinted with from the start (numpy dtype
and shape, then the bytes; a tensor as its numpy view), so that the two commands share one digest without changing
the fingerprint of any existing sif run folder.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from torch import Tensor

from .config import ConfigError

__all__ = ["RunFolderError", "digest", "flatten", "differences"]


class RunFolderError(ConfigError):
    """A run folder holds a run made from other settings or data; the message names the differences."""


def digest(*parts: Any) -> str:
    """sha256 hex of ``parts`` in order: a tensor or numpy array as its dtype, shape and bytes (a tensor as its
    numpy view, so equal tensors and arrays hash alike), ``None`` as ``b"none"``, anything else as sorted JSON."""
    h = hashlib.sha256()
    for p in parts:
        if p is None:
            h.update(b"none")
        elif isinstance(p, (Tensor, np.ndarray, np.generic)):
            a = np.ascontiguousarray(p.detach().cpu().numpy() if isinstance(p, Tensor) else p)
            h.update(str((a.dtype, a.shape)).encode())
            h.update(a.tobytes())
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()


def flatten(d: dict[str, Any], prefix: str = "", leaves: Iterable[str] = ()) -> dict[str, Any]:
    """Nested dicts as one dict of dotted keys (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``); empty dicts and the values
    of keys named in ``leaves`` (at any depth) are kept whole."""
    leaves = tuple(leaves)
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and k not in leaves:
            out.update(flatten(v, f"{prefix}{k}.", leaves))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _same(a: Any, b: Any) -> bool:
    """Equal, or equal once written as JSON (a stored tuple reads back as a list, NaN equals NaN)."""
    if a == b:
        return True
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def _data_differ(key: str) -> str:
    return f"the {key} data differ"


def differences(old: dict[str, Any], new: dict[str, Any],
                data_message: Callable[[str], str] = _data_differ,
                defaults: dict[str, Any] | None = None) -> list[str]:
    """Readable differences between two fingerprints, empty when they are the same run: the command, then each
    differing setting as ``key (old -> new)``, then ``data_message(split)`` for each differing data entry.
    defaults: flat settings' defaults; a setting the old fingerprint lacks (added to the library after that run)
    that the new one holds at its default is no difference, since the old run behaved so."""
    out = []
    if old.get("command") != new.get("command"):
        out.append(f"command ({old.get('command')} -> {new.get('command')})")
    a, b, defaults = old.get("config", {}), new.get("config", {}), defaults or {}

    def added_at_default(k: str) -> bool:
        return k not in a and k in defaults and k in b and _same(b[k], defaults[k])

    out += [f"{k} ({a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r})" for k in sorted(set(a) | set(b))
            if not _same(a.get(k), b.get(k)) and not added_at_default(k)]
    da, db = old.get("data", {}), new.get("data", {})
    out += [data_message(k) for k in sorted(set(da) | set(db)) if da.get(k) != db.get(k)]
    return out
