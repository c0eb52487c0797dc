"""SIF tensor search on (user, item, context) data: the rows of ``sif benchmark`` plus what it cannot express.

For every fold of the configs' ``benchmark.folds`` and every config (one per context), the models of
``benchmark.models`` are fitted exactly as ``sif benchmark`` fits them (``benchmark.tune`` grids chosen on
validation), then the context-free rows on the same splits with the contexts dropped: ``matrix:sif`` (the
searched matrix op, five candidates) and ``matrix:mf`` (MF tuned with the ``mf`` grid). The summary gives per
context mean +- std of the test RMSE, the regret of the searched op against the fixed candidate best on
validation, the op found per fold, and the seconds of search + stand-alone training against training the five
symmetric fixed classes. Rows are written after each fit, so a partial run keeps what it finished.

    NASP_DATA_DIR=../shared/data nice taskset -c 0 python benchmarks/sif_tensor_benchmark.py \\
        --configs configs/sif_tensor_ml100k_folds.yaml configs/sif_tensor_ml100k_folds_genre.yaml \\
        --out benchmarks/results/sif_tensor_ml100k.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from data_loaders import random_split
from sif.benchmark import fit_tuned, train_seconds, valid_scores
from sif.config import RunConfig, load_config
from sif.data import load_splits
from sif.evaluation import mean_std
from sif.recommender import SIFRecommender
from sif.synthetic import planted_ratings

SYMMETRIC = ("fixed:plus_plus", "fixed:multiply_multiply", "fixed:max_max", "fixed:min_min", "fixed:concat_concat")
MATRIX = ("matrix:sif", "matrix:mf")
# planted data in the shape of ML-100K (users, items, ratings) with 8 context values (as the 8 time bins); noise 1.0
# against a planted signal of std about 2 (dimension 4, heads in [0.5, 1.5]): fixed before any run
PLANTED = {"num_users": 943, "num_items": 1682, "num_contexts": 8, "dim": 4, "n": 100_000, "noise": 1.0}


def _row(cfg: RunConfig, name: str, base: str, context: str, split, data, grid: dict) -> dict[str, Any]:
    t0, c0 = time.perf_counter(), time.process_time()
    rec, setting = fit_tuned(cfg, base, grid, data)
    cpu = time.process_time() - c0      # this process's CPU seconds: the cost on a shared core (1 torch thread)
    row = {"model": name, "context": context, "num_contexts": data[0].num_contexts, "split": split,
           "test": rec.score(data[2]), "valid": valid_scores(rec, data[1]), "seconds": time.perf_counter() - t0,
           "cpu_seconds": cpu, "seconds_train": train_seconds(rec), "setting": setting,
           "epochs": rec.train_result_.best_epoch,
           "load": os.getloadavg()[0], "run": datetime.now(timezone.utc).strftime("%Y-%m-%d")}
    if isinstance(rec, SIFRecommender):
        row.update(op=rec.op_, seconds_search=rec.search_result_.seconds,
                   search_epochs=len(rec.search_result_.history))
        if getattr(rec, "selection_", None) is not None:
            row["race"] = rec.selection_.summary()
    return row


def _grid(cfg: RunConfig, name: str) -> tuple[str, dict[str, list]]:
    """(recommender name, grid) of a row name: ``base@key=value`` fixes a model setting of ``base`` (e.g.
    ``sif@race_k=53``); the grid is ``benchmark.tune`` of the row name, else of the base name."""
    base, _, over = name.removeprefix("matrix:").partition("@")
    grid = dict(cfg.benchmark.tune.get(name, cfg.benchmark.tune.get(base, {})))
    if over:
        key, _, value = over.partition("=")
        grid[key] = [json.loads(value)]
    return base, grid


def planted_splits(op: str, seed: int, **overrides):
    """(train, valid, test) of planted tensor data in the shape of ML-100K: :func:`sif.synthetic.planted_ratings`
    with ``op`` (a two-stage candidate) and :data:`PLANTED` (943 users, 1682 items, 8 contexts, 100,000 distinct
    (user, item, context) cells, embeddings of dimension 4, Gaussian noise 1.0; ``overrides`` replace any of
    them); split 80/10/10 at random by ``seed``."""
    ds = planted_ratings(op, seed=seed, **{**PLANTED, **overrides})
    return random_split(ds, (0.8, 0.1, 0.1), seed=seed)


def run(configs: list[str], out: Path, folds: list | None, stop_at: datetime | None,
        models: list[str] | None = None, planted: list[str] | None = None) -> list[dict[str, Any]]:
    """Fit every row (fold-major, so that a stopped run has whole folds of every context); returns the rows.
    ``models``: the row names to fit (default: the configs' ``benchmark.models`` and the matrix rows);
    ``planted``: instead of the configs' data, planted tensor data (:func:`planted_splits`) of each named op, one
    data set per seed of ``folds`` (default ``benchmark.seeds``); the configs give the model settings."""
    cfgs = [load_config(c) for c in configs]
    if cfgs[0].threads:
        torch.set_num_threads(cfgs[0].threads)
    rows: list[dict[str, Any]] = json.loads(out.read_text()) if out.is_file() else []
    done = {(r["context"], str(r["split"]), r["model"]) for r in rows}
    sources = [(cfgs[0], f"planted:{op}") for op in planted] if planted else [(c, c.data.context) for c in cfgs]
    default_splits = cfgs[0].benchmark.seeds if planted else cfgs[0].benchmark.folds
    for split in folds or default_splits:
        for cfg, context in sources:
            if stop_at and datetime.now(timezone.utc) >= stop_at:
                print(f"stopped at {stop_at:%H:%M} UTC before split {split} ({context})", flush=True)
                return rows
            run_cfg = copy.deepcopy(cfg)
            if planted:
                run_cfg.seed = int(split)
                tensor = planted_splits(context.removeprefix("planted:"), int(split))
            else:
                run_cfg.data.fold = split
                tensor = load_splits(run_cfg.data, run_cfg.seed)
            matrix = tuple(ds.with_contexts(None, None) for ds in tensor)
            for name in models or [*cfg.benchmark.models, *MATRIX]:
                if (context, str(split), name) in done:
                    continue
                base, grid = _grid(cfg, name)
                row = _row(run_cfg, name, base, context, split, matrix if name.startswith("matrix:") else tensor,
                           grid)
                rows.append(row)
                out.write_text(json.dumps(rows, indent=1) + "\n")
                print(f"[{context} {split}] {name:28s} test RMSE {row['test']['rmse']:.4f} valid "
                      f"{row['valid']['rmse']:.4f} ({row['seconds']:.1f}s)" + (f" op={row['op']}" if "op" in row
                                                                                else ""), flush=True)
    return rows


def _ms(values: list[float]) -> str:
    m, s = mean_std(values)
    return f"{m:.4f} +- {s:.4f}"


def _per_split(rows, context, model) -> dict[str, dict[str, Any]]:
    return {str(r["split"]): r for r in rows if r["context"] == context and r["model"] == model}


def _best_fixed(rows, context, split) -> dict[str, Any]:
    """The fixed candidate of ``split`` with the best validation RMSE."""
    fixed = [r for r in rows if r["context"] == context and str(r["split"]) == split and r["model"].startswith(
        "fixed:")]
    return min(fixed, key=lambda r: r["valid"]["rmse"])


def summary(rows: list[dict[str, Any]]) -> str:
    """Markdown: per context a table of the models over the folds every model finished, then regret and cost."""
    out = []
    for context in dict.fromkeys(r["context"] for r in rows):
        models = sorted(dict.fromkeys(r["model"] for r in rows if r["context"] == context), key=_order)
        per = {m: _per_split(rows, context, m) for m in models}
        splits = sorted(set.intersection(*(set(p) for p in per.values())))
        if not splits:
            continue
        where = f"seeds {', '.join(splits)}" if context.startswith("planted:") else f"folds u{', u'.join(splits)}"
        out += [f"**context {context}** ({_contexts(rows, context)} values; {where})", "",
                "| model | test RMSE | valid RMSE | seconds (search + train) | run | found op / setting |",
                "| --- | ---: | ---: | ---: | --- | --- |"]
        for m in models:
            rs = [per[m][s] for s in splits]
            extra = ", ".join(r.get("op", "") or json.dumps(r["setting"], sort_keys=True) for r in rs
                              if r.get("op") or r["setting"])
            out.append(f"| {m} | {_ms([r['test']['rmse'] for r in rs])} | {_ms([r['valid']['rmse'] for r in rs])}"
                       f" | {mean_std([r['seconds'] for r in rs])[0]:.1f} | "
                       f"{', '.join(sorted({r.get('run', '') for r in rs}))} | {extra} |")
        out += ["", *_regret_and_cost(rows, per, context, splits), ""]
    return "\n".join(out) + "\n"


def _order(model: str) -> int:
    """Table order: the searched rows, the fixed candidates, CP and TuckER, the context-free rows."""
    kind = model.partition("@")[0]
    return next((i for i, k in enumerate(("sif", "sif_search", "sif_random", "fixed:", "cp", "tucker", "matrix:"))
                 if kind == k or (k.endswith(":") and kind.startswith(k))), 7)


def _contexts(rows, context) -> int:
    return max(r["num_contexts"] for r in rows if r["context"] == context)


def _searched(per) -> list[str]:
    """The searched rows: sif (search and race), its variants (sif@key=value), sif_search and sif_random."""
    return [m for m in per if m.partition("@")[0] in ("sif", "sif_search", "sif_random")]


def _regret_and_cost(rows, per, context, splits) -> list[str]:
    lines = []
    fixed = {str(r["split"]) for r in rows if r["context"] == context and r["model"].startswith("fixed:")}
    for m in _searched(per) if fixed.issuperset(splits) else []:
        best = [_best_fixed(rows, context, s) for s in splits]
        regret = [per[m][s]["test"]["rmse"] - b["test"]["rmse"] for s, b in zip(splits, best, strict=True)]
        lines.append(f"- {m}: regret against the validation-best fixed candidate "
                     f"({', '.join(b['model'].removeprefix('fixed:') for b in best)}): {_ms(regret)}; "
                     f"found {', '.join(per[m][s]['op'] for s in splits)}")
    for m in _searched(per):
        if m != "sif_random" and all(f in per for f in SYMMETRIC):
            search = [per[m][s]["seconds"] for s in splits]
            fixed5 = [sum(per[f][s]["seconds"] for f in SYMMETRIC) for s in splits]
            ratio = [a / b for a, b in zip(search, fixed5, strict=True)]
            lines.append(f"- cost of {m}: search + stand-alone training {mean_std(search)[0]:.1f}s against "
                         f"{mean_std(fixed5)[0]:.1f}s for training the 5 symmetric fixed classes (ratio {_ms(ratio)})")
            lines += _cpu_cost(per, m, splits)
    for m in [m for m in _searched(per) if m.partition("@")[0] == "sif"]:
        lines += [_beats(per, m, other, splits) for other in ("matrix:sif", "matrix:mf", "cp", "tucker")
                  if other in per]
    return lines


def _cpu_cost(per, m: str, splits) -> list[str]:
    """The cost line in CPU seconds of the process (rows since 2026-12-05), which a shared core's load inflates
    less than wall seconds."""
    rows = [per[k][s] for k in (m, *SYMMETRIC) for s in splits]
    if not all("cpu_seconds" in r for r in rows):
        return []
    own = [per[m][s]["cpu_seconds"] for s in splits]
    fixed5 = [sum(per[f][s]["cpu_seconds"] for f in SYMMETRIC) for s in splits]
    ratio = [a / b for a, b in zip(own, fixed5, strict=True)]
    return [f"- cost of {m} in CPU seconds: {mean_std(own)[0]:.1f}s against {mean_std(fixed5)[0]:.1f}s for the 5 "
            f"symmetric fixed classes (ratio {_ms(ratio)})"]


def _beats(per, a: str, b: str, splits) -> str:
    """Target: ``a`` beats ``b`` when its mean test RMSE is lower by more than the larger of the two stds."""
    ma, sa = mean_std([per[a][s]["test"]["rmse"] for s in splits])
    mb, sb = mean_std([per[b][s]["test"]["rmse"] for s in splits])
    diff = [per[b][s]["test"]["rmse"] - per[a][s]["test"]["rmse"] for s in splits]
    verdict = ("met" if mb - ma > max(sa, sb) else "not met") if len(splits) > 1 else "n/a (one fold)"
    return (f"- target {a} < {b} by one std: {verdict} ({mb - ma:+.4f} against std {max(sa, sb):.4f}; per fold "
            f"{', '.join(f'{d:+.4f}' for d in diff)})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=["configs/sif_tensor_ml100k_folds.yaml",
                                                    "configs/sif_tensor_ml100k_folds_genre.yaml"])
    p.add_argument("--out", default="benchmarks/results/sif_tensor_ml100k.json")
    p.add_argument("--folds", nargs="*", help="override benchmark.folds (with --planted: the seeds)")
    p.add_argument("--models", nargs="*", help="the rows to fit (default: benchmark.models and the matrix rows); "
                                               "base@key=value fixes a model setting, e.g. sif@race_k=53")
    p.add_argument("--planted", nargs="*", help="planted tensor data of these two-stage ops instead of the configs' "
                                                "data (one data set per seed; the configs give the model settings)")
    p.add_argument("--stop-at", help="HH:MM (UTC): start no new fold after it")
    p.add_argument("--summary-only", action="store_true", help="only print the summary of --out")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stop = None
    if args.stop_at:
        h, m = map(int, args.stop_at.split(":"))
        stop = datetime.now(timezone.utc).replace(hour=h, minute=m, second=0, microsecond=0)
    rows = json.loads(out.read_text()) if args.summary_only else run(args.configs, out, args.folds, stop, args.models,
                                                                  args.planted)
    print(summary(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
