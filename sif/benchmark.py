"""``sif benchmark``: models x folds (or seeds) in one table, each model tuned on validation over its grid; and the
scores every run reports (validation scores, training seconds)."""

from __future__ import annotations

import copy
import itertools
import json
import logging
import time
from pathlib import Path
from typing import Any

from nasp import distributed as nd

from .build import build_recommender
from .config import RunConfig
from .data import load_splits
from .evaluation import mean_std
from .feedback import feedback_strategy
from .recommender import SIFRecommender

__all__ = ["valid_scores", "train_seconds", "fit_tuned", "run_benchmark", "merge_benchmarks", "benchmark_table"]

log = logging.getLogger("sif")


def valid_scores(rec, valid) -> dict[str, float]:
    """Validation scores of a fitted recommender; after a refit (which trained on valid) those of the first fit's
    best epoch, the ones every choice was made on."""
    return dict(rec.train_result_.best_valid) if getattr(rec, "refit", False) else rec.score(valid)


def train_seconds(rec) -> float:
    """Seconds of stand-alone training: every fit of the race (the winner's included) or the one fit, and the
    refit."""
    extra = rec.refit_result_.seconds if getattr(rec, "refit", False) else 0.0
    race = getattr(rec, "selection_", None)
    return (race.seconds if race is not None else rec.train_result_.seconds) + extra


def fit_tuned(cfg: RunConfig, name: str, grid: dict[str, list], data) -> tuple[Any, dict[str, Any]]:
    """Fit ``name`` for every combination in ``grid`` (model settings), keep the best on the validation metric of
    the task (RMSE for ratings, NDCG@10 for implicit feedback)."""
    train, valid, _ = data
    fb = feedback_strategy(cfg.model.task)
    sign = -1.0 if fb.maximize else 1.0
    best, best_score, best_setting = None, float("inf"), {}
    keys = sorted(grid)
    for values in itertools.product(*(grid[k] for k in keys)) if keys else [()]:
        setting = dict(zip(keys, values, strict=True))
        run_cfg = copy.deepcopy(cfg)
        for k, v in setting.items():
            target = run_cfg.train if hasattr(run_cfg.train, k) else run_cfg.model
            setattr(target, k, v)
        rec = build_recommender(run_cfg, name, strict=False).fit(train, valid, show_progress=False)
        r = sign * valid_scores(rec, valid)[fb.metric]
        if r < best_score:
            best, best_score, best_setting = rec, r, setting
    return best, best_setting


def run_benchmark(cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    """Every model of ``cfg.benchmark.models`` on every fold (or seed); a markdown and a JSON table."""
    rows: list[dict[str, Any]] = []
    splits = cfg.benchmark.folds if cfg.data.split == "fold" else cfg.benchmark.seeds
    for split_id in splits:
        run_cfg = copy.deepcopy(cfg)
        if cfg.data.split == "fold":
            run_cfg.data.fold = split_id
        else:
            run_cfg.seed = int(split_id)
        data = load_splits(run_cfg.data, run_cfg.seed)
        for name in cfg.benchmark.models:
            t0 = time.perf_counter()
            rec, setting = fit_tuned(run_cfg, name, cfg.benchmark.tune.get(name, {}), data)
            row = {"model": name, "split": split_id, "test": rec.score(data[2]), "valid": valid_scores(rec, data[1]),
                   "seconds": time.perf_counter() - t0, "seconds_train": train_seconds(rec), "setting": setting,
                   "context": cfg.data.context, "num_contexts": data[0].num_contexts}
            if isinstance(rec, SIFRecommender):
                row.update(op=rec.op_, seconds_search=rec.search_result_.seconds)
            rows.append(row)
            log.info("benchmark row: %s", json.dumps(row))
            if nd.is_main_process():
                metric = feedback_strategy(cfg.model.task).metric
                print(f"[{split_id}] {name:14s} test {metric}={row['test'][metric]:.4f} ({row['seconds']:.1f}s)"
                      + (f" op={row['op']}" if "op" in row else ""), flush=True)
                (run_dir / "benchmark.json").write_text(json.dumps(rows, indent=2) + "\n")
    table = benchmark_table(rows)
    if nd.is_main_process():
        (run_dir / "benchmark.md").write_text(table)
        print(table)
    return {"rows": rows, "table": table}


def merge_benchmarks(paths: list[str | Path]) -> str:
    """One table from several benchmark.json files (e.g. folds run in parallel processes), or result files that
    hold them under "rows" with their machine and command (e.g. benchmarks/results/surprise_ml100k_folds.json)."""
    loaded = [json.loads(Path(p).read_text()) for p in paths]
    rows = [r for d in loaded for r in (d["rows"] if isinstance(d, dict) else d)]
    return benchmark_table(rows)


def benchmark_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table: mean +- std over splits of the test metrics (RMSE and MAE for ratings; NDCG@10, recall@10
    and AUC for implicit feedback), validation metric, seconds, found ops."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    rating = "rmse" in rows[0]["test"]
    tests = ("rmse", "mae") if rating else ("ndcg@10", "recall@10", "auc")
    valid = "rmse" if rating else "ndcg@10"
    lines = ["| model | " + " | ".join(f"test {t.upper() if rating else t}" for t in tests)
             + f" | valid {valid.upper() if rating else valid} | search s | train s | found op / setting |",
             "| --- | " + " | ".join("---:" for _ in tests) + " | ---: | ---: | ---: | --- |"]
    for m in models:
        rs = [r for r in rows if r["model"] == m]
        cells = [f"{mean_std([r['test'][t] for r in rs])[0]:.4f} +- {mean_std([r['test'][t] for r in rs])[1]:.4f}"
                 for t in tests]
        vm, _ = mean_std([r["valid"][valid] for r in rs])
        search = mean_std([r.get("seconds_search", 0.0) for r in rs])[0]
        train = mean_std([r["seconds_train"] for r in rs])[0]
        extra = ", ".join(sorted({r["op"] for r in rs if "op" in r})) or \
            ", ".join(sorted({json.dumps(r["setting"], sort_keys=True) for r in rs if r["setting"]}))
        lines.append(f"| {m} | {' | '.join(cells)} | {vm:.4f} | {search:.1f} | {train:.1f} | {extra} |")
    return "\n".join(lines) + "\n"
