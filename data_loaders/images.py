"""Image data: CIFAR-10 / CIFAR-100 (python-pickle form, folder or tar.gz, read by a restricted unpickler),
folders or zips of image files labelled by class subfolders or by an ``id,label`` CSV (the Kaggle CIFAR-10
layout ``train/<id>.png`` + ``trainLabels.csv``), ImageNet-style class-folder trees; the 50/50 search split; a
resumable batch loader that applies tensor augmentation (see :mod:`data_loaders.augment`). A layout that would
give silently wrong labels (images with no label CSV, a single class folder, no images) is an error naming the
folder, file or CSV line.

The CIFAR pickles are read in :mod:`data_loaders.cifar`, the search split and the batch loader live in
:mod:`data_loaders.image_loader`, :class:`ImageSet` in :mod:`data_loaders.image_set`; this module re-exports them.
Readers return an :class:`ImageSet`: ``images`` uint8 (N, 3, H, W), ``labels`` int64 (N,), ``classes`` names.
Large folders (ImageNet) are listed by :func:`image_files` and read lazily by :class:`LazyImageSet` (the one
folder listing; :class:`ImageFolderDataset` wraps it with a resize-and-crop view). Decoding JPEG/PNG files needs
Pillow (the ``images`` extra); CIFAR pickles do not.

Typical use (NASP_DATA_DIR points at the shared data folder)::

    train = load_image_zip(data_path("cifar10-jpeg-yoongikim/train_first1000perclass.zip"))
    tr_idx, va_idx = search_split(len(train), seed=0)
    loader = ImageLoader(train.images[tr_idx], train.labels[tr_idx], batch_size=64, augment=Augment())
"""

from __future__ import annotations

import csv
import io
import os
import posixpath
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .cifar import CIFAR_PICKLE_GLOBALS, RefusedPickle, load_cifar
from .image_loader import ImageLoader, search_split
from .image_set import ImageSet, data_path

__all__ = ["ImageSet", "data_path", "load_cifar", "load_image_zip", "load_image_folder", "image_files", "LazyImageSet",
           "ImageFolderDataset",
           "search_split", "ImageLoader", "IMAGE_SUFFIXES", "LABEL_CSV_NAMES", "CIFAR_PICKLE_GLOBALS", "RefusedPickle"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".gif", ".webp", ".tif", ".tiff")
# files no reader takes as images even when their names end like one: hidden files (macOS' ._x.jpg AppleDouble
# forks, .DS_Store), anything under a hidden folder (.ipynb_checkpoints) or macOS' __MACOSX folder of a zip
SYSTEM_NAMES = ("__MACOSX", "Thumbs.db", "desktop.ini")


# ---- image files ----------------------------------------------------------------------------------------------
# a label CSV (header ``id,label``, ids = image file stems) for the images directly in folder D: D/labels.csv, or
# next to D: <D>Labels.csv (the Kaggle CIFAR-10 layout, train/ + trainLabels.csv) or <D>_labels.csv
LABEL_CSV_NAMES = ("{name}/labels.csv", "{name}Labels.csv", "{name}_labels.csv")


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def _is_system(parts) -> bool:
    """Whether a path (its components) is a hidden or operating-system file, or lies in such a folder."""
    return any(p.startswith(".") or p in SYSTEM_NAMES for p in parts)


def _warn_skipped(source: str, skipped: list[str]) -> None:
    """One warning naming the files of ``source`` that were not read as images (so that none is lost unsaid)."""
    if skipped:
        shown = ", ".join(skipped[:4]) + (f" and {len(skipped) - 4} more" if len(skipped) > 4 else "")
        warnings.warn(f"{source}: skipped {len(skipped)} file(s) that are not images or are hidden/system files: "
                      f"{shown} (image types read: {' '.join(IMAGE_SUFFIXES)})", stacklevel=3)


def _to_rgb(img):
    """A PIL image as 8-bit RGB. 16-bit greyscale (PNG/TIFF ``I;16``) is scaled by 1/257, not clipped at 255
    (Pillow's own conversion clips it to white); 32-bit integer or float images have no known range."""
    from PIL import Image

    if img.mode.startswith("I;16"):
        a = np.asarray(img, dtype=np.float64) / 257.0        # 0..65535 -> 0..255
        img = Image.fromarray(np.rint(a).astype(np.uint8), "L")
    elif img.mode in ("I", "F"):
        raise ValueError(f"{'32-bit integer' if img.mode == 'I' else 'floating-point'} pixels of unknown range; "
                         "save it as an 8- or 16-bit image")
    return img.convert("RGB")


def _decode(blob: bytes, size: int | None = None) -> np.ndarray:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as e:      # pragma: no cover - depends on the environment
        raise ImportError("decoding image files needs Pillow: pip install 'nasp-sif[images]'") from e
    if not blob:
        raise ValueError("an empty file (0 bytes)")
    try:
        img = _to_rgb(Image.open(io.BytesIO(blob)))
    except UnidentifiedImageError:
        raise ValueError("not an image format Pillow can read (a damaged or mislabelled file?)") from None
    except Image.DecompressionBombError as e:
        raise ValueError(str(e)) from None
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    return np.array(img, dtype=np.uint8)      # a writable copy (torch.from_numpy warns on read-only arrays)


def _class_order(names) -> list[str]:
    """Sorted class names; all-integer names ("0", "2", "10") sort as numbers, so label i is class "i"."""
    names = sorted(set(names))
    return sorted(names, key=int) if all(n.lstrip("-").isdigit() for n in names) else names


def _read_label_csv(blob: bytes, source: str) -> dict[str, tuple[str, int]]:
    """id -> (label, line) of an ``id,label`` CSV; one-line errors name the CSV line."""
    try:
        reader = csv.reader(io.StringIO(blob.decode("utf-8-sig")))
        rows = [(reader.line_num, row) for row in reader]
    except (UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{source}: not a readable CSV ({e})") from e
    if not rows or [c.strip().lower() for c in rows[0][1]] != ["id", "label"]:
        got = ",".join(rows[0][1]) if rows else ""
        raise ValueError(f"{source}:1: a label CSV starts with the header 'id,label', got {got!r}")
    table: dict[str, tuple[str, int]] = {}
    for line, row in rows[1:]:
        if not any(c.strip() for c in row):
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise ValueError(f"{source}:{line}: expected 'id,label', got {','.join(row)!r}")
        key = row[0].strip()
        if key in table:
            raise ValueError(f"{source}:{line}: id {key!r} repeats line {table[key][1]}")
        table[key] = (row[1].strip(), line)
    if not table:
        raise ValueError(f"{source}: no id,label rows")
    return table


def _match_labels(table: dict[str, tuple[str, int]], files: list[tuple[str, str]], source: str
                  ) -> list[tuple[str, str]]:
    """(file, label) for files [(name, stem)] in CSV row order: every image needs a row and every row an image."""
    by_stem: dict[str, str] = {}
    for name, stem in files:
        if stem in by_stem:
            raise ValueError(f"{name}: same id {stem!r} as {by_stem[stem]}")
        if stem not in table:
            raise ValueError(f"{name}: no label for id {stem!r} in {source}")
        by_stem[stem] = name
    for key, (_, line) in table.items():
        if key not in by_stem:
            raise ValueError(f"{source}:{line}: id {key!r} has no image file")
    return [(by_stem[k], lab) for k, (lab, _) in sorted(table.items(), key=lambda kv: kv[1][1])]


def _decode_file(name: str, blob: bytes, size: int | None) -> np.ndarray:
    """:func:`_decode` whose errors name the file: uint8 (H, W, 3)."""
    try:
        return _decode(blob, size)
    except (OSError, ValueError, SyntaxError) as e:       # SyntaxError: some broken PNG chunks
        raise ValueError(f"{name}: not a readable image ({e})") from None


def _decode_all(items, size: int | None, source: str) -> Tensor:
    """uint8 (N, 3, H, W) of (name, encoded bytes) items; images of different sizes (``size`` None) name ``source``.
    Each image is decoded straight into one preallocated tensor (peak memory: the images once, plus one image)."""
    items = list(items)
    out = None
    for n, (name, blob) in enumerate(items):
        a = _decode_file(name, blob, size)                                   # (H, W, 3) uint8
        if out is None:
            out = torch.empty((len(items), 3, *a.shape[:2]), dtype=torch.uint8)
        elif a.shape[:2] != tuple(out.shape[2:]):
            raise ValueError(f"{source}: images have different sizes ({tuple(out.shape[2:])} and {a.shape[:2]} at "
                             f"{name}); pass size= to resize them")
        out[n].copy_(torch.from_numpy(a).permute(2, 0, 1))
    if out is None:
        raise _no_images(source)
    return out


def _no_images(source: str) -> ValueError:
    return ValueError(f"{source}: no image files found (expected [<split>/]<class>/<file>.jpg, or images with an "
                      "id,label CSV)")


def _stack(items: list[tuple[str, bytes, str]], size: int | None, source: str) -> ImageSet:
    """ImageSet of (name, encoded bytes, class) items; errors name ``source`` or the file."""
    if not items:
        raise _no_images(source)
    classes = _class_order(c for _, _, c in items)
    index = {c: i for i, c in enumerate(classes)}
    images = _decode_all(((name, blob) for name, blob, _ in items), size, source)
    return ImageSet(images, torch.tensor([index[c] for _, _, c in items], dtype=torch.int64), classes)


def _one_folder_error(source: str, folder: str) -> ValueError:
    return ValueError(f"{source}: every image sits in the one folder {folder!r} with no label CSV, which would make "
                      f"a single class; use <class>/<file> subfolders or an id,label CSV "
                      f"({', '.join(n.format(name=folder) for n in LABEL_CSV_NAMES)})")


def _zip_label_source(z: zipfile.ZipFile, path: Path, d: str, members: set[str]) -> tuple[str, bytes] | None:
    """(name, bytes) of the label CSV for the images directly in zip folder ``d`` ("" = top), if there is one:
    inside the zip per :data:`LABEL_CSV_NAMES`, or beside the zip file (for the top: <zip stem>Labels.csv)."""
    parent, base = posixpath.split(d)
    inner = [posixpath.join(parent, n.format(name=base)) for n in LABEL_CSV_NAMES] if d else ["labels.csv"]
    for m in inner:
        if m in members:
            return f"{path}:{m}", z.read(m)
    for n in LABEL_CSV_NAMES[1:]:
        p = path.parent / n.format(name=base or path.stem)
        if p.is_file():
            return str(p), p.read_bytes()
    return None


def load_image_zip(path: str | Path, split: str | None = None, size: int | None = None,
                   labels: str | Path | None = None) -> ImageSet:
    """All images of a zip, labelled by class folders ``[<split>/]<class>/<file>`` or, for a folder of images
    with a label CSV (``id,label``, ids = file stems; see :data:`LABEL_CSV_NAMES`, or pass ``labels=`` a CSV
    path), by the CSV: ``<split>/<id>.png`` + ``<split>Labels.csv``. ``split`` filters on the folder above the
    class folder (CSV-labelled images: their own folder). Classes are the sorted label names; CSV-labelled images
    come in CSV row order. ``size`` resizes every image to size x size. images: uint8 (N, 3, H, W)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image zip {path} does not exist")
    explicit = None
    if labels is not None:
        if not Path(labels).is_file():
            raise FileNotFoundError(f"label CSV {labels} does not exist")
        explicit = (str(labels), _read_label_csv(Path(labels).read_bytes(), str(labels)))
    with zipfile.ZipFile(path) as z:
        labelled, by_csv = _zip_labels(z, path, split, explicit)
        items = [(f"{path}:{f}", z.read(f), c) for f, c in labelled]
    if not by_csv and len({c for _, _, c in items}) == 1:
        raise _one_folder_error(str(path), items[0][2])
    return _stack(items, size, str(path))


def _zip_labels(z: zipfile.ZipFile, path: Path, split: str | None, explicit: tuple[str, dict] | None
                ) -> tuple[list[tuple[str, str]], bool]:
    """(member, class) of the zip's images in ``split`` (see :func:`load_image_zip`), and whether a CSV labelled
    any of them."""
    names = sorted(n for n in z.namelist() if not n.endswith("/"))
    by_dir: dict[str, list[str]] = {}
    for n in names:
        if _is_image(n) and not _is_system(n.split("/")):
            by_dir.setdefault(posixpath.dirname(n), []).append(n)
    if not by_dir:
        raise ValueError(f"{path}: no image files in the zip")
    _warn_skipped(str(path), [n for n in names if not n.lower().endswith(".csv")
                              and (not _is_image(n) or _is_system(n.split("/")))])
    nested = next((d for d in by_dir if posixpath.dirname(d) in by_dir and posixpath.dirname(d)), None)
    if nested is not None and explicit is None:
        raise ValueError(f"{path}: {by_dir[nested][0]} lies in a folder below the image folder "
                         f"{posixpath.dirname(nested)}/, which holds images too; use [<split>/]<class>/<file>")
    labelled, csv_groups = [], {}
    for d, files in by_dir.items():
        src = explicit
        if src is None:
            found = _zip_label_source(z, path, d, set(names))
            src = None if found is None else (found[0], _read_label_csv(found[1], found[0]))
        if src is None:
            if not d:
                raise ValueError(f"{path}: images sit at the top of the zip ({files[0]}) with no label CSV "
                                 "(expected [<split>/]<class>/<file>, or labels.csv)")
            if split is None or posixpath.basename(posixpath.dirname(d)) == split:
                labelled += [(f, posixpath.basename(d)) for f in files]
        elif split is None or posixpath.basename(d) == split:
            csv_groups.setdefault(src[0], (src[1], []))[1].extend(files)
    for key, (table, files) in csv_groups.items():
        labelled += _match_labels(table, [(f, posixpath.splitext(posixpath.basename(f))[0]) for f in files], key)
    if not labelled:
        raise ValueError(f"{path}: no images in split {split!r} (image folders: {sorted(by_dir)[:6]})")
    return labelled, bool(csv_groups)


def _folder_label_csv(folder: Path, labels: str | Path | None) -> Path | None:
    if labels is not None:
        if not Path(labels).is_file():
            raise FileNotFoundError(f"label CSV {labels} does not exist")
        return Path(labels)
    return next((p for p in (folder.parent / n.format(name=folder.name) for n in LABEL_CSV_NAMES) if p.is_file()),
                None)


def _folder_images(path: Path, class_layout: bool) -> tuple[list[Path], list[Path]]:
    """The images directly in ``path`` and those in its subfolders (``<class>/<file>``); hidden and system files
    and other files are skipped with one warning naming them. With subfolders (and ``class_layout``), a class
    folder without images, or images one folder deeper than ``<class>/<file>``, is an error naming it (it would
    silently drop a class or images)."""
    skipped: list[str] = []

    def split(files):
        keep = []
        for p in files:
            rel = p.relative_to(path)
            if _is_image(p.name) and not _is_system(rel.parts):
                keep.append(p)
            elif not p.name.lower().endswith(".csv"):
                skipped.append(str(rel))
        return keep

    top = sorted(path.iterdir())
    flat = split(p for p in top if p.is_file())
    folders = [d for d in top if d.is_dir() and not _is_system([d.name])]
    skipped += [d.name + "/" for d in top if d.is_dir() and _is_system([d.name])]
    nested: list[Path] = []
    empty: list[Path] = []
    for d in folders:
        files = sorted(d.iterdir())
        images = split(p for p in files if p.is_file())
        if class_layout and not flat:
            subfolders = (s for s in files if s.is_dir() and not _is_system([s.name]))
            deeper = next((hit for hit in map(_first_image, subfolders) if hit is not None), None)
            if deeper is not None:
                raise ValueError(f"{deeper}: images lie deeper than {path}/<class>/<file>; point the path at the "
                                 "folder that holds the class folders, or move them up into the class folder")
            if not images:
                empty.append(d)
        nested += images
    if nested and empty:
        raise ValueError(f"{empty[0]}: a class folder with no image files; remove it or add its images (read: "
                         f"{' '.join(IMAGE_SUFFIXES)})")
    _warn_skipped(str(path), skipped)
    return flat, sorted(nested)


def _first_image(folder: Path) -> Path | None:
    """Some image file anywhere under ``folder`` (hidden folders left out), or None."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not _is_system([d]))
        hit = next((f for f in sorted(files) if _is_image(f) and not _is_system([f])), None)
        if hit is not None:
            return Path(root, hit)
    return None


def load_image_folder(path: str | Path, size: int | None = None, labels: str | Path | None = None) -> ImageSet:
    """All images under ``path/<class>/<file>``, or directly in ``path`` with a label CSV (``id,label``, ids =
    file stems): ``labels=`` or, found by name, ``path/labels.csv``, ``<path>Labels.csv`` (Kaggle CIFAR-10:
    ``train/`` + ``trainLabels.csv``) or ``<path>_labels.csv``. A zip file goes to :func:`load_image_zip`.
    Images directly in a folder without a CSV, a folder of one class folder, or no images at all are errors
    naming the folder. images: uint8 (N, 3, H, W). (:func:`image_files` then :meth:`LazyImageSet.load`.)"""
    if Path(path).is_file():
        return load_image_zip(path, size=size, labels=labels)
    return image_files(path, size, labels).load()


def image_files(path: str | Path, size: int | None = None, labels: str | Path | None = None) -> LazyImageSet:
    """The images of a folder as :func:`load_image_folder` finds and labels them (same layouts, checks and order),
    listed but not read: a :class:`LazyImageSet` that decodes an image when it is indexed."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"image folder {path} does not exist")
    flat, nested = _folder_images(path, labels is None)
    if flat and nested:
        raise ValueError(f"{path}: holds images both directly ({flat[0].name}) and in subfolders "
                         f"({nested[0].relative_to(path)}); use one layout")
    if flat:
        csv_path = _folder_label_csv(path, labels)
        if csv_path is None:
            raise ValueError(f"{path}: images sit directly in the folder ({flat[0].name}) with no label CSV; use "
                             f"<class>/<file> subfolders or an id,label CSV ({path / 'labels.csv'} or "
                             f"{path.parent / (path.name + 'Labels.csv')})")
        table = _read_label_csv(csv_path.read_bytes(), str(csv_path))
        pairs = _match_labels(table, [(str(p), p.stem) for p in flat], str(csv_path))
    else:
        if labels is not None and nested:
            raise ValueError(f"{path}: labels= was given but the images sit in class subfolders, not in the folder")
        if len({p.parent.name for p in nested}) == 1:
            raise _one_folder_error(str(path), nested[0].parent.name)
        pairs = [(str(p), p.parent.name) for p in nested]
    if not pairs:
        raise _no_images(str(path))
    classes = _class_order(c for _, c in pairs)
    index = {c: i for i, c in enumerate(classes)}
    return LazyImageSet([f for f, _ in pairs], torch.tensor([index[c] for _, c in pairs], dtype=torch.int64),
                        classes, size, str(path))


class LazyImageSet:
    """Image files and their labels, decoded when indexed: ``dataset[i]`` -> (uint8 (3, H, W), label), the pixels
    :func:`load_image_folder` gives (``size``: resized to size x size); :meth:`load` reads them all into an
    :class:`ImageSet`. ``labels`` int64 (N,), ``classes`` names (label i -> classes[i]), as in an ImageSet."""

    def __init__(self, files: list[str], labels: Tensor, classes: list[str], size: int | None, source: str):
        self.files, self.labels, self.classes, self.size, self.source = list(files), labels, list(classes), size, source

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        name = self.files[i]
        arr = _decode_file(name, Path(name).read_bytes(), self.size)
        return torch.from_numpy(arr).permute(2, 0, 1), int(self.labels[i])

    @property
    def image_shape(self) -> tuple[int, ...]:
        """(3, H, W) of every image (``size`` None: of the first one)."""
        return (3, self.size, self.size) if self.size is not None else tuple(self[0][0].shape)

    def decoded_bytes(self) -> int:
        """Memory the decoded uint8 images take (what :meth:`load` holds)."""
        c, h, w = self.image_shape
        return len(self) * c * h * w

    def stats(self) -> list[tuple[str, int, int]]:
        """(file relative to the folder, bytes, modification time in ns) of each file: what identifies the set
        without reading it."""
        out = []
        for f in self.files:
            st = os.stat(f)
            out.append((os.path.relpath(f, self.source), st.st_size, st.st_mtime_ns))
        return out

    def subset(self, idx: Tensor) -> LazyImageSet:
        return LazyImageSet([self.files[int(i)] for i in idx], self.labels[idx], self.classes, self.size, self.source)

    def aligned_to(self, classes: list[str], label: str = "images") -> LazyImageSet:
        """As :meth:`ImageSet.aligned_to`: the same files labelled by their class name's index in ``classes``."""
        remapped = ImageSet(torch.empty(len(self), 0), self.labels, self.classes).aligned_to(classes, label)
        return LazyImageSet(self.files, remapped.labels, remapped.classes, self.size, self.source)

    def load(self) -> ImageSet:
        """Every image read and decoded: an in-memory :class:`ImageSet` (errors name the file)."""
        images = _decode_all(((f, Path(f).read_bytes()) for f in self.files), self.size, self.source)
        return ImageSet(images, self.labels, self.classes)


class ImageFolderDataset:
    """A lazily read image folder with a resize-and-crop view: ``dataset[i]`` -> (uint8 (3, H, W) tensor, label);
    ``size`` resizes the shorter side then centre-crops to size x size (for batching ImageNet-style images of
    different sizes), None keeps each image as it is.

    A thin wrapper of :func:`image_files` / :class:`LazyImageSet` (``self.images``): the files, classes and labels
    are theirs, so the layouts, checks and warnings are those of :func:`load_image_folder` (``root/<class>/<file>``,
    or images directly in ``root`` with an ``id,label`` CSV, ``labels=`` or found by name). Since that shared
    listing took over (it used to be a listing of its own here), hidden/system and non-image files are skipped
    with one warning naming them, and images one folder below a class folder or a class folder with no images
    are errors naming them (they were dropped, or left a class with no images, silently). ``samples`` [(file,
    label)] lists the images class by class (numeric class names in number order), files in path order within a
    class; ``classes`` are the class names (label i -> classes[i])."""

    def __init__(self, root: str | Path, size: int | None = 256, labels: str | Path | None = None):
        self.root, self.size = Path(root), size
        listing = image_files(self.root, labels=labels)                 # decoded at their own size, cropped here
        self.images = listing.subset(torch.sort(listing.labels, stable=True).indices)    # class by class
        self.classes = self.images.classes
        self.samples = [(Path(f), int(y)) for f, y in zip(self.images.files, self.images.labels.tolist(),
                                                           strict=True)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        arr, label = self.images[i]                                      # uint8 (3, H, W)
        if self.size is not None:
            from .augment import center_crop, resize_shorter

            arr = center_crop(resize_shorter(arr[None].float(), self.size), self.size)[0].round().clamp(0, 255)
            arr = arr.to(torch.uint8)
        return arr, label
