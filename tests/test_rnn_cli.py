"""``nasp rnn search`` / ``nasp rnn train`` end to end on a tiny generated corpus (corpus: files)."""

from __future__ import annotations

import json

import numpy as np
import yaml

from nasp.checkpoint import load_checkpoint
from nasp.cli import main


def _corpus(folder):
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(30)]
    for split, n in (("train", 300), ("valid", 60), ("test", 60)):
        lines = [" ".join(rng.choice(words, size=rng.integers(3, 9))) for _ in range(n)]
        (folder / f"{split}.txt").write_text("\n".join(lines) + "\n\n")       # a trailing blank line
    return {"train": "train.txt", "valid": "valid.txt", "test": "test.txt"}


def _config(tmp_path, **sections):
    files = _corpus(tmp_path)
    data = {"corpus": "files", "path": str(tmp_path), "files": files, "batch_size": 8, "eval_batch_size": 4,
            "bptt": 6}
    cfg = {"run_dir": str(tmp_path / sections.pop("name")), "data": data, **sections}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_rnn_search_then_train_the_found_cell(tmp_path, capsys):
    space = {"ninp": 8, "nhid": 8, "num_nodes": 3, "dropout": 0.1, "dropout_h": 0.1, "dropout_x": 0.1,
             "dropout_i": 0.1}
    cfg = _config(tmp_path, name="search", space=space, search={"epochs": 2, "max_steps_per_epoch": 5})
    assert main(["rnn", "search", "--config", str(cfg), "--quiet"]) == 0
    run = tmp_path / "search"
    for name in ("rnn_genotype.json", "rnn_cell.png", "rnn_cell.dot", "summary.json", "resolved_config.yaml",
                 "checkpoint.pt", "log.jsonl"):
        assert (run / name).is_file(), name
    geno = json.loads((run / "rnn_genotype.json").read_text())
    assert len(geno["recurrent"]) == 3
    capsys.readouterr()
    model = {"genotype": str(run / "rnn_genotype.json"), "ninp": 8, "nhid": 8, "dropout": 0.1, "dropout_h": 0.1,
             "dropout_x": 0.1, "dropout_i": 0.1, "dropout_e": 0.0}
    cfg = _config(tmp_path, name="train", model=model, train={"epochs": 2, "max_steps_per_epoch": 5, "bptt": 6})
    assert main(["rnn", "train", "--config", str(cfg), "--quiet"]) == 0
    results = json.loads((tmp_path / "train/results.json").read_text())
    assert np.isfinite(results["test_ppl"]) and results["test_ppl"] > 1 and results["vocab"] >= 31
    assert results["genotype"] == geno and (tmp_path / "train/rnn_cell.png").is_file()
    assert load_checkpoint(tmp_path / "train/train_checkpoint.pt")["epoch"] == 2
    assert len((tmp_path / "train/train_log.jsonl").read_text().splitlines()) == 2
    assert main(["rnn", "train", "--config", str(cfg), "--quiet"]) == 0         # resumes the finished run
    again = json.loads((tmp_path / "train/results.json").read_text())
    assert again["test_ppl"] == results["test_ppl"]
    assert [h["train_loss"] for h in again["history"]] == [h["train_loss"] for h in results["history"]]


def test_rnn_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["rnn", "search", "--set", "data.corpus=ptx"]) == 2
    assert "corpus must be one of ptb, wikitext-2, wikitext-103, files" in capsys.readouterr().err
    assert main(["rnn", "train", "--set", "model.genotype=nope.json", f"data.path={tmp_path}"]) == 2
    assert "model.genotype='nope.json'" in capsys.readouterr().err
    assert main(["rnn", "search", "--set", "search.seed=1"]) == 2
    assert "set from 'seed'" in capsys.readouterr().err
