"""benchmarks/sif_other_files.py: the derived rating files are what its docstring says, and the table reads runs."""

import json

import pandas as pd

from benchmarks.sif_other_files import _kcore, make, planted_lowrank, table
from data_loaders.synthetic import synthetic_ratings


def test_kcore_keeps_only_users_and_items_with_k_ratings():
    block = [(u, i) for u in range(1, 11) for i in range(1, 11)]          # a 10 x 10 block: the 10-core
    tail = [(11, 1), (11, 2), (11, 3), (1, 11), (2, 11), (12, 11)]         # a sparse user and a sparse item
    d = pd.DataFrame(block + tail, columns=["user", "item"]).assign(rating=3)
    core = _kcore(d, 10)
    assert sorted(map(tuple, core[["user", "item"]].to_numpy())) == block


def test_planted_lowrank_is_distinct_pairs_on_the_star_scale():
    d = planted_lowrank(num_users=80, num_items=60, n=1500, rank=3)
    assert len(d) == 1500 and not d.duplicated(["user", "item"]).any()
    assert set(d.rating) <= {1, 2, 3, 4, 5} and d.user.min() >= 1 and d.item.max() <= 60
    assert d.equals(planted_lowrank(num_users=80, num_items=60, n=1500, rank=3))      # seeded


def test_make_and_table(tmp_path, capsys):
    udata = tmp_path / "u.data"
    synthetic_ratings(4000, 70, 60, seed=2).to_csv(udata, sep="\t", header=False, index=False)
    make(udata, tmp_path / "files")
    half = pd.read_csv(tmp_path / "files" / "ml100k_half.tsv", sep="\t", header=None)
    assert (half[0] % 2 == 1).all() and len(half) > 0
    for model, test in (("sif", 0.9), ("mf", 1.0)):
        folder = tmp_path / "runs" / f"x_{model}_s0" / "run"
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps({"valid": {"rmse": 1.0}, "test": {"rmse": test},
                                                         "op": "multiply" if model == "sif" else None}))
    rows = table(tmp_path / "runs")
    assert rows["x"][0]["sif"]["test"] == 0.9 and "sif - mf -0.1000" in capsys.readouterr().out
