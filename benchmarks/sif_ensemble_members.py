"""Averages of stand-alone fits on ML-100K u1..u5: other seeds against other interaction functions (issue 14,
"The race's ensemble").

``--fit DIR`` fits every (model, fold, initialisation seed) of :data:`FITS` with the settings of
configs/sif_ml100k_folds_tuned.yaml (the quick start's on the folds; each model's own ``@`` settings), one process
per fit so that two can run side by side (``--core``, ``--part K/N``), and stores each fit's test predictions
(``DIR/f<fold>_<tag>_<seed>.npz``) and scores (``DIR/fits.jsonl``). ``--table DIR`` averages the stored predictions
over the members of each row of :data:`AVERAGES` (equal weights, then clipped to 1..5) and writes the test RMSE per
fold, its mean +- std and the per-fold difference from tuned SVD++ alone (``--out``)::

    NASP_DATA_DIR=/work/shared/data python benchmarks/sif_ensemble_members.py --fit runs/ens --core 0 --part 0/2
    NASP_DATA_DIR=/work/shared/data python benchmarks/sif_ensemble_members.py --fit runs/ens --core 1 --part 1/2
    python benchmarks/sif_ensemble_members.py --table runs/ens --out benchmarks/results/sif_ensemble_members.json

The seed here is the model's ``random_state`` (its initialisation and batch order); the split is the fold's and the
validation part of u<k>.base is the run's (seed 0) for every fit.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._machine import machine  # noqa: E402

CONFIG = ROOT / "configs" / "sif_ml100k_folds_tuned.yaml"
SIF = "@model.reg=0.3,model.neighbourhood_reg=0.1"        # the quick start's regularisation
MODELS = {"mm": "fixed:multiply+max" + SIF, "mul": "fixed:multiply" + SIF, "max": "fixed:max" + SIF,
          "min": "fixed:min" + SIF, "svdpp": "mf@model.reg=0.4,model.neighbourhood_reg=0.05"}
FITS = [(tag, seed) for seed in (0, 1, 2) for tag in ("svdpp", "mm")] + [("mul", 0), ("min", 0), ("max", 0)]
AVERAGES = {            # row name: members (tag, seed)
    "svdpp (tuned SVD++ alone)": [("svdpp", 0)],
    "mm (multiply+max alone, the race's winner)": [("mm", 0)],
    "mul (multiply alone)": [("mul", 0)],
    "svdpp x 2 seeds": [("svdpp", 0), ("svdpp", 1)],
    "svdpp x 3 seeds": [("svdpp", s) for s in range(3)],
    "mm x 2 seeds": [("mm", 0), ("mm", 1)],
    "mm x 3 seeds": [("mm", s) for s in range(3)],
    "mm + mul (the race's ensemble)": [("mm", 0), ("mul", 0)],
    "mm + max": [("mm", 0), ("max", 0)],
    "mm + min": [("mm", 0), ("min", 0)],
    "mm + mul + min": [("mm", 0), ("mul", 0), ("min", 0)],
    "mm x 3 seeds + mul": [("mm", s) for s in range(3)] + [("mul", 0)],
    "mm + svdpp": [("mm", 0), ("svdpp", 0)],
    "mm x 3 seeds + svdpp x 3 seeds": [(t, s) for t in ("mm", "svdpp") for s in range(3)],
}
FOLDS = (1, 2, 3, 4, 5)


def fit_one(out: Path, fold: int, tag: str, seed: int) -> None:
    """One fit: its test predictions to ``out/f<fold>_<tag>_<seed>.npz`` and a line to ``out/fits.jsonl``."""
    import torch

    from sif.benchmark import model_config, valid_scores
    from sif.build import build_recommender
    from sif.config import load_config
    from sif.data import load_splits

    torch.set_num_threads(1)
    cfg = load_config(CONFIG)
    cfg.data.fold = fold
    train, valid, test = load_splits(cfg.data, cfg.seed)
    name, mcfg = model_config(cfg, MODELS[tag])
    mcfg = copy.deepcopy(mcfg)
    mcfg.data, mcfg.seed = cfg.data, cfg.seed
    t0 = time.perf_counter()
    rec = build_recommender(mcfg, name, strict=False, random_state=seed).fit(train, valid, show_progress=False)
    pred = rec.predict(test.users.numpy(), test.items.numpy(), ids="index")        # (n_test,) raw scale, clipped
    np.savez(out / f"f{fold}_{tag}_{seed}.npz", pred=pred, y=test.ratings.numpy())
    row = {"fold": fold, "tag": tag, "model": MODELS[tag], "seed": seed, "test": rec.score(test),
           "valid": valid_scores(rec, valid), "seconds": time.perf_counter() - t0, "load": os.getloadavg()[0]}
    with open(out / "fits.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def fit_all(out: Path, core: int | None, part: str) -> None:
    k, n = (int(x) for x in part.split("/"))
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(fold, tag, seed) for fold in FOLDS for tag, seed in FITS]
    for fold, tag, seed in jobs[k::n]:
        if (out / f"f{fold}_{tag}_{seed}.npz").is_file():
            continue
        cmd = [sys.executable, __file__, "--one", str(out), str(fold), tag, str(seed)]
        subprocess.run((["taskset", "-c", str(core)] if core is not None else []) + cmd, check=True)


def table(out: Path) -> dict:
    """Test RMSE of every row of AVERAGES per fold (rows with a missing fit are left out)."""
    def rmse(members, fold):
        parts = [np.load(out / f"f{fold}_{tag}_{seed}.npz") for tag, seed in members]
        pred = np.clip(np.mean([p["pred"] for p in parts], axis=0), 1.0, 5.0)
        return float(np.sqrt(np.mean((pred - parts[0]["y"]) ** 2)))

    rows = {}
    for name, members in AVERAGES.items():
        try:
            rows[name] = [rmse(members, fold) for fold in FOLDS]
        except FileNotFoundError:
            continue
    base = rows.get("svdpp (tuned SVD++ alone)")
    lines = ["| average of | members | test RMSE | u1, u2, u3, u4, u5 | minus SVD++ alone (paired) | ahead on |",
             "| --- | ---: | ---: | --- | ---: | ---: |"]
    for name, v in rows.items():
        d = np.array(v) - np.array(base) if base else np.zeros(len(v))
        lines.append(f"| {name} | {len(AVERAGES[name])} | {np.mean(v):.4f} +- {np.std(v, ddof=1):.4f} | "
                     f"{', '.join(f'{x:.4f}' for x in v)} | {d.mean():+.4f} +- {d.std(ddof=1):.4f} | "
                     f"{int((d < 0).sum())}/{len(d)} |")
    fits = [json.loads(line) for line in (out / "fits.jsonl").read_text().splitlines() if line.strip()]
    return {"machine": machine(), "config": str(CONFIG.relative_to(ROOT)), "models": MODELS, "rows": rows,
            "table": "\n".join(lines), "fits": fits}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fit", type=Path, help="fit every (model, fold, seed) into this folder")
    p.add_argument("--core", type=int, help="with --fit: pin each fit to this CPU (taskset)")
    p.add_argument("--part", default="0/1", help="with --fit: K/N, this process's share of the fits")
    p.add_argument("--one", nargs=4, help=argparse.SUPPRESS)        # FOLDER FOLD TAG SEED (one fit, a subprocess)
    p.add_argument("--table", type=Path, help="average the stored predictions of this folder")
    p.add_argument("--out", type=Path, help="with --table: JSON file")
    a = p.parse_args()
    if a.one:
        fit_one(Path(a.one[0]), int(a.one[1]), a.one[2], int(a.one[3]))
    elif a.fit:
        fit_all(a.fit, a.core, a.part)
    elif a.table:
        res = table(a.table)
        print(res["table"])
        if a.out:
            a.out.write_text(json.dumps(res, indent=1) + "\n")
    else:
        p.error("give --fit or --table")


if __name__ == "__main__":
    main()
