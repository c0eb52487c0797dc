"""Planted interaction functions: does the library's default procedure (search + race) find the planted op's class?

One command reproduces the table in benchmarks/README.md ("Planted interaction functions"):

    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/sif_planted.py --fixed

For every planted op (multiply, max, plus, concat) and seed it generates ``sif.synthetic.planted_ratings`` with the
settings of ``sif.synthetic.RECOVERY_DATA``, splits it 80/10/10 (seed = the data seed), fits ``SIFRecommender`` with
``sif.synthetic.RECOVERY_FIT`` (the library's defaults but for the size- and noise-bound settings named there) and
records the op found, its class (``sif.synthetic.OP_CLASS``), whether it is the planted class, the race's curves and
eliminations, and test RMSE. ``--fixed`` also trains every op of the default space stand-alone with the same
settings (``--fixed-fit`` overrides them for these fits only; each to its own early stop), so that the table says
which op is validation-best when trained alone: whether the planted class is identifiable at this size and noise.
Writes the rows, the machine (load included) and the command to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks._machine import machine  # noqa: E402
from data_loaders import random_split  # noqa: E402
from sif.interactions import SEARCH_SPACE  # noqa: E402
from sif.recommender import FixedInteractionRecommender, SIFRecommender  # noqa: E402
from sif.synthetic import OP_CLASS, RECOVERY_DATA, RECOVERY_FIT, planted_ratings  # noqa: E402

PLANTED = ("multiply", "max", "plus", "concat")


def split(op: str, seed: int, data: dict):
    """(train, valid, test) of the planted data set of ``op`` and ``seed``."""
    return random_split(planted_ratings(op, seed=seed, **data), (0.8, 0.1, 0.1), seed=seed)


def run_one(op: str, seed: int, data: dict, fit: dict, fixed: dict | None) -> dict:
    """The default procedure (and, with ``fixed``, the settings of the fixed fits, every fixed op) on one planted data
    set."""
    tr, va, te = split(op, seed, data)
    start = time.perf_counter()
    rec = SIFRecommender(random_state=seed, **fit).fit(tr, va, show_progress=False)
    sel = rec.selection_
    row = {"planted": op, "seed": seed, "found": rec.op_, "class": OP_CLASS[rec.op_],
           "recovered": OP_CLASS[rec.op_] == OP_CLASS[op], "valid_rmse": rec.train_result_.best_valid["rmse"],
           "test_rmse": rec.score(te)["rmse"], "seconds": time.perf_counter() - start,
           "race": {"best": {o: min(c) for o, c in sel.curves.items()},
                    "epochs": {o: len(c) for o, c in sel.curves.items()},
                    "eliminated": [[o, e, why] for o, e, why in sel.eliminated]}}
    if fixed is not None:
        row["fixed"] = {}
        for o in SEARCH_SPACE:
            t = time.perf_counter()
            kw = {k: v for k, v in fixed.items() if k != "search"}
            f = FixedInteractionRecommender(op=o, random_state=seed, **kw).fit(tr, va, show_progress=False)
            row["fixed"][o] = {"valid_rmse": f.train_result_.best_valid["rmse"], "epochs": len(f.train_result_.history),
                               "test_rmse": f.score(te)["rmse"], "seconds": time.perf_counter() - t}
        row["valid_best"] = min(row["fixed"], key=lambda o: row["fixed"][o]["valid_rmse"])
    return row


def table(rows: list[dict]) -> str:
    """Markdown: planted op x the op found per seed, recovered k/n, and (with fixed fits) the validation-best op."""
    lines = ["| planted | class | op found per seed (valid RMSE) | recovered | valid-best fixed op per seed | "
             "s per seed |", "| --- | --- | --- | ---: | --- | ---: |"]
    for op in dict.fromkeys(r["planted"] for r in rows):
        rs = [r for r in rows if r["planted"] == op]
        found = ", ".join(f"{r['found']} ({r['valid_rmse']:.3f})" for r in rs)
        best = ", ".join(f"{r['valid_best']} ({r['fixed'][r['valid_best']]['valid_rmse']:.3f})" for r in rs
                         if "fixed" in r) or "-"
        lines.append(f"| {op} | {OP_CLASS[op]} | {found} | {sum(r['recovered'] for r in rs)}/{len(rs)} | {best} | "
                     f"{sum(r['seconds'] for r in rs) / len(rs):.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ops", nargs="+", default=list(PLANTED))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--fixed", action="store_true", help="also train every op of the default space stand-alone")
    p.add_argument("--data", default="{}", help="JSON overrides of RECOVERY_DATA (exploration only)")
    p.add_argument("--fit", default="{}", help="JSON overrides of RECOVERY_FIT (exploration only)")
    p.add_argument("--fixed-fit", default="{}", help="JSON overrides of the fit settings for the fixed fits only")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sif_planted.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    data, fit = {**RECOVERY_DATA, **json.loads(args.data)}, {**RECOVERY_FIT, **json.loads(args.fit)}
    before, rows = machine(), []
    for op in args.ops:
        for seed in args.seeds:
            fixed = {**fit, **json.loads(args.fixed_fit)} if args.fixed else None
            rows.append(run_one(op, seed, data, fit, fixed))
            print(json.dumps(rows[-1]), flush=True)
    out = {"command": "python " + " ".join(sys.argv), "data": data, "fit": fit,
           "fixed_fit": {**fit, **json.loads(args.fixed_fit)} if args.fixed else None, "machine_before": before,
           "machine_after": machine(), "rows": rows}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
