"""CIFAR-10 / CIFAR-100 in the python-pickle form (folder or tar.gz), read by a restricted unpickler: a crafted
batch file cannot run code (every global but numpy's array reconstructors is refused)."""

from __future__ import annotations

import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from .image_set import ImageSet

__all__ = ["load_cifar", "CIFAR_PICKLE_GLOBALS", "RefusedPickle"]


_CIFAR = {
    "cifar10": {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"], "meta": "batches.meta",
                "label_key": b"labels", "names_key": b"label_names"},
    "cifar100": {"train": ["train"], "test": ["test"], "meta": "meta", "label_key": b"fine_labels",
                 "names_key": b"fine_label_names"},
}


_NUMPY_GLOBALS = {(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray")
                  for n in ("_reconstruct", "scalar")}
_NUMPY_GLOBALS |= {("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"), ("numpy", "ndarray"),
                   ("numpy", "dtype")}
# bytes in protocol <= 2 pickles written by Python 3: _codecs.encode(str, "latin1"), and bytes() for b""
_BUILTIN_GLOBALS = {("_codecs", "encode"), ("builtins", "bytes"), ("__builtin__", "bytes"), ("builtins", "bytearray"),
                    ("__builtin__", "bytearray")}
CIFAR_PICKLE_GLOBALS = frozenset(_NUMPY_GLOBALS | _BUILTIN_GLOBALS)


class RefusedPickle(pickle.UnpicklingError):
    """A CIFAR pickle referenced a global outside :data:`CIFAR_PICKLE_GLOBALS`; nothing of it was run."""


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches (``encoding="bytes"``, as the Python-2 files need) and nothing else: the only
    callables a stream may name are numpy's array / dtype / scalar reconstructors and the bytes builders."""

    def __init__(self, f, source: str):
        super().__init__(f, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str):
        if (module, name) not in CIFAR_PICKLE_GLOBALS:
            raise RefusedPickle(f"{self.source}: refused to unpickle the global {module}.{name} (a CIFAR batch holds "
                                "only numpy arrays, lists, dicts, bytes and numbers)")
        core = "numpy._core." if hasattr(np, "_core") else "numpy.core."     # numpy >= 2 keeps numpy.core as a shim
        if module.startswith(("numpy.core.", "numpy._core.")):
            module = core + module.split(".", 2)[2]
        return super().find_class(module, name)


def _unpickle(f, source: str) -> dict:
    """One CIFAR batch / meta dict, read with the restricted unpickler; one-line errors name ``source``."""
    try:
        blob = _CifarUnpickler(f, source).load()
    except RefusedPickle:
        raise
    except Exception as e:
        detail = (str(e).splitlines() or [""])[0]
        raise ValueError(f"{source}: not a readable CIFAR pickle ({type(e).__name__}: {detail})") from e
    if not isinstance(blob, dict):
        raise ValueError(f"{source}: a CIFAR pickle holds a dict, this one a {type(blob).__name__}")
    return blob


def _field(blob: dict, key: bytes, source: str):
    if key not in blob and key.decode() not in blob:
        raise ValueError(f"{source}: no {key.decode()!r} entry (keys: {sorted(map(str, blob))[:6]})")
    return blob[key] if key in blob else blob[key.decode()]


def _cifar_blobs(path: Path, members: list[str], first: str, name: str) -> dict[str, tuple[dict, str]]:
    """member -> (unpickled dict, source name) from the archive or folder at ``path``."""
    if path.is_file():
        if not tarfile.is_tarfile(path):
            kind = "a zip" if zipfile.is_zipfile(path) else "not a tar archive"
            raise ValueError(f"{path}: {kind}, not the python-pickle {name} archive (cifar-*-python.tar.gz); for a "
                             "zip or folder of image files use source zip or folder")
        with tarfile.open(path, "r:*") as tar:
            by_base = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            missing = [m for m in members if m not in by_base]
            if missing:
                raise ValueError(f"{path}: archive lacks {missing}")
            return {m: (_unpickle(tar.extractfile(by_base[m]), f"{path}:{by_base[m].name}"),
                        f"{path}:{by_base[m].name}") for m in members}
    folder = next((d for d in (path, *path.iterdir()) if d.is_dir() and (d / first).is_file()), None)
    if folder is None:
        raise ValueError(f"{path}: no {first} found (expected the python-pickle version of {name})")
    blobs = {}
    for m in members:
        if not (folder / m).is_file():
            raise FileNotFoundError(f"{folder / m} does not exist (a {name} folder holds {members})")
        with open(folder / m, "rb") as f:
            blobs[m] = (_unpickle(f, str(folder / m)), str(folder / m))
    return blobs


def load_cifar(path: str | Path, name: str = "cifar10", split: str = "train") -> ImageSet:
    """Read CIFAR-10 / CIFAR-100 in the python-pickle form from its folder (``cifar-10-batches-py`` /
    ``cifar-100-python``, or any folder holding the batch files) or from the ``.tar.gz`` archive.

    The pickles are read by a restricted unpickler that refuses every global but numpy's array reconstructors
    (:data:`CIFAR_PICKLE_GLOBALS`), so a crafted batch file cannot run code. images: uint8 (N, 3, 32, 32)."""
    if name not in _CIFAR:
        raise ValueError(f"name must be one of {sorted(_CIFAR)}, got {name!r}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    spec, path = _CIFAR[name], Path(path)
    if not path.exists():
        raise FileNotFoundError(f"CIFAR path {path} does not exist")
    blobs = _cifar_blobs(path, spec[split] + [spec["meta"]], spec[split][0], name)
    meta, meta_src = blobs[spec["meta"]]
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in _field(meta, spec["names_key"], meta_src)]
    data, labels = [], []
    for m in spec[split]:
        blob, src = blobs[m]
        d = np.asarray(_field(blob, b"data", src))
        y = np.asarray(_field(blob, spec["label_key"], src))
        if d.ndim != 2 or d.shape[1] != 3 * 32 * 32 or d.dtype != np.uint8:
            raise ValueError(f"{src}: data is {d.dtype} {d.shape}, expected uint8 (N, 3072)")
        if y.shape != (len(d),) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{src}: {len(d)} images but labels of shape {y.shape} ({y.dtype})")
        bad = y[(y < 0) | (y >= len(classes))]
        if len(bad):
            raise ValueError(f"{src}: label {int(bad[0])} is outside the {len(classes)} classes of {meta_src}")
        data.append(d)
        labels.append(y.astype(np.int64))
    images = torch.from_numpy(np.concatenate(data).reshape(-1, 3, 32, 32).copy())
    return ImageSet(images, torch.from_numpy(np.concatenate(labels)), classes)
