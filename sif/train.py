"""Stand-alone training of one rating model (a found interaction function, a fixed one, or a baseline).

Early stopping on the task's validation metric (``task.metric``, lower is better unless ``task.maximize``; RMSE for
the rating task) with patience; the best state is restored at the end. With a ``run_dir`` an
atomic checkpoint is written after every epoch and a killed run resumes from it to the same result.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nasp import distributed as nd
from nasp.checkpoint import (
    WEIGHT_BOUND,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
    unhealthy_parameter,
)
from nasp.optim import clip_grad_norm_
from nasp.optim import make_optimizer as build_optimizer
from nasp.search import NonFiniteLossError, to_device

from .task import RatingTask

__all__ = ["TrainConfig", "TrainResult", "train_model", "make_optimizer"]

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


@dataclass
class TrainResult:
    best_epoch: int
    best_valid: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Weights to train: everything but architecture parameters."""
    return list(model.weights()) if hasattr(model, "weights") else list(model.parameters())


def make_optimizer(params: list[nn.Parameter], cfg: TrainConfig, slow: Iterable[nn.Parameter] = ()
                   ) -> torch.optim.Optimizer:
    """The configured optimiser; ``slow`` parameters (SIF's g) get ``lr * cfg.g_lr_scale``."""
    slow_ids = {id(p) for p in slow}
    if slow_ids and cfg.g_lr_scale != 1.0:
        params = [{"params": [p for p in params if id(p) not in slow_ids]},
                  {"params": [p for p in params if id(p) in slow_ids], "lr": cfg.lr * cfg.g_lr_scale}]
    return build_optimizer(cfg.optimizer, params, cfg.lr, cfg.weight_decay, momentum=0.9)


def _train_epoch(model, task: RatingTask, loader: Iterable, opt, params, cfg: TrainConfig, device, view,
                 sync: bool = False, loss_fn: Callable | None = None, bar=None) -> float:
    loss_fn = task.loss if loss_fn is None else loss_fn
    total, n = torch.zeros((), device=device), 0
    model.train()
    for batch in loader:
        batch = to_device(batch, device)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model, batch, view, "train")
        loss.backward()
        if sync:                                  # data parallel: average the gradients of all ranks
            nd.allreduce_grads_(params)
        if cfg.grad_clip:
            clip_grad_norm_(params, cfg.grad_clip)          # torch's; also takes row-sparse tables
        opt.step()
        if hasattr(model, "after_weight_step"):
            model.after_weight_step()
        total += loss.detach()
        n += 1
        if bar is not None:
            bar.update(1)
    mean = total / max(n, 1)
    return nd.allreduce_mean_scalar(mean, device) if sync else mean.item()


def train_model(model: nn.Module, task: RatingTask, train_loader, valid_loader, config: TrainConfig | None = None,
                device="cpu", run_dir: str | Path | None = None, show_progress: bool = True,
                callback: Callable | None = None, resume: bool = True,
                data_parallel: bool | None = None, select_best: bool = True) -> TrainResult:
    """Train ``model`` until the validation ``task.metric`` (RMSE for the rating task) stops improving for
    ``patience`` epochs; restore the best state. ``select_best=False``: train exactly ``max_epochs`` epochs and keep
    the last state (a refit on train + valid, where the validation metric is in-sample).

    ``callback(epoch, elapsed, metrics)`` is called after every epoch; a True return stops training.
    ``data_parallel`` (default: on inside a torch.distributed group of several ranks, see :mod:`nasp.distributed`):
    gradients are averaged across ranks after every backward (pass this rank's :class:`ShardedLoader` as
    ``train_loader`` and the whole validation set as ``valid_loader``); rank 0 alone writes checkpoints and logs
    and shows progress; resume reads rank 0's checkpoint on every rank.
    """
    cfg = config or TrainConfig()
    device = torch.device(device)
    model.to(device)
    params = trainable_parameters(model)
    sync = nd.is_distributed() if data_parallel is None else data_parallel
    main = nd.is_main_process()
    if sync:
        nd.broadcast_module_(model)
    g = getattr(model, "g", None)
    opt = make_optimizer(params, cfg, g.parameters() if isinstance(g, nn.Module) else ())
    view = model.sparse_view() if hasattr(model, "sparse_view") else None
    loss_fn = torch.compile(task.loss, backend=cfg.compile_backend) if cfg.compile else task.loss
    metric, sign = getattr(task, "metric", "rmse"), (1.0 if getattr(task, "maximize", False) else -1.0)
    state = {"epoch": 0, "best_rmse": float("inf"), "best_epoch": -1, "bad_epochs": 0, "history": [],
             "best_state": copy.deepcopy(model.state_dict()), "elapsed": 0.0}
    ckpt = Path(run_dir) / "train_checkpoint.pt" if run_dir is not None else None
    saved = nd.load_checkpoint_on_main(ckpt, device) if resume else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        set_rng_state(saved["rng"])
        state = {k: saved[k] for k in state}
        log.info("resumed stand-alone training from %s at epoch %d", ckpt, state["epoch"])
    else:
        seed_everything(cfg.seed)
        if cfg.init_from:
            _init_weights(model, cfg.init_from, device)
    t_start, elapsed_before = time.perf_counter(), state["elapsed"]    # seconds add up across resumes
    bar = _bar(cfg.max_epochs, state["epoch"], show_progress and main)
    steps = _step_bar(train_loader, show_progress and main)
    while state["epoch"] < cfg.max_epochs and (state["bad_epochs"] < cfg.patience or not select_best):
        epoch, t0 = state["epoch"], time.perf_counter()
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        if steps is not None:
            steps.reset()
            steps.set_description(f"train epoch {epoch}")
        train_loss = _train_epoch(model, task, train_loader, opt, params, cfg, device, view, sync, loss_fn, steps)
        if not torch.isfinite(torch.tensor(train_loss)):
            _stop_non_finite(model, ckpt, epoch, device)
        metrics = task.evaluate(model, valid_loader, view)
        record = {"epoch": epoch, "train_loss": train_loss, **{f"valid_{k}": v for k, v in metrics.items()},
                  "seconds": time.perf_counter() - t0}
        state["history"].append(record)
        if -sign * metrics[metric] < state["best_rmse"] - cfg.min_delta:     # best_rmse: best of -sign * metric
            state.update(best_rmse=-sign * metrics[metric], best_epoch=epoch, bad_epochs=0)
            if select_best:                       # a refit keeps its last state: no copy needed
                state["best_state"] = copy.deepcopy(model.state_dict())
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch + 1
        state["elapsed"] = elapsed_before + time.perf_counter() - t_start
        bad = unhealthy_parameter(model)
        if bad is not None:                       # diverged weights never become a "last good" checkpoint
            _stop_non_finite(model, ckpt, epoch, device, f"weight {bad} is NaN, infinite or beyond {WEIGHT_BOUND:g}")
        if ckpt is not None and main:
            save_checkpoint({**state, "model": model.state_dict(), "optimizer": opt.state_dict(), "rng": rng_state(),
                             "config": asdict(cfg)}, ckpt)
            with open(ckpt.parent / "train_log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{train_loss:.4f}", **{f"valid_{metric}": f"{metrics[metric]:.4f}"},
                            best=f"{-sign * state['best_rmse']:.4f}")
        if callback is not None and _stop(callback(epoch, state["elapsed"], record), sync, device):
            break
    for b in (steps, bar):
        if b is not None:
            b.close()
    if select_best:
        model.load_state_dict(state["best_state"])
    else:
        state["best_epoch"] = state["epoch"] - 1
    best = state["history"][state["best_epoch"]] if state["best_epoch"] >= 0 else {}
    best_valid = {k[len("valid_"):]: v for k, v in best.items() if k.startswith("valid_")}
    return TrainResult(state["best_epoch"], best_valid, state["history"],
                       elapsed_before + time.perf_counter() - t_start)


def _init_weights(model: nn.Module, path: str, device) -> None:
    """Load the model weights of a checkpoint (``train_checkpoint.pt`` or a ``model.pt`` state_dict) into
    ``model``; the optimiser starts afresh, so new learning rates apply."""
    saved = load_checkpoint(path, device)
    weights = saved.get("model", saved) if isinstance(saved, dict) else saved
    try:
        model.load_state_dict(weights)
    except (RuntimeError, KeyError) as e:
        raise ValueError(f"train.init_from={path}: its weights do not fit this model "
                         f"({str(e).splitlines()[0][:160]})") from None
    log.info("stand-alone training starts from the weights of %s", path)


def _stop(flag, sync: bool, device) -> bool:
    """A callback's stop request; in data-parallel training every rank stops when one asks."""
    if not sync:
        return bool(flag)
    dev = device if torch.distributed.get_backend() == "nccl" else "cpu"
    return nd.allreduce_any(bool(flag), dev)


def _stop_non_finite(model: nn.Module, ckpt: Path | None, epoch: int, device,
                     what: str = "the training loss is NaN or infinite") -> None:
    kept = ckpt if ckpt is not None and ckpt.is_file() else None
    if kept is not None:
        model.load_state_dict(load_checkpoint(kept, device)["model"])
    where = f"the last good checkpoint {kept} was kept and reloaded" if kept else "no checkpoint was written"
    raise NonFiniteLossError(f"stand-alone training diverged in epoch {epoch} ({what}); stopping: {where}. "
                             "Lower the learning rate or check the data; to continue from the last good state "
                             "with new settings, rerun with them, train.init_from=<the kept checkpoint> and "
                             "--fresh (sif command line; the stopped run is moved aside, <folder>.old-N).")


def _step_bar(loader, enabled: bool):
    """A bar over the steps of each epoch (reset every epoch), so that a long epoch shows progress."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    total = len(loader) if hasattr(loader, "__len__") else None
    return tqdm(total=total, desc="train epoch", leave=False, dynamic_ncols=True, position=1)


def _bar(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", leave=False, dynamic_ncols=True)
