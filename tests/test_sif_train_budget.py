"""SIF's stand-alone training takes the shared loop's time budget and mixed precision (nasp.trainer, nasp.amp):
``train.max_seconds`` stops it (after the step in one process) and a run stopped by it resumes under a new budget,
``train.amp="bf16"`` trains on a CPU close to float32, "fp16" off CUDA is refused in one line, bad values are
refused where parsed, and the budget is no part of a run folder's fingerprint (amp is)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from test_trainer import _ratings  # the same tiny planted rating loaders

from data_loaders import BatchIterator, random_split
from nasp.config import ConfigError
from sif.build import build_recommender
from sif.config import load_config
from sif.runs import differences, fingerprint
from sif.space import SIFSpace
from sif.synthetic import planted_ratings
from sif.task import RatingTask
from sif.train import TrainConfig, train_model


def _model(tr):
    return SIFSpace(tr.num_users, tr.num_items, embedding_dim=3, ops=("multiply",), use_bias=True, seed=2)


class _Counted:
    """A loader that counts the batches drawn from it."""

    def __init__(self, inner):
        self.inner, self.drawn = inner, 0

    def __len__(self):
        return len(self.inner)

    def __iter__(self):
        for batch in self.inner:
            self.drawn += 1
            yield batch


def test_max_seconds_stops_sif_training_after_the_step():
    tr, train, valid, task = _ratings()
    counted = _Counted(train)
    assert len(train) > 1
    res = train_model(_model(tr), task, counted, valid, TrainConfig(max_epochs=50, patience=50, max_seconds=1e-6),
                      show_progress=False)
    assert res.stopped_by == "max_seconds" and len(res.history) == 1 and counted.drawn == 1
    assert math.isfinite(res.best_valid["rmse"])
    full = train_model(_model(tr), task, train, valid, TrainConfig(max_epochs=2, patience=50), show_progress=False)
    assert full.stopped_by == "epochs" and len(full.history) == 2


def test_a_run_stopped_by_its_budget_resumes_under_a_new_one(tmp_path):
    tr, train, valid, task = _ratings()
    cfg = TrainConfig(max_epochs=3, patience=50, lr=0.01)
    first = train_model(_model(tr), task, train, valid, replace(cfg, max_seconds=1e-6), run_dir=tmp_path,
                        show_progress=False)
    assert first.stopped_by == "max_seconds" and len(first.history) == 1
    resumed = train_model(_model(tr), task, train, valid, cfg, run_dir=tmp_path, show_progress=False)
    assert resumed.stopped_by == "epochs" and len(resumed.history) == 3
    assert resumed.history[0] == first.history[0]


def test_bf16_trains_on_a_cpu_close_to_float32():
    runs = {}
    for amp in (None, "bf16"):
        tr, train, valid, task = _ratings()
        cfg = TrainConfig(max_epochs=4, patience=50, lr=0.01, amp=amp)
        runs[amp] = train_model(_model(tr), task, train, valid, cfg, show_progress=False)
    full, half = runs[None], runs["bf16"]
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["valid_rmse"]) for r in half.history)
    assert half.history[-1]["train_loss"] != full.history[-1]["train_loss"]          # autocast did run in bf16
    assert half.best_valid["rmse"] == pytest.approx(full.best_valid["rmse"], rel=5e-3)


def test_fp16_off_cuda_and_bad_values_are_refused_in_one_line():
    tr, train, valid, task = _ratings()
    with pytest.raises(ValueError, match="amp='fp16' needs a CUDA device") as err:
        train_model(_model(tr), task, train, valid, TrainConfig(amp="fp16"), show_progress=False)
    assert len(str(err.value).splitlines()) == 1
    cfg = load_config(None, ["train.amp=fp16"])         # parsed (a later --set may choose a CUDA device) ...
    with pytest.raises(ConfigError, match=r"train.amp='fp16' needs a CUDA device .*got device 'cpu'") as err:
        build_recommender(cfg)                          # ... and refused before any search or fit
    assert len(str(err.value).splitlines()) == 1
    assert build_recommender(load_config(None, ["train.amp=fp16", "device=cuda"])).train["amp"] == "fp16"
    for bad, what in (("train.amp=fp8", "train.amp must be null"), ("train.max_seconds=0", "train.max_seconds must"),
                      ("train.max_seconds=-1.5", "train.max_seconds must be > 0 or null")):
        with pytest.raises(ConfigError, match=what) as err:
            load_config(None, [bad])
        assert len(str(err.value).splitlines()) == 1


def test_the_time_budget_is_no_part_of_a_run_folders_fingerprint():
    def fp(**train):
        return fingerprint({"seed": 0, "train": {**load_config().to_dict()["train"], **train}}, {}, "train")

    assert differences(fp(), fp(max_seconds=60.0)) == []
    assert differences(fp(), fp(amp="bf16")) == ["train.amp (None -> 'bf16')"]


def test_sif_train_command_resumes_a_run_stopped_by_its_budget(tmp_path, capsys):
    import yaml

    from sif.cli import main

    ds = planted_ratings("multiply", num_users=25, num_items=30, n=600, seed=0)
    rows = [f"{u},{i},{r:.4f}" for u, i, r in zip(ds.users.tolist(), ds.items.tolist(), ds.ratings.tolist(),
                                                   strict=True)]
    (tmp_path / "r.csv").write_text("\n".join(["user,item,rating", *rows]) + "\n")
    cfg = {"seed": 1, "show_progress": False, "out_dir": str(tmp_path / "run"),
           "data": {"dataset": "file", "path": str(tmp_path / "r.csv"), "split": "random", "ratios": [0.8, 0.1, 0.1]},
           "model": {"embedding_dim": 3, "name": "mf"}, "train": {"max_epochs": 3, "batch_size": 128, "patience": 50}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    log = tmp_path / "run/train-mf/train_log.jsonl"
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--set", "train.max_seconds=1e-6"]) == 0
    assert len(log.read_text().splitlines()) == 1
    capsys.readouterr()
    assert main(["train", "--config", str(tmp_path / "c.yaml")]) == 0              # a new budget: none
    assert "resuming the run" in capsys.readouterr().err and len(log.read_text().splitlines()) == 3
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--set", "train.amp=bf16"]) == 2
    assert "train.amp (None -> 'bf16')" in capsys.readouterr().err


@pytest.mark.parametrize("sparse_rows", [False, True])
def test_fp16_trains_on_cuda_close_to_float32(device, sparse_rows):
    """fp16 with the GradScaler (dense and row-wise tables); runs only with NASP_TEST_DEVICE=cuda."""
    if device.type != "cuda":
        pytest.skip("CUDA-only test (set NASP_TEST_DEVICE=cuda)")
    ds = planted_ratings("multiply", num_users=30, num_items=40, n=900, seed=3)
    tr, va, _ = random_split(ds, (0.8, 0.1, 0.1), seed=3)
    mean, std = float(tr.ratings.mean()), float(tr.ratings.std())

    def it(d, shuffle):
        return BatchIterator({"users": d.users, "items": d.items, "ratings": (d.ratings - mean) / std}, batch_size=64,
                             seed=0, shuffle=shuffle, device=device, fields=("users", "items", "ratings"))
    runs = {}
    for amp in (None, "fp16"):
        model = SIFSpace(tr.num_users, tr.num_items, embedding_dim=3, ops=("multiply",), use_bias=True, seed=2,
                         sparse_rows=sparse_rows)
        cfg = TrainConfig(max_epochs=4, patience=50, lr=0.01, amp=amp)
        runs[amp] = train_model(model, RatingTask(mean, std), it(tr, True), it(va, False), cfg, device=device,
                                show_progress=False)
    assert all(math.isfinite(r["train_loss"]) for r in runs["fp16"].history)
    assert runs["fp16"].best_valid["rmse"] == pytest.approx(runs[None].best_valid["rmse"], rel=5e-3)
