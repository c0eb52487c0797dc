import json

import numpy as np
import pytest
import yaml

from nasp.config import ConfigError
from sif.cli import main
from sif.config import RunConfig, apply_override, load_config
from sif.interactions import SEARCH_SPACE
from sif.synthetic import planted_ratings


@pytest.fixture()
def ratings_csv(tmp_path):
    ds = planted_ratings("multiply", num_users=25, num_items=30, n=600, seed=0)
    path = tmp_path / "ratings.csv"
    lines = ["user,item,rating"] + [f"{u},{i},{r:.4f}" for u, i, r in
                                     zip(ds.users.tolist(), ds.items.tolist(), ds.ratings.tolist(), strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _config(tmp_path, csv, **extra):
    cfg = {"seed": 1, "show_progress": False, "out_dir": str(tmp_path / "run"),
           "data": {"dataset": "file", "path": str(csv), "split": "random", "ratios": [0.8, 0.1, 0.1]},
           "model": {"embedding_dim": 3},
           "search": {"epochs": 2}, "train": {"max_epochs": 2, "batch_size": 128}}
    for k, v in extra.items():
        cfg[k].update(v)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_cli_search_then_evaluate_end_to_end(tmp_path, ratings_csv, capsys):
    cfg = _config(tmp_path, ratings_csv)
    assert main(["search", "--config", str(cfg), "--set", "search.epochs=3"]) == 0
    run = tmp_path / "run" / "search"
    for name in ("fingerprint.json", "config.yaml", "results.json", "genotype.json", "interaction.dot",
                 "interaction.png", "alphas.png", "run.log", "model/recommender.json", "model/model.pt",
                 "search/log.jsonl", "search/checkpoint.pt"):
        assert (run / name).is_file(), name
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["search"]["epochs"] == 3 and resolved["model"]["embedding_dim"] == 3
    results = json.loads((run / "results.json").read_text())
    assert results["op"] in SEARCH_SPACE
    race = results["race"]          # the default: every op raced as a stand-alone fit, checkpointed per op
    assert race["winner"] == results["op"] and set(race["candidates"]) == set(SEARCH_SPACE)
    assert all((run / "race" / op / "train_checkpoint.pt").is_file() for op in race["candidates"])
    assert race["epochs"] == sum(race["epochs_per_candidate"].values()) and race["seconds"] > 0
    assert len((run / "search/log.jsonl").read_text().splitlines()) == 3
    members = (race["ensemble"] or {"members": [results["op"]]})["members"]     # the race's ensemble, if formed
    assert members[0] == results["op"] and all((run / f"interaction-{op}.png").is_file() for op in members[1:])
    assert json.loads((run / "run.log").read_text().splitlines()[-1])["level"] == "INFO"
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["test"]["rmse"] == pytest.approx(results["test"]["rmse"], rel=1e-6)


def test_cli_rerun_resumes_from_checkpoints(tmp_path, ratings_csv):
    cfg = _config(tmp_path, ratings_csv)
    assert main(["search", "--config", str(cfg)]) == 0
    first = json.loads((tmp_path / "run/search/results.json").read_text())
    assert main(["search", "--config", str(cfg)]) == 0       # everything is already done: resumes at the end
    again = json.loads((tmp_path / "run/search/results.json").read_text())
    assert again["test"] == first["test"] and again["op"] == first["op"]


def test_cli_train_and_benchmark(tmp_path, ratings_csv):
    cfg = _config(tmp_path, ratings_csv)
    assert main(["train", "--config", str(cfg), "--set", "model.name=mf", "--out", str(tmp_path / "mf")]) == 0
    assert json.loads((tmp_path / "mf/train-mf/results.json").read_text())["model"] == "mf"
    assert main(["benchmark", "--config", str(cfg), "--out", str(tmp_path / "bench"), "--set",
                 "benchmark.models=[bias_only, mf, fixed:plus]", "benchmark.seeds=[0, 1]",
                 "benchmark.tune={mf: {embedding_dim: [2, 4]}}"]) == 0
    rows = json.loads((tmp_path / "bench/benchmark/benchmark.json").read_text())
    assert len(rows) == 6 and {r["model"] for r in rows} == {"bias_only", "mf", "fixed:plus"}
    table = (tmp_path / "bench/benchmark/benchmark.md").read_text()
    assert "| mf |" in table and "+-" in table


def test_cli_benchmark_with_neighbourhood_and_refit(tmp_path, ratings_csv):
    cfg = _config(tmp_path, ratings_csv)
    assert main(["benchmark", "--config", str(cfg), "--out", str(tmp_path / "bench"), "--set",
                 "benchmark.models=[sif, neumf, mf]", "benchmark.seeds=[0]", "model.neighbourhood=both",
                 "model.refit=true", "benchmark.tune={mf: {reg: [0.05, 0.1]}}"]) == 0
    rows = {r["model"]: r for r in json.loads((tmp_path / "bench/benchmark/benchmark.json").read_text())}
    assert set(rows) == {"sif", "neumf", "mf"}            # NeuMF has no neighbourhood option and runs without it
    for r in rows.values():                                # valid scores are the first fit's, not in-sample
        assert r["valid"]["rmse"] > 0 and np.isfinite(r["test"]["rmse"])


def test_cli_rejects_bad_config(tmp_path, ratings_csv, capsys):
    cfg = _config(tmp_path, ratings_csv)
    assert main(["search", "--config", str(cfg), "--set", "search.epochz=3"]) == 2
    assert "unknown config key 'search.epochz'" in capsys.readouterr().err
    assert main(["search", "--config", str(cfg), "--set", "train.max_epochs=many"]) == 2
    assert "train.max_epochs: expected int" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  embedding_dimm: 4\n")
    assert main(["search", "--config", str(bad)]) == 2
    assert "bad.yaml" in capsys.readouterr().err
    assert main(["train", "--config", str(cfg)]) == 2
    assert "sif search" in capsys.readouterr().err


def test_config_layers_and_types():
    cfg = load_config(None, ["search.epochs=7", "data.ratios=[0.5, 0.25, 0.25]", "model.reg=1", "seed=3"])
    assert cfg.search.epochs == 7 and cfg.data.ratios == [0.5, 0.25, 0.25] and cfg.model.reg == 1.0
    assert cfg.seed == 3 and isinstance(cfg, RunConfig)
    with pytest.raises(ValueError, match="strategy"):
        apply_override(cfg, "search.strategy=evolution")
    with pytest.raises(ConfigError, match="model.use_bias: expected bool"):
        apply_override(cfg, "model.use_bias=3")
    assert np.isclose(cfg.search.a_lr, 1e-3)


def test_every_shipped_sif_config_loads():
    from pathlib import Path

    files = sorted(Path(__file__).resolve().parents[1].glob("configs/sif_*.yaml"))
    assert len(files) >= 5
    for f in files:
        cfg = load_config(f)
        assert cfg.model.name == "sif", f


def test_cli_benchmark_on_implicit_feedback(tmp_path, ratings_csv):
    cfg = _config(tmp_path, ratings_csv)
    assert main(["benchmark", "--config", str(cfg), "--out", str(tmp_path / "bench"), "--set",
                 "benchmark.models=[sif, fixed:multiply, gmf]", "benchmark.seeds=[0]", "model.task=bpr",
                 "benchmark.tune={gmf: {reg: [0.0001, 0.001]}}"]) == 0
    rows = json.loads((tmp_path / "bench/benchmark/benchmark.json").read_text())
    assert {r["model"] for r in rows} == {"sif", "fixed:multiply", "gmf"}
    assert all(0.0 <= r["test"]["ndcg@10"] <= 1.0 and "rmse" not in r["test"] for r in rows)
    table = (tmp_path / "bench/benchmark/benchmark.md").read_text()
    assert "test ndcg@10" in table and "| gmf |" in table


def test_cli_search_with_sampled_softmax_and_a_user_neighbourhood(tmp_path, ratings_csv):
    """The top-N setting of benchmarks/README.md ("Sampled softmax and a user neighbourhood") through the command
    line: task softmax, 16 negatives, SVD++'s user neighbourhood; the run reports ranking metrics only."""
    cfg = _config(tmp_path, ratings_csv)
    assert main(["search", "--config", str(cfg), "--set", "model.task=softmax", "model.num_negatives=16",
                 "model.neighbourhood=user", f"out_dir={tmp_path / 'run'}"]) == 0
    results = json.loads((tmp_path / "run/search/results.json").read_text())
    assert 0.0 <= results["test"]["ndcg@10"] <= 1.0 and "rmse" not in results["test"]
    assert results["op"] in ("multiply", "max", "min")          # the ops that can personalise a ranking


def test_cli_search_saves_and_draws_the_race_ensemble(tmp_path, capsys):
    """A run whose race forms an ensemble (planted noisy multiply, seed 1: min, the winner, averaged with multiply;
    found by trying seeds 0-3) records it in results.json and the saved model, draws every member, and
    ``sif evaluate`` reloads the averaged model to the same test RMSE."""
    ds = planted_ratings("multiply", num_users=80, num_items=100, dim=4, n=3000, noise=0.3, seed=2)
    csv = tmp_path / "p.csv"
    rows = zip(ds.user_ids[ds.users.numpy()], ds.item_ids[ds.items.numpy()], ds.ratings.tolist(), strict=True)
    csv.write_text("user,item,rating\n" + "".join(f"{u},{i},{r!r}\n" for u, i, r in rows))
    cfg = {"seed": 1, "show_progress": False, "out_dir": str(tmp_path / "run"),
           "data": {"dataset": "file", "path": str(csv), "split": "random", "ratios": [0.8, 0.1, 0.1]},
           "model": {"embedding_dim": 4, "ops": ["plus", "multiply", "max", "min"]},
           "search": {"epochs": 2}, "train": {"max_epochs": 15, "patience": 3, "batch_size": 256}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["search", "--config", str(tmp_path / "cfg.yaml")]) == 0
    run = tmp_path / "run" / "search"
    results = json.loads((run / "results.json").read_text())
    assert results["op"] == "min" and results["race"]["ensemble"]["members"] == ["min", "multiply"]
    assert "model=sif found=min averaged with the race's fits of multiply (race_ensemble)" in capsys.readouterr().out
    assert (run / "interaction.png").is_file() and (run / "interaction-multiply.png").is_file()
    saved = json.loads((run / "model" / "recommender.json").read_text())
    assert saved["fitted"]["ensemble"] == ["min", "multiply"] and saved["params"]["race_ensemble"] is True
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run)]) == 0
    assert json.loads(capsys.readouterr().out)["test"]["rmse"] == pytest.approx(results["test"]["rmse"], rel=1e-6)
