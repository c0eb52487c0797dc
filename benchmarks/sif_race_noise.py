"""How noisy is the top-N race's choice? Paired per-user comparisons of the ops' stand-alone fits (issue 14).

On each seed of the implicit benchmark's protocol (configs/implicit_ml100k_benchmark.yaml: ratings >= 4 are
positives, 5 validation and 5 test positives per user), every op the top-N race can enter (multiply, max, min) is
fitted stand-alone with the settings of the benchmark row ``sif_multiply_softmax_both`` (the race's fits are these
fits: same seed, same settings). For each fit the per-user validation and test NDCG@10 and AUC are kept
(:func:`sif.ranking.evaluate_ranking` with ``per_user=True``). The table then shows, per seed and op:

- validation NDCG@10 and its paired difference from the validation-best op in standard errors (z);
- validation AUC, test NDCG@10 and test AUC;
- the op each rule picks: the validation NDCG@10 maximum (the race without a tie rule) and the one-standard-error
  tie rule (:func:`sif.selection.tie_break`, ``race_tie_z`` 1: ops within 1 standard error of the best NDCG tie,
  the best AUC wins), and what each pick scores on test.

    NASP_DATA_DIR=/work/shared/data OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/sif_race_noise.py \\
        --out benchmarks/results/sif_race_noise_topn.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._machine import machine  # noqa: E402
from benchmarks.sif_implicit_ml100k import splits  # noqa: E402
from data_loaders import load_movielens  # noqa: E402
from sif.implicit_feedback import model_score_fn  # noqa: E402
from sif.ranking import evaluate_ranking  # noqa: E402
from sif.recommender import create_recommender  # noqa: E402
from sif.selection import RaceResult, tie_break  # noqa: E402

OPS = ("multiply", "max", "min")
ROW = "sif_multiply_softmax_both"


def fit_op(op: str, cfg: dict, train, valid, seed: int, device: str):
    """The stand-alone fit of ``op`` with the benchmark row's settings; (model, fit seconds)."""
    n, ov = cfg["neural"], dict(cfg["neural_overrides"][ROW])
    params = dict(cfg["grids"][ROW][0])
    train_kw = {**n["train"], **ov.pop("train", {}), **params.pop("train", {})}
    rec = create_recommender(f"fixed:{op}", task=ov.pop("task"), num_negatives=ov.pop("num_negatives"),
                             device=device, random_state=seed, use_bias=True, train=train_kw, **ov, **params)
    t0 = time.perf_counter()
    rec.fit(train, valid, show_progress=False)
    return rec.model_, time.perf_counter() - t0


def per_user(model, seen, target, device: str) -> dict[str, list[float]]:
    out = evaluate_ranking(model_score_fn(model), seen, target, ks=(10,), auc=True, device=device, per_user=True)
    return {"ndcg@10": out["ndcg@10"].tolist(), "auc": out["auc"].tolist()}


def analyse(fits: dict[str, dict]) -> dict:
    """Per op: means and the paired z against the validation-NDCG best; the picks of both rules."""
    v = {op: {k: np.asarray(x) for k, x in f["valid"].items()} for op, f in fits.items()}
    best = max(OPS, key=lambda op: (v[op]["ndcg@10"].mean(), -OPS.index(op)))
    rows = {}
    for op in OPS:
        d = v[op]["ndcg@10"] - v[best]["ndcg@10"]
        se = d.std(ddof=1) / np.sqrt(len(d))
        rows[op] = {"valid_ndcg": float(v[op]["ndcg@10"].mean()), "z_vs_best": float(d.mean() / se) if se else 0.0,
                    "valid_auc": float(np.nanmean(v[op]["auc"])),
                    "test_ndcg": float(np.mean(fits[op]["test"]["ndcg@10"])),
                    "test_auc": float(np.nanmean(fits[op]["test"]["auc"]))}
    race = RaceResult(best, OPS, {op: [0.0] for op in OPS}, len(OPS), stopped=OPS)
    tb = tie_break(race, lambda op: v[op], "ndcg@10", "auc", maximize=True, z=1.0)
    return {"ops": rows, "ndcg_pick": best, "tie_rule_pick": tb["winner"], "tied": tb["tied"],
            "ndcg_pick_test": rows[best]["test_ndcg"], "tie_rule_pick_test": rows[tb["winner"]]["test_ndcg"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs/implicit_ml100k_benchmark.yaml"))
    p.add_argument("--seeds", type=int, nargs="+", help="override the config's seeds")
    p.add_argument("--max-epochs", type=int, help="override max_epochs (quick checks)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    torch.set_num_threads(1)
    cfg = yaml.safe_load(Path(a.config).read_text())
    if a.max_epochs:
        cfg["neural_overrides"][ROW].setdefault("train", {})["max_epochs"] = a.max_epochs
    ds = load_movielens(cfg["data"]["dataset"].removeprefix("ml-"))
    result = {"machine": machine(), "command": " ".join(sys.argv), "row": ROW, "seeds": {}}
    for seed in a.seeds or cfg["seeds"]:
        (train, valid, _), (tr, va, te) = splits(ds, cfg, seed)
        fits = {}
        for op in OPS:
            model, secs = fit_op(op, cfg, train, valid, seed, a.device)
            fits[op] = {"seconds": secs, "valid": per_user(model, tr, va, a.device),
                        "test": per_user(model, tr + va, te, a.device)}
        result["seeds"][str(seed)] = analyse(fits)
        print(json.dumps({seed: result["seeds"][str(seed)]}), flush=True)
    picks = {rule: [s[f"{rule}_pick_test"] for s in result["seeds"].values()] for rule in ("ndcg", "tie_rule")}
    result["mean_test_ndcg"] = {rule: float(np.mean(x)) for rule, x in picks.items()}
    result["std_test_ndcg"] = {rule: float(np.std(x, ddof=1)) if len(x) > 1 else 0.0 for rule, x in picks.items()}
    result["machine"]["load_average_end"] = machine().get("load_average", "")
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("mean_test_ndcg", "std_test_ndcg")}))


if __name__ == "__main__":
    main()
