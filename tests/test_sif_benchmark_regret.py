"""Regret of the searched rows of ``sif benchmark`` against the fixed ops (sif.benchmark.split_regret), for ratings
(RMSE) and implicit feedback (NDCG@10, sign flipped), with known numbers; and per-model settings (``name@k=v``)."""

import json

import pytest
import yaml

from nasp.config import ConfigError
from sif.benchmark import benchmark_table, merge_benchmarks, model_config, regret_summary, split_regret
from sif.cli import main
from sif.config import load_config
from sif.synthetic import planted_ratings


def _row(model, split, valid, test, metric="rmse", op=None):
    row = {"model": model, "split": split, "test": {metric: test}, "valid": {metric: valid}, "seconds_train": 1.0,
           "setting": {}}
    if metric == "rmse":
        row["test"]["mae"] = test - 0.2
    else:
        row["test"].update({"recall@10": 0.1, "auc": 0.9})
    return row if op is None else {**row, "op": op}


# split 1: multiply is best on validation (test 0.91), max best on test (0.905); sif picks multiply: regret 0,
# oracle 0.005. split 2: max is best on validation (test 0.92), multiply on test (0.915); sif picks multiply:
# regret -0.005, oracle 0, not the valid-best op.
RATING_ROWS = [
    _row("fixed:plus", 1, 0.95, 0.96), _row("fixed:multiply", 1, 0.90, 0.91), _row("fixed:max", 1, 0.91, 0.905),
    _row("sif", 1, 0.90, 0.91, op="multiply"), _row("mf", 1, 0.89, 0.90),
    _row("fixed:plus", 2, 0.94, 0.95), _row("fixed:multiply", 2, 0.92, 0.915), _row("fixed:max", 2, 0.91, 0.92),
    _row("sif", 2, 0.92, 0.915, op="multiply"), _row("mf", 2, 0.88, 0.89),
]


def test_rating_regret_is_against_the_validation_best_fixed_op():
    r1 = split_regret([r for r in RATING_ROWS if r["split"] == 1], "sif")
    assert r1["valid_best"] == "fixed:multiply" and r1["test_best"] == "fixed:max" and r1["picked_valid_best"]
    assert r1["regret"] == pytest.approx(0.0) and r1["regret_oracle"] == pytest.approx(0.005)
    r2 = split_regret([r for r in RATING_ROWS if r["split"] == 2], "sif")
    assert r2["valid_best"] == "fixed:max" and not r2["picked_valid_best"]
    assert r2["regret"] == pytest.approx(-0.005) and r2["regret_oracle"] == pytest.approx(0.0)
    s = regret_summary(RATING_ROWS)["sif"]
    assert s["regret"][0] == pytest.approx(-0.0025) and s["regret"][1] == pytest.approx(0.005 / 2 ** 0.5)
    assert s["regret_oracle"][0] == pytest.approx(0.0025) and (s["picked"], s["splits"]) == (1, 2)
    assert set(regret_summary(RATING_ROWS)) == {"sif"}          # mf has no op: not a searched row


def test_implicit_regret_flips_the_sign():
    rows = [_row("fixed:multiply", 0, 0.20, 0.19, "ndcg@10"), _row("fixed:plus", 0, 0.15, 0.16, "ndcg@10"),
            _row("sif", 0, 0.15, 0.16, "ndcg@10", op="plus")]
    r = split_regret(rows, "sif")
    assert r["metric"] == "ndcg@10" and r["valid_best"] == "fixed:multiply" and not r["picked_valid_best"]
    assert r["regret"] == pytest.approx(0.03) and r["regret_oracle"] == pytest.approx(0.03)     # worse: positive
    rows[-1] = _row("sif", 0, 0.21, 0.195, "ndcg@10", op="multiply")
    r = split_regret(rows, "sif")
    assert r["picked_valid_best"] and r["regret"] == pytest.approx(-0.005)
    table = benchmark_table(rows)
    assert "-NDCG@10" in table and "| sif | -0.0050 +- 0.0000 | -0.0050 |" in table and "1/1" in table


def test_a_validation_tie_counts_either_op_as_picked():
    rows = [_row("fixed:max", 1, 0.90, 0.91), _row("fixed:min", 1, 0.90, 0.92), _row("sif", 1, 0.9, 0.92, op="min")]
    assert split_regret(rows, "sif")["picked_valid_best"]


def test_table_prints_the_regret_under_it_and_merge_keeps_it(tmp_path):
    table = benchmark_table(RATING_ROWS)
    assert "| sif | -0.0025 +- 0.0035 | 0.0000, -0.0050 | 0.0025 +- 0.0035 | 1/2 | 1: multiply, 2: max |" in table
    assert "fixed ops: max, multiply, plus" in table
    (tmp_path / "a.json").write_text(json.dumps(RATING_ROWS[:5]))          # split 1 and split 2 from two files
    (tmp_path / "b.json").write_text(json.dumps({"command": "x", "rows": RATING_ROWS[5:]}))
    assert merge_benchmarks([tmp_path / "a.json", tmp_path / "b.json"]) == table
    assert "Regret" not in benchmark_table([r for r in RATING_ROWS if r["model"] != "sif"])


def test_model_config_sets_one_models_settings():
    cfg = load_config(None, ["model.reg=0.1"])
    name, mcfg = model_config(cfg, "mf@model.reg=0.3,model.neighbourhood=both")
    assert name == "mf" and mcfg.model.reg == 0.3 and mcfg.model.neighbourhood == "both" and cfg.model.reg == 0.1
    assert model_config(cfg, "fixed:multiply") == ("fixed:multiply", cfg)
    with pytest.raises(ConfigError, match="run's setting"):
        model_config(cfg, "mf@data.fold=2")


def test_benchmark_run_stores_the_regret_of_its_searched_rows(tmp_path):
    ds = planted_ratings("multiply", num_users=20, num_items=25, n=400, seed=0)
    csv = tmp_path / "ratings.csv"
    csv.write_text("user,item,rating\n" + "".join(f"{u},{i},{r:.4f}\n" for u, i, r in
                                                  zip(ds.users.tolist(), ds.items.tolist(), ds.ratings.tolist(),
                                                      strict=True)))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({
        "seed": 1, "show_progress": False, "data": {"dataset": "file", "path": str(csv), "split": "random",
                                                    "ratios": [0.8, 0.1, 0.1]},
        "model": {"embedding_dim": 3}, "search": {"epochs": 2}, "train": {"max_epochs": 2, "batch_size": 128},
        "benchmark": {"seeds": [0], "models": ["sif", "fixed:plus", "fixed:multiply", "mf@model.reg=0.3", "mf"],
                      "tune": {"mf@model.reg=0.3": {"embedding_dim": [2, 4]}}}}))
    assert main(["benchmark", "--config", str(cfg), "--out", str(tmp_path / "bench")]) == 0
    rows = {r["model"]: r for r in json.loads((tmp_path / "bench/benchmark/benchmark.json").read_text())}
    assert rows["mf@model.reg=0.3"]["setting"]["embedding_dim"] in (2, 4) and rows["mf"]["setting"] == {}
    reg = rows["sif"]["regret"]
    fixed = [rows["fixed:plus"], rows["fixed:multiply"]]
    best = min(fixed, key=lambda r: r["valid"]["rmse"])
    assert reg["valid_best"] == best["model"] and reg["fixed"] == ["fixed:multiply", "fixed:plus"]
    assert reg["regret"] == pytest.approx(rows["sif"]["test"]["rmse"] - best["test"]["rmse"])
    assert "valid-best picked" in (tmp_path / "bench/benchmark/benchmark.md").read_text()
