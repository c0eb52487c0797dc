"""``sif benchmark``: models x folds (or seeds) in one table, each model tuned on validation over its grid; the
regret of the searched models against the fixed ops; and the scores every run reports (validation scores, training
seconds)."""

from __future__ import annotations

import copy
import itertools
import json
import logging
import time
from pathlib import Path
from typing import Any

from nasp import distributed as nd
from nasp.config import ConfigError

from .build import build_recommender
from .config import RunConfig, apply_override
from .data import load_splits
from .evaluation import mean_std
from .feedback import feedback_strategy
from .recommender import SIFRecommender

__all__ = ["valid_scores", "train_seconds", "fit_tuned", "model_config", "run_benchmark", "merge_benchmarks",
           "load_rows", "benchmark_table", "split_regret", "regret_summary", "regret_table"]

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


def model_config(cfg: RunConfig, spec: str) -> tuple[str, RunConfig]:
    """The model name and the config of a ``benchmark.models`` entry: ``name`` or ``name@key=value,key=value``
    (settings of that model alone, e.g. ``mf@model.neighbourhood=null``; ``data.*`` and ``benchmark.*`` are the
    run's and cannot be changed per model). Its tune grid is ``benchmark.tune[spec]``."""
    name, _, over = spec.partition("@")
    if not over:
        return name, cfg
    run_cfg = copy.deepcopy(cfg)
    for assignment in over.split(","):
        key = assignment.partition("=")[0].strip()
        if key.split(".")[0] in ("data", "benchmark", "seed"):
            raise ConfigError(f"benchmark.models: {spec!r}: {key} is the run's setting, not one model's")
        apply_override(run_cfg, assignment.strip())
    return name, run_cfg


def run_benchmark(cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    """Every model of ``cfg.benchmark.models`` on every fold (or seed); a markdown and a JSON table. The searched
    rows (those with an ``op``) get their regret against the ``fixed:*`` rows of the same split
    (:func:`split_regret`) once every model of the split has run."""
    rows: list[dict[str, Any]] = []
    specs = {spec: model_config(cfg, spec) for spec in cfg.benchmark.models}     # a bad entry fails before any fit
    splits = cfg.benchmark.folds if cfg.data.split == "fold" else cfg.benchmark.seeds
    for split_id in splits:
        run_cfg = copy.deepcopy(cfg)
        if cfg.data.split == "fold":
            run_cfg.data.fold = split_id
        else:
            run_cfg.seed = int(split_id)
        data = load_splits(run_cfg.data, run_cfg.seed)
        for spec, (name, model_cfg) in specs.items():
            model_cfg = copy.deepcopy(model_cfg)
            model_cfg.data, model_cfg.seed = run_cfg.data, run_cfg.seed
            t0 = time.perf_counter()
            rec, setting = fit_tuned(model_cfg, name, cfg.benchmark.tune.get(spec, {}), data)
            row = {"model": spec, "split": split_id, "test": rec.score(data[2]), "valid": valid_scores(rec, data[1]),
                   "seconds": time.perf_counter() - t0, "seconds_train": train_seconds(rec), "setting": setting,
                   "context": cfg.data.context, "num_contexts": data[0].num_contexts}
            if isinstance(rec, SIFRecommender):
                row.update(op=rec.op_, ensemble=list(rec.ensemble_), seconds_search=rec.search_result_.seconds)
            rows.append(row)
            log.info("benchmark row: %s", json.dumps(row))
            if nd.is_main_process():
                metric = feedback_strategy(cfg.model.task).metric
                print(f"[{split_id}] {spec:14s} test {metric}={row['test'][metric]:.4f} ({row['seconds']:.1f}s)"
                      + (f" op={row['op']}" if "op" in row else "")
                      + (f" ensemble=[{', '.join(row['ensemble'])}]" if len(row.get("ensemble", ())) > 1 else ""),
                      flush=True)
                (run_dir / "benchmark.json").write_text(json.dumps(rows, indent=2) + "\n")
        _add_regret([r for r in rows if r["split"] == split_id])
    table = benchmark_table(rows)
    if nd.is_main_process():
        (run_dir / "benchmark.json").write_text(json.dumps(rows, indent=2) + "\n")
        (run_dir / "benchmark.md").write_text(table)
        print(table)
    return {"rows": rows, "table": table}


def merge_benchmarks(paths: list[str | Path]) -> str:
    """One table from several benchmark.json files (e.g. folds run in parallel processes), or result files that
    hold them under "rows" with their machine and command (e.g. benchmarks/results/surprise_ml100k_folds.json)."""
    return benchmark_table(load_rows(paths))


def load_rows(paths: list[str | Path]) -> list[dict[str, Any]]:
    """The rows of several benchmark.json files or result files holding them under "rows"."""
    loaded = [json.loads(Path(p).read_text()) for p in paths]
    return [r for d in loaded for r in (d["rows"] if isinstance(d, dict) else d)]


def benchmark_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table: mean +- std over splits of the test metrics (RMSE and MAE for ratings; NDCG@10, recall@10
    and AUC for implicit feedback), validation metric, seconds, found ops, the first test metric per split; under
    it the searched models' regret against the fixed ops (:func:`regret_table`) when the rows hold both."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    rating = "rmse" in rows[0]["test"]
    tests = ("rmse", "mae") if rating else ("ndcg@10", "recall@10", "auc")
    valid = "rmse" if rating else "ndcg@10"
    lines = ["| model | " + " | ".join(f"test {t.upper() if rating else t}" for t in tests)
             + f" | valid {valid.upper() if rating else valid} | search s | train s | found op / setting "
             f"| test {tests[0].upper() if rating else tests[0]} per split |",
             "| --- | " + " | ".join("---:" for _ in tests) + " | ---: | ---: | ---: | --- | --- |"]
    for m in models:
        rs = [r for r in rows if r["model"] == m]
        cells = [f"{mean_std([r['test'][t] for r in rs])[0]:.4f} +- {mean_std([r['test'][t] for r in rs])[1]:.4f}"
                 for t in tests]
        vm, _ = mean_std([r["valid"][valid] for r in rs])
        search = mean_std([r.get("seconds_search", 0.0) for r in rs])[0]
        train = mean_std([r["seconds_train"] for r in rs])[0]
        extra = ", ".join(sorted({r["op"] for r in rs if "op" in r})) or \
            ", ".join(sorted({json.dumps(r["setting"], sort_keys=True) for r in rs if r["setting"]}))
        per = ", ".join(f"{r['test'][tests[0]]:.4f}" for r in rs)
        lines.append(f"| {m} | {' | '.join(cells)} | {vm:.4f} | {search:.1f} | {train:.1f} | {extra} | {per} |")
    regret = regret_table(rows)
    return "\n".join(lines) + "\n" + (f"\n{regret}" if regret else "")


def split_regret(rows: list[dict[str, Any]], model: str) -> dict[str, Any] | None:
    """Regret of searched model ``model`` on one split's rows against its ``fixed:*`` rows (None without both).

    ``regret``: its test error minus that of the fixed op best on VALIDATION (what a user without the test set
    would have trained); ``regret_oracle``: minus that of the fixed op best on test. Error is RMSE for ratings and
    -NDCG@10 for implicit feedback, so a positive regret is always worse than the fixed op. ``picked_valid_best``:
    the op found is the validation-best fixed op (or one tied with it on validation)."""
    searched = [r for r in rows if r["model"] == model and "op" in r]
    fixed = [r for r in rows if r["model"].startswith("fixed:") and "@" not in r["model"]]
    if len(searched) != 1 or not fixed:
        return None
    row = searched[0]
    metric = "rmse" if "rmse" in row["test"] else "ndcg@10"
    sign = 1.0 if metric == "rmse" else -1.0
    v_best = min(sign * r["valid"][metric] for r in fixed)
    by_valid = min(fixed, key=lambda r: sign * r["valid"][metric])
    by_test = min(fixed, key=lambda r: sign * r["test"][metric])
    tied = {r["model"].removeprefix("fixed:") for r in fixed if sign * r["valid"][metric] == v_best}
    return {"metric": metric, "op": row["op"], "valid_best": by_valid["model"], "test_best": by_test["model"],
            "regret": sign * (row["test"][metric] - by_valid["test"][metric]),
            "regret_oracle": sign * (row["test"][metric] - by_test["test"][metric]),
            "picked_valid_best": row["op"] in tied, "fixed": sorted(r["model"] for r in fixed)}


def _add_regret(split_rows: list[dict[str, Any]]) -> None:
    """Store :func:`split_regret` in each searched row of one split (key ``regret``)."""
    for r in split_rows:
        if "op" in r and (reg := split_regret(split_rows, r["model"])) is not None:
            r["regret"] = reg


def regret_summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per searched model: its :func:`split_regret` on every split that has fixed rows, their mean +- std
    (``regret``, ``regret_oracle``) and how often it picked the validation-best fixed op (``picked``, ``splits``)."""
    out: dict[str, dict[str, Any]] = {}
    for m in dict.fromkeys(r["model"] for r in rows if "op" in r):
        per = {}
        for split in dict.fromkeys(r["split"] for r in rows if r["model"] == m):
            reg = split_regret([r for r in rows if r["split"] == split], m)
            if reg is not None:
                per[split] = reg
        if per:
            out[m] = {"per_split": per, "regret": mean_std([p["regret"] for p in per.values()]),
                      "regret_oracle": mean_std([p["regret_oracle"] for p in per.values()]),
                      "picked": sum(p["picked_valid_best"] for p in per.values()), "splits": len(per)}
    return out


def regret_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: each searched model's regret against the validation-best fixed op, per split and mean +- std,
    the oracle regret (against the test-best fixed op) and "valid-best picked k/n"; empty without both kinds."""
    summary = regret_summary(rows)
    if not summary:
        return ""
    first = next(iter(next(iter(summary.values()))["per_split"].values()))
    what = "RMSE" if first["metric"] == "rmse" else "-NDCG@10"
    fixed = ", ".join(f.removeprefix("fixed:") for f in first["fixed"])
    lines = [f"Regret: searched test {what} minus that of the fixed op best on validation, per split (oracle: "
             f"minus the test-best fixed op's); fixed ops: {fixed}.", "",
             "| searched model | regret | per split | oracle regret | valid-best picked | valid-best op per split |",
             "| --- | ---: | --- | ---: | ---: | --- |"]
    for m, s in summary.items():
        per = s["per_split"]
        lines.append(f"| {m} | {s['regret'][0]:.4f} +- {s['regret'][1]:.4f} | "
                     + ", ".join(f"{p['regret']:.4f}" for p in per.values())
                     + f" | {s['regret_oracle'][0]:.4f} +- {s['regret_oracle'][1]:.4f} | {s['picked']}/{s['splits']} | "
                     + ", ".join(f"{k}: {p['valid_best'].removeprefix('fixed:')}" for k, p in per.items()) + " |")
    return "\n".join(lines) + "\n"
