"""ONE stand-alone training loop for every trained model (SIF and rating baselines, image classifiers, language
models).

:class:`Trainer` owns the epochs, the per-step and per-epoch progress bars, one checkpoint format (written
atomically after every epoch with :func:`nasp.checkpoint.save_checkpoint`, sha256-checked at load), exact resume
(model, RNG, the step's optimiser / scheduler / averager state, the loop's own state, elapsed seconds adding up
over the processes of a resumed run), the stop on a NaN/inf training loss or an unhealthy weight
(:func:`nasp.checkpoint.unhealthy_parameter`: a one-line :class:`NonFiniteLossError`, the last good checkpoint
kept and reloaded into the model), one callback signature ``callback(epoch, elapsed, record) -> bool`` (True
stops), ``max_seconds`` and optional early stopping (:class:`EarlyStopping`).

A trainer supplies only a :class:`TrainStep`: how to train one epoch, how to evaluate, what to do at an epoch
end, and the state of its own objects (optimiser, scheduler, ...). Mixed precision has one set of values for
every trainer: ``amp`` None | "bf16" | "fp16" (fp16 with a GradScaler, on CUDA only), see :mod:`nasp.amp`.

Example::

    result = Trainer(model, MyStep(...), epochs=10, seed=0, device="cuda", run_dir="runs/t").fit()
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import (
    WEIGHT_BOUND,
    CheckpointError,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
    unhealthy_parameter,
)
from .loop import reload_last_good
from .search_config import NonFiniteLossError
from .search_state import read_init_checkpoint

__all__ = ["Trainer", "TrainStep", "EarlyStopping", "LoopResult", "NonFiniteLossError", "CHECKPOINT_NAME"]

log = logging.getLogger("nasp.trainer")

CHECKPOINT_NAME = "train_checkpoint.pt"
LOG_NAME = "train_log.jsonl"
FORMAT = 1
RESUMABLE_CHANGES = ("epochs", "max_epochs", "max_seconds", "init_from", "compile", "compile_backend")


@dataclass
class EarlyStopping:
    """Stop after ``patience`` epochs without an improvement of more than ``min_delta`` of ``record[metric]``
    (lower is better unless ``maximize``); ``restore_best``: load the best epoch's weights at the end."""

    metric: str
    maximize: bool = False
    patience: int = 5
    min_delta: float = 1e-4
    restore_best: bool = True

    def __post_init__(self):
        if self.patience < 1:
            raise ValueError(f"EarlyStopping: patience must be >= 1, got {self.patience}")


@dataclass
class LoopResult:
    """What :meth:`Trainer.fit` returns: the per-epoch records, the best epoch (the last one without early
    stopping), the reason it stopped and the seconds of all processes of the run."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = -1
    stopped_by: str = "epochs"          # epochs | early_stopping | callback | max_seconds
    seconds: float = 0.0

    @property
    def best(self) -> dict[str, Any]:
        return self.history[self.best_epoch] if self.best_epoch >= 0 else {}


class TrainStep:
    """What a trainer supplies to :class:`Trainer` (override the methods; the defaults do nothing).

    ``kind`` names the trainer in its checkpoints (a checkpoint of another kind is refused); ``advice`` ends the
    divergence message (what to change)."""

    kind = "model"
    advice = "Lower the learning rate, enable grad_clip or check the data."

    def steps_per_epoch(self) -> int | None:
        """Length of the per-step progress bar (None: unknown)."""
        return None

    def train_epoch(self, epoch: int, loop: Trainer) -> dict[str, Any]:
        """Train one epoch; call ``loop.tick()`` after each step and stop early when ``loop.out_of_time()`` if the
        step wants ``max_seconds`` honoured mid-epoch. Returns record entries, at least ``train_loss`` (float)."""
        raise NotImplementedError(f"{type(self).__name__} must implement train_epoch")   # abstract

    def evaluate(self, epoch: int) -> dict[str, Any]:
        """Validation/test metrics of the epoch as record entries (e.g. ``valid_rmse``)."""
        return {}

    def end_epoch(self, epoch: int, record: dict[str, Any]) -> None:
        """After evaluation: schedules, switches (may add keys to ``record``)."""

    def finish(self) -> None:
        """After the last epoch (e.g. load averaged weights)."""

    def postfix(self, record: dict[str, Any]) -> dict[str, str]:
        """What the epoch bar shows after an epoch."""
        return {"loss": f"{record['train_loss']:.4f}"}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


class Trainer:
    """The stand-alone training loop (see the module docstring).

    model: the trained module (its ``state_dict`` is checkpointed); step: the :class:`TrainStep`; epochs: the
    number of epochs; seed: seeds every RNG at a fresh start (not on resume); run_dir: folder of
    ``train_checkpoint.pt`` and ``train_log.jsonl`` (None: nothing on disk, no resume); resume: continue the
    checkpoint in run_dir; callback: ``fn(epoch, elapsed_seconds, record) -> bool``, True stops; max_seconds:
    stop once the run (all its processes together) has used this much wall time; early_stopping: an
    :class:`EarlyStopping` or None; init_from: a checkpoint whose model weights a fresh start loads; config: a
    plain dict stored in the checkpoint; data_parallel: rank 0 alone writes and shows progress, resume reads
    rank 0's checkpoint on every rank, and a stop asked by one rank stops all (:mod:`nasp.distributed`).
    """

    def __init__(self, model: nn.Module, step: TrainStep, *, epochs: int, seed: int = 0, device="cpu",
                 run_dir: str | Path | None = None, resume: bool = True, callback: Callable | None = None,
                 show_progress: bool = True, max_seconds: float | None = None,
                 early_stopping: EarlyStopping | None = None, init_from: str | None = None,
                 config: dict[str, Any] | None = None, data_parallel: bool = False):
        if epochs < 1:
            raise ValueError(f"Trainer: epochs must be >= 1, got {epochs}")
        if max_seconds is not None and not max_seconds > 0:
            raise ValueError(f"Trainer: max_seconds must be > 0 or None, got {max_seconds}")
        self.model, self.step, self.epochs, self.seed = model, step, epochs, seed
        self.device = torch.device(device)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.resume, self.callback, self.max_seconds = resume, callback, max_seconds
        self.early, self.init_from, self.config = early_stopping, init_from, config or {}
        self.data_parallel = data_parallel
        self.main = _is_main() if data_parallel else True
        self.show_progress = show_progress and self.main
        self.epoch, self.history, self.elapsed_before = 0, [], 0.0
        self.best = {"value": math.inf, "epoch": -1, "bad_epochs": 0, "state": None}
        self._t_start = time.perf_counter()
        self._steps_bar = None

    # ---- time and progress --------------------------------------------------------------------------------
    @property
    def elapsed(self) -> float:
        """Seconds of this run, added up over every process of a resumed run."""
        return self.elapsed_before + time.perf_counter() - self._t_start

    def out_of_time(self) -> bool:
        return self.max_seconds is not None and self.elapsed > self.max_seconds

    def tick(self) -> None:
        """One training step done (advances the per-step bar)."""
        if self._steps_bar is not None:
            self._steps_bar.update(1)

    # ---- checkpoints --------------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path | None:
        return self.run_dir / CHECKPOINT_NAME if self.run_dir is not None else None

    def state_dict(self) -> dict[str, Any]:
        """The one checkpoint format of every stand-alone trainer."""
        return {"format": FORMAT, "kind": self.step.kind, "epoch": self.epoch, "history": self.history,
                "elapsed": self.elapsed, "model": self.model.state_dict(), "rng": rng_state(),
                "best": self.best, "step": self.step.state_dict(), "config": self.config}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != FORMAT or state.get("kind") != self.step.kind:
            raise CheckpointError(f"checkpoint {self.checkpoint_path} is not a {self.step.kind} training checkpoint "
                                  f"of this library (format {state.get('format')!r}, kind {state.get('kind')!r}); "
                                  "use another run folder or start afresh")
        self._check_config(state.get("config", {}))
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise CheckpointError(f"checkpoint {self.checkpoint_path}: its weights do not fit this model "
                                  f"({str(e).splitlines()[0][:160]}); use another run folder or start afresh") from None
        self.step.load_state_dict(state["step"])
        set_rng_state(state["rng"])
        self.epoch, self.history = int(state["epoch"]), list(state["history"])
        self.elapsed_before, self.best = float(state["elapsed"]), dict(state["best"])

    def _check_config(self, saved: dict[str, Any]) -> None:
        """Refuse to resume a checkpoint written with other settings (the epoch budget and time limit may change)."""
        def norm(v):
            return json.dumps(v, sort_keys=True, default=str)
        diff = {k: (saved.get(k), v) for k, v in self.config.items()
                if k not in RESUMABLE_CHANGES and norm(saved.get(k)) != norm(v)}
        if diff:
            raise CheckpointError(f"checkpoint {self.checkpoint_path} was written with other settings (saved, now): "
                                  f"{diff}; use another run folder or start afresh")

    def _saved_state(self) -> dict[str, Any] | None:
        ckpt = self.checkpoint_path
        if not self.resume:
            return None
        if self.data_parallel:          # a collective: every rank calls it, also a rank without a run folder
            from .distributed import load_checkpoint_on_main

            return load_checkpoint_on_main(ckpt, self.device)
        return load_checkpoint(ckpt, map_location=self.device) if ckpt is not None and ckpt.is_file() else None

    def _save(self) -> None:
        if self.checkpoint_path is not None and self.main:
            save_checkpoint(self.state_dict(), self.checkpoint_path)

    # ---- the loop -----------------------------------------------------------------------------------------
    def fit(self) -> LoopResult:
        """Train until ``epochs`` (or early stopping, a callback, ``max_seconds``); see the class docstring."""
        self.model.to(self.device)
        saved = self._saved_state()
        if saved is not None:
            self.load_state_dict(saved)
            log.info("resumed stand-alone training from %s at epoch %d", self.checkpoint_path, self.epoch)
        else:
            seed_everything(self.seed)
            if self.init_from:
                _init_weights(self.model, self.init_from, self.device)
        if self.early is not None and self.best["state"] is None:
            self.best["state"] = copy.deepcopy(self.model.state_dict())
        self._write_log()
        self._t_start = time.perf_counter()
        stopped_by = self._run()
        self.step.finish()
        return self._result(stopped_by)

    def _run(self) -> str:
        bar = _bar(self.epochs, self.epoch, "train", 0, self.show_progress)
        self._steps_bar = _bar(self.step.steps_per_epoch(), 0, "train epoch", 1, self.show_progress)
        try:
            while self.epoch < self.epochs:
                if self.early is not None and self.best["bad_epochs"] >= self.early.patience:
                    return "early_stopping"
                record = self._epoch()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(**self.step.postfix(record), **self._best_postfix())
                stop = self._stop(self.callback is not None and bool(self.callback(record["epoch"], self.elapsed,
                                                                                   record)))
                if stop:
                    log.info("a callback stopped training after epoch %d", record["epoch"])
                    return "callback"
                if self._stop(self.out_of_time()):
                    return "max_seconds"
            return "early_stopping" if self.early is not None and self.best["bad_epochs"] >= self.early.patience \
                else "epochs"
        finally:
            for b in (self._steps_bar, bar):
                if b is not None:
                    b.close()
            self._steps_bar = None

    def _epoch(self) -> dict[str, Any]:
        epoch, t0 = self.epoch, time.perf_counter()
        if self._steps_bar is not None:
            self._steps_bar.reset(total=self.step.steps_per_epoch())
            self._steps_bar.set_description(f"train epoch {epoch}")
        train = self.step.train_epoch(epoch, self)
        if not math.isfinite(train["train_loss"]):
            self._diverged(epoch, "the training loss is NaN or infinite")
        record = {"epoch": epoch, **train, **self.step.evaluate(epoch)}
        self.step.end_epoch(epoch, record)
        record["seconds"] = time.perf_counter() - t0
        self.history.append(record)
        self._track_best(epoch, record)
        self.epoch = epoch + 1
        bad = unhealthy_parameter(self.model)
        if bad is not None:               # diverged weights never become a "last good" checkpoint
            self._diverged(epoch, f"weight {bad} is NaN, infinite or beyond {WEIGHT_BOUND:g}")
        self._save()
        self._append_log(record)
        return record

    def _track_best(self, epoch: int, record: dict[str, Any]) -> None:
        e = self.early
        if e is None:
            return
        value = record[e.metric] if e.maximize else -record[e.metric]       # higher is better from here on
        if -value < self.best["value"] - e.min_delta:                        # best["value"]: best of -value
            self.best.update(value=-value, epoch=epoch, bad_epochs=0)
            if e.restore_best:
                self.best["state"] = copy.deepcopy(self.model.state_dict())
        else:
            self.best["bad_epochs"] += 1

    def _best_postfix(self) -> dict[str, str]:
        if self.early is None or self.best["epoch"] < 0:
            return {}
        return {"best": f"{self.history[self.best['epoch']][self.early.metric]:.4f}"}

    def _stop(self, flag: bool) -> bool:
        """A stop request; in data-parallel training every rank stops when one asks."""
        if not self.data_parallel:
            return bool(flag)
        from . import distributed as nd

        dev = self.device if torch.distributed.get_backend() == "nccl" else "cpu"
        return nd.allreduce_any(bool(flag), dev)

    def _diverged(self, epoch: int, what: str) -> None:
        kept = reload_last_good(self.model, self.checkpoint_path, self.device)    # back into the caller's model
        where = f"the last good checkpoint {kept} was kept and reloaded" if kept else "no checkpoint was written"
        raise NonFiniteLossError(f"stand-alone training diverged in epoch {epoch} ({what}); stopping: {where}. "
                                 f"{self.step.advice}")

    def _result(self, stopped_by: str) -> LoopResult:
        if self.early is not None and self.early.restore_best:
            self.model.load_state_dict(self.best["state"])
            best_epoch = self.best["epoch"]
        else:
            best_epoch = self.epoch - 1
        return LoopResult(list(self.history), best_epoch, stopped_by, self.elapsed)

    # ---- run folder ---------------------------------------------------------------------------------------
    def _write_log(self) -> None:
        """train_log.jsonl, rewritten from the checkpoint's history (a killed run leaves no extra lines)."""
        if self.run_dir is None or not self.main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / LOG_NAME, "w") as f:
            f.writelines(json.dumps(r, default=_json_default) + "\n" for r in self.history)

    def _append_log(self, record: dict[str, Any]) -> None:
        if self.run_dir is not None and self.main:
            with open(self.run_dir / LOG_NAME, "a") as f:
                f.write(json.dumps(record, default=_json_default) + "\n")


def _init_weights(model: nn.Module, path: str, device) -> None:
    """Load the model weights of a checkpoint (a training checkpoint or a saved ``model.pt`` state_dict) into
    ``model``; the optimiser starts afresh, so new learning rates apply. A path that is missing, a folder,
    unreadable, corrupt, not a nasp checkpoint or weights of another model is a one-line ValueError naming
    ``train.init_from`` and the file."""
    saved = read_init_checkpoint(path, "train.init_from", device, f"{CHECKPOINT_NAME} (or a saved model.pt)",
                                 "an earlier training run")
    weights = saved.get("model", saved) if isinstance(saved, dict) else saved
    try:
        model.load_state_dict(weights)
    except (RuntimeError, KeyError, TypeError) as e:
        raise ValueError(f"train.init_from={path}: its weights do not fit this model "
                         f"({str(e).splitlines()[0][:160]})") from None
    log.info("stand-alone training starts from the weights of %s", path)


def _is_main() -> bool:
    from .distributed import is_main_process

    return is_main_process()


def _bar(total: int | None, initial: int, desc: str, position: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True, position=position)


def _json_default(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return str(x)
