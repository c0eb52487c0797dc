"""What the search loop keeps on disk and how it comes back: its checkpoint (weights, alphas, both optimisers, the
schedule, every RNG, the data streams' positions, the running epoch sums, elapsed seconds), exact resume, a
start from another search's weights (``init_from``), and the stop on divergence that keeps the last good
checkpoint. :class:`SearchCheckpoints` is the part of :class:`nasp.search.Searcher` that does this (the
data-parallel searcher of :mod:`nasp.distributed` overrides the resume read and the finiteness check).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .checkpoint import (
    WEIGHT_BOUND,
    CheckpointError,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    unhealthy_parameter,
)
from .loop import reload_last_good
from .search_config import NonFiniteLossError
from .streams import ResumableStream

__all__ = ["SearchCheckpoints", "read_init_checkpoint"]

log = logging.getLogger("nasp.search")


def read_init_checkpoint(path: str, key: str, device, name: str, made_by: str) -> Any:
    """The payload of the checkpoint a new run starts from (the ``init_from`` of the search and of the trainers).
    A path that is missing, a folder, unreadable, corrupt or not a nasp checkpoint is a one-line ValueError naming
    ``key`` and the file, and saying what to give instead: the ``name`` file of ``made_by``."""
    if Path(path).is_dir():
        raise ValueError(f"{key}: {path} is a folder; give the {name} inside it")
    try:
        return load_checkpoint(path, map_location=device)
    except (CheckpointError, FileNotFoundError) as e:       # missing, corrupt, not a nasp checkpoint
        raise ValueError(f"{key}: {e}; give the {name} of {made_by}") from None
    except OSError as e:                                     # unreadable: permissions, I/O
        raise ValueError(f"{key}: checkpoint {path} cannot be read ({e.strerror})") from None


class SearchCheckpoints:
    """Checkpoint, resume and divergence stop of :class:`nasp.search.Searcher` (a base class: it reads the
    searcher's model, optimisers, scheduler, generator, counters and config)."""

    @property
    def checkpoint_path(self) -> Path | None:
        return self.run_dir / "checkpoint.pt" if self.run_dir is not None else None

    def state_dict(self, train_stream: ResumableStream, valid_stream: ResumableStream) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(), "w_opt": self.w_opt.state_dict(), "a_opt": self.a_opt.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "rng": rng_state(), "arch_generator": self.arch_generator.get_state(),
            "epoch": self.epoch, "step": self.step, "history": self.history,
            "elapsed": self.elapsed_before + time.perf_counter() - self._t_start,
            "train_stream": train_stream.state_dict(), "valid_stream": valid_stream.state_dict(),
            "epoch_acc": {k: (v.detach().cpu() if isinstance(v, Tensor) else v)
                          for k, v in self._epoch_acc.items()},
            "config": asdict(self.config),
        }

    def load_state_dict(self, state: dict[str, Any], train_stream, valid_stream) -> None:
        self.model.load_state_dict(state["model"])
        self.w_opt.load_state_dict(state["w_opt"])
        self.a_opt.load_state_dict(state["a_opt"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.arch_generator.set_state(state["arch_generator"])
        self.epoch, self.step, self.history = state["epoch"], state["step"], list(state["history"])
        self.elapsed_before = float(state["elapsed"])
        train_stream.load_state_dict(state["train_stream"])
        valid_stream.load_state_dict(state["valid_stream"])
        self._epoch_acc = {k: (v.to(self.device) if isinstance(v, Tensor) else v)
                           for k, v in state["epoch_acc"].items()}

    def _save(self, train_stream, valid_stream) -> None:
        if self.checkpoint_path is not None:
            save_checkpoint(self.state_dict(train_stream, valid_stream), self.checkpoint_path)

    def _resume_state(self) -> dict[str, Any] | None:
        """The checkpoint to resume from, or None (hook: the data-parallel searcher reads it on rank 0 only)."""
        ckpt = self.checkpoint_path
        return load_checkpoint(ckpt, map_location=self.device) if ckpt is not None and ckpt.is_file() else None

    def _check_saved_config(self, saved: dict[str, Any]) -> None:
        now = asdict(self.config)
        keys = ("strategy", "epochs", "seed", "w_optimizer", "w_lr", "a_lr", "eta", "warmup_epochs")
        diff = {k: (saved.get(k), now[k]) for k in keys if saved.get(k) != now[k]}
        if diff:
            raise ValueError(f"checkpoint {self.checkpoint_path} was written with other settings "
                             f"(saved, now): {diff}; use another run_dir or resume=False")

    def _init_from(self, path: str) -> None:
        """Weights and alphas of another search's checkpoint; optimisers, schedule and step start afresh. A file
        that is missing, a folder, unreadable or not a checkpoint is a ValueError naming ``search.init_from``."""
        saved = read_init_checkpoint(path, "search.init_from", self.device, "checkpoint.pt", "an earlier search")
        try:
            self.model.load_state_dict(saved["model"])
        except (RuntimeError, KeyError, TypeError) as e:
            raise ValueError(f"search.init_from={path}: not a search checkpoint of this space "
                             f"({str(e).splitlines()[0][:160]})") from None
        log.info("the search starts from the weights and alphas of %s", path)

    # ---- divergence ----------------------------------------------------------------------------------------
    def _check_finite(self, acc: dict, epoch: int) -> None:
        """Blocking check of the running losses and of the weights (at checkpoints and epoch ends only), so that
        no checkpoint keeps a diverged state."""
        if self._non_finite(acc):
            self._raise_non_finite(epoch)
        bad = unhealthy_parameter(self.model)
        if bad is not None:
            self._raise_non_finite(epoch, f"weight {bad} is NaN, infinite or beyond {WEIGHT_BOUND:g}")

    @staticmethod
    def _non_finite(acc: dict) -> bool:
        return not bool(torch.isfinite(acc["train_loss"]) & torch.isfinite(acc["alpha_loss"]))

    def _raise_non_finite(self, epoch: int, what: str = "loss is NaN or infinite") -> None:
        kept = reload_last_good(self.model, self.checkpoint_path, self.device)
        where = f"epoch {epoch} (global step {self.step}, strategy {self.config.strategy})"
        keep_msg = f"the last good checkpoint {kept} was kept and reloaded" if kept else "no checkpoint was written"
        raise NonFiniteLossError(f"the search diverged at {where} ({what}); stopping: {keep_msg}. Lower the "
                                 "learning rates, enable grad_clip, or check the data for NaN/inf values; to "
                                 "continue from the last good state with new settings, set search.init_from to the "
                                 "kept checkpoint (sif command line: with --fresh).")
