"""Cost of the SIF search against training fixed interaction functions, measured side by side in one run.

1. Seconds per epoch (median of repeats): one NASP search epoch on the SIF space vs one training epoch of a
   single fixed interaction function, same data, same batch size, both including their validation pass.
2. Totals: the library's default fit (search, race, the race's ensemble) vs training every fixed function of the
   default search space (``sif.interactions.SEARCH_SPACE``: the five primitives and multiply+max), each to its
   early stop.

    NASP_DATA_DIR=../shared/data python benchmarks/sif_cost.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from data_loaders import movielens_fold, random_split
from sif.interactions import SEARCH_SPACE
from sif.recommender import FixedInteractionRecommender, SIFRecommender

try:
    from ._machine import machine_line
except ImportError:
    from _machine import machine_line


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=8)
    p.add_argument("--search-epochs", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/sif_cost.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(os.environ.get("NASP_DATA_DIR", "../shared/data")) / "ml-100k"
    base, _ = movielens_fold(root, fold=1)
    train, valid, _ = random_split(base, (0.9, 0.1, 0.0), seed=0)
    common = dict(embedding_dim=args.dim, use_bias=True, random_state=0,
                  train={"batch_size": 512, "max_epochs": 300, "patience": 10})
    t0 = time.perf_counter()
    sif = SIFRecommender(search={"epochs": args.search_epochs}, **common).fit(train, valid, show_progress=False)
    sif_total = time.perf_counter() - t0
    fixed = {}
    for op in SEARCH_SPACE:
        t0 = time.perf_counter()
        rec = FixedInteractionRecommender(op=op, **common).fit(train, valid, show_progress=False)
        fixed[op] = {"seconds": time.perf_counter() - t0, "epochs": len(rec.train_result_.history),
                     "epoch_s": statistics.median(h["seconds"] for h in rec.train_result_.history),
                     "valid_rmse": rec.train_result_.best_valid["rmse"]}
    search_epoch = statistics.median(h["seconds_epoch"] for h in sif.search_result_.history)
    fixed_epoch = statistics.median(f["epoch_s"] for f in fixed.values())
    res = {"machine": machine_line(), "search_epoch_s": search_epoch, "fixed_epoch_s": fixed_epoch,
           "ratio_search_to_fixed_epoch": search_epoch / fixed_epoch,
           "sif_total_s": sif_total, "sif_search_s": sif.search_result_.seconds,
           "sif_train_s": sif.train_result_.seconds, "found": sif.op_, "ensemble": list(sif.ensemble_),
           "fixed_total_s": sum(f["seconds"] for f in fixed.values()), "fixed": fixed}
    lines = [f"Machine: {res['machine']}", "",
             "| measure | seconds |", "| --- | ---: |",
             f"| one search epoch (median of {args.search_epochs}) | {search_epoch:.3f} |",
             f"| one training epoch of a fixed op (median over ops and epochs) | {fixed_epoch:.3f} |",
             f"| ratio search / fixed epoch | {res['ratio_search_to_fixed_epoch']:.2f} |",
             f"| SIF: search ({args.search_epochs} epochs), race, ensemble {'+'.join(sif.ensemble_)} | "
             f"{sif_total:.1f} |",
             f"| training all {len(fixed)} fixed ops to their early stop | {res['fixed_total_s']:.1f} |",
             f"| ratio | {sif_total / res['fixed_total_s']:.2f} |"]
    res["table"] = "\n".join(lines) + "\n"
    print(res["table"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
