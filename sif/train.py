"""Stand-alone training of one rating model (a found interaction function, a fixed one, or a baseline).

Early stopping on the task's validation metric (``task.metric``, lower is better unless ``task.maximize``; RMSE for
the rating task) with patience; the best state is restored at the end. The loop is the one stand-alone loop of
the library, :class:`nasp.trainer.Trainer`: with a ``run_dir`` an atomic checkpoint (``train_checkpoint.pt``) is
written after every epoch and a killed run resumes from it to the same result; a NaN stops with the last good
state; ``max_seconds`` bounds the wall time; ``amp`` is the loop's one set of mixed-precision values
(:mod:`nasp.amp`). This module supplies the epoch step (:class:`SIFStep`) and the settings.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nasp import distributed as nd
from nasp.amp import autocast, check_amp, grad_scaler
from nasp.loop import to_device
from nasp.optim import clip_grad_norm_
from nasp.optim import make_optimizer as build_optimizer
from nasp.trainer import EarlyStopping, Trainer, TrainStep

from .model import RatingModule
from .task import RatingTask

__all__ = ["TrainConfig", "TrainResult", "SIFStep", "train_model", "make_optimizer"]

log = logging.getLogger("sif.train")


@dataclass
class TrainConfig:
    """Settings of stand-alone training (defaults measured best on ML-100K validation: Adam lr 0.002, batch 1024;
    the SIF reference used Adagrad lr 0.05, batch 512)."""

    max_epochs: int = 200
    patience: int = 5
    min_delta: float = 1e-4
    batch_size: int = 1024
    optimizer: str = "adam"         # adagrad | adam | sgd
    lr: float = 0.002
    weight_decay: float = 0.0
    grad_clip: float = 5.0
    g_lr_scale: float = 0.05        # lr multiplier for SIF's element-wise transform g (1.0: the paper)
    seed: int = 0
    compile: bool = False           # torch.compile the task loss of each step (for CUDA; no gain on a CPU)
    compile_backend: str = "inductor"
    init_from: str | None = None    # a train_checkpoint.pt (or a saved model.pt): start from its weights, e.g.
    #                                 the last good state of a run that diverged, with new settings
    amp: str | None = None          # None | "bf16" | "fp16" (fp16: CUDA only, with a GradScaler): autocast of the
    #                                 training steps; evaluation (early stopping's metric) stays in full precision
    max_seconds: float | None = None    # stop once the run (all processes of a resumed run) used this much wall
    #                                     time: checked after every step (data-parallel: after every epoch)

    def __post_init__(self):
        if self.optimizer not in ("adagrad", "adam", "sgd"):
            raise ValueError(f"optimizer must be adagrad, adam or sgd, got {self.optimizer!r}")
        if self.max_epochs < 1 or self.patience < 1:
            raise ValueError(f"max_epochs and patience must be >= 1, got {self.max_epochs}, {self.patience}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        for name in ("lr", "g_lr_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        check_amp(self.amp)
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0 or null, got {self.max_seconds}")


@dataclass
class TrainResult:
    best_epoch: int
    best_valid: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    stopped_by: str = "epochs"      # epochs | early_stopping | callback | max_seconds (nasp.trainer.LoopResult)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Weights to train: a sif model's ``weights()`` (:class:`sif.model.RatingModule`: everything but architecture
    parameters); any other module's parameters."""
    return list(model.weights()) if isinstance(model, RatingModule) else list(model.parameters())


def make_optimizer(params: list[nn.Parameter], cfg: TrainConfig, slow: Iterable[nn.Parameter] = ()
                   ) -> torch.optim.Optimizer:
    """The configured optimiser; ``slow`` parameters (SIF's g) get ``lr * cfg.g_lr_scale``."""
    slow_ids = {id(p) for p in slow}
    if slow_ids and cfg.g_lr_scale != 1.0:
        params = [{"params": [p for p in params if id(p) not in slow_ids]},
                  {"params": [p for p in params if id(p) in slow_ids], "lr": cfg.lr * cfg.g_lr_scale}]
    return build_optimizer(cfg.optimizer, params, cfg.lr, cfg.weight_decay, momentum=0.9)


class SIFStep(TrainStep):
    """One epoch of a rating model for :class:`nasp.trainer.Trainer`: the task loss (under ``amp``'s autocast),
    gradient clipping, the optimiser step (fp16: through a GradScaler), ``model.after_weight_step()`` and,
    data-parallel, the gradient average over ranks. A single process stops mid-epoch once ``max_seconds`` is
    spent; data-parallel ranks stop together at an epoch's end (the Trainer's check), so none waits in a collective.
    """

    kind = "sif"
    advice = ("Lower the learning rate or check the data; to continue from the last good state with new settings, "
              "rerun with them, train.init_from=<the kept checkpoint> and --fresh (sif command line; the stopped "
              "run is moved aside, <folder>.old-N).")

    def __init__(self, model: nn.Module, task: RatingTask, train_loader: Iterable, valid_loader: Iterable,
                 cfg: TrainConfig, device: torch.device, sync: bool):
        self.model, self.task, self.cfg, self.device, self.sync = model, task, cfg, device, sync
        self.train_loader, self.valid_loader = train_loader, valid_loader
        self.params = trainable_parameters(model)
        self.sif_model = isinstance(model, RatingModule)      # else a plain module: no hooks
        self.opt = make_optimizer(self.params, cfg, model.slow_parameters() if self.sif_model else ())
        self.scaler = grad_scaler(device, cfg.amp)          # disabled (a pass-through) unless fp16
        self.view = model.sparse_view() if self.sif_model else None
        self.loss_fn = torch.compile(task.loss, backend=cfg.compile_backend) if cfg.compile else task.loss
        self.metric = getattr(task, "metric", "rmse")

    def steps_per_epoch(self) -> int | None:
        return len(self.train_loader) if hasattr(self.train_loader, "__len__") else None

    def train_epoch(self, epoch: int, loop: Trainer) -> dict[str, Any]:
        if hasattr(self.train_loader, "set_epoch"):
            self.train_loader.set_epoch(epoch)
        model, params, opt, cfg, scaler = self.model, self.params, self.opt, self.cfg, self.scaler
        total, n = torch.zeros((), device=self.device), 0
        model.train()
        for batch in self.train_loader:
            batch = to_device(batch, self.device)
            opt.zero_grad(set_to_none=True)
            with autocast(self.device, cfg.amp):
                loss = self.loss_fn(model, batch, self.view, "train")
            scaler.scale(loss).backward()
            if self.sync:                             # data parallel: average the gradients of all ranks
                nd.allreduce_grads_(params)
            if cfg.grad_clip:
                scaler.unscale_(opt)
                clip_grad_norm_(params, cfg.grad_clip)          # torch's; also takes row-sparse tables
            scaler.step(opt)
            scaler.update()
            if self.sif_model:
                model.after_weight_step()
            total += loss.detach()
            n += 1
            loop.tick()
            if not self.sync and loop.out_of_time():
                break
        mean = total / max(n, 1)
        return {"train_loss": nd.allreduce_mean_scalar(mean, self.device) if self.sync else mean.item()}

    def evaluate(self, epoch: int) -> dict[str, Any]:
        metrics = self.task.evaluate(self.model, self.valid_loader, self.view)
        return {f"valid_{k}": v for k, v in metrics.items()}

    def postfix(self, record: dict[str, Any]) -> dict[str, str]:
        key = f"valid_{self.metric}"
        return {"loss": f"{record['train_loss']:.4f}", key: f"{record[key]:.4f}"}

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.opt.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["optimizer"])
        if state.get("scaler"):                    # fp16 only (an older checkpoint has none)
            self.scaler.load_state_dict(state["scaler"])


def train_model(model: nn.Module, task: RatingTask, train_loader, valid_loader, config: TrainConfig | None = None,
                device="cpu", run_dir: str | Path | None = None, show_progress: bool = True,
                callback: Callable | None = None, resume: bool = True,
                data_parallel: bool | None = None, select_best: bool = True) -> TrainResult:
    """Train ``model`` until the validation ``task.metric`` (RMSE for the rating task) stops improving for
    ``patience`` epochs; restore the best state. ``select_best=False``: train exactly ``max_epochs`` epochs and keep
    the last state (a refit on train + valid, where the validation metric is in-sample). The loop is
    :class:`nasp.trainer.Trainer` (checkpoint ``run_dir/train_checkpoint.pt``, resume, divergence stop,
    ``max_seconds``; the result's ``stopped_by`` says what ended it).

    ``callback(epoch, elapsed, record)`` is called after every epoch; a True return stops training.
    ``data_parallel`` (default: on inside a torch.distributed group of several ranks, see :mod:`nasp.distributed`):
    gradients are averaged across ranks after every backward (pass this rank's :class:`ShardedLoader` as
    ``train_loader`` and the whole validation set as ``valid_loader``); rank 0 alone writes checkpoints and logs
    and shows progress; resume reads rank 0's checkpoint on every rank.
    """
    cfg = config or TrainConfig()
    device = torch.device(device)
    model.to(device)
    sync = nd.is_distributed() if data_parallel is None else data_parallel
    if sync:
        nd.broadcast_module_(model)
    step = SIFStep(model, task, train_loader, valid_loader, cfg, device, sync)
    early = EarlyStopping(f"valid_{step.metric}", bool(getattr(task, "maximize", False)), cfg.patience,
                          cfg.min_delta) if select_best else None
    loop = Trainer(model, step, epochs=cfg.max_epochs, seed=cfg.seed, device=device, run_dir=run_dir, resume=resume,
                   callback=callback, show_progress=show_progress, max_seconds=cfg.max_seconds, early_stopping=early,
                   init_from=cfg.init_from, config=asdict(cfg), data_parallel=sync)
    out = loop.fit()
    best_valid = {k[len("valid_"):]: v for k, v in out.best.items() if k.startswith("valid_")}
    return TrainResult(out.best_epoch, best_valid, out.history, out.seconds, out.stopped_by)
