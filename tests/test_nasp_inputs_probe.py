"""Inputs of the ``nasp`` commands a new user gets wrong (probed on generated corpora, image folders and configs):
each is read correctly (checked against an independent count) or refused in one line naming the file, line, key
or argument; nothing is dropped or relabelled unsaid."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import torch
from image_helpers import image_bytes, write_tree
from PIL import Image

from data_loaders.images import ImageFolderDataset, load_image_folder, load_image_zip
from data_loaders.text import read_corpus, read_files
from nasp.cli import main
from nasp.commands.cnn import ImageDataConfig, load_data
from nasp.commands.rnn import RNNSpaceConfig, TextDataConfig
from nasp.commands.runs import RunFolderError, prepare_run_dir
from nasp.config import ConfigError, load
from nasp.search import SearchConfig

WORDS = "the cat sat on a mat dog ran far away".split()


def _lines(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(3, 9))) for _ in range(n)]


def _corpus(folder, encoding="utf-8", prefix="", extra_train="", n=(200, 40, 40)):
    """train/valid/test.txt of ``n`` random lines of WORDS; returns the texts written."""
    folder.mkdir(parents=True, exist_ok=True)
    texts = {}
    for k, (split, lines) in enumerate(zip(("train", "valid", "test"), n, strict=True)):
        texts[split] = prefix + "\n".join(_lines(lines, k)) + "\n" + (extra_train if split == "train" else "")
        (folder / f"{split}.txt").write_bytes(texts[split].encode(encoding))
    return texts


def _count(text: str) -> int:
    """Words plus one <eos> per line (blank lines included), counted without the library."""
    return sum(len(line.split()) + 1 for line in text.splitlines())


# ---- text corpora --------------------------------------------------------------------------------------------------
def test_a_utf8_byte_order_mark_is_not_part_of_the_first_word(tmp_path):
    _corpus(tmp_path / "p")
    _corpus(tmp_path / "b", prefix="\ufeff")
    plain = read_corpus(tmp_path / "p")
    bom = read_corpus(tmp_path / "b")
    assert bom.vocab.itos == plain.vocab.itos and torch.equal(bom.train, plain.train)
    assert not any("\ufeff" in t for t in bom.vocab.itos)


def test_bytes_that_are_not_utf8_name_file_line_and_offset_and_encoding_reads_them(tmp_path):
    texts = _corpus(tmp_path, encoding="latin-1", extra_train="caf\xe9 na\xefve\n")
    offset = len(texts["train"].encode("latin-1")) - len("\xe9 na\xefve\n")
    line = texts["train"].count("\n")
    with pytest.raises(ValueError, match=rf"train.txt:{line}: not valid utf-8 \(byte 0xe9 at byte offset {offset}\)"):
        read_corpus(tmp_path)
    c = read_corpus(tmp_path, encoding="latin-1")
    assert "café" in c.vocab.stoi and c.train.numel() == _count(texts["train"])
    with pytest.raises(ValueError, match="encoding 'nope' is not a known text encoding"):
        read_corpus(tmp_path, encoding="nope")


def test_files_with_an_unknown_split_key_is_refused(tmp_path):
    _corpus(tmp_path)
    files = {s: tmp_path / f"{s}.txt" for s in ("train", "valid", "test")}
    with pytest.raises(ValueError, match=r"unknown split\(s\) \['dev'\]"):
        read_files({**files, "dev": tmp_path / "train.txt"})


def test_text_settings_are_checked_naming_the_key():
    bad = [("data.files={train: a, valid: b, test: c}", "data.files is only read with corpus 'files'"),
           ("data.corpus=files|data.files={train: a, valid: b, test: c, dev: d}", "data.files must map exactly"),
           ("data.max_vocab=1", "data.max_vocab must be >= 2"), ("data.eval_batches=-1", "data.eval_batches must"),
           ("data.encoding=nope", "data.encoding 'nope' is not a known text encoding"),
           ("space.nhid=16", "space.ninp and nhid must be equal"), ("space.dropout=1.5", "space.dropout must be in"),
           ("space.dropout_h=-0.1", "space.dropout_h must be in"), ("space.ops=[tanh, gelu]", "space.ops must be"),
           ("threads=-1", "threads must be >= 0")]
    from nasp.commands.rnn import RNNSearchRun

    for sets, msg in bad:
        with pytest.raises(ConfigError, match=msg):
            load(RNNSearchRun, None, sets.split("|"))
    assert TextDataConfig(corpus="files", files={"train": "a", "valid": "b", "test": "c"}).files
    assert RNNSpaceConfig(ninp=8, nhid=8).ops
    with pytest.raises(ConfigError, match=r"^--set data.files: cannot parse the value '\{train:'$"):
        load(RNNSearchRun, None, ["data.files={train:"])


def _rnn(tmp_path, command, folder, *sets):
    base = ["threads=1", "data.corpus=files", f"data.path={folder}",
            "data.files={train: train.txt, valid: valid.txt, test: test.txt}", "data.batch_size=4",
            "data.eval_batch_size=2", "data.bptt=5", "data.variable_bptt=false"]
    size = (["model.ninp=8", "model.nhid=8", "train.epochs=1", "train.max_steps_per_epoch=2"] if command == "train"
            else ["space.ninp=8", "space.nhid=8", "space.num_nodes=2", "search.epochs=1",
                  "search.max_steps_per_epoch=2"])
    return main(["rnn", command, "--quiet", "--set", *base, *size, *sets])


def test_rnn_train_states_the_scored_tokens_and_names_a_short_split(tmp_path, capsys):
    texts = _corpus(tmp_path / "c")
    assert _rnn(tmp_path, "train", tmp_path / "c", f"run_dir={tmp_path / 'r'}") == 0
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    for split in ("valid", "test"):
        n = _count(texts[split])
        assert res[f"{split}_tokens"] == {"of": n, "scored": (n // 2 - 1) * 2}       # eval_batch_size 2
    (tmp_path / "c" / "valid.txt").write_text("a cat\n")
    capsys.readouterr()
    assert _rnn(tmp_path, "search", tmp_path / "c", f"run_dir={tmp_path / 's'}") == 2
    assert ("the valid split has 3 tokens (words + one <eos> per line), too few for data.batch_size=4"
            in capsys.readouterr().err)


def test_a_rerun_with_other_data_or_settings_is_refused_not_mixed(tmp_path, capsys):
    _corpus(tmp_path / "c")
    run = f"run_dir={tmp_path / 'r'}"
    assert _rnn(tmp_path, "train", tmp_path / "c", run) == 0
    with open(tmp_path / "c" / "valid.txt", "a") as f:
        f.write("the dog\n")
    capsys.readouterr()
    assert _rnn(tmp_path, "train", tmp_path / "c", run) == 2
    assert "holds a run made differently: the valid data differ" in capsys.readouterr().err
    assert _rnn(tmp_path, "train", tmp_path / "c", run, "train.lr=5") == 2
    assert "train.lr (20.0 -> 5.0)" in capsys.readouterr().err


def test_prepare_run_dir_resumes_the_same_run_and_refuses_foreign_checkpoints(tmp_path):
    cfg = SearchConfig()
    prepare_run_dir(tmp_path / "a", "x", cfg, {"train": "h1"})
    folder = prepare_run_dir(tmp_path / "a", "x", cfg, {"train": "h2"})  # no checkpoint yet (a failed start): reused
    stored = json.loads((folder / "fingerprint.json").read_text())
    assert folder == tmp_path / "a" and stored["data"] == {"train": "h2"} and stored["command"] == "x"
    assert (folder / "resolved_config.yaml").is_file()
    (tmp_path / "a" / "checkpoint.pt").write_bytes(b"x")
    prepare_run_dir(tmp_path / "a", "x", cfg, {"train": "h2"})                 # the same run: resumes
    assert (folder / "checkpoint.pt").read_bytes() == b"x"                     # its checkpoint left as it was
    with pytest.raises(RunFolderError, match="the train data differ"):
        prepare_run_dir(tmp_path / "a", "x", cfg, {"train": "h3"})
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "checkpoint.pt").write_bytes(b"x")
    with pytest.raises(RunFolderError, match="holds a checkpoint but no fingerprint.json"):
        prepare_run_dir(tmp_path / "b", "x", cfg, {})


def test_a_genotype_file_error_names_the_setting_and_file(tmp_path, capsys):
    _corpus(tmp_path / "c")
    bad = tmp_path / "g.json"
    bad.write_text(json.dumps({"recurrent": [["gelu", 0]], "concat": [1]}))
    assert _rnn(tmp_path, "train", tmp_path / "c", f"run_dir={tmp_path / 'r'}", f"model.genotype={bad}") == 2
    err = capsys.readouterr().err
    assert f"model.genotype={bad}: node 1: activation 'gelu'" in err and err.count("\n") == 1


def test_search_settings_out_of_range_are_refused_naming_them():
    for kw, msg in [({"w_momentum": -1.0}, "w_momentum must be >= 0"), ({"eta": -1.0}, "eta must be >= 0"),
                    ({"a_weight_decay": -1.0}, "a_weight_decay must be >= 0"),
                    ({"max_steps_per_epoch": 0}, "max_steps_per_epoch must be >= 1"),
                    ({"checkpoint_every": -1}, "checkpoint_every must be >= 0"),
                    ({"warmup_epochs": -1}, "warmup_epochs must be >= 0, got -1"), ({"w_lr": 0.0}, "w_lr must be > 0"),
                    ({"a_betas": (1.5, 0.9)}, "a_betas must be two numbers")]:
        with pytest.raises(ValueError, match=msg):
            SearchConfig(**kw)


# ---- images --------------------------------------------------------------------------------------------------------
def _png(value: int, mode="RGB", fmt="PNG") -> bytes:
    return image_bytes(value, mode=mode, fmt=fmt)


BASE = {f"{c}/{i}.png": _png(40 * k + i) for k, c in enumerate(("cat", "dog", "eel")) for i in range(3)}


def test_hidden_system_and_other_files_are_skipped_with_one_warning_naming_them(tmp_path):
    root = write_tree(tmp_path / "f", {**BASE, "cat/._0.png": b"\0\5\x16\7AppleDouble", "cat/.DS_Store": b"x",
                                  "dog/notes.txt": b"hi", "eel/x.TIF": _png(7, fmt="TIFF"),
                                  ".ipynb_checkpoints/a.png": _png(1)})
    with pytest.warns(UserWarning, match=r"skipped 4 file\(s\).*\.ipynb_checkpoints/, cat/\.DS_Store, cat/\._0\.png"):
        s = load_image_folder(root)
    assert s.classes == ["cat", "dog", "eel"] and torch.bincount(s.labels).tolist() == [3, 3, 4]   # TIFF read
    with pytest.warns(UserWarning, match=r"skipped 4 file\(s\)"):   # the ImageNet-style lazy reader: same listing
        lazy = ImageFolderDataset(root, size=None)
    assert lazy.classes == s.classes and len(lazy) == 10
    z = tmp_path / "m.zip"
    with zipfile.ZipFile(z, "w") as f:
        for rel, data in BASE.items():
            f.writestr(f"train/{rel}", data)
        f.writestr("__MACOSX/train/cat/._0.png", b"\0\5\x16\7junk")
    with pytest.warns(UserWarning, match=r"skipped 1 file\(s\).*__MACOSX/train/cat/\._0\.png"):
        assert len(load_image_zip(z, split="train")) == 9


def test_images_below_a_class_folder_and_empty_class_folders_are_errors(tmp_path):
    nested = write_tree(tmp_path / "n", {**BASE, "cat/more/x.png": _png(3)})
    with pytest.raises(ValueError, match=r"cat/more/x.png: images lie deeper than .*<class>/<file>"):
        load_image_folder(nested)
    empty = write_tree(tmp_path / "e", BASE)
    (empty / "bee").mkdir()
    with pytest.raises(ValueError, match=r"e/bee: a class folder with no image files"):
        load_image_folder(empty)


def test_16_bit_greyscale_is_scaled_not_clipped_and_empty_files_are_named(tmp_path):
    values = np.tile(np.array([[0, 257 * 40, 257 * 200, 65535]], dtype=np.uint16), (8, 2))       # (8, 8)
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, "PNG")
    root = write_tree(tmp_path / "d", {**BASE, "cat/deep.png": buf.getvalue()})
    s = load_image_folder(root)
    deep = s.images[s.labels == 0][-1]                                  # files in path order: deep.png last of cat
    assert deep[0, 0, :4].tolist() == [0, 40, 200, 255] and torch.equal(deep[0], deep[2])
    (root / "dog" / "z.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match=r"dog/z.jpg: not a readable image \(an empty file \(0 bytes\)\)"):
        load_image_folder(root, size=8)


def test_a_test_split_that_would_be_the_training_images_is_refused(tmp_path):
    for name in ("val",):
        write_tree(tmp_path / "f", {f"{s}/{rel}": data for s in ("train", name) for rel, data in BASE.items()})
    cfg = ImageDataConfig(source="folder", path=str(tmp_path / "f"), num_classes=3, image_size=8)
    assert len(load_data(cfg, "train")) == 9
    with pytest.raises(ValueError, match=r"no test/ folder and data.test_path is not set.*folders found: train, val"):
        load_data(cfg, "test")
    cfg.test_path = str(tmp_path / "f" / "val")
    assert len(load_data(cfg, "test")) == 9
    z = tmp_path / "flat.zip"
    with zipfile.ZipFile(z, "w") as f:
        for rel, data in BASE.items():
            f.writestr(rel, data)
    with pytest.raises(ValueError, match="the test images would be the training images"):
        load_data(ImageDataConfig(source="zip", path=str(z), num_classes=3, image_size=8), "test")


def test_nan_settings_infinite_learning_rates_and_a_file_as_run_dir_are_refused(tmp_path):
    from nasp.commands.rnn import RNNSearchRun

    with pytest.raises(ConfigError, match="search.grad_clip: expected a number, got nan"):
        load(RNNSearchRun, None, ["search.grad_clip=.nan"])
    with pytest.raises(ConfigError, match="search.w_lr must be a finite number, got inf"):
        load(RNNSearchRun, None, ["search.w_lr=.inf"])
    (tmp_path / "f").write_text("x")
    with pytest.raises(RunFolderError, match="run_dir .*f is a file, not a folder"):
        prepare_run_dir(tmp_path / "f", "x", SearchConfig(), {})
    with pytest.raises(RunFolderError, match="f/sub: cannot create the folder"):
        prepare_run_dir(tmp_path / "f" / "sub", "x", SearchConfig(), {})


def test_too_few_images_for_a_batch_and_a_zip_as_cifar_are_refused(tmp_path, capsys):
    root = write_tree(tmp_path / "f", BASE)                  # 9 images: a 50/50 search split has 4 and 5
    common = ["--quiet", "--set", "threads=1", "data.source=folder", f"data.path={root}", "data.num_classes=3",
              "data.image_size=8", "data.batch_size=8", f"run_dir={tmp_path / 'r'}"]
    assert main(["cnn", "search", *common]) == 2
    assert "weight-step part (data.train_fraction): 4 images, fewer than data.batch_size=8" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()                # a failed start leaves no run folder
    z = tmp_path / "c.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("cat/0.png", _png(1))
    assert main(["cnn", "search", *common, "data.source=cifar10", "data.image_size=32", f"data.path={z}"]) == 2
    assert "c.zip: a zip, not the python-pickle cifar10 archive" in capsys.readouterr().err


def test_a_failed_start_does_not_block_the_corrected_rerun(tmp_path, capsys):
    _corpus(tmp_path / "c")
    (tmp_path / "c" / "valid.txt").write_text("a cat sat on\n")      # 5 tokens: too few for batch_size 4
    run = f"run_dir={tmp_path / 'r'}"
    assert _rnn(tmp_path, "search", tmp_path / "c", run) == 2
    assert "the valid split has" in capsys.readouterr().err
    assert _rnn(tmp_path, "search", tmp_path / "c", run, "data.batch_size=2") == 0


def test_zip_images_below_an_image_folder_and_blanking_cutouts_are_refused(tmp_path):
    z = tmp_path / "n.zip"
    with zipfile.ZipFile(z, "w") as f:
        for rel, data in {**BASE, "cat/more/x.png": _png(3)}.items():
            f.writestr(f"train/{rel}", data)
    with pytest.raises(ValueError, match=r"n.zip: train/cat/more/x.png lies in a folder below the image folder "
                                         r"train/cat/"):
        load_image_zip(z, split="train")
    with pytest.raises(ValueError, match=r"cutout \(16\) must be smaller than image_size \(8\)"):
        ImageDataConfig(source="folder", image_size=8, cutout=16)


def test_a_hand_edited_cell_genotype_with_an_unknown_op_names_the_op_and_file(tmp_path, capsys):
    cell = {"normal": [["conv_9x9", 0], ["skip_connect", 1]], "normal_concat": [2],
            "reduce": [["max_pool_3x3", 0], ["skip_connect", 1]], "reduce_concat": [2]}
    bad = tmp_path / "cell.json"
    bad.write_text(json.dumps(cell))
    assert main(["cnn", "train", "--quiet", "--set", f"model.genotype={bad}", f"run_dir={tmp_path / 'r'}"]) == 2
    err = capsys.readouterr().err
    assert f"model.genotype={bad}: normal: unknown op 'conv_9x9'" in err and err.count("\n") == 1


def test_a_key_repeated_in_a_yaml_config_is_refused_naming_file_and_lines(tmp_path):
    from nasp.commands.rnn import RNNSearchRun

    f = tmp_path / "c.yaml"
    f.write_text("search:\n  epochs: 3\nsearch:\n  a_lr: 0.1\n")         # safe_load kept only the second
    with pytest.raises(ConfigError, match=r"c.yaml: line 3 not valid YAML \(key 'search' repeats line 1\)"):
        load(RNNSearchRun, f)


def test_ptb_files_directly_in_data_path_and_home_relative_paths_are_read(tmp_path, monkeypatch):
    from data_loaders.text import load_corpus

    texts = _corpus(tmp_path / "p")
    for s in ("train", "valid", "test"):
        (tmp_path / "p" / f"{s}.txt").rename(tmp_path / "p" / f"ptb.{s}.txt")
    monkeypatch.setenv("HOME", str(tmp_path))
    c = load_corpus("ptb", "~/p")                       # the folder itself holds ptb.*.txt (no ptb/ inside)
    assert c.valid.numel() == _count(texts["valid"]) and c.test.numel() == _count(texts["test"])
