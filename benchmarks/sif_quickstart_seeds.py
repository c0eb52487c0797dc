"""The main job against biased MF on the quick-start config, over seeds (issue 14, "Beyond the five ops").

One command reproduces the table in benchmarks/README.md:

    NASP_DATA_DIR=/work/shared/data taskset -c 1 python benchmarks/sif_quickstart_seeds.py --seeds 0 1 2

For every seed (``seed`` drives the random 80/10/10 split and every model's initialisation, as ``sif --set seed=S``)
it fits, with configs/sif_ml100k.yaml as it is (plus ``--set`` overrides from ``--set``), each model named in
``--models``: a model name as ``sif train``/``sif search`` take it, optionally followed by ``@key=value,...``
overrides of that model alone (e.g. ``mf@model.reg=0.2``). It records validation and test RMSE, the op found and
the seconds of each fit, and writes them with the machine and the command to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks._machine import machine  # noqa: E402
from sif.build import build_recommender  # noqa: E402
from sif.config import load_config  # noqa: E402
from sif.data import load_splits  # noqa: E402

MODELS = ("sif", "mf", "fixed:multiply", "fixed:multiply+max", "mf@model.reg=0.2", "fixed:multiply@model.reg=0.2")


def fit_one(spec: str, seed: int, extra: list[str]) -> dict:
    """Fit the model ``spec`` ("name" or "name@k=v,k=v") on the quick-start split of ``seed``."""
    name, _, over = spec.partition("@")
    cfg = load_config(ROOT / "configs" / "sif_ml100k.yaml",
                      ["threads=1", "show_progress=false", f"seed={seed}", *extra, *filter(None, over.split(","))])
    torch.set_num_threads(cfg.threads)
    train, valid, test = load_splits(cfg.data, cfg.seed)
    rec = build_recommender(cfg, name, strict=False)
    start = time.perf_counter()
    rec.fit(train, valid, show_progress=False)
    return {"model": spec, "seed": seed, "op": getattr(rec, "op_", None),
            "valid_rmse": rec.train_result_.best_valid["rmse"], "test_rmse": rec.score(test)["rmse"],
            "seconds": time.perf_counter() - start}


def table(rows: list[dict]) -> str:
    lines = ["| model | test RMSE (mean +- std) | per seed | valid RMSE | ops found | s per fit |",
             "| --- | ---: | --- | ---: | --- | ---: |"]
    for spec in dict.fromkeys(r["model"] for r in rows):
        rs = [r for r in rows if r["model"] == spec]
        test = [r["test_rmse"] for r in rs]
        std = statistics.stdev(test) if len(test) > 1 else 0.0
        ops = ", ".join(str(r["op"]) for r in rs) if rs[0]["op"] else ""
        lines.append(f"| {spec} | {statistics.mean(test):.4f} +- {std:.4f} | "
                     f"{', '.join(f'{t:.4f}' for t in test)} | {statistics.mean(r['valid_rmse'] for r in rs):.4f} | "
                     f"{ops} | {statistics.mean(r['seconds'] for r in rs):.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--set", nargs="*", default=[], dest="extra", help="config overrides for every model")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sif_quickstart_seeds.json"))
    args = p.parse_args(argv)
    before = machine()
    rows = []
    for seed in args.seeds:
        for spec in args.models:
            rows.append(fit_one(spec, seed, args.extra))
            print(json.dumps(rows[-1]), flush=True)
    out = {"command": "python " + " ".join(sys.argv), "machine_before": before, "machine_after": machine(),
           "rows": rows}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
