"""Task adapter for image classification: cross-entropy loss of a batch, accuracy on a loader."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from ...arch import ArchView

__all__ = ["ImageClassificationTask"]


class ImageClassificationTask:
    """Batches are (images (B, C, H, W) float, labels (B,) int64).

    channels_last: move images to channels_last memory format (GPU path); label_smoothing: for the loss only;
    max_eval_batches: cap evaluation (None = whole loader).
    """

    metric, maximize = "accuracy", True

    def __init__(self, channels_last: bool = False, label_smoothing: float = 0.0, max_eval_batches: int | None = None):
        self.channels_last = channels_last
        self.label_smoothing = label_smoothing
        self.max_eval_batches = max_eval_batches

    def _images(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def loss(self, model: nn.Module, batch, view: ArchView, stream: str) -> Tensor:
        x, y = batch
        logits = model(self._images(x), view)
        return nn.functional.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Iterable, view: ArchView) -> dict[str, float]:
        """Accuracy and mean cross-entropy over the loader (one host sync at the end)."""
        dev = next(model.parameters()).device
        correct = torch.zeros((), device=dev)
        total_loss = torch.zeros((), device=dev)
        n = 0
        for i, (x, y) in enumerate(loader):
            if self.max_eval_batches is not None and i >= self.max_eval_batches:
                break
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            logits = model(self._images(x), view).float()
            total_loss += nn.functional.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(dim=1) == y).sum()
            n += y.shape[0]
        n = max(n, 1)
        return {"accuracy": (correct / n).item(), "loss": (total_loss / n).item()}
