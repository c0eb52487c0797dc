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
