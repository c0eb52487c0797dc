"""Stand-alone training of a language model (e.g. a found recurrent cell), AWD-LSTM / DARTS recipe.

SGD with the learning rate scaled by (window length / bptt) per batch (variable-length BPTT windows come from
the loader), gradient-norm clipping, weight decay, the hidden state carried across batches and detached (by
:class:`~nasp.spaces.rnn.task.LanguageModelTask`), and the non-monotone switch to averaged SGD: once the
validation loss is worse than the best of all evaluations except the last ``nonmono``, training continues with
plain SGD steps and a running average of the weights since the switch; evaluation then uses the average.

Example::

    model = RNNModel(len(corpus.vocab), DARTS_V2)
    history = train_language_model(model, train_loader, valid_loader, LMTrainConfig(epochs=10), device="cuda")
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..config import config_from_dict
from ..spaces.rnn.task import LanguageModelTask

__all__ = ["LMTrainConfig", "WeightAverager", "nonmonotone_trigger", "train_language_model",
           "evaluate_language_model"]

log = logging.getLogger("nasp.train.language")


@dataclass
class LMTrainConfig:
    """Settings of :func:`train_language_model` (defaults: the DARTS PTB evaluation recipe)."""

    epochs: int = 8000
    lr: float = 20.0
    weight_decay: float = 8e-7
    grad_clip: float = 0.25
    bptt: int = 35                 # reference window length for the lr scaling
    nonmono: int = 5               # averaged-SGD trigger window
    ar: float = 0.0
    tar: float = 1e-3
    max_seconds: float | None = None    # stop after this much wall time (checked after every batch)
    max_steps_per_epoch: int | None = None
    seed: int = 0
    amp: str | None = None         # None | "bf16"
    compile: bool = False          # torch.compile the model's forward in training steps (for CUDA)
    compile_backend: str = "inductor"

    def __post_init__(self):
        if self.epochs < 1 or self.bptt < 1 or self.nonmono < 1:
            raise ValueError("epochs, bptt and nonmono must be >= 1")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.amp not in (None, "bf16"):
            raise ValueError(f"amp must be None or 'bf16', got {self.amp!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LMTrainConfig:
        return config_from_dict(cls, d)


class WeightAverager:
    """Running mean of parameters since ``start`` (averaged SGD); ``swapped()`` evaluates with the mean."""

    def __init__(self, params: Iterable[nn.Parameter]):
        self.params = list(params)
        self.mean = [p.detach().clone() for p in self.params]
        self.count = 1

    @torch.no_grad()
    def update(self) -> None:
        self.count += 1
        for m, p in zip(self.mean, self.params, strict=True):
            m.add_(p.detach() - m, alpha=1.0 / self.count)

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """Temporarily load the averaged weights into the model."""
        backup = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, m in zip(self.params, self.mean, strict=True):
                p.copy_(m)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(self.params, backup, strict=True):
                    p.copy_(b)


def nonmonotone_trigger(previous: list[float], current: float, nonmono: int) -> bool:
    """AWD-LSTM's switch rule: True when ``current`` is worse than the best validation loss among the
    evaluations before the last ``nonmono`` ones (``previous`` in order, without ``current``)."""
    earlier = previous[:-nonmono] if len(previous) > nonmono else []
    return bool(earlier) and current > min(earlier)


def evaluate_language_model(model: nn.Module, loader: Iterable, task: LanguageModelTask | None = None
                            ) -> dict[str, float]:
    """Token-weighted NLL and perplexity of ``model`` on ``loader`` (eval mode, fresh hidden state)."""
    task = task or LanguageModelTask()
    was = model.training
    model.eval()
    try:
        return task.evaluate(model, loader, None)
    finally:
        model.train(was)


def _to(batch, device):
    return tuple(t.to(device, non_blocking=True) if isinstance(t, Tensor) else t for t in batch)


def train_language_model(model: nn.Module, train_loader: Iterable, valid_loader: Iterable,
                         config: LMTrainConfig | None = None, device="cpu",
                         callback: Callable[[int, dict], Any] | None = None) -> list[dict[str, Any]]:
    """Train ``model`` (forward(x, hidden, view) -> (logits, hidden, raw), with ``init_hidden``) and return the
    per-epoch history: train loss, validation loss/perplexity, optimiser ("sgd" or "asgd"), seconds.

    callback(epoch, record) is called after every epoch; a True return stops training.
    """
    c = config or LMTrainConfig()
    device = torch.device(device)
    torch.manual_seed(c.seed)
    model.to(device)
    task = LanguageModelTask(ar=c.ar, tar=c.tar)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=c.lr, weight_decay=c.weight_decay)
    averager: WeightAverager | None = None
    history: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if c.amp == "bf16" else contextlib.nullcontext()
    fwd = torch.compile(model, backend=c.compile_backend) if c.compile else model      # shares the parameters
    for epoch in range(c.epochs):
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        model.train()
        total, steps, t0 = torch.zeros((), device=device), 0, time.perf_counter()
        out_of_time = False
        for batch in train_loader:
            batch = _to(batch, device)
            opt.param_groups[0]["lr"] = c.lr * batch[0].shape[0] / c.bptt
            opt.zero_grad(set_to_none=True)
            with amp:
                loss = task.loss(fwd, batch, None, "train")
            loss.backward()
            if c.grad_clip:
                nn.utils.clip_grad_norm_(params, c.grad_clip)
            opt.step()
            if averager is not None:
                averager.update()
            total += loss.detach().float()
            steps += 1
            out_of_time = c.max_seconds is not None and time.perf_counter() - t_start > c.max_seconds
            if out_of_time or (c.max_steps_per_epoch is not None and steps >= c.max_steps_per_epoch):
                break
        with averager.swapped() if averager is not None else contextlib.nullcontext():
            metrics = evaluate_language_model(model, valid_loader, task)
        train_loss = (total / max(steps, 1)).item()
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"non-finite training loss at epoch {epoch}; lower lr or enable grad_clip")
        record = {"epoch": epoch, "train_loss": train_loss, "valid_loss": metrics["loss"],
                  "valid_ppl": metrics["ppl"], "optimizer": "asgd" if averager is not None else "sgd",
                  "steps": steps, "seconds": time.perf_counter() - t0}
        if averager is None and nonmonotone_trigger([h["valid_loss"] for h in history], metrics["loss"], c.nonmono):
            averager = WeightAverager(params)
            record["switched_to_asgd"] = True
            log.info("epoch %d: switching to averaged SGD", epoch)
        history.append(record)
        log.info("epoch %d: train %.3f valid ppl %.2f (%s)", epoch, train_loss, metrics["ppl"], record["optimizer"])
        if (callback is not None and callback(epoch, record)) or out_of_time:
            break
    if averager is not None:        # leave the averaged weights in the model, as ASGD's final answer
        with torch.no_grad():
            for p, m in zip(averager.params, averager.mean, strict=True):
                p.copy_(m)
    return history
