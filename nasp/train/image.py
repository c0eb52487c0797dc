"""Stand-alone training of an image classifier built from a found cell (the DARTS/NASP evaluation recipe).

:func:`train_classifier` runs SGD with momentum, cosine (CIFAR) or exponential (ImageNet, x0.97 per epoch)
learning-rate decay, gradient clipping, the auxiliary-head loss, drop-path increased linearly over the
epochs, optional label smoothing, bf16/fp16 autocast and channels_last; it evaluates on the test loader after
every epoch. The loop (checkpoints, exact resume, divergence stop, progress, callback) is
:class:`nasp.trainer.Trainer`. :func:`count_parameters` and :func:`multiply_adds`
give the model size reported next to the accuracy.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..amp import autocast, check_amp, grad_scaler
from ..config import check_finite, check_range, config_from_dict
from ..trainer import Trainer, TrainStep

__all__ = ["TrainConfig", "TrainResult", "ImageStep", "train_classifier", "evaluate_classifier", "count_parameters",
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
    grad_clip: float | None = 5.0      # null: no clipping
    auxiliary_weight: float = 0.4
    drop_path: float = 0.2
    label_smoothing: float = 0.0
    amp: str | None = None             # None | bf16 | fp16 (fp16: CUDA only, with a GradScaler)
    channels_last: bool = False
    max_steps_per_epoch: int | None = None
    max_seconds: float | None = None   # stop after this much wall time (checked after every step)
    seed: int = 0

    def __post_init__(self):
        if self.lr_schedule not in ("cosine", "exponential"):
            raise ValueError(f"lr_schedule must be 'cosine' or 'exponential', got {self.lr_schedule!r}")
        check_amp(self.amp)
        check_finite(self)
        check_range(self, "max_seconds", 0, low_open=True, nullable=True)
        check_range(self, "epochs", 1)
        check_range(self, "max_steps_per_epoch", 1, nullable=True, hint=" (all)")
        check_range(self, "lr", 0, low_open=True)
        check_range(self, "lr_gamma", 0, low_open=True)
        check_range(self, "grad_clip", 0, low_open=True, nullable=True, hint=" (no clipping)")
        for name in ("lr_min", "momentum", "weight_decay", "auxiliary_weight"):
            check_range(self, name, 0)
        check_range(self, "drop_path", 0, 1)
        check_range(self, "label_smoothing", 0, 1)

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
        with autocast(device, amp):
            logits, _ = model(x)
        logits = logits.float()
        loss += nn.functional.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        n += y.shape[0]
    model.train()
    n = max(n, 1)
    return {"accuracy": (correct / n).item(), "loss": (loss / n).item()}


class ImageStep(TrainStep):
    """One epoch of an image classifier for :class:`nasp.trainer.Trainer`: drop-path rising linearly over the
    epochs, SGD with momentum, autocast (and fp16 loss scaling), the auxiliary loss, gradient clipping, the
    per-epoch lr schedule; evaluation on the test loader."""

    kind = "image"

    def __init__(self, model: nn.Module, train_loader: Iterable, test_loader: Iterable, c: TrainConfig,
                 device: torch.device):
        self.model, self.c, self.device = model, c, device
        self.train_loader, self.test_loader = train_loader, test_loader
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.SGD(self.params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        if c.lr_schedule == "cosine":
            self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=c.epochs, eta_min=c.lr_min)
        else:
            self.sched = torch.optim.lr_scheduler.ExponentialLR(self.opt, gamma=c.lr_gamma)
        self.scaler = grad_scaler(device, c.amp)

    def steps_per_epoch(self) -> int | None:
        n = len(self.train_loader) if hasattr(self.train_loader, "__len__") else None
        m = self.c.max_steps_per_epoch
        return n if m is None else min(n if n is not None else m, m)

    def train_epoch(self, epoch: int, loop: Trainer) -> dict[str, Any]:
        model, c, device, opt, scaler = self.model, self.c, self.device, self.opt, self.scaler
        model.drop_path_prob = c.drop_path * epoch / c.epochs
        model.train()
        if hasattr(self.train_loader, "set_epoch"):
            self.train_loader.set_epoch(epoch)
        total, correct, n, steps = torch.zeros((), device=device), torch.zeros((), device=device), 0, 0
        for x, y in self.train_loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if c.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            opt.zero_grad(set_to_none=True)
            with autocast(device, c.amp):
                logits, aux = model(x)
                loss = _loss(logits, y, c)
                if aux is not None and c.auxiliary_weight > 0:
                    loss = loss + c.auxiliary_weight * _loss(aux, y, c)
            scaler.scale(loss).backward()
            if c.grad_clip is not None:
                scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
            scaler.step(opt)
            scaler.update()
            total += loss.detach().float() * y.shape[0]
            correct += (logits.detach().argmax(1) == y).sum()
            n += y.shape[0]
            steps += 1
            loop.tick()
            if (c.max_steps_per_epoch is not None and steps >= c.max_steps_per_epoch) or loop.out_of_time():
                break
        n = max(n, 1)
        return {"train_loss": (total / n).item(), "train_accuracy": (correct / n).item()}

    def evaluate(self, epoch: int) -> dict[str, Any]:
        test = evaluate_classifier(self.model, self.test_loader, self.device, self.c.amp, self.c.channels_last)
        return {"test_accuracy": test["accuracy"], "test_loss": test["loss"]}

    def end_epoch(self, epoch: int, record: dict[str, Any]) -> None:
        self.sched.step()
        record["lr"] = self.opt.param_groups[0]["lr"]

    def postfix(self, record: dict[str, Any]) -> dict[str, str]:
        return {"loss": f"{record['train_loss']:.4f}", "test_acc": f"{record['test_accuracy']:.4f}"}

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])


def train_classifier(model: nn.Module, train_loader: Iterable, test_loader: Iterable, config: TrainConfig,
                     device="cpu", run_dir: str | Path | None = None, input_size: Sequence[int] = (3, 32, 32),
                     callback: Callable | None = None, resume: bool = True,
                     show_progress: bool = False) -> TrainResult:
    """Train ``model`` (a NetworkCIFAR / NetworkImageNet: forward -> (logits, aux or None)) with ``config``.

    run_dir: folder for train_config.json, train_log.jsonl and train_checkpoint.pt (None: nothing on disk); the
    loop is :class:`nasp.trainer.Trainer` (resume, divergence stop, ``max_seconds``). callback:
    ``fn(epoch, elapsed_seconds, record)``; a True return stops training. Returns the final test metrics and
    model size (input_size: one sample's (C, H, W) for the multiply-adds).
    """
    c, device = config, torch.device(device)
    model = model.to(device)
    if c.channels_last:
        model = model.to(memory_format=torch.channels_last)
    step = ImageStep(model, train_loader, test_loader, c, device)
    n_params = count_parameters(model)
    madds = multiply_adds(model, input_size, device)
    if run_dir is not None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        (Path(run_dir) / "train_config.json").write_text(json.dumps(asdict(c), indent=2) + "\n")
    out = Trainer(model, step, epochs=c.epochs, seed=c.seed, device=device, run_dir=run_dir, resume=resume,
                  callback=callback, show_progress=show_progress, max_seconds=c.max_seconds,
                  config=asdict(c)).fit()
    last = out.history[-1] if out.history else {"test_accuracy": math.nan, "test_loss": math.nan}
    return TrainResult(last["test_accuracy"], last["test_loss"], n_params, madds, out.history, out.seconds)


def _loss(logits: Tensor, y: Tensor, c: TrainConfig) -> Tensor:
    return nn.functional.cross_entropy(logits.float(), y, label_smoothing=c.label_smoothing)
