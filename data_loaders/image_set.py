"""The in-memory image data set of the image readers (:mod:`data_loaders.images`, :mod:`data_loaders.cifar`) and
the one way to name a file under ``NASP_DATA_DIR``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

__all__ = ["ImageSet", "data_path"]


@dataclass
class ImageSet:
    """images: uint8 (N, C, H, W); labels: int64 (N,); classes: class names (label i -> classes[i])."""

    images: Tensor
    labels: Tensor
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: Tensor) -> ImageSet:
        return ImageSet(self.images[idx], self.labels[idx], self.classes)


def data_path(*parts: str) -> Path:
    """A path under NASP_DATA_DIR (error naming the variable when it is unset or the path is missing)."""
    root = os.environ.get("NASP_DATA_DIR")
    if not root:
        raise FileNotFoundError("NASP_DATA_DIR is not set; point it at the folder holding the data sets")
    p = Path(root, *parts)
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist (NASP_DATA_DIR={root})")
    return p
