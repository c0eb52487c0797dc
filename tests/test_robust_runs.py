"""Run folders never reuse a model made from other settings or data, and each command keeps its own folder."""

from __future__ import annotations

import json

import pytest
import yaml

from sif.cli import main
from sif.synthetic import planted_ratings


def _csv(path, reverse=False, seed=0):
    ds = planted_ratings("multiply", num_users=25, num_items=30, n=600, seed=seed)
    rows = [f"{u},{i},{(5.5 - r) if reverse else r:.4f}"
            for u, i, r in zip(ds.users.tolist(), ds.items.tolist(), ds.ratings.tolist(), strict=True)]
    path.write_text("\n".join(["user,item,rating", *rows]) + "\n")
    return path


@pytest.fixture
def setup(tmp_path):
    csv = _csv(tmp_path / "ratings.csv")
    cfg = {"seed": 1, "show_progress": False, "out_dir": str(tmp_path / "run"),
           "data": {"dataset": "file", "path": str(csv), "split": "random", "ratios": [0.8, 0.1, 0.1]},
           "model": {"embedding_dim": 3}, "search": {"epochs": 2}, "train": {"max_epochs": 2, "batch_size": 128}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return tmp_path, path, csv


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err


def test_a_changed_setting_is_refused_naming_the_key(setup, capsys):
    tmp, cfg, _ = setup
    assert main(["search", "--config", str(cfg)]) == 0
    before = (tmp / "run/search/results.json").read_text()
    assert main(["search", "--config", str(cfg), "--set", "model.reg=0.5", "train.lr=0.01"]) == 2
    err = _err(capsys)
    assert "run folder" in err and "model.reg (0.1 -> 0.5)" in err and "train.lr (0.002 -> 0.01)" in err
    assert "--fresh" in err and len(err.splitlines()) == 1
    assert (tmp / "run/search/results.json").read_text() == before


def test_changed_ratings_are_refused(setup, capsys):
    tmp, cfg, csv = setup
    assert main(["search", "--config", str(cfg)]) == 0
    _csv(csv, reverse=True)                                   # the same file, ratings reversed to 5.5 - r
    assert main(["search", "--config", str(cfg)]) == 2
    assert "data: the train ratings differ" in _err(capsys)


def test_a_changed_split_is_refused(setup, capsys):
    tmp, cfg, _ = setup
    assert main(["search", "--config", str(cfg)]) == 0
    assert main(["search", "--config", str(cfg), "--set", "data.ratios=[0.7, 0.15, 0.15]"]) == 2
    assert "data.ratios" in _err(capsys)


def test_fresh_moves_the_old_folder_aside_and_starts_over(setup, capsys):
    tmp, cfg, csv = setup
    assert main(["search", "--config", str(cfg)]) == 0
    old = json.loads((tmp / "run/search/results.json").read_text())
    _csv(csv, reverse=True)
    assert main(["search", "--config", str(cfg), "--fresh"]) == 0
    new = json.loads((tmp / "run/search/results.json").read_text())
    assert json.loads((tmp / "run/search.old-1/results.json").read_text()) == old     # kept, never deleted
    assert new["test"] != old["test"]


def test_the_same_rerun_resumes(setup, capsys):
    tmp, cfg, _ = setup
    assert main(["search", "--config", str(cfg)]) == 0
    first = json.loads((tmp / "run/search/results.json").read_text())
    capsys.readouterr()
    assert main(["search", "--config", str(cfg), "--set", "show_progress=true", "threads=1"]) == 0
    assert "resuming the run" in capsys.readouterr().err
    assert json.loads((tmp / "run/search/results.json").read_text())["test"] == first["test"]


def test_each_command_writes_into_its_own_folder(setup):
    tmp, cfg, _ = setup
    assert main(["search", "--config", str(cfg)]) == 0
    search = (tmp / "run/search/results.json").read_text()
    assert main(["train", "--config", str(cfg), "--set", "model.name=mf"]) == 0
    assert main(["train", "--config", str(cfg), "--set", "model.name=fixed:plus"]) == 0
    assert (tmp / "run/search/results.json").read_text() == search
    assert json.loads((tmp / "run/train-mf/results.json").read_text())["model"] == "mf"
    assert json.loads((tmp / "run/train-fixed-plus/results.json").read_text())["model"] == "fixed:plus"
    assert not (tmp / "run/train-mf/genotype.json").exists()


def test_a_folder_without_fingerprint_is_refused(setup, capsys):
    tmp, cfg, _ = setup
    (tmp / "run/search").mkdir(parents=True)
    (tmp / "run/search/results.json").write_text("{}")
    assert main(["search", "--config", str(cfg)]) == 2
    assert "no fingerprint.json" in _err(capsys)


def test_evaluate_refuses_changed_data(setup, capsys):
    tmp, cfg, csv = setup
    assert main(["search", "--config", str(cfg)]) == 0
    _csv(csv, reverse=True)
    assert main(["evaluate", "--run", str(tmp / "run/search")]) == 2
    assert "the data differ from the data this run was made from" in _err(capsys)


def test_a_failed_start_leaves_no_run_folder(setup, capsys):
    tmp, cfg, _ = setup
    assert main(["search", "--config", str(cfg), "--set", f"data.path={tmp / 'missing.csv'}"]) == 2
    assert "missing.csv" in _err(capsys)
    assert main(["search", "--config", str(cfg), "--set", "model.embedding_dim=-8"]) == 2
    assert "model.embedding_dim must be an integer >= 1" in _err(capsys)
    assert not (tmp / "run").exists()


def test_the_rating_scale_is_written_to_results(setup):
    tmp, cfg, _ = setup
    assert main(["train", "--config", str(cfg), "--set", "model.name=mf"]) == 0
    r = json.loads((tmp / "run/train-mf/results.json").read_text())
    assert r["rating_scale_source"] in ("declared", "inferred") and len(r["rating_scale"]) == 2


def test_a_non_finite_loss_stops_with_one_line_exit_3_and_a_log_record(setup, capsys):
    tmp, cfg, _ = setup
    bad = ["model.name=mf", "train.lr=1e30", "train.optimizer=sgd", "train.grad_clip=0"]
    assert main(["train", "--config", str(cfg), "--set", *bad]) == 3
    err = _err(capsys)
    assert "stand-alone training diverged" in err and "--fresh" in err and len(err.splitlines()) == 1
    records = [json.loads(line) for line in (tmp / "run/train-mf/run.log").read_text().splitlines()]
    assert records[-1]["level"] == "ERROR" and "NonFiniteLossError" in records[-1]["message"]
    assert main(["train", "--config", str(cfg), "--set", *bad[:-1], "train.lr=0.01", "--fresh"]) == 0


def test_a_diverged_run_continues_from_its_last_good_state_with_new_settings(setup, capsys):
    tmp, cfg, _ = setup
    sets = ["model.name=mf", "train.max_epochs=3", "train.optimizer=sgd", "train.grad_clip=0"]
    assert main(["train", "--config", str(cfg), "--set", *sets, "train.lr=0.05"]) == 0
    good = tmp / "run/train-mf/train_checkpoint.pt"
    assert good.is_file()
    kept = tmp / "kept.pt"
    kept.write_bytes(good.read_bytes())
    assert main(["train", "--config", str(cfg), "--set", *sets, "train.lr=0.01", f"train.init_from={kept}",
                 "--fresh"]) == 0
    assert "starts from the weights" in (tmp / "run/train-mf/run.log").read_text()
    assert main(["train", "--config", str(cfg), "--set", "model.name=fixed:plus", f"train.init_from={kept}"]) == 2
    assert "do not fit this model" in _err(capsys)


def test_init_from_a_run_of_other_users_and_items_is_refused(setup, capsys, caplog):
    """A checkpoint of a run on other ids (same table shapes) is refused naming the key; the run's own data (a
    diverged run restarted) and a checkpoint outside any run folder are taken."""
    tmp, cfg, _ = setup
    sets = ["model.name=mf", "train.max_epochs=2"]
    assert main(["train", "--config", str(cfg), "--set", *sets]) == 0
    own = tmp / "run/train-mf/model/model.pt"
    assert own.is_file()
    other = _csv(tmp / "other.csv", seed=1)                   # the same shapes, other users and items drawn
    text = other.read_text().splitlines()
    other.write_text("\n".join([text[0], *(f"{int(r.split(',')[0]) + 1000},{r.split(',', 1)[1]}" for r in text[1:])])
                     + "\n")                                 # ids shifted: other people, same table sizes
    args = ["train", "--config", str(cfg), "--set", *sets, f"data.path={other}", f"out_dir={tmp / 'run2'}"]
    assert main([*args, f"train.init_from={own}"]) == 2
    err = _err(capsys)
    assert "train.init_from" in err and "other users and items" in err and len(err.splitlines()) == 1
    same = ["train", "--config", str(cfg), "--set", *sets, f"out_dir={tmp / 'run3'}"]    # the run's own data
    assert main([*same, f"train.init_from={own}"]) == 0
    assert "starts from the weights" in (tmp / "run3/train-mf/run.log").read_text()
    kept = tmp / "kept.pt"                                    # outside any run folder: not checked, logged
    kept.write_bytes(own.read_bytes())
    assert main([*args, f"train.init_from={kept}"]) == 0
    assert "is not checked" in caplog.text


def test_stand_alone_training_shows_a_bar_per_step(setup, capsys):
    tmp, cfg, _ = setup
    assert main(["train", "--config", str(cfg), "--set", "model.name=mf", "show_progress=true"]) == 0
    err = capsys.readouterr().err
    assert "train epoch 0" in err and "train epoch 1" in err       # the per-step bar of each epoch
    assert "0/4" in err                                             # 480 training ratings / batch 128 = 4 steps
