"""Image augmentation on batches of tensors, without torchvision: pad-and-crop, horizontal flip, cutout,
normalisation. Every random function takes a ``torch.Generator`` so a batch's augmentation is reproducible.

All functions take and return (B, C, H, W) tensors.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "CIFAR100_MEAN", "CIFAR100_STD", "IMAGENET_MEAN", "IMAGENET_STD",
           "to_float", "normalize", "random_crop", "random_flip", "cutout", "center_crop", "resize_shorter",
           "Augment"]

CIFAR10_MEAN, CIFAR10_STD = (0.49139968, 0.48215827, 0.44653124), (0.24703233, 0.24348505, 0.26158768)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def to_float(x: Tensor) -> Tensor:
    """uint8 in [0, 255] -> float32 in [0, 1] (float input is returned as float32)."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def normalize(x: Tensor, mean, std) -> Tensor:
    """(x - mean) / std per channel."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def random_crop(x: Tensor, padding: int, generator: torch.Generator | None = None) -> Tensor:
    """Zero-pad by ``padding`` on every side, then crop back to H x W at a random offset per sample."""
    if padding <= 0:
        return x
    B, C, H, W = x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    oy = torch.randint(0, 2 * padding + 1, (B,), generator=generator).to(x.device)
    ox = torch.randint(0, 2 * padding + 1, (B,), generator=generator).to(x.device)
    rows = (oy[:, None] + torch.arange(H, device=x.device))[:, :, None]            # (B, H, 1)
    cols = (ox[:, None] + torch.arange(W, device=x.device))[:, None, :]            # (B, 1, W)
    b = torch.arange(B, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[b, rows, cols].permute(0, 3, 1, 2).contiguous()


def random_flip(x: Tensor, generator: torch.Generator | None = None, p: float = 0.5) -> Tensor:
    """Mirror each sample left-right with probability p."""
    flip = (torch.rand(x.shape[0], generator=generator) < p).to(x.device)
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def cutout(x: Tensor, length: int, generator: torch.Generator | None = None) -> Tensor:
    """Zero one ``length`` x ``length`` square per sample, centred uniformly in the image (clipped at borders)."""
    if length <= 0:
        return x
    B, _, H, W = x.shape
    cy = torch.randint(0, H, (B,), generator=generator).to(x.device)
    cx = torch.randint(0, W, (B,), generator=generator).to(x.device)
    ys, xs = torch.arange(H, device=x.device), torch.arange(W, device=x.device)
    in_y = ((ys[None] >= (cy - length // 2)[:, None]) & (ys[None] < (cy + length - length // 2)[:, None]))
    in_x = ((xs[None] >= (cx - length // 2)[:, None]) & (xs[None] < (cx + length - length // 2)[:, None]))
    mask = (in_y[:, :, None] & in_x[:, None, :]).unsqueeze(1)                         # (B, 1, H, W)
    return x.masked_fill(mask, 0.0)


def resize_shorter(x: Tensor, size: int) -> Tensor:
    """Bilinear resize so the shorter side is ``size`` (x: (B, C, H, W) float)."""
    H, W = x.shape[-2:]
    scale = size / min(H, W)
    return torch.nn.functional.interpolate(x, size=(round(H * scale), round(W * scale)), mode="bilinear",
                                           align_corners=False, antialias=True)


def center_crop(x: Tensor, size: int) -> Tensor:
    H, W = x.shape[-2:]
    top, left = (H - size) // 2, (W - size) // 2
    return x[..., top: top + size, left: left + size]


class Augment:
    """The CIFAR recipe as one callable on uint8 or float batches: to [0, 1], pad-crop, flip, normalise, cutout
    (cutout after normalisation, as in the DARTS recipe). ``train=False`` only converts and normalises."""

    def __init__(self, mean=CIFAR10_MEAN, std=CIFAR10_STD, padding: int = 4, flip: bool = True, cutout: int = 0,
                 train: bool = True):
        self.mean, self.std, self.padding, self.flip, self.cutout, self.train = mean, std, padding, flip, cutout, train

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        x = to_float(x)
        if self.train:
            x = random_crop(x, self.padding, generator)
            if self.flip:
                x = random_flip(x, generator)
        x = normalize(x, self.mean, self.std)
        if self.train and self.cutout:
            x = cutout(x, self.cutout, generator)
        return x
