"""Run folders that know what made them.

Every command writes into its own subfolder of ``out_dir`` (``search/``, ``train-<model>/``, ``benchmark/``), with
``fingerprint.json``: the resolved configuration (less the keys that cannot change a result: progress bars, thread
counts, the folder itself; and the wall-time budget ``train.max_seconds``, see :data:`BUDGETS`) and the data, as the
sha256 of the ratings actually read and of every split. A rerun into a folder compares fingerprints. The same
fingerprint resumes (checkpoints continue exactly; a run stopped by its time budget continues under a new one); any
difference is refused in one line naming the differing keys, unless ``fresh``: the old folder is then moved aside
(``<folder>.old-<n>``, never deleted) and the run starts over. A folder with content but no fingerprint was not made
by this library version's command lines and is refused too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from data_loaders import RatingDataset
from nasp.runs import RunFolderError, digest, flatten
from nasp.runs import differences as _differences

__all__ = ["RunFolderError", "command_folder", "fingerprint", "differences", "prepare_run_folder"]

# keys that change no number of a run (where it is written, how it is shown, how many threads compute it)
NON_SEMANTIC = ("out_dir", "show_progress", "threads", "search.log_every")
# wall-time budgets: where a run stopped depends on the machine's speed, not on what made it, and a run stopped by
# its budget continues under a larger one (as in nasp.trainer.RESUMABLE_CHANGES), so they are left out as well
BUDGETS = ("train.max_seconds",)


def command_folder(out_dir: str | Path, command: str, model: str | None = None) -> Path:
    """``out_dir/search``, ``out_dir/train-<model>`` (``:`` spelled ``-``) or ``out_dir/benchmark``."""
    out_dir = Path(out_dir).expanduser()            # "~/runs" is the home folder's, not a folder named "~"
    if command == "train":
        return out_dir / f"train-{str(model).replace(':', '-')}"
    return out_dir / command


def data_fingerprint(splits: dict[str, RatingDataset]) -> dict[str, Any]:
    """sha256 and size of each split's (users, items, ratings, contexts), plus the id maps."""
    out: dict[str, Any] = {}
    for name, ds in splits.items():
        out[name] = {"n": len(ds), "sha256": digest(ds.users, ds.items, ds.ratings, ds.contexts)}
    if not splits:
        return out
    first = next(iter(splits.values()))
    out["ids_sha256"] = digest(np.asarray(first.user_ids).astype(str), np.asarray(first.item_ids).astype(str))
    return out


def fingerprint(config: dict[str, Any], splits: dict[str, RatingDataset], command: str) -> dict[str, Any]:
    """What made a run: the command, its semantic settings (flattened dotted keys) and its data."""
    settings = {k: v for k, v in flatten(config).items() if k not in NON_SEMANTIC + BUDGETS}
    return {"command": command, "config": settings, "data": data_fingerprint(splits)}


def _data_message(key: str) -> str:
    what = "the id maps" if key == "ids_sha256" else f"the {key} ratings"
    return f"data: {what} differ (file content, ratings, rows or split changed)"


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable differences between two fingerprints (empty: the same run; :func:`nasp.runs.differences`
    with sif's wording of data differences and a setting added since the old run, at its default, not counted)."""
    return _differences(old, new, _data_message, defaults=_default_settings())


def _default_settings() -> dict[str, Any]:
    """Every setting's default, flattened like a fingerprint's config."""
    from .config import RunConfig

    return flatten(RunConfig().to_dict())


def prepare_run_folder(folder: str | Path, fp: dict[str, Any], fresh: bool = False) -> tuple[Path, bool]:
    """Check ``folder`` against fingerprint ``fp`` and make it ready; returns (folder, resumed).

    A new or empty folder is created; a folder with the same fingerprint is resumed; otherwise
    :class:`RunFolderError`, unless ``fresh``, which moves the old folder aside first."""
    folder = Path(folder)
    stored = folder / "fingerprint.json"
    blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise RunFolderError(f"run folder {folder}: {blocker} is a file, not a folder; choose another out_dir "
                             "(or --out)")
    if folder.is_dir() and any(folder.iterdir()):
        problem = None
        if not stored.is_file():
            problem = "it holds files but no fingerprint.json (not made by this command)"
        else:
            diff = differences(json.loads(stored.read_text()), fp)
            if not diff:
                return folder, True
            shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
            problem = f"it holds a run made differently: {shown}"
        if not fresh:
            raise RunFolderError(f"run folder {folder}: {problem}. Rerun with --fresh to move it aside and start "
                                 "over, or choose another out_dir")
        aside = _aside_name(folder)
        folder.rename(aside)
    folder.mkdir(parents=True, exist_ok=True)
    stored.write_text(json.dumps(fp, indent=1, sort_keys=True, default=str) + "\n")
    return folder, False


def _aside_name(folder: Path) -> Path:
    n = 1
    while folder.with_name(f"{folder.name}.old-{n}").exists():
        n += 1
    return folder.with_name(f"{folder.name}.old-{n}")
