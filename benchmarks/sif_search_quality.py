"""Does the SIF search pick the validation-best interaction function? (issue 14)

One command reproduces the table in benchmarks/README.md ("SIF search quality"):

    NASP_DATA_DIR=/work/shared/data python benchmarks/sif_search_quality.py --splits quick 1 2 3 4 5

For every split (``quick``: the quick-start split of configs/sif_ml100k.yaml, random 80/10/10 seed 0; ``1``..``5``:
the canonical ML-100K folds, 10% of u{i}.base held out for validation) and every model setting (``paper``: the
defaults until 2026-12-02, uniform heads in the unit ball and the L2 penalty; ``ones``, the defaults since:
``head_init=ones``, ``head_radius=sqrt(dim)``, ``penalty=effective``) it

1. trains all 5 fixed ops stand-alone (the quick-start's training settings), keeping every epoch's validation RMSE,
   its seconds and the test RMSE of the restored best epoch;
2. runs the NASP search for each warm-up count (``search.warmup_epochs`` in addition to the 10 alpha epochs),
   keeping the alphas of every epoch and the op the library's default rule picks (the best validation epoch);
3. evaluates selection procedures on these records: the default rule, the alpha order alone, and the race of
   :func:`sif.selection.race` over the top-k ops by final alpha (ties within ``--alpha-tol`` widen the set). A race
   is replayed on the recorded curves: a stand-alone fit of op o with seed s is deterministic, so the first t
   epochs of the full fit are the fit truncated at t (the replay and :class:`sif.recommender.SIFRecommender`
   pick the same op; checked on the quick-start split with ``--check-live``).

Every unit (split, setting, fit) is cached as JSON under ``benchmarks/results/sif_search_quality/`` and reused, so
the command can run as two processes on different splits; ``--table-only`` merges the cache into
``benchmarks/results/sif_search_quality.json`` and prints the markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks._machine import machine  # noqa: E402
from sif.cli import build_recommender  # noqa: E402
from sif.config import load_config  # noqa: E402
from sif.data import load_splits  # noqa: E402
from sif.recommender import SIFRecommender  # noqa: E402
from sif.selection import SELECTION_DEFAULTS, race, shortlist  # noqa: E402

OPS = ("plus", "multiply", "max", "min", "concat")
CACHE = ROOT / "benchmarks" / "results" / "sif_search_quality"
SETTINGS = {"paper": ["model.head_init=uniform", "model.head_radius=1.0", "model.penalty=l2"],   # defaults until
            "ones": ["model.head_init=ones", "model.head_radius=5.656854249492381",              # 2026-12-02; the
                     "model.penalty=effective"]}                                                 # defaults since


# the quick start's settings until 2026-12-04 (no neighbourhoods, no refit, lr 0.002), which the table was measured with
QUICK_START_2026_12_02 = ["model.neighbourhood=null", "model.refit=false", "search.w_lr=0.002", "train.lr=0.002"]


def split_config(split: str, setting: str, extra: list[str] = ()):
    """The quick-start config with ``split`` ("quick" or a fold number) and the model ``setting``."""
    over = ["threads=1", "show_progress=false", *QUICK_START_2026_12_02, *SETTINGS[setting], *extra]
    if split != "quick":
        over += ["data.split=fold", f"data.fold={int(split)}"]
    return load_config(ROOT / "configs" / "sif_ml100k.yaml", over)


class SearchOnly(SIFRecommender):
    """The library's search (the same searcher and settings as :class:`SIFRecommender`) without the stand-alone
    training: ``model_`` is the weight-sharing space, ``op_`` the op of the best validation epoch."""

    def _fit_model(self, train_it, valid_it, eval_it, show_progress, callback, run_dir):
        from nasp.distributed import make_searcher

        cfg = self._search_config()
        space = self._prepared(self._space(self.search_ops))
        self.search_candidates_ = tuple(space.names)
        task = self._task(train_all_heads=self.train_all_heads)
        searcher = make_searcher(space, task, cfg, device=self.device, show_progress=False)
        self.search_result_ = searcher.fit(train_it, valid_it, eval_loader=eval_it)
        self.genotype_ = self.search_result_.best_genotype
        self.op_ = self.genotype_.choices("interaction")[0].op
        self.ensemble_ = [self.op_]
        return space, None


def _cached(name: str, make) -> dict:
    path = CACHE / f"{name}.json"
    if path.is_file():
        return json.loads(path.read_text())
    t0 = time.perf_counter()
    out = make()
    out.update(wall_seconds=time.perf_counter() - t0, machine=machine())
    CACHE.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"{name}: {time.perf_counter() - t0:.1f} s", flush=True)
    return out


def fixed_unit(split: str, setting: str, name: str, data) -> dict:
    """One stand-alone fit (a fixed op or a baseline): its per-epoch validation curve and its test RMSE."""
    def make():
        cfg = split_config(split, setting)
        rec = build_recommender(cfg, name, strict=False)
        rec.fit(data[0], data[1], show_progress=False)
        h = rec.train_result_.history
        return {"model": name, "split": split, "setting": setting, "valid_curve": [r["valid_rmse"] for r in h],
                "epoch_seconds": [r["seconds"] for r in h], "best_epoch": rec.train_result_.best_epoch,
                "valid_rmse": rec.train_result_.best_valid["rmse"], "test_rmse": rec.score(data[2])["rmse"],
                "seconds": rec.train_result_.seconds}
    return _cached(f"{split}_{setting}_{name.replace(':', '-')}", make)


def search_unit(split: str, setting: str, warmup: int, data) -> dict:
    """One search: the alphas after every epoch, the default rule's op, seconds."""
    def make():
        cfg = split_config(split, setting, [f"search.warmup_epochs={warmup}", f"search.epochs={10 + warmup}"])
        kw = build_recommender(cfg, "sif", strict=False).get_params()
        rec = SearchOnly(**kw).fit(data[0], data[1], show_progress=False)
        hist = rec.search_result_.history
        return {"split": split, "setting": setting, "warmup": warmup, "op": rec.op_,
                "names": list(rec.search_candidates_), "best_epoch": rec.search_result_.best_epoch,
                "alphas": [h["alphas"]["interaction"][0] for h in hist],
                "valid_rmse": [h.get("valid_rmse") for h in hist], "seconds": rec.search_result_.seconds}
    return _cached(f"{split}_{setting}_search_w{warmup}", make)


def collect(splits, settings, warmups) -> None:
    for setting in settings:
        for split in splits:
            data = load_splits(split_config(split, "paper").data, 0)
            for w in warmups:
                search_unit(split, setting, w, data)
            for op in OPS:
                fixed_unit(split, setting, f"fixed:{op}", data)
            if setting == "paper":
                fixed_unit(split, "paper", "mf", data)


# ---- replaying selection procedures on the records ----------------------------------------------------------------
def replay_race(fixed: dict[str, dict], candidates: list[str], patience: int, **kw) -> dict:
    """:func:`sif.selection.race` on the recorded curves; returns the winner and the epochs (and seconds) used."""
    used = {op: 0 for op in candidates}

    def advance(op: str, epochs: int) -> list[float]:
        curve = fixed[op]["valid_curve"]
        used[op] = min(len(curve), max(used[op], epochs))
        return curve[:used[op]]

    result = race(candidates, advance, patience=patience, **kw)
    secs = sum(sum(fixed[op]["epoch_seconds"][:n]) for op, n in used.items())
    return {"op": result.winner, "epochs": sum(used.values()), "train_seconds": secs, "used": used}


def replay_halving(fixed: dict[str, dict], candidates: list[str], first: int = 2) -> dict:
    """Plain successive halving at equal epochs (the comparison the race avoids): every round trains the survivors to
    the same budget (first, 2x, 4x, ...), keeps the better half by validation RMSE so far, and trains the last one to
    its own stop."""
    alive, budget, used = list(candidates), first, {op: 0 for op in candidates}
    while len(alive) > 1:
        for op in alive:
            used[op] = max(used[op], min(budget, len(fixed[op]["valid_curve"])))
        alive = sorted(alive, key=lambda o: (min(fixed[o]["valid_curve"][:used[o]]), alive.index(o)))
        alive = alive[:math.ceil(len(alive) / 2)]
        budget *= 2
    used[alive[0]] = len(fixed[alive[0]]["valid_curve"])
    secs = sum(sum(fixed[op]["epoch_seconds"][:n]) for op, n in used.items())
    return {"op": alive[0], "epochs": sum(used.values()), "train_seconds": secs}


def evaluate(records: dict, split: str, setting: str, warmup: int, patience: int, alpha_tol: float) -> list[dict]:
    fixed = {op: records[(split, setting, f"fixed:{op}")] for op in OPS}
    search = records[(split, setting, f"search_w{warmup}")]
    best_valid = min(OPS, key=lambda o: (fixed[o]["valid_rmse"], OPS.index(o)))
    best_test = min(fixed[o]["test_rmse"] for o in OPS)
    all_fixed_s = sum(fixed[o]["seconds"] for o in OPS)
    final = dict(zip(search["names"], search["alphas"][-1], strict=True))
    rows = []

    def row(procedure: str, op: str, train_s: float, epochs: int | None = None, cands=None) -> None:
        rows.append({"split": split, "setting": setting, "warmup": warmup, "procedure": procedure, "op": op,
                     "test_rmse": fixed[op]["test_rmse"], "regret": fixed[op]["test_rmse"] - best_test,
                     "valid_best_op": best_valid, "picked_valid_best": op == best_valid,
                     "search_seconds": search["seconds"], "train_seconds": train_s,
                     "seconds": search["seconds"] + train_s, "all_fixed_seconds": all_fixed_s,
                     "race_epochs": epochs, "candidates": cands, "final_alphas": final})

    row("default (best epoch)", search["op"], fixed[search["op"]]["seconds"])
    top = shortlist(final, 1, alpha_tol)
    row("top-1 by final alpha", top[0], fixed[top[0]]["seconds"])
    r = replay_halving(fixed, list(shortlist(final, 5, alpha_tol)))
    row("equal-epoch halving, all 5", r["op"], r["train_seconds"], r["epochs"])
    for k in (2, 3, 5):
        cands = shortlist(final, k, alpha_tol)
        for horizon in (1.0, 0.5, 3.0):
            r = replay_race(fixed, cands, patience, horizon=horizon)
            row(f"race top-{k} (horizon {horizon})", r["op"], r["train_seconds"], r["epochs"], cands)
    return rows


def load_records() -> dict:
    out = {}
    for path in sorted(CACHE.glob("*.json")):
        d = json.loads(path.read_text())
        key = d.get("model") or f"search_w{d['warmup']}"
        out[(d["split"], d["setting"], key)] = d
    return out


def table(splits, settings, warmups, patience: int, alpha_tol: float) -> dict:
    records = load_records()
    def complete(s, st, w):
        return all((s, st, k) in records for k in [f"fixed:{o}" for o in OPS] + [f"search_w{w}"])
    splits = [s for s in splits if all(complete(s, st, w) for st in settings for w in warmups)]
    rows = [r for s in splits for st in settings for w in warmups
            for r in evaluate(records, s, st, w, patience, alpha_tol)]
    summary = {}
    for r in rows:
        summary.setdefault((r["setting"], r["warmup"], r["procedure"]), []).append(r)
    lines = ["| setting | warm-up | procedure | picked per split (" + ", ".join(splits) + ") | valid-best picked | "
             "mean test RMSE | mean regret | max regret | s (search + train) | s (all 5 fixed) | shortlist sizes |",
             "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    agg = []
    for (st, w, proc), rs in summary.items():
        a = {"setting": st, "warmup": w, "procedure": proc, "ops": [r["op"] for r in rs],
             "valid_best_picked": sum(r["picked_valid_best"] for r in rs), "n": len(rs),
             "mean_test_rmse": sum(r["test_rmse"] for r in rs) / len(rs),
             "mean_regret": sum(r["regret"] for r in rs) / len(rs), "max_regret": max(r["regret"] for r in rs),
             "seconds": sum(r["seconds"] for r in rs), "all_fixed_seconds": sum(r["all_fixed_seconds"] for r in rs),
             "shortlist_sizes": [len(r["candidates"]) if r["candidates"] else 1 for r in rs]}
        agg.append(a)
        lines.append(f"| {st} | {w} | {proc} | {', '.join(a['ops'])} | {a['valid_best_picked']}/{a['n']} | "
                     f"{a['mean_test_rmse']:.4f} | {a['mean_regret']:.4f} | {a['max_regret']:.4f} | "
                     f"{a['seconds']:.0f} | {a['all_fixed_seconds']:.0f} | "
                     f"{', '.join(map(str, a['shortlist_sizes'])) if proc.startswith('race') else ''} |")
    fixed_lines = ["| setting | split | " + " | ".join(OPS) + " | valid-best | mf |",
                   "| --- | --- |" + " ---: |" * len(OPS) + " --- | ---: |"]
    for st in settings:
        for s in splits:
            f = {o: records[(s, st, f"fixed:{o}")] for o in OPS}
            vb = min(OPS, key=lambda o: (f[o]["valid_rmse"], OPS.index(o)))
            mf = records.get((s, "paper", "mf"))
            cells = [f"{f[o]['test_rmse']:.4f} ({f[o]['valid_rmse']:.4f}, {len(f[o]['valid_curve'])} ep)" for o in OPS]
            mf_cell = f"{mf['test_rmse']:.4f} ({mf['valid_rmse']:.4f})" if mf else ""
            fixed_lines.append(f"| {st} | {s} | " + " | ".join(cells) + f" | {vb} | {mf_cell} |")
    return {"splits": splits, "rows": rows, "summary": agg, "markdown": "\n".join(lines),
            "fixed_markdown": "\n".join(fixed_lines), "patience": patience, "alpha_tol": alpha_tol}


def check_live(split: str, setting: str, warmup: int, k: int) -> dict:
    """Fit :class:`SIFRecommender` (search + race of the top ``k``) for real and return its op, to compare with the
    replay."""
    cfg = split_config(split, setting, [f"search.warmup_epochs={warmup}", f"search.epochs={10 + warmup}"])
    data = load_splits(cfg.data, cfg.seed)
    kw = build_recommender(cfg, "sif", strict=False).get_params()
    rec = SIFRecommender(**{**kw, "race_k": k}).fit(data[0], data[1], show_progress=False)
    return {"op": rec.op_, "candidates": list(rec.selection_.candidates), "test_rmse": rec.score(data[2])["rmse"],
            "epochs": rec.selection_.epochs}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--splits", nargs="+", default=["quick", "1", "2", "3", "4", "5"])
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--warmups", nargs="+", type=int, default=[0, 2, 4])
    p.add_argument("--alpha-tol", type=float, default=SELECTION_DEFAULTS["alpha_tol"])
    p.add_argument("--table-only", action="store_true", help="merge the cached units, run nothing")
    p.add_argument("--check-live", nargs=4, metavar=("SPLIT", "SETTING", "WARMUP", "K"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sif_search_quality.json"))
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    if a.check_live:
        print(json.dumps(check_live(a.check_live[0], a.check_live[1], int(a.check_live[2]), int(a.check_live[3]))))
        return
    if not a.table_only:
        collect(a.splits, a.settings, a.warmups)
    patience = split_config("quick", "paper").train.patience
    out = table(a.splits, a.settings, a.warmups, patience, a.alpha_tol)
    out.update(machine=machine(), command=" ".join(["python", "benchmarks/sif_search_quality.py", *sys.argv[1:]]))
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(out["fixed_markdown"] + "\n\n" + out["markdown"])


if __name__ == "__main__":
    main()
