"""Image readers never give silently wrong results: a restricted CIFAR unpickler, label-CSV folders (the Kaggle
CIFAR-10 layout), and one-line errors for flat folders without labels, single-folder zips and empty inputs."""

import io
import os
import pickle
import pickletools
import struct
import tarfile
import zipfile

import numpy as np
import pytest
import torch

from data_loaders.images import (
    CIFAR_PICKLE_GLOBALS,
    ImageFolderDataset,
    RefusedPickle,
    load_cifar,
    load_image_folder,
    load_image_zip,
)


# ---- CIFAR pickles --------------------------------------------------------------------------------------------
class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` opcodes (SHORT_BINSTRING / BINSTRING), as the real CIFAR files hold them."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj):
        n = len(obj)
        self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
                   + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def _py2_dumps(obj) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def _globals(blob: bytes) -> set[tuple[str, str]]:
    out = set()
    for op, arg, _ in pickletools.genops(blob):
        assert op.name != "STACK_GLOBAL"                      # protocol 2 names globals inline
        if op.name == "GLOBAL":
            out.add(tuple(arg.split(" ")))
    return out


def _batch(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"training batch", b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"filenames": [b"f%d.png" % i for i in range(n)]}


def _write_cifar10(folder, dumps, n=4):
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for i, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        batches[name] = _batch(n, i)
        (folder / name).write_bytes(dumps(batches[name]))
    (folder / "batches.meta").write_bytes(dumps({b"label_names": [f"c{i}".encode() for i in range(10)],
                                                 b"num_vis": 3072, b"num_cases_per_batch": 10000}))
    return batches


@pytest.mark.parametrize("style", ["py2-str", "protocol-2", "protocol-5", "numpy.core-spelling"])
def test_legit_cifar_batches_load(tmp_path, style):
    def dumps(obj):
        if style == "py2-str":
            return _py2_dumps(obj)
        if style == "numpy.core-spelling":            # the name numpy 1.x (and the real files) write
            return pickle.dumps(obj, protocol=2).replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
        return pickle.dumps(obj, protocol=2 if style == "protocol-2" else 5)

    batches = _write_cifar10(tmp_path / "cifar-10-batches-py", dumps)
    if style != "protocol-5":
        assert _globals((tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes()) <= CIFAR_PICKLE_GLOBALS
    tr, te = load_cifar(tmp_path, "cifar10", "train"), load_cifar(tmp_path, "cifar10", "test")
    assert tr.images.shape == (20, 3, 32, 32) and te.images.shape == (4, 3, 32, 32)
    assert tr.labels.tolist() == sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    raw = batches["data_batch_2"][b"data"][1]
    assert torch.equal(tr.images[5].flatten(), torch.from_numpy(raw))             # row-major (3, 32, 32)
    assert tr.classes == [f"c{i}" for i in range(10)]


def test_py2_pickle_uses_str_opcodes():
    ops = {op.name for op, _, _ in pickletools.genops(_py2_dumps(_batch(2, 0)))}
    assert {"SHORT_BINSTRING", "BINSTRING"} <= ops and "SHORT_BINBYTES" not in ops


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("protocol", [2, 5])
def test_crafted_cifar_pickle_is_refused_and_runs_nothing(tmp_path, protocol):
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar10(folder, pickle.dumps)
    marker = tmp_path / "pwned"
    evil = _batch(4, 0)
    evil[b"labels"] = _Evil(marker)
    (folder / "data_batch_1").write_bytes(pickle.dumps(evil, protocol=protocol))
    with pytest.raises(RefusedPickle, match=r"data_batch_1: refused to unpickle the global (posix|os)\.system") as e:
        load_cifar(folder, "cifar10", "train")
    assert "\n" not in str(e.value) and not marker.exists()
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    with pytest.raises(RefusedPickle, match=r"cifar-10-python.tar.gz:cifar-10-batches-py/data_batch_1: refused"):
        load_cifar(archive, "cifar10", "train")
    assert not marker.exists()


def test_other_globals_are_refused(tmp_path):
    folder = tmp_path / "c"
    _write_cifar10(folder, pickle.dumps)
    payload = b"\x80\x02cbuiltins\neval\nX\x04\x00\x00\x001+1\x85R."       # eval("1+1")
    (folder / "test_batch").write_bytes(payload)
    with pytest.raises(RefusedPickle, match=r"test_batch: refused to unpickle the global builtins\.eval"):
        load_cifar(folder, "cifar10", "test")


def test_broken_cifar_files_name_the_file(tmp_path):
    folder = tmp_path / "c"
    _write_cifar10(folder, pickle.dumps)
    blob = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match=r"test_batch: not a readable CIFAR pickle"):
        load_cifar(folder, "cifar10", "test")
    bad = _batch(3, 0)
    bad[b"labels"] = [0, 1, 12]
    (folder / "test_batch").write_bytes(pickle.dumps(bad))
    with pytest.raises(ValueError, match=r"test_batch: label 12 is outside the 10 classes"):
        load_cifar(folder, "cifar10", "test")
    bad[b"labels"] = [0, 1]
    (folder / "test_batch").write_bytes(pickle.dumps(bad))
    with pytest.raises(ValueError, match=r"test_batch: 3 images but labels of shape \(2,\)"):
        load_cifar(folder, "cifar10", "test")
    del bad[b"data"]
    (folder / "test_batch").write_bytes(pickle.dumps(bad))
    with pytest.raises(ValueError, match=r"test_batch: no 'data' entry"):
        load_cifar(folder, "cifar10", "test")


# ---- image files ----------------------------------------------------------------------------------------------
def _img(value: int, fmt: str = "PNG") -> bytes:
    Image = pytest.importorskip("PIL.Image")
    buf = io.BytesIO()
    Image.fromarray(np.full((6, 6, 3), value, np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


KAGGLE = {"1": "frog", "2": "truck", "3": "truck", "4": "deer", "5": "frog", "10": "deer"}
SHADE = {"frog": 20, "truck": 120, "deer": 220}


def _csv(rows: dict) -> str:
    return "id,label\n" + "".join(f"{k},{v}\n" for k, v in rows.items())


def _kaggle_folder(root, fmt="PNG"):
    (root / "train").mkdir(parents=True)
    for i, lab in KAGGLE.items():
        (root / "train" / f"{i}.{fmt.lower()}").write_bytes(_img(SHADE[lab], fmt))
    (root / "trainLabels.csv").write_text(_csv(KAGGLE))
    return root


def _check_kaggle(s):
    assert s.classes == ["deer", "frog", "truck"] and s.images.shape == (6, 3, 6, 6)
    assert [s.classes[y] for y in s.labels] == list(KAGGLE.values())              # CSV row order
    means = s.images.float().mean(dim=(1, 2, 3))
    expect = torch.tensor([SHADE[v] for v in KAGGLE.values()], dtype=torch.float32)
    assert torch.allclose(means, expect, atol=3)                                   # JPEG is lossy


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_kaggle_layout_folder(tmp_path, fmt):
    root = _kaggle_folder(tmp_path, fmt)
    _check_kaggle(load_image_folder(root / "train"))
    (root / "trainLabels.csv").rename(root / "mine.csv")
    _check_kaggle(load_image_folder(root / "train", labels=root / "mine.csv"))
    (root / "mine.csv").rename(root / "train" / "labels.csv")
    _check_kaggle(load_image_folder(root / "train"))


def test_kaggle_layout_zip(tmp_path):
    z = tmp_path / "kaggle.zip"
    with zipfile.ZipFile(z, "w") as f:
        for i, lab in KAGGLE.items():
            f.writestr(f"train/{i}.png", _img(SHADE[lab]))
            f.writestr(f"test/{i}.png", _img(0))
        f.writestr("trainLabels.csv", _csv(KAGGLE))
        f.writestr("test/labels.csv", _csv(dict.fromkeys(KAGGLE, "frog")))
    _check_kaggle(load_image_zip(z, split="train"))
    assert load_image_zip(z, split="test").classes == ["frog"] and len(load_image_zip(z)) == 12
    with pytest.raises(ValueError, match=r"kaggle.zip: no images in split 'valid'"):
        load_image_zip(z, split="valid")


def test_flat_images_without_labels_are_an_error(tmp_path):
    root = _kaggle_folder(tmp_path)
    (root / "trainLabels.csv").unlink()
    with pytest.raises(ValueError, match=r"train: images sit directly in the folder \(1.png\) with no label CSV"):
        load_image_folder(root / "train")
    with pytest.raises(ValueError, match=r"every image sits in the one folder 'train' with no label CSV"):
        load_image_folder(root)                                  # would have been one class called "train"
    with pytest.raises(ValueError, match=r"images sit directly in the folder"):
        ImageFolderDataset(root / "train")
    z = tmp_path / "flat.zip"
    with zipfile.ZipFile(z, "w") as f:
        for i in KAGGLE:
            f.writestr(f"train/{i}.png", _img(1))
    with pytest.raises(ValueError, match=r"flat.zip: every image sits in the one folder 'train'.*trainLabels.csv"):
        load_image_zip(z)
    with zipfile.ZipFile(tmp_path / "top.zip", "w") as f:
        f.writestr("1.png", _img(1))
    with pytest.raises(ValueError, match=r"top.zip: images sit at the top of the zip \(1.png\) with no label CSV"):
        load_image_zip(tmp_path / "top.zip")


def test_csv_and_images_must_match(tmp_path):
    root = _kaggle_folder(tmp_path)
    (root / "trainLabels.csv").write_text(_csv({**KAGGLE, "11": "frog"}))
    with pytest.raises(ValueError, match=r"trainLabels.csv:8: id '11' has no image file"):
        load_image_folder(root / "train")
    (root / "trainLabels.csv").write_text(_csv({k: v for k, v in KAGGLE.items() if k != "4"}))
    with pytest.raises(ValueError, match=r"train.4.png: no label for id '4' in .*trainLabels.csv"):
        load_image_folder(root / "train")
    (root / "trainLabels.csv").write_text("id,label\n1,frog\n1,deer\n")
    with pytest.raises(ValueError, match=r"trainLabels.csv:3: id '1' repeats line 2"):
        load_image_folder(root / "train")
    (root / "trainLabels.csv").write_text("name,class\n1,frog\n")
    with pytest.raises(ValueError, match=r"trainLabels.csv:1: a label CSV starts with the header 'id,label'"):
        load_image_folder(root / "train")
    (root / "trainLabels.csv").write_text("id,label\n1,frog,extra\n")
    with pytest.raises(ValueError, match=r"trainLabels.csv:2: expected 'id,label'"):
        load_image_folder(root / "train")


def test_no_images_name_the_folder_or_zip(tmp_path):
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"empty: no image files found"), pytest.warns(UserWarning, match="notes.txt"):
        load_image_folder(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"empty: no image files found"), pytest.warns(UserWarning, match="notes.txt"):
        ImageFolderDataset(tmp_path / "empty")                   # the same listing, so the same message
    with zipfile.ZipFile(tmp_path / "none.zip", "w") as f:
        f.writestr("README.txt", "no images")
    with pytest.raises(ValueError, match=r"none.zip: no image files in the zip"):
        load_image_zip(tmp_path / "none.zip")
    with pytest.raises(FileNotFoundError, match=r"missing does not exist"):
        load_image_folder(tmp_path / "missing")


def test_class_folders_still_work_and_numeric_classes_sort_as_numbers(tmp_path):
    for cls, v in (("10", 5), ("2", 50), ("0", 100)):
        (tmp_path / "t" / cls).mkdir(parents=True)
        (tmp_path / "t" / cls / "a.jpg").write_bytes(_img(v, "JPEG"))
    s = load_image_folder(tmp_path / "t")
    assert s.classes == ["0", "2", "10"] and s.labels.tolist() == [0, 2, 1]          # files in path order
    assert s.images[s.labels == 2].float().mean() < 10                               # class "10" is the dark one
    lazy = ImageFolderDataset(tmp_path / "t", size=None)
    assert lazy.classes == s.classes and [y for _, y in lazy.samples] == [0, 1, 2]
    assert lazy[2][0].float().mean() < 10
    (tmp_path / "t" / "a.png").write_bytes(_img(1))
    with pytest.raises(ValueError, match=r"t: holds images both directly \(a.png\) and in subfolders"):
        load_image_folder(tmp_path / "t")


def test_a_zip_with_train_and_test_folders_loads_only_the_asked_split(tmp_path):
    from nasp.commands.cnn import ImageDataConfig, load_data

    z = tmp_path / "both.zip"
    with zipfile.ZipFile(z, "w") as f:
        for split, n in (("train", 3), ("test", 2)):
            for cls in ("cat", "dog"):
                for k in range(n):
                    f.writestr(f"{split}/{cls}/{k}.png", _img(40 * k + (cls == "dog") * 100))
    cfg = ImageDataConfig(source="zip", path=str(z), image_size=8)
    assert len(load_data(cfg, "train")) == 6 and len(load_data(cfg, "test")) == 4
    flat = tmp_path / "flat.zip"                       # no split folders: the whole zip is the split
    with zipfile.ZipFile(flat, "w") as f:
        for cls in ("cat", "dog"):
            f.writestr(f"{cls}/0.png", _img(10))
    assert len(load_data(ImageDataConfig(source="zip", path=str(flat), image_size=8), "train")) == 2
