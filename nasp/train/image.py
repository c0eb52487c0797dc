"""Stand-alone training of an image classifier built from a found cell (the DARTS/NASP evaluation recipe).

:func:`train_classifier` runs SGD with momentum, cosine (CIFAR) or exponential (ImageNet, x0.97 per epoch)
learning-rate decay, gradient clipping, the auxiliary-head loss, drop-path increased linearly over the
epochs, optional label smoothing, bf16/fp16 autocast and channels_last; it evaluates on the test loader after
every epoch, checkpoints atomically and resumes exactly. :func:`count_parameters` and :func:`multiply_adds`
give the model size reported next to the accuracy.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..checkpoint import load_checkpoint, rng_state, save_checkpoint, seed_everything, set_rng_state
from ..config import config_from_dict

__all__ = ["TrainConfig", "TrainResult", "train_classifier", "evaluate_classifier", "count_parameters",
           "multiply_adds"]


@dataclass
class TrainConfig:
    """Training recipe (defaults: DARTS' CIFAR-10 evaluation: 600 epochs, lr 0.025 cosine, wd 3e-4, clip 5,
    auxiliary 0.4, drop-path 0.2)."""

    epochs: int = 600
    lr: float = 0.025
    lr_schedule: str = "cosine"        # cosine | exponential
    lr_min: float = 0.0
    lr_gamma: float = 0.97             # exponential decay per epoch
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    auxiliary_weight: float = 0.4
    drop_path: float = 0.2
    label_smoothing: float = 0.0
    amp: str | None = None             # None | bf16 | fp16
    channels_last: bool = False
    max_steps_per_epoch: int | None = None
    seed: int = 0

    def __post_init__(self):
        if self.lr_schedule not in ("cosine", "exponential"):
            raise ValueError(f"lr_schedule must be 'cosine' or 'exponential', got {self.lr_schedule!r}")
        if self.amp not in (None, "bf16", "fp16"):
            raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {self.amp!r}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return config_from_dict(cls, d)


@dataclass
class TrainResult:
    test_accuracy: float
    test_loss: float
    parameters: int
    multiply_adds: int
    history: list[dict[str, Any]]
    seconds: float


def count_parameters(model: nn.Module, exclude_auxiliary: bool = True) -> int:
    """Trainable parameters, without the auxiliary head by default (the number papers report)."""
    return sum(p.numel() for n, p in model.named_parameters()
               if p.requires_grad and not (exclude_auxiliary and "auxiliary" in n))


@torch.no_grad()
def multiply_adds(model: nn.Module, input_size: Sequence[int], device="cpu") -> int:
    """Multiply-adds of one forward pass on one sample (convolutions and linear layers, auxiliary head off)."""
    total = [0]

    def conv_hook(m: nn.Conv2d, inp, out):
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        total[0] += out.numel() // out.shape[0] * k

    def linear_hook(m: nn.Linear, inp, out):
        total[0] += m.in_features * m.out_features

    hooks = [m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, *input_size, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return total[0]


def _autocast(device: torch.device, amp: str | None):
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@torch.no_grad()
def evaluate_classifier(model: nn.Module, loader: Iterable, device="cpu", amp: str | None = None,
                        channels_last: bool = False) -> dict[str, float]:
    """Top-1 accuracy and mean cross-entropy over a loader of (images, labels)."""
    device = torch.device(device)
    model.eval()
    correct, loss, n = torch.zeros((), device=device), torch.zeros((), device=device), 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device, amp):
            logits, _ = model(x)
        logits = logits.float()
        loss += nn.functional.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        n += y.shape[0]
    model.train()
    n = max(n, 1)
    return {"accuracy": (correct / n).item(), "loss": (loss / n).item()}


def train_classifier(model: nn.Module, train_loader: Iterable, test_loader: Iterable, config: TrainConfig,
                     device="cpu", run_dir: str | Path | None = None, input_size: Sequence[int] = (3, 32, 32),
                     callbacks: Sequence[Callable] = (), resume: bool = True) -> TrainResult:
    """Train ``model`` (a NetworkCIFAR / NetworkImageNet: forward -> (logits, aux or None)) with ``config``.

    run_dir: folder for config.json, log.jsonl, checkpoint.pt (None: nothing on disk). callbacks:
    ``fn(epoch, metrics)``; a True return stops training. Returns the final test metrics and model size.
    """
    c, device = config, torch.device(device)
    model = model.to(device)
    if c.channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
    if c.lr_schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=c.epochs, eta_min=c.lr_min)
    else:
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=c.lr_gamma)
    scaler = torch.amp.GradScaler(device.type, enabled=c.amp == "fp16")
    run_dir = Path(run_dir) if run_dir is not None else None
    ckpt = run_dir / "checkpoint.pt" if run_dir is not None else None
    epoch, history = 0, []
    if resume and ckpt is not None and ckpt.is_file():
        state = load_checkpoint(ckpt, map_location=device)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        set_rng_state(state["rng"])
        epoch, history = state["epoch"], state["history"]
    else:
        seed_everything(c.seed)
    n_params = count_parameters(model)
    madds = multiply_adds(model, input_size, device)
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "train_config.json").write_text(json.dumps(asdict(c), indent=2) + "\n")
    t_start = time.perf_counter()
    while epoch < c.epochs:
        model.drop_path_prob = c.drop_path * epoch / c.epochs
        t0 = time.perf_counter()
        train = _train_epoch(model, train_loader, opt, scaler, c, device, epoch)
        sched.step()
        test = evaluate_classifier(model, test_loader, device, c.amp, c.channels_last)
        rec = {"epoch": epoch, **train, "test_accuracy": test["accuracy"], "test_loss": test["loss"],
               "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}
        history.append(rec)
        epoch += 1
        if run_dir is not None:
            save_checkpoint({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                             "rng": rng_state(), "epoch": epoch, "history": history}, ckpt)
            with open(run_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
        if any(bool(cb(rec["epoch"], rec)) for cb in callbacks):
            break
    last = history[-1] if history else {"test_accuracy": math.nan, "test_loss": math.nan}
    return TrainResult(last["test_accuracy"], last["test_loss"], n_params, madds, history,
                       time.perf_counter() - t_start)


def _train_epoch(model, loader, opt, scaler, c: TrainConfig, device, epoch: int) -> dict[str, float]:
    model.train()
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    total, correct, n, steps = torch.zeros((), device=device), torch.zeros((), device=device), 0, 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if c.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        opt.zero_grad(set_to_none=True)
        with _autocast(device, c.amp):
            logits, aux = model(x)
            loss = _loss(logits, y, c)
            if aux is not None and c.auxiliary_weight > 0:
                loss = loss + c.auxiliary_weight * _loss(aux, y, c)
        scaler.scale(loss).backward()
        if c.grad_clip:
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
        scaler.step(opt)
        scaler.update()
        total += loss.detach().float() * y.shape[0]
        correct += (logits.detach().argmax(1) == y).sum()
        n += y.shape[0]
        steps += 1
        if c.max_steps_per_epoch is not None and steps >= c.max_steps_per_epoch:
            break
    if not bool(torch.isfinite(total)):
        raise FloatingPointError(f"non-finite training loss in epoch {epoch}; lower lr or check the data")
    n = max(n, 1)
    return {"train_loss": (total / n).item(), "train_accuracy": (correct / n).item()}


def _loss(logits: Tensor, y: Tensor, c: TrainConfig) -> Tensor:
    return nn.functional.cross_entropy(logits.float(), y, label_smoothing=c.label_smoothing)
