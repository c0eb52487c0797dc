"""Inputs of the ``nasp`` commands, round 2: the stand-alone training settings (``train.*`` of ``nasp cnn train`` and
``nasp rnn train``) and ``search.init_from`` are checked where parsed, in one line naming the key (and the file)."""

from __future__ import annotations

import math
import re

import pytest

from nasp.commands.cnn import CNNTrainRun
from nasp.commands.rnn import RNNSearchRun, RNNTrainRun
from nasp.config import ConfigError, load
from nasp.train.image import TrainConfig
from nasp.train.language import LMTrainConfig

CNN_BAD = [("label_smoothing", "2", "must be in [0, 1), got 2.0"), ("label_smoothing", "-0.1", "in [0, 1)"),
           ("grad_clip", "-1", "must be > 0 or null (no clipping), got -1.0"), ("grad_clip", "0", "> 0 or null"),
           ("max_steps_per_epoch", "0", "must be >= 1 or null (all), got 0"), ("drop_path", "1", "in [0, 1)"),
           ("momentum", "-0.5", "must be >= 0"), ("weight_decay", "-1e-4", "must be >= 0"),
           ("lr_min", "-1", "must be >= 0"), ("lr_gamma", "0", "must be > 0"), ("auxiliary_weight", "-1", ">= 0")]
RNN_BAD = [("ar", "-1", "must be >= 0, got -1.0"), ("tar", "-0.001", "must be >= 0"),
           ("grad_clip", "-1", "> 0 or null (no clipping)"), ("weight_decay", "-1", ">= 0"),
           ("max_steps_per_epoch", "0", ">= 1 or null")]


def _refused(run, assignment: str, what: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(what)) as err:
        load(run, None, [assignment])
    msg = str(err.value)
    assert assignment.split("=")[0] in msg and len(msg.splitlines()) == 1, msg


@pytest.mark.parametrize(("key", "value", "what"), CNN_BAD)
def test_cnn_training_settings_out_of_range_are_refused_naming_the_key(key, value, what):
    _refused(CNNTrainRun, f"train.{key}={value}", what)


@pytest.mark.parametrize(("key", "value", "what"), RNN_BAD)
def test_rnn_training_settings_out_of_range_are_refused_naming_the_key(key, value, what):
    _refused(RNNTrainRun, f"train.{key}={value}", what)


@pytest.mark.parametrize("run", [CNNTrainRun, RNNTrainRun])
def test_nan_and_infinity_are_refused_for_every_float_training_setting(run):
    cls = TrainConfig if run is CNNTrainRun else LMTrainConfig
    floats = [k for k, v in vars(cls()).items() if isinstance(v, float)] + ["max_seconds"]
    assert len(floats) >= 5
    for key in floats:
        for value, what in ((".inf", " must be a finite number, got inf"), (".nan", ": expected a number, got nan"),
                            ("-.inf", " must be a finite number, got -inf")):
            _refused(run, f"train.{key}={value}", f"train.{key}{what}")
    with pytest.raises(ValueError, match="lr must be a finite number, got nan"):
        cls(lr=math.nan)                                # built in code, not parsed: refused as well
    _refused(RNNSearchRun, "search.eta=.inf", "search.eta must be a finite number, got inf")


def test_valid_edges_are_taken_and_null_grad_clip_means_no_clipping(tmp_path):
    cfg = load(CNNTrainRun, None, ["train.label_smoothing=0.99", "train.drop_path=0", "train.grad_clip=null",
                                   "train.max_steps_per_epoch=1", "train.momentum=0", "train.weight_decay=0"])
    assert cfg.train.grad_clip is None and cfg.train.label_smoothing == 0.99 and cfg.train.max_steps_per_epoch == 1
    f = tmp_path / "t.yaml"
    f.write_text("train:\n  ar: 0\n  tar: 0\n  grad_clip: null\n")
    assert load(RNNTrainRun, f).train.grad_clip is None
    f.write_text("train:\n  label_smoothing: 2\n")
    with pytest.raises(ConfigError, match=r"t.yaml: train.label_smoothing must be in \[0, 1\), got 2.0"):
        load(CNNTrainRun, f)


def test_search_init_from_missing_a_folder_corrupt_or_unreadable_names_the_key_and_file(tmp_path, capsys):
    from test_nasp_inputs_probe import _corpus, _rnn

    _corpus(tmp_path / "c")
    run = f"run_dir={tmp_path / 's'}"
    assert _rnn(tmp_path, "search", tmp_path / "c", run) == 0
    good = tmp_path / "s" / "checkpoint.pt"
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(good.read_bytes()[:-10])
    cases = [(tmp_path / "nope.pt", "checkpoint {} does not exist"), (tmp_path / "s", "{} is a folder"),
             (corrupt, "checkpoint {} is corrupt")]
    for i, (path, what) in enumerate(cases):
        run = f"run_dir={tmp_path / f'r{i}'}"
        assert _rnn(tmp_path, "search", tmp_path / "c", run, f"search.init_from={path}") == 2
        err = capsys.readouterr().err.strip()
        assert f"search.init_from: {what.format(path)}" in err and len(err.splitlines()) == 1, err
    assert _rnn(tmp_path, "search", tmp_path / "c", f"run_dir={tmp_path / 'ok'}", f"search.init_from={good}") == 0


def test_search_init_from_unreadable_names_the_key_file_and_reason(tmp_path, monkeypatch):
    from pathlib import Path

    from nasp.search import SearchConfig, Searcher
    from nasp.spaces.toy import ToySpace, ToyTask

    f = tmp_path / "locked.pt"
    f.write_bytes(b"x")

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)      # as chmod 0 does for a user other than root
    searcher = Searcher(ToySpace(seed=0), ToyTask(), SearchConfig(epochs=1, init_from=str(f)), show_progress=False)
    with pytest.raises(ValueError, match=re.escape(f"search.init_from: checkpoint {f} cannot be read (Permission "
                                                   "denied)")):
        searcher._init_from(str(f))


def _image_tree(root, n_per_class=5):
    """train/ and test/ class folders of small random PNGs of different, non-square sizes (test lacks class b)."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, classes in (("train", "abc"), ("test", "ac")):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n_per_class):
                h, w = rng.integers(5, 14, 2)
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
                (root / split / c / f"{i}.png").write_bytes(buf.getvalue())
    return root


def test_lazy_and_eager_image_folders_give_the_same_batches_and_labels(tmp_path):
    import torch

    from data_loaders.augment import Augment
    from data_loaders.images import ImageSet, LazyImageSet
    from nasp.commands.cnn import ImageDataConfig, _loader, load_data

    root = _image_tree(tmp_path / "f")
    out = {}
    for lazy in (True, False):
        d = ImageDataConfig(source="folder", path=str(root), num_classes=3, image_size=8, lazy=lazy, subset=12)
        train, test = load_data(d, "train", seed=3), load_data(d, "test")
        assert isinstance(train, LazyImageSet if lazy else ImageSet)
        test = test.aligned_to(train.classes, "test images")
        loaders = (_loader(train, 5, augment=Augment(cutout=3), seed=1, drop_last=True),
                   _loader(test, 4, shuffle=False, augment=Augment(train=False)))
        for ld in loaders:
            ld.set_epoch(2)
        out[lazy] = [list(ld) for ld in loaders], train.classes, test.classes, train.image_shape
    (batches_l, *rest_l), (batches_e, *rest_e) = out[True], out[False]
    assert rest_l == rest_e == [["a", "b", "c"], ["a", "b", "c"], (3, 8, 8)]
    assert [len(b) for b in batches_l] == [2, 3]           # 12 of 15 training images; 10 test images
    for part_l, part_e in zip(batches_l, batches_e, strict=True):
        for (xl, yl), (xe, ye) in zip(part_l, part_e, strict=True):
            assert torch.equal(xl, xe) and torch.equal(yl, ye)
    assert set(torch.cat([y for _, y in batches_l[1]]).tolist()) == {0, 2}     # test labels aligned: no class b


def test_lazy_auto_decides_from_the_decoded_size_against_the_memory_share(tmp_path, monkeypatch):
    import nasp.commands.cnn as cnn
    from data_loaders.images import ImageSet, LazyImageSet

    root = _image_tree(tmp_path / "f")
    d = cnn.ImageDataConfig(source="folder", path=str(root), num_classes=3, image_size=8)
    assert d.lazy == "auto"
    monkeypatch.setattr(cnn, "_physical_memory", lambda: 4 * 15 * 3 * 8 * 8)      # 15 images need 1/4 of it
    assert isinstance(cnn.load_data(d, "train"), ImageSet)
    monkeypatch.setattr(cnn, "_physical_memory", lambda: 4 * 15 * 3 * 8 * 8 - 1)
    assert isinstance(cnn.load_data(d, "train"), LazyImageSet)
    for bad, what in (("data.lazy=maybe", "data.lazy must be auto, true or false, got 'maybe'"),
                      ("data.lazy=true", "data.lazy must be auto or false for source cifar10 (only image folders")):
        with pytest.raises(ConfigError, match=re.escape(what)):
            load(CNNTrainRun, None, [bad])


def test_nasp_cnn_train_on_a_lazy_folder_trains_as_on_the_eager_one(tmp_path, capsys):
    import json

    from nasp.cli import main

    root = _image_tree(tmp_path / "f", n_per_class=6)
    results = {}
    for lazy, seed in (("true", 0), ("false", 0), ("false", 1)):
        run = tmp_path / f"r-{lazy}-{seed}"
        assert main(["cnn", "train", "--quiet", "--set", "threads=1", "data.source=folder", f"data.path={root}",
                     "data.num_classes=3", "data.image_size=8", "data.cutout=2", "data.batch_size=6",
                     f"data.lazy={lazy}", "model.C=4", "model.layers=2", "model.auxiliary=false",
                     "train.epochs=2", f"seed={seed}", f"run_dir={run}"]) == 0, capsys.readouterr().err
        res = json.loads((run / "results.json").read_text())
        results[lazy, seed] = [res[k] for k in ("test_accuracy", "test_loss", "parameters", "multiply_adds")] + \
            [h["train_loss"] for h in res["history"]]
    assert results["true", 0] == results["false", 0]      # the same numbers, in one process, in either order
    assert results["false", 1] != results["false", 0]     # seed drives the run (now its initial weights too)


def test_nasp_cnn_search_on_a_lazy_folder_searches_as_on_the_eager_one(tmp_path, capsys):
    import json

    from nasp.cli import main

    root = _image_tree(tmp_path / "f", n_per_class=8)
    out = {}
    for lazy in ("true", "false"):
        run = tmp_path / f"s-{lazy}"
        assert main(["cnn", "search", "--quiet", "--set", "threads=1", "data.source=folder", f"data.path={root}",
                     "data.num_classes=3", "data.image_size=8", "data.batch_size=4", f"data.lazy={lazy}",
                     "space.C=4", "space.layers=2", "space.steps=2", "space.multiplier=2", "search.epochs=1",
                     f"run_dir={run}"]) == 0, capsys.readouterr().err
        res = json.loads((run / "summary.json").read_text())
        out[lazy] = res["genotype"], res["valid_accuracy"]
    assert out["true"] == out["false"]
