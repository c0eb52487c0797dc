"""The one stand-alone training loop (nasp.trainer.Trainer) under its three trainers: SIF / rating models
(sif.train.train_model), image classifiers (nasp.train.image) and language models (nasp.train.language).

Each trainer is driven the same way: a killed or callback-stopped run resumes to exactly the uninterrupted run, a
NaN stops with one line and leaves the last good state in the model, and a callback stops all three alike."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from data_loaders import BatchIterator, random_split
from data_loaders.text import BPTTLoader, batchify, read_corpus
from nasp.amp import autocast, grad_scaler
from nasp.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, seed_everything
from nasp.spaces.cnn.genotypes import DARTS_V2 as CNN_CELL
from nasp.spaces.cnn.model import NetworkCIFAR
from nasp.spaces.rnn import DARTS_V2 as RNN_CELL
from nasp.spaces.rnn import RNNModel
from nasp.streams import TensorLoader
from nasp.train.image import TrainConfig as ImageConfig
from nasp.train.image import train_classifier
from nasp.train.language import LMTrainConfig, train_language_model
from nasp.trainer import CHECKPOINT_NAME, NonFiniteLossError
from sif.baselines import create_baseline
from sif.space import SIFSpace
from sif.synthetic import planted_ratings
from sif.task import RatingTask
from sif.train import TrainConfig, make_optimizer, train_model


# ---- the three trainers on tiny data --------------------------------------------------------------------------
def _ratings():
    ds = planted_ratings("multiply", num_users=30, num_items=40, n=900, seed=3)
    tr, va, _ = random_split(ds, (0.8, 0.1, 0.1), seed=3)
    mean, std = float(tr.ratings.mean()), float(tr.ratings.std())

    def it(d, shuffle):
        return BatchIterator({"users": d.users, "items": d.items, "ratings": (d.ratings - mean) / std},
                             batch_size=64, seed=0, shuffle=shuffle, fields=("users", "items", "ratings"))
    return tr, it(tr, True), it(va, False), RatingTask(mean, std)


def _sif(run_dir, callback=None, epochs=4, made=None):
    tr, train, valid, task = _ratings()
    model = SIFSpace(tr.num_users, tr.num_items, embedding_dim=3, ops=("multiply",), use_bias=True, seed=2)
    if made is not None:
        made.append(model)
    cfg = TrainConfig(max_epochs=epochs, patience=10, lr=0.01)
    res = train_model(model, task, train, valid, cfg, run_dir=run_dir, show_progress=False, callback=callback)
    return model, res.history


def _images(n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 3, 8, 8, generator=g) * 0.5
    x[:, 0] += (2 * y - 1).float().view(-1, 1, 1)
    return x, y


def _image(run_dir, callback=None, epochs=3, made=None):
    torch.manual_seed(0)
    net = NetworkCIFAR(CNN_CELL, C=4, num_classes=2, layers=2, auxiliary=False)
    if made is not None:
        made.append(net)
    x, y = _images(32, 0)
    res = train_classifier(net, TensorLoader(x, y, batch_size=16), TensorLoader(*_images(16, 1), batch_size=16),
                           ImageConfig(epochs=epochs, lr=0.05, drop_path=0.2), run_dir=run_dir,
                           input_size=(3, 8, 8), callback=callback)
    return net, res.history


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("markov")
    for name, n, seed in (("train", 100, 0), ("valid", 20, 1), ("test", 20, 2)):
        g = torch.Generator().manual_seed(seed)
        cur, lines = 0, []
        for _ in range(n):
            words = []
            for _ in range(10):
                cur = (3 * cur + 1 + int(torch.randint(2, (1,), generator=g))) % 12
                words.append(f"w{cur}")
            lines.append(" ".join(words) + "\n")
        (folder / f"ptb.{name}.txt").write_text("".join(lines))
    return read_corpus(folder)


def _language(corpus):
    def run(run_dir, callback=None, epochs=5, made=None):
        model = RNNModel(len(corpus.vocab), RNN_CELL, ninp=8, nhid=8, dropout=0.2, dropout_h=0.1, dropout_x=0.1,
                         dropout_i=0.1, dropout_e=0.0, seed=0)
        if made is not None:
            made.append(model)
        train = BPTTLoader(batchify(corpus.train, 8), bptt=8, variable=True, seed=0)
        valid = BPTTLoader(batchify(corpus.valid, 4), bptt=8)
        cfg = LMTrainConfig(epochs=epochs, lr=40.0, bptt=8, nonmono=1, max_steps_per_epoch=4)
        return model, train_language_model(model, train, valid, cfg, run_dir=run_dir, callback=callback)
    return run


@pytest.fixture(params=["sif", "image", "language"])
def trainer(request, corpus):
    return {"sif": _sif, "image": _image, "language": _language(corpus)}[request.param]


def _plain(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def _assert_same_state(a, b):
    for (k, v), (_, w) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(v, w), k


def _first_float_parameter(model):
    return next(p for p in model.parameters() if p.is_floating_point() and p.numel() > 1)


# ---- resume, NaN stop, callbacks: the same for the three --------------------------------------------------------
def test_a_killed_run_resumes_to_the_uninterrupted_run(trainer, tmp_path):
    ref_model, ref = trainer(None)

    def kill(epoch, elapsed, record):
        if epoch == 1:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        trainer(tmp_path, kill)
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["epoch"] == 2
    model, resumed = trainer(tmp_path)
    assert _plain(resumed) == _plain(ref)
    _assert_same_state(model, ref_model)
    assert len((tmp_path / "train_log.jsonl").read_text().splitlines()) == len(ref)


def test_a_run_stopped_by_its_callback_continues_exactly(trainer, tmp_path):
    ref_model, ref = trainer(None)
    _, stopped = trainer(tmp_path, lambda epoch, elapsed, record: epoch == 1)
    assert _plain(stopped) == _plain(ref)[:2]
    model, resumed = trainer(tmp_path)                  # the same folder, no callback
    assert _plain(resumed) == _plain(ref)
    _assert_same_state(model, ref_model)


@pytest.mark.parametrize("name", ["sif", "language"])         # their schedules do not depend on the epochs
def test_a_run_with_a_smaller_epoch_budget_continues_exactly(name, corpus, tmp_path):
    run = {"sif": _sif, "language": _language(corpus)}[name]
    ref_model, ref = run(None)
    _, short = run(tmp_path, epochs=2)
    assert _plain(short) == _plain(ref)[:2]
    model, resumed = run(tmp_path)                      # the same folder, the full number of epochs
    assert _plain(resumed) == _plain(ref)
    _assert_same_state(model, ref_model)


def test_a_callback_stops_every_trainer_the_same_way(trainer, tmp_path):
    seen = []

    def stop(epoch, elapsed, record):
        seen.append((epoch, elapsed, record["epoch"]))
        return epoch == 1
    _, history = trainer(tmp_path, stop)
    assert [e for e, _, _ in seen] == [0, 1] == [r for _, _, r in seen] == [h["epoch"] for h in history]
    assert 0 < seen[0][1] <= seen[1][1]
    saved = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert saved["epoch"] == 2 and seen[0][1] < saved["elapsed"] <= seen[1][1]


def test_a_nan_stops_with_one_line_and_keeps_the_last_good_state(trainer, tmp_path):
    made, good = [], {}

    def poison(epoch, elapsed, record):
        if epoch == 1:
            good.update(copy.deepcopy(made[0].state_dict()))
            with torch.no_grad():
                _first_float_parameter(made[0]).fill_(math.nan)
    with pytest.raises(NonFiniteLossError) as err:
        trainer(tmp_path, poison, made=made)
    msg = str(err.value)
    assert len(msg.splitlines()) == 1 and "diverged in epoch 2" in msg and "kept and reloaded" in msg
    saved = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert saved["epoch"] == 2
    for k, v in made[0].state_dict().items():
        assert torch.equal(v, good[k]) and torch.equal(v, saved["model"][k]), k


def test_every_trainer_writes_one_checkpoint_format_and_refuses_another_kind(trainer, tmp_path):
    trainer(tmp_path, epochs=1)
    saved = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert set(saved) == {"format", "kind", "epoch", "history", "elapsed", "model", "rng", "best", "step", "config"}
    saved["kind"] = "other"
    save_checkpoint(saved, tmp_path / CHECKPOINT_NAME)
    with pytest.raises(CheckpointError, match="is not a .* training checkpoint") as err:
        trainer(tmp_path, epochs=2)
    assert len(str(err.value).splitlines()) == 1


def test_elapsed_seconds_add_up_over_a_resumed_run(trainer, tmp_path):
    _, first = trainer(tmp_path, epochs=1)
    before = load_checkpoint(tmp_path / CHECKPOINT_NAME)["elapsed"]
    trainer(tmp_path, epochs=2)
    after = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert after["elapsed"] >= before + after["history"][1]["seconds"] > before > 0


# ---- trainer specifics ------------------------------------------------------------------------------------------
def test_language_resume_restores_the_averaged_sgd_state(corpus, tmp_path):
    run = _language(corpus)
    ref_model, ref = run(None)
    switch = next(h["epoch"] for h in ref if h.get("switched_to_asgd"))
    assert switch < len(ref) - 1, "the tiny run must switch to ASGD before its last epoch"
    run(tmp_path, epochs=switch + 1)
    saved = load_checkpoint(tmp_path / CHECKPOINT_NAME)["step"]["averager"]
    assert saved is not None and saved["count"] == 1
    model, resumed = run(tmp_path)
    assert _plain(resumed) == _plain(ref) and resumed[-1]["optimizer"] == "asgd"
    _assert_same_state(model, ref_model)


def test_max_seconds_stops_the_language_trainer_after_the_batch(corpus):
    model = RNNModel(len(corpus.vocab), RNN_CELL, ninp=8, nhid=8, seed=0)
    train = BPTTLoader(batchify(corpus.train, 8), bptt=8)
    hist = train_language_model(model, train, BPTTLoader(batchify(corpus.valid, 4), bptt=8),
                                LMTrainConfig(epochs=50, bptt=8, max_seconds=1e-6))
    assert len(hist) == 1 and hist[0]["steps"] == 1


def test_fp16_is_refused_off_cuda_with_one_line():
    with pytest.raises(ValueError, match="amp='fp16' needs a CUDA device") as err:
        grad_scaler(torch.device("cpu"), "fp16")
    assert len(str(err.value).splitlines()) == 1
    for cfg in (ImageConfig, LMTrainConfig):
        with pytest.raises(ValueError, match="amp must be null .*'bf16' or 'fp16'"):
            cfg(amp="fp8")
    with autocast(torch.device("cpu"), "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    net = NetworkCIFAR(CNN_CELL, C=4, num_classes=2, layers=2, auxiliary=False)
    with pytest.raises(ValueError, match="amp='fp16' needs a CUDA device"):
        train_classifier(net, [], [], ImageConfig(epochs=1, amp="fp16"), input_size=(3, 8, 8))


def test_sif_training_equals_a_hand_written_loop():
    """train_model without early stopping against an independent loop over the same pieces."""
    tr, train, valid, task = _ratings()
    cfg = TrainConfig(max_epochs=3, optimizer="sgd", lr=0.05, grad_clip=0.5, seed=4)

    def mf():
        return create_baseline("mf", num_users=tr.num_users, num_items=tr.num_items, embedding_dim=3)
    model = mf()
    res = train_model(model, task, train, valid, cfg, show_progress=False, select_best=False)
    ref = mf()
    seed_everything(cfg.seed)
    params = list(ref.parameters())
    opt = make_optimizer(params, cfg)
    losses, rmses = [], []
    for epoch in range(cfg.max_epochs):
        train.set_epoch(epoch)
        ref.train()
        total = []
        for batch in train:
            opt.zero_grad()
            loss = task.loss(ref, batch, None, "train")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            total.append(loss.detach())
        losses.append((torch.stack(total).sum() / len(total)).item())
        rmses.append(task.evaluate(ref, valid, None)["rmse"])
    assert [h["train_loss"] for h in res.history] == pytest.approx(losses, rel=1e-6, abs=0)
    assert [h["valid_rmse"] for h in res.history] == pytest.approx(rmses, rel=1e-6, abs=0)
    for (k, v), (_, w) in zip(model.state_dict().items(), ref.state_dict().items(), strict=True):
        torch.testing.assert_close(v, w, rtol=1e-6, atol=1e-7, msg=k)
    assert res.best_epoch == cfg.max_epochs - 1


def test_sif_early_stopping_keeps_the_best_epoch_of_the_patience_rule(tmp_path):
    """The best epoch and the stop follow the patience rule recomputed from the history; the restored weights
    are those of a run cut after the best epoch."""
    tr, train, valid, task = _ratings()

    def run(select_best, epochs):
        model = SIFSpace(tr.num_users, tr.num_items, embedding_dim=3, ops=("multiply",), use_bias=True, seed=2)
        cfg = TrainConfig(max_epochs=epochs, patience=2, lr=0.05)
        return model, train_model(model, task, train, valid, cfg, show_progress=False, select_best=select_best)
    model, res = run(True, 30)
    curve = [h["valid_rmse"] for h in res.history]
    best, best_epoch, bad, stop = math.inf, -1, 0, len(curve)
    for e, v in enumerate(curve):
        if v < best - 1e-4:
            best, best_epoch, bad = v, e, 0
        else:
            bad += 1
        if bad == 2:
            stop = e + 1
            break
    assert len(curve) == stop < 30 and res.best_epoch == best_epoch
    assert res.best_valid["rmse"] == curve[best_epoch]
    cut, _ = run(False, best_epoch + 1)
    _assert_same_state(model, cut)


def test_resuming_with_other_settings_is_refused_in_one_line(corpus, tmp_path):
    model = RNNModel(len(corpus.vocab), RNN_CELL, ninp=8, nhid=8, seed=0)
    train, valid = BPTTLoader(batchify(corpus.train, 8), bptt=8), BPTTLoader(batchify(corpus.valid, 4), bptt=8)
    train_language_model(model, train, valid, LMTrainConfig(epochs=1, bptt=8, max_steps_per_epoch=2),
                         run_dir=tmp_path)
    with pytest.raises(CheckpointError, match=r"other settings \(saved, now\): \{'lr': \(20.0, 5.0\)\}") as err:
        train_language_model(model, train, valid, LMTrainConfig(epochs=2, lr=5.0, bptt=8, max_steps_per_epoch=2),
                             run_dir=tmp_path)
    assert len(str(err.value).splitlines()) == 1
    bigger = RNNModel(len(corpus.vocab), RNN_CELL, ninp=12, nhid=12, seed=0)
    with pytest.raises(CheckpointError, match="its weights do not fit this model"):
        train_language_model(bigger, train, valid, LMTrainConfig(epochs=2, bptt=8, max_steps_per_epoch=2),
                             run_dir=tmp_path)
    hist = train_language_model(model, train, valid, LMTrainConfig(epochs=2, bptt=8, max_steps_per_epoch=2),
                                run_dir=tmp_path)
    assert [h["epoch"] for h in hist] == [0, 1]
