"""The in-memory image data set of the image readers (:mod:`data_loaders.images`, :mod:`data_loaders.cifar`) and
the one way to name a file under ``NASP_DATA_DIR``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
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

    @property
    def image_shape(self) -> tuple[int, ...]:
        """(C, H, W) of every image."""
        return tuple(self.images.shape[1:])

    def subset(self, idx: Tensor) -> ImageSet:
        return ImageSet(self.images[idx], self.labels[idx], self.classes)

    def aligned_to(self, classes: list[str], label: str = "images") -> ImageSet:
        """The same images labelled by the index of their class name in ``classes`` (e.g. a test set read on its
        own, whose sorted class names may lack one of the training set's); a class not in ``classes`` is an error
        naming it and ``label``."""
        if list(self.classes) == list(classes):
            return self
        index = {c: i for i, c in enumerate(classes)}
        unknown = [c for c in self.classes if c not in index]
        if unknown:
            raise ValueError(f"{label}: class {unknown[0]!r} is not one of the training classes "
                             f"({', '.join(map(str, classes[:12]))}{', ...' if len(classes) > 12 else ''})")
        remap = torch.tensor([index[c] for c in self.classes], dtype=torch.int64)     # (own classes,)
        return ImageSet(self.images, remap[self.labels], list(classes))


def data_path(*parts: str) -> Path:
    """A path under NASP_DATA_DIR (error naming the variable when it is unset or the path is missing)."""
    root = os.environ.get("NASP_DATA_DIR")
    if not root:
        raise FileNotFoundError("NASP_DATA_DIR is not set; point it at the folder holding the data sets")
    p = Path(root, *parts)
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist (NASP_DATA_DIR={root})")
    return p
