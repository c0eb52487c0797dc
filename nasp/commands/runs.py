"""Run folders of the ``nasp`` commands that know what made them.

Each command writes ``fingerprint.json`` into its run_dir: the command, its resolved settings (less those that
change no number or may change on a resume: the folder, thread counts, the progress period and the stand-alone
trainer's epoch budget / time limit / compile switches) and a sha256 of the data actually read (token ids and
vocabulary, or images, labels and class names, per split). A rerun into a folder with the same fingerprint resumes
(its checkpoint continues); a different one is refused in one line naming the differing keys or splits, so that a
checkpoint made from other settings or other data is never continued. A folder that holds a checkpoint but no
fingerprint is refused too; one without a checkpoint (a start that failed) is simply reused. The fingerprint pieces
(digest, flattening, differences, the error type) live in :mod:`nasp.runs`; this module holds the policy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from ..config import to_dict
from ..runs import RunFolderError, differences, digest, flatten
from ..trainer import RESUMABLE_CHANGES

__all__ = ["RunFolderError", "digest", "prepare_run_dir"]

NON_SEMANTIC = ("run_dir", "threads", "search.log_every") + tuple(f"train.{k}" for k in RESUMABLE_CHANGES)
CHECKPOINTS = ("checkpoint.pt", "train_checkpoint.pt")


def prepare_run_dir(run_dir: str | Path, command: str, cfg: Any, data: dict[str, str]) -> Path:
    """Check ``run_dir`` against this run (``cfg`` a run dataclass, ``data`` split -> :func:`digest`), then write
    fingerprint.json and resolved_config.yaml into it; a run made differently is a :class:`RunFolderError`."""
    folder = Path(run_dir)
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"run_dir {folder} is a file, not a folder; choose another run_dir")
    settings = {k: v for k, v in flatten(to_dict(cfg), leaves=("files",)).items() if k not in NON_SEMANTIC}
    fp = {"command": command, "config": settings, "data": data}
    stored = folder / "fingerprint.json"
    started = any((folder / c).is_file() for c in CHECKPOINTS)     # a start that failed before one is no run
    if stored.is_file() and started:
        try:
            old = json.loads(stored.read_text())
        except ValueError:
            raise RunFolderError(f"run_dir {folder}: {stored.name} is not readable JSON; choose another run_dir "
                                 "or delete the folder") from None
        diff = differences(old, fp)
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
