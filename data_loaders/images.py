"""Image data: CIFAR-10 / CIFAR-100 (python-pickle form, folder or tar.gz), folders or zips of image files with
class labels, ImageNet-style class-folder trees; the 50/50 search split; a resumable batch loader that applies
tensor augmentation (see :mod:`data_loaders.augment`).

Readers return an :class:`ImageSet`: ``images`` uint8 (N, 3, H, W), ``labels`` int64 (N,), ``classes`` names.
Large class-folder trees (ImageNet) are read lazily by :class:`ImageFolderDataset`. Decoding JPEG/PNG files needs
Pillow (the ``images`` extra); CIFAR pickles do not.

Typical use (NASP_DATA_DIR points at the shared data folder)::

    train = load_image_zip(data_path("cifar10-jpeg-yoongikim/train_first1000perclass.zip"))
    tr_idx, va_idx = search_split(len(train), seed=0)
    loader = ImageLoader(train.images[tr_idx], train.labels[tr_idx], batch_size=64, augment=Augment())
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["ImageSet", "data_path", "load_cifar", "load_image_zip", "load_image_folder", "ImageFolderDataset",
           "search_split", "ImageLoader", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".gif", ".webp")


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


# ---- CIFAR pickles ------------------------------------------------------------------------------------------
_CIFAR = {
    "cifar10": {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"], "meta": "batches.meta",
                "label_key": b"labels", "names_key": b"label_names"},
    "cifar100": {"train": ["train"], "test": ["test"], "meta": "meta", "label_key": b"fine_labels",
                 "names_key": b"fine_label_names"},
}


def _unpickle(f) -> dict:
    return pickle.load(f, encoding="bytes")


def load_cifar(path: str | Path, name: str = "cifar10", split: str = "train") -> ImageSet:
    """Read CIFAR-10 / CIFAR-100 in the python-pickle form from its folder (``cifar-10-batches-py`` /
    ``cifar-100-python``, or any folder holding the batch files) or from the ``.tar.gz`` archive."""
    if name not in _CIFAR:
        raise ValueError(f"name must be one of {sorted(_CIFAR)}, got {name!r}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    spec, path = _CIFAR[name], Path(path)
    if not path.exists():
        raise FileNotFoundError(f"CIFAR path {path} does not exist")
    members = spec[split] + [spec["meta"]]
    if path.is_file():
        with tarfile.open(path, "r:*") as tar:
            by_base = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            missing = [m for m in members if m not in by_base]
            if missing:
                raise ValueError(f"{path}: archive lacks {missing}")
            blobs = {m: _unpickle(tar.extractfile(by_base[m])) for m in members}
    else:
        folder = next((d for d in (path, *path.iterdir()) if d.is_dir() and (d / spec[split][0]).is_file()), None)
        if folder is None:
            raise ValueError(f"{path}: no {spec[split][0]} found (expected the python-pickle version of {name})")
        blobs = {}
        for m in members:
            with open(folder / m, "rb") as f:
                blobs[m] = _unpickle(f)
    data = np.concatenate([np.asarray(blobs[m][b"data"], dtype=np.uint8) for m in spec[split]])
    labels = np.concatenate([np.asarray(blobs[m][spec["label_key"]], dtype=np.int64) for m in spec[split]])
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: data has shape {data.shape}, expected (N, 3072)")
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in blobs[spec["meta"]][spec["names_key"]]]
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return ImageSet(images, torch.from_numpy(labels), classes)


# ---- image files ----------------------------------------------------------------------------------------------
def _decode(blob: bytes, size: int | None = None) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError as e:      # pragma: no cover - depends on the environment
        raise ImportError("decoding image files needs Pillow: pip install 'nasp-sif[images]'") from e
    img = Image.open(io.BytesIO(blob)).convert("RGB")
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def _label_of(member: str, split: str | None) -> tuple[str, str] | None:
    """(split, class) of a member path ``[<split>/]<class>/<file>``; None for non-images."""
    parts = Path(member).parts
    if not member.lower().endswith(IMAGE_SUFFIXES) or len(parts) < 2:
        return None
    if len(parts) >= 3:
        return parts[-3], parts[-2]
    return "", parts[-2]


def _stack(blobs: list[tuple[str, bytes]], labels_of: list[str], size: int | None) -> ImageSet:
    if not blobs:
        raise ValueError("no image files found (expected <class>/<file>.jpg or <split>/<class>/<file>.jpg)")
    classes = sorted(set(labels_of))
    index = {c: i for i, c in enumerate(classes)}
    arrays = [_decode(b, size) for _, b in blobs]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"images have different sizes {sorted(shapes)[:3]}...; pass size= to resize them")
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return ImageSet(images, torch.tensor([index[c] for c in labels_of], dtype=torch.int64), classes)


def load_image_zip(path: str | Path, split: str | None = None, size: int | None = None) -> ImageSet:
    """All images of a zip whose members are ``[<split>/]<class>/<file>``; ``split`` filters on the first
    folder. Labels follow the sorted class names. ``size`` resizes every image to size x size."""
    path = Path(path)
    blobs, labels = [], []
    with zipfile.ZipFile(path) as z:
        for name in sorted(z.namelist()):
            lab = _label_of(name, split)
            if lab is None or (split is not None and lab[0] != split):
                continue
            blobs.append((name, z.read(name)))
            labels.append(lab[1])
    return _stack(blobs, labels, size)


def load_image_folder(path: str | Path, size: int | None = None) -> ImageSet:
    """All images under ``path/<class>/<file>`` (a folder, or a zip file: see :func:`load_image_zip`)."""
    path = Path(path)
    if path.is_file():
        return load_image_zip(path, size=size)
    files = sorted(p for p in path.glob("*/*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return _stack([(str(p), p.read_bytes()) for p in files], [p.parent.name for p in files], size)


class ImageFolderDataset:
    """ImageNet-style class-folder tree read lazily: ``root/<class>/<file>``. ``dataset[i]`` -> (uint8 (3, H, W)
    tensor, label); ``size`` resizes the shorter side then centre-crops to size x size (for batching)."""

    def __init__(self, root: str | Path, size: int | None = 256):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist")
        self.classes = sorted(d.name for d in self.root.iterdir() if d.is_dir())
        index = {c: i for i, c in enumerate(self.classes)}
        self.samples = [(p, index[p.parent.name]) for c in self.classes for p in sorted((self.root / c).iterdir())
                        if p.suffix.lower() in IMAGE_SUFFIXES]
        if not self.samples:
            raise ValueError(f"{self.root}: no images in class folders")
        self.size = size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        path, label = self.samples[i]
        arr = torch.from_numpy(_decode(path.read_bytes())).permute(2, 0, 1)
        if self.size is not None:
            from .augment import center_crop, resize_shorter

            arr = center_crop(resize_shorter(arr[None].float(), self.size), self.size)[0].round().clamp(0, 255)
            arr = arr.to(torch.uint8)
        return arr, label


# ---- splits and loading -----------------------------------------------------------------------------------------
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
