"""The search split of an image training set and a resumable, seeded mini-batch loader with per-batch tensor
augmentation (see :mod:`data_loaders.augment`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

__all__ = ["search_split", "ImageLoader"]


def search_split(n: int, seed: int = 0, fraction: float = 0.5) -> tuple[Tensor, Tensor]:
    """The search split of a training set: a seeded permutation cut into (train, valid) index tensors,
    ``fraction`` of the samples for training (0.5: DARTS' 25k / 25k split of CIFAR-10)."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    cut = int(round(n * fraction))
    return perm[:cut], perm[cut:]


class ImageLoader:
    """Mini-batches (augmented float images (B, C, H, W), labels (B,)) from in-memory uint8 tensors or a lazy
    dataset, in a seeded order that is a pure function of (seed, epoch); ``set_epoch`` / ``iter_from`` let a
    search or training run resume exactly. ``augment(x_uint8, generator) -> float`` runs per batch."""

    def __init__(self, images, labels: Tensor | None = None, batch_size: int = 64, shuffle: bool = True,
                 augment: Callable | None = None, seed: int = 0, drop_last: bool = False):
        if labels is None:        # a lazy dataset of (image, label) pairs
            self.dataset, self.images, self.labels = images, None, None
            n = len(images)
        else:
            if len(images) != len(labels):
                raise ValueError(f"images ({len(images)}) and labels ({len(labels)}) differ in length")
            self.dataset, self.images, self.labels = None, images, labels
            n = len(labels)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.n, self.batch_size, self.shuffle, self.augment = n, batch_size, shuffle, augment
        self.seed, self.drop_last, self.epoch = seed, drop_last, 0

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _fetch(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        if self.dataset is None:
            return self.images[idx], self.labels[idx]
        items = [self.dataset[int(i)] for i in idx]
        return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items], dtype=torch.int64)

    def iter_from(self, start: int) -> Iterator[tuple[Tensor, Tensor]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
        for b in range(start, len(self)):
            idx = order[b * self.batch_size: (b + 1) * self.batch_size]
            x, y = self._fetch(idx)
            if self.augment is not None:
                ga = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 100_003 + b)
                x = self.augment(x, ga)
            yield x, y

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self.iter_from(0)
