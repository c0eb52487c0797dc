"""Run folders of the ``nasp`` commands that know what made them.

Each command writes ``fingerprint.json`` into its run_dir: the command, its resolved settings (less those that
change no number or may change on a resume: the folder, thread counts, the progress period and the stand-alone
trainer's epoch budget / time limit / compile switches) and a sha256 of the data actually read (token ids and
vocabulary, or images, labels and class names, per split). A rerun into a folder with the same fingerprint resumes
(its checkpoint continues); a different one is refused in one line naming the differing keys or splits, so that a
checkpoint made from other settings or other data is never continued. A folder that holds a checkpoint but no
fingerprint is refused too; one without a checkpoint (a start that failed) is simply reused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from torch import Tensor

from ..config import ConfigError, to_dict
from ..trainer import RESUMABLE_CHANGES

__all__ = ["RunFolderError", "digest", "prepare_run_dir"]

NON_SEMANTIC = ("run_dir", "threads", "search.log_every") + tuple(f"train.{k}" for k in RESUMABLE_CHANGES)
CHECKPOINTS = ("checkpoint.pt", "train_checkpoint.pt")


class RunFolderError(ConfigError):
    """run_dir holds a run made from other settings or data; the message names the differences."""


def digest(*parts: Any) -> str:
    """sha256 of tensors (dtype, shape and bytes) and JSON-able values, in order."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, Tensor):
            t = p.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.numpy().tobytes())
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and not k == "files":
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _norm(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out = []
    if old.get("command") != new.get("command"):
        out.append(f"command ({old.get('command')} -> {new.get('command')})")
    a, b = old.get("config", {}), new.get("config", {})
    out += [f"{k} ({a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r})" for k in sorted(set(a) | set(b))
            if _norm(a.get(k)) != _norm(b.get(k))]
    da, db = old.get("data", {}), new.get("data", {})
    out += [f"the {k} data differ" for k in sorted(set(da) | set(db)) if da.get(k) != db.get(k)]
    return out


def prepare_run_dir(run_dir: str | Path, command: str, cfg: Any, data: dict[str, str]) -> Path:
    """Check ``run_dir`` against this run (``cfg`` a run dataclass, ``data`` split -> :func:`digest`), then write
    fingerprint.json and resolved_config.yaml into it; a run made differently is a :class:`RunFolderError`."""
    folder = Path(run_dir)
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"run_dir {folder} is a file, not a folder; choose another run_dir")
    settings = {k: v for k, v in _flatten(to_dict(cfg)).items() if k not in NON_SEMANTIC}
    fp = {"command": command, "config": settings, "data": data}
    stored = folder / "fingerprint.json"
    started = any((folder / c).is_file() for c in CHECKPOINTS)     # a start that failed before one is no run
    if stored.is_file() and started:
        try:
            old = json.loads(stored.read_text())
        except ValueError:
            raise RunFolderError(f"run_dir {folder}: {stored.name} is not readable JSON; choose another run_dir "
                                 "or delete the folder") from None
        diff = _differences(old, fp)
        if diff:
            shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
            raise RunFolderError(f"run_dir {folder} holds a run made differently: {shown}; choose another run_dir "
                                 "or delete the folder to start over")
    elif started and not stored.is_file():
        raise RunFolderError(f"run_dir {folder} holds a checkpoint but no fingerprint.json (not made by this "
                             "version of the command); choose another run_dir or delete the folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunFolderError(f"run_dir {folder}: cannot create the folder ({e.strerror})") from None
    stored.write_text(json.dumps(fp, indent=1, sort_keys=True, default=str) + "\n")
    (folder / "resolved_config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return folder
