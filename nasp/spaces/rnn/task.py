"""Language-model task adapter: NLL with a hidden state carried across batches, one state per stream.

Batches are ``(x (T, B), y (T, B), first)`` as ``data_loaders.text.BPTTLoader`` yields them (``first`` is True
on the first window of an epoch). The adapter keeps one hidden state per stream ("train", "valid", "eval"):
it starts from zeros when the stream's epoch restarts (``first``) or the batch size changes, and is detached at
every batch, so the graph never grows across batches. Calling ``loss`` again with the SAME batch object (as
DARTS' second-order step does for its extra training-loss evaluations) starts again from the same state
instead of advancing it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from ...arch import ArchView

__all__ = ["LanguageModelTask"]


class LanguageModelTask:
    """Task adapter for :class:`~nasp.spaces.rnn.model.RNNSearchSpace` and :class:`RNNModel`.

    ar / tar: activation and temporal activation regularisation weights (AWD-LSTM; DARTS uses ar=0,
    tar=1e-3), added to the "train" stream's loss only. metric "ppl" (perplexity, lower is better).
    max_eval_batches: evaluate on at most this many batches (None: the whole loader). The model is called as
    ``model(x, hidden, view, targets=y)`` and returns (mean NLL, hidden, raw outputs) (the decoder and its
    cross-entropy fused, :mod:`.decoder`).
    """

    metric, maximize = "ppl", False

    def __init__(self, ar: float = 0.0, tar: float = 1e-3, max_eval_batches: int | None = None):
        self.ar, self.tar, self.max_eval_batches = ar, tar, max_eval_batches
        self._state: dict[str, dict[str, Any]] = {}

    # ---- carried hidden state ----------------------------------------------------------------------------------
    def reset(self, stream: str | None = None) -> None:
        """Forget the hidden state of one stream (all streams when None)."""
        if stream is None:
            self._state.clear()
        else:
            self._state.pop(stream, None)

    def hidden(self, stream: str) -> Tensor | None:
        """The hidden state carried into the next batch of ``stream`` (detached), or None."""
        st = self._state.get(stream)
        return None if st is None else st["end"]

    def _start(self, model: nn.Module, stream: str, batch, batch_size: int, device) -> Tensor:
        st = self._state.get(stream)
        if st is not None and st["batch"] is batch:              # same batch again: same starting state
            return st["start"]
        first = bool(batch[2]) if len(batch) > 2 else False
        if st is None or first or st["end"].shape[0] != batch_size:
            start = model.init_hidden(batch_size, device)
        else:
            start = st["end"]
        self._state[stream] = {"batch": batch, "start": start, "end": start}
        return start

    # ---- protocol ---------------------------------------------------------------------------------------------------
    def forward(self, model: nn.Module, batch, view: ArchView | None, stream: str) -> tuple[Tensor, Tensor]:
        """(mean NLL over the batch's tokens, raw outputs (T, B, H)); advances the stream's hidden state."""
        x, y = batch[0], batch[1]
        start = self._start(model, stream, batch, x.shape[1], x.device)
        nll, hidden, raw = model(x, start, view, targets=y)       # decoder + cross-entropy fused (decoder.py)
        self._state[stream]["end"] = hidden.detach()
        return nll, raw

    def loss(self, model: nn.Module, batch, view: ArchView | None, stream: str) -> Tensor:
        nll, raw = self.forward(model, batch, view, stream)
        if stream != "train" or not model.training:
            return nll
        if self.ar:
            nll = nll + self.ar * raw.float().pow(2).mean()
        if self.tar and raw.shape[0] > 1:
            nll = nll + self.tar * (raw[1:] - raw[:-1]).float().pow(2).mean()
        return nll

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Iterable, view: ArchView | None) -> dict[str, float]:
        """Token-weighted NLL and perplexity over the loader, from a fresh "eval" hidden state."""
        self.reset("eval")
        total, tokens = None, 0
        for b, batch in enumerate(loader):
            if self.max_eval_batches is not None and b >= self.max_eval_batches:
                break
            batch = tuple(t.to(_device(model)) if isinstance(t, Tensor) else t for t in batch)
            nll, _ = self.forward(model, batch, view, "eval")
            n = batch[1].numel()
            total = nll.double() * n if total is None else total + nll.double() * n
            tokens += n
        self.reset("eval")
        if not tokens:
            raise ValueError("evaluate: the loader yielded no batches")
        loss = (total / tokens).item()
        return {"loss": loss, "ppl": math.exp(min(loss, 700.0))}


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
