"""One listing for lazy image folders (ImageFolderDataset = image_files' files, classes and labels), one-line
train.init_from errors, and --set values parsed by the key's type (data.sep=, on both command lines)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch

Image = pytest.importorskip("PIL.Image")

from data_loaders.images import ImageFolderDataset, image_files  # noqa: E402


def _png(value: int, size: tuple[int, int] = (6, 4)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), value, dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _tree(root, files: dict[str, bytes]):
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


BASE = {f"{c}/{i}.png": _png(30 * k + i) for k, c in enumerate(("10", "2", "0")) for i in range(2)}


# ---- 1. ImageFolderDataset lists through image_files -----------------------------------------------------------
def test_image_folder_dataset_has_the_lazy_listings_files_classes_and_labels(tmp_path):
    root = _tree(tmp_path / "f", {**BASE, "2/._0.png": b"\0\5\x16\7", "0/.DS_Store": b"x", "10/notes.txt": b"hi",
                                  ".ipynb_checkpoints/a.png": _png(1)})
    with pytest.warns(UserWarning, match=r"skipped 4 file\(s\)"):
        lazy = image_files(root)
    with pytest.warns(UserWarning, match=r"skipped 4 file\(s\)"):          # the same warning, from the same listing
        ds = ImageFolderDataset(root, size=None)
    assert ds.classes == lazy.classes == ["0", "2", "10"]                   # numeric class order in both
    files = {f: int(y) for f, y in zip(lazy.files, lazy.labels.tolist(), strict=True)}
    assert {str(p): y for p, y in ds.samples} == files and len(ds) == 6
    assert [y for _, y in ds.samples] == [0, 0, 1, 1, 2, 2]                 # class by class, as before
    x, y = ds[5]
    assert x.dtype == torch.uint8 and x.shape == (3, 4, 6) and y == 2 and int(x[0, 0, 0]) == 1   # "10/1.png"
    assert torch.equal(ds[0][0], lazy[lazy.files.index(str(ds.samples[0][0]))][0])


def test_image_folder_dataset_crops_to_size(tmp_path):
    ds = ImageFolderDataset(_tree(tmp_path / "f", BASE), size=3)
    x, _ = ds[0]
    assert x.shape == (3, 3, 3) and x.dtype == torch.uint8


@pytest.mark.parametrize("extra, error", [
    ({"0/more/x.png": _png(3)}, r"0/more/x.png: images lie deeper than"),     # was dropped silently
    ({"7/notes.txt": b"x"}, r"f/7: a class folder with no image files"),     # was a class with no images
])
def test_image_folder_dataset_refuses_what_the_shared_listing_refuses(tmp_path, extra, error):
    root = _tree(tmp_path / "f", {**BASE, **extra})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=error):
            image_files(root)
        with pytest.raises(ValueError, match=error):
            ImageFolderDataset(root)


def test_image_folder_dataset_reads_a_csv_labelled_folder_like_the_lazy_listing(tmp_path):
    root = _tree(tmp_path / "train", {f"{i}.png": _png(10 * i) for i in range(4)})
    (tmp_path / "trainLabels.csv").write_text("id,label\n0,cat\n1,dog\n2,cat\n3,dog\n")
    ds = ImageFolderDataset(root, size=None)
    assert ds.classes == ["cat", "dog"] and [(p.name, y) for p, y in ds.samples] == \
        [("0.png", 0), ("2.png", 0), ("1.png", 1), ("3.png", 1)]
    (tmp_path / "trainLabels.csv").unlink()
    with pytest.raises(ValueError, match=r"train: images sit directly in the folder \(0.png\) with no label CSV"):
        ImageFolderDataset(root)
