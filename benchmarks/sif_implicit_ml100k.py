"""Implicit feedback on ML-100K: SIF (searched; and multiply fixed), GMF, NCF, NeuMF, implicit ALS, BPR, LMF.

Protocol (configs/implicit_ml100k_benchmark.yaml): ratings >= 4 are positives; per user, 5 random positives are the
test set and 5 more the validation set. Every model is tuned with the same budget: each configuration of its grid
(2 per model) is fitted once on the tuning seed and scored on validation NDCG@10 (training positives filtered);
the best configuration is then fitted on every seed (split and initialisation change with the seed) and scored on
test with the training and validation positives filtered. Every number comes from the same call,
:func:`sif.ranking.evaluate_ranking`, on a ``score_fn(users) -> (b, n_items)``: the neural models score with their
forward pass (:func:`sif.implicit_feedback.model_score_fn`), implicit's models with factor dot products.
Fit seconds: wall time of ``fit`` (SIF: search + stand-alone training) on the shared machine.

    NASP_DATA_DIR=/work/shared/data nice -n 15 python benchmarks/sif_implicit_ml100k.py --out runs/implicit.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from data_loaders import load_movielens, to_csr
from sif.evaluation import mean_std
from sif.implicit_adapters import fit_implicit
from sif.implicit_feedback import implicit_splits, model_score_fn
from sif.interactions import PRIMITIVES
from sif.peers import fit_ease
from sif.ranking import evaluate_ranking
from sif.recommender import create_recommender

try:
    from ._machine import machine_line
except ImportError:  # run as a script
    from _machine import machine_line

MODELS = ("sif", "sif_nonsep", "sif_multiply", "sif_softmax", "sif_multiply_softmax", "sif_softmax_both",
          "sif_multiply_softmax_both", "gmf", "ncf", "neumf",
          "implicit_als", "implicit_bpr", "implicit_lmf", "implicit_als_wide", "ease", "popularity")
LABELS = {"sif": "SIF (searched, all 5 ops)", "sif_nonsep": "SIF (searched, multiply/max/min: the bpr default)",
          "sif_multiply": "SIF with multiply fixed (not searched)",
          "sif_softmax": "SIF (searched, multiply/max/min), sampled softmax, user neighbourhood",
          "sif_multiply_softmax": "SIF with multiply fixed, sampled softmax, user neighbourhood",
          "sif_softmax_both": "SIF (searched, multiply/max/min), sampled softmax, user and item neighbourhoods",
          "sif_multiply_softmax_both": "SIF with multiply fixed, sampled softmax, user and item neighbourhoods",
          "gmf": "GMF",
          "ncf": "NCF", "neumf": "NeuMF", "implicit_als": "implicit ALS",
          "implicit_bpr": "implicit BPR", "implicit_lmf": "implicit LMF",
          "implicit_als_wide": "implicit ALS, wider grid", "ease": "EASE (cornac)",
          "popularity": "popularity (reference, not tuned)"}


def evaluate(score_fn, seen, target, ks) -> dict[str, float]:
    """The one evaluation call of every model."""
    return evaluate_ranking(score_fn, seen, target, ks=ks, auc=True)


def fit(name: str, params: dict, cfg: dict, train, valid, train_m, valid_m, seed: int, device: str):
    """(score_fn, fit seconds, extra info) of model ``name`` with ``params``."""
    if name == "popularity":     # every user gets the items ranked by their number of training positives
        t0 = time.perf_counter()
        counts = torch.from_numpy(np.asarray(train_m.sum(0)).ravel().astype(np.float32)).to(device)   # (I,)
        return (lambda users: counts.expand(len(users), -1)), time.perf_counter() - t0, {}
    if name == "ease":           # cornac's closed-form item-item model on the same training matrix
        f = fit_ease(train_m, seed=seed, **params)
        return f.score_fn(device), f.seconds, {}
    if name.startswith("implicit_"):
        f = fit_implicit(name.split("_")[1], train_m, random_state=seed, num_threads=1, **params)
        return f.score_fn(device), f.seconds, {}
    n, params = cfg["neural"], dict(params)
    model_kw = dict(cfg.get("neural_overrides", {}).get(name, {}))   # e.g. task, num_negatives, neighbourhood
    train_kw = {**n["train"], **model_kw.pop("train", {}), **params.pop("train", {})}
    kw = dict(task=n["task"], num_negatives=n["num_negatives"], device=device, random_state=seed,
              use_bias=name.startswith("sif"))
    kw.update(model_kw, train=train_kw, **params)
    if name in ("sif", "sif_nonsep", "sif_softmax", "sif_softmax_both"):
        kw["search"] = dict(n["sif_search"])
    if name == "sif":            # the paper's five primitives, plus and concat included
        kw["ops"] = list(PRIMITIVES)
    if name == "sif_nonsep":     # only the ops whose score is not a sum of a user term and an item term (the
        kw["ops"] = list(n["sif_nonseparable_ops"])      # library's default search space for bpr and bce)
    model = {"sif_nonsep": "sif", "sif_softmax": "sif", "sif_softmax_both": "sif", "sif_multiply": "fixed:multiply",
             "sif_multiply_softmax": "fixed:multiply", "sif_multiply_softmax_both": "fixed:multiply"}.get(name, name)
    rec = create_recommender(model, **kw)
    t0 = time.perf_counter()
    rec.fit(train, valid, show_progress=False)
    seconds = time.perf_counter() - t0
    info = {"epochs": len(rec.train_result_.history), "best_epoch": rec.train_result_.best_epoch}
    if model == "sif":
        info["op"] = rec.op_
        if hasattr(rec, "selection_"):
            info["race"] = rec.selection_.summary()      # candidates, eliminations, the tie rule's record
    return model_score_fn(rec.model_), seconds, info


def splits(ds, cfg: dict, seed: int):
    d = cfg["data"]
    train, valid, test = implicit_splits(ds, d["threshold"], d["split"], d["k"], d.get("valid_k"), seed)
    return (train, valid, test), tuple(to_csr(x, binary=True) for x in (train, valid, test))


def tune(name: str, cfg: dict, ds, device: str, log) -> tuple[dict, list]:
    if len(cfg["grids"][name]) == 1:      # nothing to choose: no tuning fit
        return cfg["grids"][name][0], []
    seed = cfg["tune_seed"]
    (train, valid, _), (tr, va, _) = splits(ds, cfg, seed)
    trials = []
    for params in cfg["grids"][name]:
        score_fn, seconds, info = fit(name, params, cfg, train, valid, tr, va, seed, device)
        m = evaluate(score_fn, tr, va, cfg["ks"])
        trials.append({"params": params, "valid": m, "seconds": seconds, **info})
        log(f"tune {name} {params}: valid ndcg@10={m['ndcg@10']:.4f} recall@10={m['recall@10']:.4f} "
            f"({seconds:.1f} s) {info}")
    best = max(trials, key=lambda t: t["valid"]["ndcg@10"])
    return best["params"], trials


def run(cfg: dict, models, device: str, out: Path | None) -> dict:
    ds = load_movielens(cfg["data"]["dataset"].removeprefix("ml-"))
    results = {"machine": machine_line(), "config": cfg, "models": {}}

    def log(msg):
        print(msg, flush=True)

    for name in models:
        best, trials = tune(name, cfg, ds, device, log)
        runs = []
        for seed in cfg["seeds"]:
            (train, valid, _), (tr, va, te) = splits(ds, cfg, seed)
            score_fn, seconds, info = fit(name, best, cfg, train, valid, tr, va, seed, device)
            m = evaluate(score_fn, tr + va, te, cfg["ks"])
            runs.append({"seed": seed, "test": m, "seconds": seconds, **info})
            log(f"{name} seed {seed}: test ndcg@10={m['ndcg@10']:.4f} recall@10={m['recall@10']:.4f} "
                f"({seconds:.1f} s) {info}")
        results["models"][name] = {"best_params": best, "tuning": trials, "runs": runs}
        if out is not None:
            out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return results


def table(results: dict) -> str:
    rows = ["| model | Recall@10 | NDCG@10 | HR@10 | AUC | fit s | chosen configuration |",
            "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for name, r in results["models"].items():
        cells = []
        for key in ("recall@10", "ndcg@10", "hr@10", "auc"):
            m, s = mean_std([x["test"][key] for x in r["runs"]])
            cells.append(f"{m:.4f} +- {s:.4f}")
        m, s = mean_std([x["seconds"] for x in r["runs"]])
        chosen = ", ".join(f"{k}={v}" for k, v in r["best_params"].items())
        ops = sorted({x["op"] for x in r["runs"] if "op" in x})
        if ops:
            chosen += f"; op: {'/'.join(ops)}"
        rows.append(f"| {LABELS.get(name, name)} | {' | '.join(cells)} | {m:.1f} +- {s:.1f} | {chosen} |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = Path(__file__).resolve().parents[1]
    p.add_argument("--config", default=str(root / "configs/implicit_ml100k_benchmark.yaml"))
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--seeds", type=int, nargs="+", help="override the config's seeds")
    p.add_argument("--max-epochs", type=int, help="override the neural models' max_epochs (quick checks)")
    p.add_argument("--search-epochs", type=int, help="override SIF's search epochs (quick checks)")
    p.add_argument("--grid-size", type=int, help="use only the first n configurations of every grid")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core box)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path)
    p.add_argument("--table", type=Path, nargs="+", help="only print the table of these result files (merged)")
    a = p.parse_args()
    if a.table:
        merged = {"models": {}}
        for f in a.table:
            r = json.loads(f.read_text())
            merged["models"].update(r["models"])
            print(r["machine"])
        merged["models"] = {k: merged["models"][k] for k in MODELS if k in merged["models"]}
        print(table(merged))
        return
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    torch.set_num_threads(a.threads)
    cfg = yaml.safe_load(Path(a.config).read_text())
    if a.seeds:
        cfg["seeds"] = a.seeds
    if a.max_epochs:
        cfg["neural"]["train"]["max_epochs"] = a.max_epochs
    if a.search_epochs:
        cfg["neural"]["sif_search"]["epochs"] = a.search_epochs
    if a.grid_size:
        cfg["grids"] = {k: v[: a.grid_size] for k, v in cfg["grids"].items()}
    np.random.seed(0)
    results = run(cfg, a.models, a.device, a.out)
    print(results["machine"])
    print(table(results))


if __name__ == "__main__":
    main()
