import io
import pickle
import tarfile
import zipfile

import numpy as np
import pytest
import torch

from data_loaders.augment import Augment, cutout, normalize, random_crop, random_flip, to_float
from data_loaders.images import ImageLoader, load_cifar, load_image_folder, load_image_zip, search_split


def _cifar10_files(folder, n_per_batch=6):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    all_labels = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n_per_batch)]
        all_labels.append(labels)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": name.encode()}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    return all_labels


def test_cifar10_pickle_reader_folder_and_tar(tmp_path):
    labels = _cifar10_files(tmp_path / "cifar-10-batches-py")
    tr = load_cifar(tmp_path, "cifar10", "train")
    te = load_cifar(tmp_path / "cifar-10-batches-py", "cifar10", "test")
    assert tr.images.shape == (30, 3, 32, 32) and tr.images.dtype == torch.uint8
    assert tr.labels.tolist() == sum(labels[:5], []) and te.labels.tolist() == labels[5]
    assert tr.classes[3] == "c3"
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="bytes")[b"data"][0]
    assert tr.images[0, 0, 0, :4].tolist() == raw[:4].tolist()      # channel-major rows of 32
    assert tr.images[0, 1, 0, 0] == raw[1024]
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    tr2 = load_cifar(archive, "cifar10", "train")
    assert torch.equal(tr2.images, tr.images) and torch.equal(tr2.labels, tr.labels)


def test_cifar100_pickle_reader(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    for split, n in (("train", 5), ("test", 3)):
        with open(d / split, "wb") as f:
            pickle.dump({b"data": np.zeros((n, 3072), np.uint8), b"fine_labels": list(range(n)),
                         b"coarse_labels": [0] * n}, f)
    with open(d / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"f{i}".encode() for i in range(100)]}, f)
    s = load_cifar(d, "cifar100", "test")
    assert len(s) == 3 and s.labels.tolist() == [0, 1, 2] and len(s.classes) == 100


def test_cifar_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_cifar(tmp_path / "missing")
    with pytest.raises(ValueError, match="split"):
        load_cifar(tmp_path, split="valid")


def _png(color):
    PIL = pytest.importorskip("PIL.Image")
    buf = io.BytesIO()
    PIL.fromarray(np.full((8, 8, 3), color, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_image_zip_and_folder(tmp_path):
    z = tmp_path / "imgs.zip"
    with zipfile.ZipFile(z, "w") as f:
        for split in ("train", "test"):
            for cls, color in (("cat", 10), ("dog", 200)):
                for i in range(3):
                    f.writestr(f"{split}/{cls}/{i:04d}.png", _png(color))
        f.writestr("README.txt", "not an image")
    with pytest.warns(UserWarning, match="README.txt"):           # a non-image file is skipped and named
        s = load_image_zip(z, split="train")
    assert s.images.shape == (6, 3, 8, 8) and s.classes == ["cat", "dog"]
    assert s.labels.tolist() == [0, 0, 0, 1, 1, 1] and int(s.images[3].float().mean()) == 200
    with pytest.warns(UserWarning, match="README.txt"):
        assert len(load_image_zip(z)) == 12
    with pytest.warns(UserWarning, match="README.txt"):
        assert load_image_zip(z, size=4).images.shape[-1] == 4
    folder = tmp_path / "tree"
    for cls, color in (("a", 1), ("b", 2)):
        (folder / cls).mkdir(parents=True)
        (folder / cls / "x.png").write_bytes(_png(color))
    t = load_image_folder(folder)
    assert t.labels.tolist() == [0, 1] and t.classes == ["a", "b"]


def test_augmentation_shapes_and_determinism():
    x = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    f = to_float(x)
    assert f.dtype == torch.float32 and f.max() <= 1
    g = torch.Generator().manual_seed(0)
    assert random_crop(f, 4, g).shape == f.shape
    assert random_flip(f, g).shape == f.shape
    cut = cutout(f + 1, 16, g)
    zeros = (cut == 0).all(dim=1).flatten(1).sum(1)
    assert cut.shape == f.shape and (zeros > 0).all() and (zeros <= 256).all()
    assert normalize(f, (0.5,) * 3, (0.25,) * 3).shape == f.shape
    aug = Augment(cutout=16)
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(3))
    assert a.shape == (5, 3, 32, 32) and torch.equal(a, b)
    # crop with zero padding returns the original; an unpadded shift moves pixels
    torch.testing.assert_close(random_crop(f, 0, g), f)
    assert torch.equal(Augment(train=False)(x), Augment(train=False)(x))


def test_search_split_is_a_seeded_half():
    a, b = search_split(10, seed=1)
    assert len(a) == len(b) == 5 and set(a.tolist()) | set(b.tolist()) == set(range(10))
    assert torch.equal(search_split(10, seed=1)[0], a)


def test_image_loader_resumes_exactly():
    x = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    y = torch.arange(10)
    loader = ImageLoader(x, y, batch_size=3, augment=Augment(padding=2), seed=4)
    loader.set_epoch(2)
    full = list(loader)
    assert len(full) == 4 and full[-1][0].shape == (1, 3, 8, 8)
    rest = list(loader.iter_from(2))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full[2:], rest, strict=True))


@pytest.mark.realdata
def test_cifar10_jpeg_subset(data_dir):
    from pathlib import Path

    path = Path(data_dir, "cifar10-jpeg-yoongikim", "test_10000.zip")
    if not path.is_file():
        pytest.skip("CIFAR-10 JPEG subset not in NASP_DATA_DIR")
    pytest.importorskip("PIL")
    s = load_image_zip(path)
    assert s.images.shape == (10000, 3, 32, 32) and len(s.classes) == 10
    assert torch.bincount(s.labels).tolist() == [1000] * 10


def test_a_test_set_is_labelled_by_the_training_classes(tmp_path):
    """A test folder read on its own numbers its own sorted classes; missing one of the training classes must not
    shift the labels of the others (frog stays 2, not 1)."""
    for split, classes in (("train", ("cat", "dog", "frog")), ("test", ("cat", "frog")), ("odd", ("cat", "zebra"))):
        for k, cls in enumerate(classes):
            (tmp_path / split / cls).mkdir(parents=True)
            (tmp_path / split / cls / "x.png").write_bytes(_png(40 * k + 10))
    train = load_image_folder(tmp_path / "train")
    test = load_image_folder(tmp_path / "test")
    assert test.labels.tolist() == [0, 1]                                  # its own numbering
    aligned = test.aligned_to(train.classes, "test")
    assert aligned.labels.tolist() == [0, 2] and aligned.classes == ["cat", "dog", "frog"]
    assert train.aligned_to(train.classes) is train
    with pytest.raises(ValueError, match="odd: class 'zebra' is not one of the training classes"):
        load_image_folder(tmp_path / "odd").aligned_to(train.classes, "odd")


def test_cnn_command_checks_num_classes_against_the_folder(tmp_path):
    from nasp.commands.cnn import ImageDataConfig, load_data

    for cls in ("a", "b", "c"):
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "x.png").write_bytes(_png(5))
    d = ImageDataConfig(source="folder", path=str(tmp_path), num_classes=2, image_size=8)
    with pytest.raises(ValueError, match="data.num_classes is 2 but the train images have 3 classes"):
        load_data(d, "train")
    assert load_data(ImageDataConfig(source="folder", path=str(tmp_path), num_classes=3, image_size=8), "train")


def test_images_decode_into_one_tensor_and_a_size_mismatch_names_the_file(tmp_path):
    """The eager reader decodes each image straight into the (N, 3, H, W) result: the pixels are those of each file,
    and an image of another size (without size=) is an error naming it and the folder."""
    from image_helpers import image_bytes, write_tree

    root = write_tree(tmp_path / "f", {"a/0.png": image_bytes(10), "a/1.png": image_bytes(20),
                                       "b/0.png": image_bytes(30)})
    s = load_image_folder(root)
    assert s.images.shape == (3, 3, 8, 8) and s.images.dtype == torch.uint8
    assert [int(s.images[i].float().mean()) for i in range(3)] == [10, 20, 30]
    (root / "b" / "1.png").write_bytes(image_bytes(40, size=(9, 8)))
    with pytest.raises(ValueError, match=r"different sizes.*1\.png.*pass size="):
        load_image_folder(root)
    assert load_image_folder(root, size=8).images.shape == (4, 3, 8, 8)
