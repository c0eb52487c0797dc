"""benchmarks/rnn_ptb_compare.py: the seeded random cell, the alpha trajectory, and a search on a tiny PTB-layout
corpus transferred to a tiny WikiText-2-layout corpus (data.corpus=wikitext-2 data.path=...) end to end."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from benchmarks.rnn_ptb_compare import alpha_trajectory, main, random_genotype
from nasp.commands.rnn import RNNSearchRun, run_rnn_search
from nasp.config import load
from nasp.spaces.rnn.genotypes import RNNGenotype


def test_random_genotype_is_seeded_uniform_and_in_the_space():
    a, b = random_genotype(8, seed=3), random_genotype(8, seed=3)
    assert a == b and a.concat == tuple(range(1, 9))
    assert len({random_genotype(8, seed=s) for s in range(10)}) == 10
    for j, (act, pred) in enumerate(a.recurrent, start=1):
        assert act in ("tanh", "relu", "sigmoid", "identity") and 0 <= pred < j
    assert {act for act, _ in random_genotype(8, ("relu",), seed=1).recurrent} == {"relu"}
    # uniform draws: node 4 picks each of its 4 predecessors, and each activation, about 1/4 of the time
    draws = [random_genotype(4, seed=s).recurrent[3] for s in range(4000)]
    preds, acts = Counter(p for _, p in draws), Counter(a for a, _ in draws)
    assert set(preds) == {0, 1, 2, 3} and all(abs(n / 4000 - 0.25) < 0.03 for n in preds.values())
    assert len(acts) == 4 and all(abs(n / 4000 - 0.25) < 0.03 for n in acts.values())
    with pytest.raises(ValueError, match="ops \\['none'\\]"):
        random_genotype(3, ("none",))


def _record(epoch, alphas, cell, warmup=False):
    geno = {"cell": [{"row_name": f"{p}->{j}", "op": op} for j, (op, p) in enumerate(cell, start=1)]}
    return json.dumps({"epoch": epoch, "warmup": warmup, "valid_ppl": 100.0 - epoch, "genotype": geno,
                       "alphas": {"cell": alphas}})


def test_alpha_trajectory_reads_planted_moves(tmp_path):
    ops = ["tanh", "relu", "sigmoid", "identity"]
    e0 = [[0.5, 0.5, 0.5, 0.9], [0.5, 0.5, 0.5, 0.7], [0.5, 0.5, 0.5, 0.5]]       # 3 rows (2 nodes)
    e1 = [[0.5, 0.2, 0.5, 0.9], [0.5, 0.2, 0.5, 0.7], [0.5, 0.2, 0.5, 0.5]]
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join([_record(0, e0, [("identity", 0), ("identity", 0)], warmup=True),
                              json.dumps({"event": "no alphas here"}),
                              _record(1, e1, [("identity", 0), ("tanh", 1)])]) + "\n")
    t = alpha_trajectory(log, ops)
    assert [r["epoch"] for r in t] == [0, 1] and t[0]["warmup"] and not t[1]["warmup"]
    assert t[0]["identity_nodes"] == 2 and t[1]["identity_nodes"] == 1
    assert t[1]["cell"] == [["identity", 0], ["tanh", 1]]
    assert t[0]["mean_alpha"]["identity"] == pytest.approx(0.7)
    assert t[0]["mean_abs_move"]["identity"] == pytest.approx(0.2) and t[0]["mean_abs_move"]["tanh"] == 0
    assert t[1]["mean_abs_move"]["relu"] == pytest.approx(0.3) and t[1]["mean_abs_move"]["identity"] == 0


def _write_corpus(folder, names, seed):
    """Sentences over 25 words; WikiText layout: heading lines, blank lines around them, <unk> tokens."""
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(25)] + ["<unk>"]
    folder.mkdir(parents=True)
    tokens, train_vocab = {}, set()
    for split, n in (("train", 400), ("valid", 80), ("test", 80)):
        lines = []
        for k in range(n):
            if k % 20 == 0:
                lines += ["", f" = Heading {k // 20} = ", ""]
            lines.append(" " + " ".join(rng.choice(words, size=rng.integers(4, 10))) + " ")
        (folder / names[split]).write_text("\n".join(lines) + "\n")
        tokens[split] = sum(len(line.split()) + 1 for line in lines)             # every line end is <eos>
        if split == "train":
            train_vocab = {w for line in lines for w in line.split()} | {"<eos>", "<unk>"}
    return tokens, train_vocab


def test_ptb_search_transferred_to_wikitext2_layout(tmp_path):
    _write_corpus(tmp_path / "ptb", {s: f"ptb.{s}.txt" for s in ("train", "valid", "test")}, seed=0)
    wt2, vocab = _write_corpus(tmp_path / "wikitext-2", {s: f"wiki.{s}.tokens" for s in ("train", "valid", "test")}, 1)
    tiny = ["ninp=8", "nhid=8", "dropout=0.1", "dropout_h=0.1", "dropout_x=0.1", "dropout_i=0.1"]
    out = tmp_path / "cmp"
    res = main(["--set", f"data.path={tmp_path}", "data.batch_size=8", "data.bptt=6", "data.eval_batches=4",
                "space.num_nodes=3", *[f"space.{t}" for t in tiny], "search.epochs=2", "search.max_steps_per_epoch=4",
                "--train-set", "data.batch_size=8", "data.bptt=6", "train.bptt=6", "train.epochs=2",
                "train.max_steps_per_epoch=3", *[f"model.{t}" for t in tiny],
                "--random-seed", "5", "--out", str(out), "data.corpus=wikitext-2", f"data.path={tmp_path}"])
    assert res["unigram"]["corpus"] == "wikitext-2" and res["unigram"]["tokens"] == wt2
    assert res["unigram"]["vocab"] == len(vocab)                     # the WT2 training split's words only
    cells = res["cells"]
    assert set(cells) == {"found", "random", "DARTS_V2"}
    found = json.loads((out / "search" / "rnn_genotype.json").read_text())
    assert cells["found"]["genotype"] == found and len(found["recurrent"]) == 3
    assert RNNGenotype.from_dict(cells["random"]["genotype"]) == random_genotype(3, seed=5)
    assert len(cells["DARTS_V2"]["genotype"]["recurrent"]) == 8
    for r in cells.values():      # same budget and seed, a finite perplexity on the WT2 test split
        assert (r["steps"], r["epochs"], r["seed"]) == (6, 2, 0)
        assert np.isfinite(r["test_ppl"]) and r["test_ppl"] > 1 and np.isfinite(r["valid_ppl"])
    assert len({r["test_ppl"] for r in cells.values()}) == 3         # three different cells, three models
    assert [e["epoch"] for e in res["alpha_trajectory"]] == [0, 1]
    assert json.loads((out / "results.json").read_text())["cells"]["random"]["test_ppl"] == cells["random"]["test_ppl"]


def test_bad_arguments_are_one_line_errors(capsys):
    with pytest.raises(SystemExit):
        main(["--cells", "found,lstm"])
    assert "--cells: ['lstm'] not among found, random, DARTS_V2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["model.nhid=3"])
    assert "positional overrides must be data.*=value" in capsys.readouterr().err


def test_search_cut_after_k_epochs_is_the_k_epoch_search(tmp_path):
    """--search-dir RUN --search-epochs 2 of a 3-epoch search = a 2-epoch search (constant weight lr)."""
    _write_corpus(tmp_path / "ptb", {s: f"ptb.{s}.txt" for s in ("train", "valid", "test")}, seed=0)
    tiny = ["space.ninp=8", "space.nhid=8", "space.num_nodes=4", "data.batch_size=8", "data.bptt=6",
            "data.eval_batches=3", "search.max_steps_per_epoch=4", f"data.path={tmp_path}"]
    runs = {}
    for n in (2, 3):
        runs[n] = run_rnn_search(load(RNNSearchRun, "configs/rnn_search_ptb_cpu.yaml",
                                      [*tiny, f"search.epochs={n}", f"run_dir={tmp_path / f's{n}'}"]),
                                 show_progress=False)
    assert runs[2]["valid_ppl"] == runs[3]["valid_ppl"][:2]
    res = main(["--search-dir", str(tmp_path / "s3"), "--search-epochs", "2", "--cells", "found",
                "--train-set", *tiny[3:5], "train.bptt=6", "train.epochs=1", "train.max_steps_per_epoch=2",
                "model.ninp=8", "model.nhid=8", "--out", str(tmp_path / "cmp"), f"data.path={tmp_path}"])
    assert res["search"]["genotype"] == runs[2]["genotype"] and res["search"]["steps"] == 8
    assert res["cells"]["found"]["genotype"] == runs[2]["genotype"] and len(res["alpha_trajectory"]) == 2
    with pytest.raises(ValueError, match="logs only 3 epochs"):
        main(["--search-dir", str(tmp_path / "s3"), "--search-epochs", "4", "--cells", "found",
              "--out", str(tmp_path / "cmp4")])
