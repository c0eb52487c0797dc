"""Checkpoints can never silently load wrong numbers: checksummed, weights-only, no temp files left behind."""

from __future__ import annotations

import hashlib
import io
import os

import pytest
import torch

from nasp.checkpoint import MAGIC, CheckpointError, load_checkpoint, save_checkpoint


def _state():
    g = torch.Generator().manual_seed(0)
    return {"w": torch.randn(64, 64, generator=g), "epoch": 3, "history": [{"loss": 0.5}], "name": "run"}


def test_roundtrip_is_exact(tmp_path):
    p = save_checkpoint(_state(), tmp_path / "c.pt")
    got = load_checkpoint(p)
    assert torch.equal(got["w"], _state()["w"]) and got["epoch"] == 3 and got["history"] == [{"loss": 0.5}]
    assert p.read_bytes().startswith(MAGIC)


def test_flipped_bytes_inside_a_tensor_are_refused_naming_the_file(tmp_path):
    p = save_checkpoint(_state(), tmp_path / "c.pt")
    data = bytearray(p.read_bytes())
    mid = len(data) // 2
    data[mid: mid + 64] = bytes(b ^ 0xFF for b in data[mid: mid + 64])
    p.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"c\.pt is corrupt: its sha256 does not match"):
        load_checkpoint(p)


def test_a_truncated_file_is_refused(tmp_path):
    p = save_checkpoint(_state(), tmp_path / "c.pt")
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(p)


def test_a_file_without_the_header_is_refused(tmp_path):
    p = tmp_path / "legacy.pt"
    torch.save(_state(), p)
    with pytest.raises(CheckpointError, match=r"legacy\.pt is not a nasp checkpoint"):
        load_checkpoint(p)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch should_not_exist",))


def test_a_checksummed_pickle_with_code_is_refused_without_torch_advice(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    buf = io.BytesIO()
    torch.save({"x": _Evil()}, buf)
    payload = buf.getvalue()
    p = tmp_path / "evil.pt"
    p.write_bytes(MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
    with pytest.raises(CheckpointError, match=r"evil\.pt could not be read as weights-only data") as e:
        load_checkpoint(p)
    assert "weights_only=False" not in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "should_not_exist").exists()


def test_temp_files_of_a_killed_writer_are_removed_by_the_next_save(tmp_path):
    stale = tmp_path / ".c.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    save_checkpoint(_state(), tmp_path / "c.pt")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["c.pt"]


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


class _SlowToyTask:
    """The toy task with a fixed delay per loss, so that every epoch takes measurable time."""

    def __init__(self, delay: float):
        from nasp.spaces.toy import ToyTask

        self.inner, self.delay = ToyTask(), delay

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def loss(self, *args, **kwargs):
        import time

        time.sleep(self.delay)
        return self.inner.loss(*args, **kwargs)


def test_search_seconds_add_up_across_a_resume(tmp_path):
    from nasp.search import SearchConfig, Searcher
    from nasp.spaces.toy import ToySpace, make_toy_data, random_planted
    from nasp.streams import TensorLoader

    x, y = make_toy_data(512, random_planted(3, 2, 0), seed=0, teacher_seed=0)
    loaders = TensorLoader(x, y, batch_size=128, seed=0), TensorLoader(x, y, batch_size=128, seed=1)

    def searcher(callbacks=()):
        return Searcher(ToySpace(seed=0), _SlowToyTask(0.02), SearchConfig(epochs=3, seed=0), callbacks=callbacks,
                        run_dir=tmp_path / "s", show_progress=False)

    first = searcher([lambda epoch, elapsed, metrics: True]).fit(*loaders)    # stopped after epoch 0 (a "kill")
    assert len(first.history) == 1 and first.seconds >= 0.15    # 4 steps x 2 losses x 20 ms
    second = searcher().fit(*loaders)             # resumes at epoch 1 and runs epochs 1 and 2
    assert len(second.history) == 3
    assert second.seconds >= first.seconds + 0.3
    assert load_checkpoint(tmp_path / "s" / "checkpoint.pt")["elapsed"] >= second.seconds - 0.1


def test_unhealthy_parameter_names_nan_inf_and_huge_weights():
    from torch import nn

    from nasp.checkpoint import unhealthy_parameter

    m = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    assert unhealthy_parameter(m) is None
    for value, name in ((float("nan"), "1.bias"), (float("inf"), "1.bias"), (1e30, "1.bias")):
        with torch.no_grad():
            m[1].bias.fill_(value)
        assert unhealthy_parameter(m) == name
        with torch.no_grad():
            m[1].bias.zero_()


def test_diverged_weights_never_become_the_last_good_checkpoint(tmp_path):
    from data_loaders import BatchIterator
    from nasp.search import NonFiniteLossError
    from sif.baselines import create_baseline
    from sif.synthetic import planted_ratings
    from sif.task import RatingTask
    from sif.train import TrainConfig, train_model

    ds = planted_ratings("multiply", num_users=20, num_items=20, n=400, seed=0)
    data = {"users": ds.users, "items": ds.items, "ratings": (ds.ratings - ds.ratings.mean()).float()}
    it = BatchIterator(data, batch_size=100, fields=("users", "items", "ratings"))
    model = create_baseline("mf", num_users=20, num_items=20, embedding_dim=3)

    def blow_up(epoch, elapsed, record):
        if epoch == 0:
            with torch.no_grad():
                next(model.parameters()).mul_(0).add_(1e30)

    with pytest.raises(NonFiniteLossError, match="diverged in epoch 1"):
        train_model(model, RatingTask(), it, it, TrainConfig(max_epochs=4, patience=4), run_dir=tmp_path,
                    show_progress=False, callback=blow_up)
    saved = load_checkpoint(tmp_path / "train_checkpoint.pt")
    assert saved["epoch"] == 1
    assert max(float(v.abs().max()) for v in saved["model"].values() if v.is_floating_point()) < 1e15


def test_a_search_can_start_from_another_searchs_checkpoint(tmp_path):
    from nasp.search import SearchConfig, Searcher
    from nasp.spaces.toy import ToySpace, ToyTask, make_toy_data, random_planted
    from nasp.streams import TensorLoader

    x, y = make_toy_data(256, random_planted(3, 2, 0), seed=0, teacher_seed=0)
    loaders = TensorLoader(x, y, batch_size=64, seed=0), TensorLoader(x, y, batch_size=64, seed=1)
    first = Searcher(ToySpace(seed=0), ToyTask(), SearchConfig(epochs=2, seed=0), run_dir=tmp_path / "a",
                     show_progress=False)
    first.fit(*loaders)
    cfg = SearchConfig(epochs=1, seed=5, a_lr=1e-4, init_from=str(tmp_path / "a" / "checkpoint.pt"))
    second = Searcher(ToySpace(seed=5), ToyTask(), cfg, show_progress=False)
    second._init_from(cfg.init_from)
    for (k, v), (_, w) in zip(first.model.state_dict().items(), second.model.state_dict().items(), strict=True):
        assert torch.equal(v, w), k
    assert len(second.fit(*loaders).history) == 1
    with pytest.raises(ValueError, match="search.init_from=.*not a search checkpoint"):
        Searcher(ToySpace(seed=0, num_nodes=3), ToyTask(), cfg, show_progress=False).fit(*loaders)
