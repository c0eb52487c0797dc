"""One listing for lazy image folders (ImageFolderDataset = image_files' files, classes and labels), one-line
train.init_from errors, and --set values parsed by the key's type (data.sep=, on both command lines)."""

from __future__ import annotations

import warnings

import pytest
import torch

Image = pytest.importorskip("PIL.Image")

from image_helpers import image_bytes, write_tree  # noqa: E402

from data_loaders.images import ImageFolderDataset, image_files  # noqa: E402


def _png(value: int) -> bytes:
    return image_bytes(value, size=(6, 4))


BASE = {f"{c}/{i}.png": _png(30 * k + i) for k, c in enumerate(("10", "2", "0")) for i in range(2)}


# ---- 1. ImageFolderDataset lists through image_files -----------------------------------------------------------
def test_image_folder_dataset_has_the_lazy_listings_files_classes_and_labels(tmp_path):
    root = write_tree(tmp_path / "f", {**BASE, "2/._0.png": b"\0\5\x16\7", "0/.DS_Store": b"x", "10/notes.txt": b"hi",
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
    ds = ImageFolderDataset(write_tree(tmp_path / "f", BASE), size=3)
    x, _ = ds[0]
    assert x.shape == (3, 3, 3) and x.dtype == torch.uint8


@pytest.mark.parametrize("extra, error", [
    ({"0/more/x.png": _png(3)}, r"0/more/x.png: images lie deeper than"),     # was dropped silently
    ({"7/notes.txt": b"x"}, r"f/7: a class folder with no image files"),     # was a class with no images
])
def test_image_folder_dataset_refuses_what_the_shared_listing_refuses(tmp_path, extra, error):
    root = write_tree(tmp_path / "f", {**BASE, **extra})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=error):
            image_files(root)
        with pytest.raises(ValueError, match=error):
            ImageFolderDataset(root)


def test_image_folder_dataset_reads_a_csv_labelled_folder_like_the_lazy_listing(tmp_path):
    root = write_tree(tmp_path / "train", {f"{i}.png": _png(10 * i) for i in range(4)})
    (tmp_path / "trainLabels.csv").write_text("id,label\n0,cat\n1,dog\n2,cat\n3,dog\n")
    ds = ImageFolderDataset(root, size=None)
    assert ds.classes == ["cat", "dog"] and [(p.name, y) for p, y in ds.samples] == \
        [("0.png", 0), ("2.png", 0), ("1.png", 1), ("3.png", 1)]
    (tmp_path / "trainLabels.csv").unlink()
    with pytest.raises(ValueError, match=r"train: images sit directly in the folder \(0.png\) with no label CSV"):
        ImageFolderDataset(root)


# ---- 2. train.init_from: one line naming the key and the file --------------------------------------------------
def _init_from_cases(tmp_path):
    from torch import nn

    from nasp.checkpoint import save_checkpoint

    good = save_checkpoint({"model": nn.Linear(3, 2).state_dict()}, tmp_path / "good.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(good.read_bytes()[:-8])
    foreign = tmp_path / "foreign.pt"
    torch.save(nn.Linear(3, 2).state_dict(), foreign)                     # not written by save_checkpoint
    listed = save_checkpoint([1, 2], tmp_path / "list.pt")                # a nasp checkpoint, but not weights
    other = save_checkpoint({"model": nn.Linear(4, 2).state_dict()}, tmp_path / "other.pt")
    return good, [(tmp_path / "nope.pt", "train.init_from: checkpoint {} does not exist; give the train_checkpoint.pt"),
                  (tmp_path, "train.init_from: {} is a folder; give the train_checkpoint.pt"),
                  (corrupt, "train.init_from: checkpoint {} is corrupt"),
                  (foreign, "train.init_from: checkpoint {} is not a nasp checkpoint"),
                  (listed, "train.init_from={}: its weights do not fit this model"),
                  (other, "train.init_from={}: its weights do not fit this model")]


def test_init_weights_names_train_init_from_and_the_file(tmp_path):
    from torch import nn

    from nasp.trainer import _init_weights

    good, cases = _init_from_cases(tmp_path)
    model = nn.Linear(3, 2)
    _init_weights(model, str(good), "cpu")
    for path, message in cases:
        with pytest.raises(ValueError) as e:
            _init_weights(model, str(path), "cpu")
        assert message.format(path) in str(e.value) and len(str(e.value).splitlines()) == 1, str(e.value)


def test_train_init_from_a_missing_file_on_the_sif_command_line(tmp_path, capsys):
    """(The nasp command lines have no train.init_from; their Trainer takes init_from= as sif's does.)"""
    import yaml

    from sif.cli import main as sif_main
    from sif.synthetic import planted_ratings

    missing = tmp_path / "missing.pt"
    ds = planted_ratings("multiply", num_users=12, num_items=15, n=120, seed=0)
    (tmp_path / "r.csv").write_text("user,item,rating\n" + "".join(
        f"{u},{i},{r:.3f}\n" for u, i, r in zip(ds.users.tolist(), ds.items.tolist(), ds.ratings.tolist(),
                                                  strict=True)))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"seed": 1, "threads": 1, "show_progress": False, "out_dir": str(tmp_path / "run"),
                                   "data": {"dataset": "file", "path": str(tmp_path / "r.csv"), "split": "random",
                                            "ratios": [0.8, 0.1, 0.1]},
                                   "model": {"name": "mf", "embedding_dim": 2}, "train": {"max_epochs": 1}}))
    capsys.readouterr()
    assert sif_main(["train", "--config", str(cfg), "--set", f"train.init_from={missing}"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"train.init_from: checkpoint {missing} does not exist" in err and len(err.splitlines()) == 1, err


# ---- 3. --set values read by the setting's type ------------------------------------------------------------------
@pytest.mark.parametrize("sep", [",", ";", "|", ":", "#", "\t", " ", "~"])
def test_a_one_character_separator_is_that_character(sep):
    from sif.config import apply_override, load_config

    assert load_config(None, [f"data.sep={sep}"]).data.sep == sep
    assert load_config(None, [f"data.sep='{sep}'"]).data.sep == sep          # the quoted form still works
    cfg = load_config()
    apply_override(cfg, f"data.sep={sep}")
    assert cfg.data.sep == sep


def test_one_characters_of_other_types_are_read_as_yaml_and_bad_ones_name_the_key():
    from nasp.cli import CNNSearchRun
    from nasp.config import ConfigError, load, parse_assignments
    from sif.config import RunConfig

    assert parse_assignments(["a.b=1", "c=[x, y]", "d=null", "e=x"]) == {"a": {"b": 1}, "c": ["x", "y"], "d": None,
                                                                         "e": "x"}
    assert load(RunConfig, None, ["train.max_epochs=7", "data.sep=null"]).data.sep is None
    with pytest.raises(ConfigError, match=r"^--set train.lr: cannot parse the value ','$"):
        load(RunConfig, None, ["train.lr=,"])
    with pytest.raises(ConfigError, match=r"data.lazy must be auto, true or false, got ','"):   # bool | str
        load(CNNSearchRun, None, ["data.lazy=,"])


def test_data_sep_on_the_sif_command_line_reads_a_semicolon_file(tmp_path, capsys):
    import yaml

    from sif.cli import main
    from sif.synthetic import planted_ratings

    ds = planted_ratings("multiply", num_users=12, num_items=15, n=120, seed=0)
    for sep, name in ((";", "semi.csv"), (",", "comma.csv")):
        (tmp_path / name).write_text(f"user{sep}item{sep}rating\n" + "".join(
            f"{u}{sep}{i}{sep}{r:.3f}\n" for u, i, r in zip(ds.users.tolist(), ds.items.tolist(), ds.ratings.tolist(),
                                                            strict=True)))
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(yaml.safe_dump({"seed": 1, "threads": 1, "show_progress": False,
                                       "out_dir": str(tmp_path / f"run-{name}"),
                                       "data": {"dataset": "file", "path": str(tmp_path / name), "split": "random",
                                                "ratios": [0.8, 0.1, 0.1]},
                                       "model": {"name": "mf", "embedding_dim": 2}, "train": {"max_epochs": 1}}))
        assert main(["train", "--config", str(cfg), "--set", f"data.sep={sep}"]) == 0, capsys.readouterr().err
    assert main(["train", "--config", str(cfg), "--set", "train.max_epochs=,"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--set train.max_epochs: cannot parse the value ','" in err and len(err.splitlines()) == 1, err


def test_a_one_character_value_on_the_nasp_command_line(tmp_path, capsys):
    from nasp.cli import main

    assert main(["cnn", "search", "--quiet", "--set", "threads=1", "data.source=folder", "data.path=,"]) == 2
    err = capsys.readouterr().err.strip()
    assert "data path ',' not found" in err and len(err.splitlines()) == 1, err          # read as the path ","
    assert main(["cnn", "search", "--quiet", "--set", "data.num_classes=,"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--set data.num_classes: cannot parse the value ','" in err and len(err.splitlines()) == 1, err
