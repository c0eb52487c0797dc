"""Stand-alone training of a language model (e.g. a found recurrent cell), AWD-LSTM / DARTS recipe.

SGD with the learning rate scaled by (window length / bptt) per batch (variable-length BPTT windows come from
the loader), gradient-norm clipping, weight decay, the hidden state carried across batches and detached (by
:class:`~nasp.spaces.rnn.task.LanguageModelTask`), and the non-monotone switch to averaged SGD: once the
validation loss is worse than the best of all evaluations except the last ``nonmono``, training continues with
plain SGD steps and a running average of the weights since the switch; evaluation then uses the average. The
loop (checkpoints, exact resume, divergence stop, progress, callback, ``max_seconds``) is
:class:`nasp.trainer.Trainer`.

Example::

    model = RNNModel(len(corpus.vocab), DARTS_V2)
    history = train_language_model(model, train_loader, valid_loader, LMTrainConfig(epochs=10), device="cuda")
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..amp import autocast, check_amp, grad_scaler
from ..config import check_finite, check_range, config_from_dict
from ..spaces.rnn.task import LanguageModelTask
from ..trainer import Trainer, TrainStep

__all__ = ["LMTrainConfig", "WeightAverager", "LanguageStep", "nonmonotone_trigger", "train_language_model",
           "evaluate_language_model"]

log = logging.getLogger("nasp.train.language")


@dataclass
class LMTrainConfig:
    """Settings of :func:`train_language_model` (defaults: the DARTS PTB evaluation recipe)."""

    epochs: int = 8000
    lr: float = 20.0
    weight_decay: float = 8e-7
    grad_clip: float | None = 0.25     # null: no clipping
    bptt: int = 35                 # reference window length for the lr scaling
    nonmono: int = 5               # averaged-SGD trigger window
    ar: float = 0.0
    tar: float = 1e-3
    max_seconds: float | None = None    # stop after this much wall time (all processes of a resumed run; checked
    #                                     after every batch)
    max_steps_per_epoch: int | None = None
    seed: int = 0
    amp: str | None = None         # None | "bf16" | "fp16" (fp16: CUDA only, with a GradScaler)
    compile: bool = False          # torch.compile the model's forward in training steps (for CUDA)
    compile_backend: str = "inductor"

    def __post_init__(self):
        if self.epochs < 1 or self.bptt < 1 or self.nonmono < 1:
            raise ValueError("epochs, bptt and nonmono must be >= 1")
        check_amp(self.amp)
        check_finite(self)
        check_range(self, "lr", 0, low_open=True)
        check_range(self, "max_seconds", 0, low_open=True, nullable=True)
        check_range(self, "max_steps_per_epoch", 1, nullable=True, hint=" (all)")
        check_range(self, "grad_clip", 0, low_open=True, nullable=True, hint=" (no clipping)")
        for name in ("weight_decay", "ar", "tar"):
            check_range(self, name, 0)

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

    def state_dict(self) -> dict[str, Any]:
        return {"mean": [m.clone() for m in self.mean], "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["mean"]) != len(self.params):
            raise ValueError(f"WeightAverager: the saved average has {len(state['mean'])} tensors, the model "
                             f"{len(self.params)}")
        with torch.no_grad():
            for m, saved in zip(self.mean, state["mean"], strict=True):
                m.copy_(saved)
        self.count = int(state["count"])

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


class LanguageStep(TrainStep):
    """One epoch of a language model for :class:`nasp.trainer.Trainer`: SGD with the lr scaled by window length
    / bptt, the hidden state carried across windows (:class:`LanguageModelTask`), clipping, autocast, and the
    non-monotone switch to averaged SGD (the :class:`WeightAverager` is checkpointed with the optimiser)."""

    kind = "language"
    advice = "Lower the learning rate or enable grad_clip."

    def __init__(self, model: nn.Module, train_loader: Iterable, valid_loader: Iterable, c: LMTrainConfig,
                 device: torch.device):
        self.model, self.c, self.device = model, c, device
        self.train_loader, self.valid_loader = train_loader, valid_loader
        self.task = LanguageModelTask(ar=c.ar, tar=c.tar)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.SGD(self.params, lr=c.lr, weight_decay=c.weight_decay)
        self.scaler = grad_scaler(device, c.amp)
        self.averager: WeightAverager | None = None
        self.valid_losses: list[float] = []
        self.fwd = torch.compile(model, backend=c.compile_backend) if c.compile else model    # shares the weights

    def steps_per_epoch(self) -> int | None:
        n = len(self.train_loader) if hasattr(self.train_loader, "__len__") else None
        m = self.c.max_steps_per_epoch
        return n if m is None else min(n if n is not None else m, m)

    def train_epoch(self, epoch: int, loop: Trainer) -> dict[str, Any]:
        c, opt, scaler = self.c, self.opt, self.scaler
        if hasattr(self.train_loader, "set_epoch"):
            self.train_loader.set_epoch(epoch)
        self.model.train()
        total, steps = torch.zeros((), device=self.device), 0
        for batch in self.train_loader:
            batch = _to(batch, self.device)
            opt.param_groups[0]["lr"] = c.lr * batch[0].shape[0] / c.bptt
            opt.zero_grad(set_to_none=True)
            with autocast(self.device, c.amp):
                loss = self.task.loss(self.fwd, batch, None, "train")
            scaler.scale(loss).backward()
            if c.grad_clip is not None:
                scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(self.params, c.grad_clip)
            scaler.step(opt)
            scaler.update()
            if self.averager is not None:
                self.averager.update()
            total += loss.detach().float()
            steps += 1
            loop.tick()
            if loop.out_of_time() or (c.max_steps_per_epoch is not None and steps >= c.max_steps_per_epoch):
                break
        return {"train_loss": (total / max(steps, 1)).item(), "steps": steps}

    def evaluate(self, epoch: int) -> dict[str, Any]:
        with self.averager.swapped() if self.averager is not None else contextlib.nullcontext():
            metrics = evaluate_language_model(self.model, self.valid_loader, self.task)
        return {"valid_loss": metrics["loss"], "valid_ppl": metrics["ppl"],
                "optimizer": "asgd" if self.averager is not None else "sgd"}

    def end_epoch(self, epoch: int, record: dict[str, Any]) -> None:
        if self.averager is None and nonmonotone_trigger(self.valid_losses, record["valid_loss"], self.c.nonmono):
            self.averager = WeightAverager(self.params)
            record["switched_to_asgd"] = True
            log.info("epoch %d: switching to averaged SGD", epoch)
        self.valid_losses.append(record["valid_loss"])
        log.info("epoch %d: train %.3f valid ppl %.2f (%s)", epoch, record["train_loss"], record["valid_ppl"],
                 record["optimizer"])

    def finish(self) -> None:
        """Leave the averaged weights in the model, as ASGD's final answer."""
        if self.averager is not None:
            with torch.no_grad():
                for p, m in zip(self.averager.params, self.averager.mean, strict=True):
                    p.copy_(m)

    def postfix(self, record: dict[str, Any]) -> dict[str, str]:
        return {"loss": f"{record['train_loss']:.3f}", "valid_ppl": f"{record['valid_ppl']:.2f}",
                "opt": record["optimizer"]}

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.opt.state_dict(), "scaler": self.scaler.state_dict(),
                "averager": self.averager.state_dict() if self.averager is not None else None,
                "valid_losses": list(self.valid_losses)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["optimizer"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.averager = None
        if state["averager"] is not None:
            self.averager = WeightAverager(self.params)
            self.averager.load_state_dict(state["averager"])
        self.valid_losses = [float(v) for v in state["valid_losses"]]


def train_language_model(model: nn.Module, train_loader: Iterable, valid_loader: Iterable,
                         config: LMTrainConfig | None = None, device="cpu", callback: Callable | None = None,
                         run_dir: str | Path | None = None, resume: bool = True,
                         show_progress: bool = False) -> list[dict[str, Any]]:
    """Train ``model`` (forward(x, hidden, view) -> (logits, hidden, raw), with ``init_hidden``) and return the
    per-epoch history: train loss, validation loss/perplexity, optimiser ("sgd" or "asgd"), steps, seconds.

    The loop is :class:`nasp.trainer.Trainer`: with ``run_dir`` it writes ``train_checkpoint.pt`` (weights,
    optimiser, averager, RNG) and ``train_log.jsonl`` after every epoch, and a killed run resumes exactly.
    ``callback(epoch, elapsed_seconds, record)`` is called after every epoch; a True return stops training.
    """
    c = config or LMTrainConfig()
    device = torch.device(device)
    model.to(device)
    step = LanguageStep(model, train_loader, valid_loader, c, device)
    out = Trainer(model, step, epochs=c.epochs, seed=c.seed, device=device, run_dir=run_dir, resume=resume,
                  callback=callback, show_progress=show_progress, max_seconds=c.max_seconds,
                  config=asdict(c)).fit()
    return out.history
