"""SIF on ML-100K under the reference code's protocol, and with this library's defaults on the same split.

Reference protocol: random 50/25/25 split of u.data, z-scaled ratings (fitted on train here: the reference fits
on all data, a leak), embedding dim 2, no biases, batch 512, 100 search epochs, then stand-alone training with
early stopping. The public reference code on a 2-core CPU took 1.38 s per search epoch and 0.53-0.64 s per
stand-alone epoch, and scored 0.952 test RMSE (0.846 z-scaled).

Library at the protocol's setting ("library_dim2"): the same split, dim 2, no biases, batch 512, 100 search
epochs, with this library's search and training (every op's head trained during the search, architecture and
epoch chosen on validation, g with a skip connection, L2 on g(e)) instead of the reference's hyperparameters.

Library defaults: biases, every op's head trained during the search, architecture and epoch chosen on validation,
embedding dim chosen on validation from --dims.

Every search runs the fused NASP step (``search.fused``): the generic step's results, computed faster.

    NASP_DATA_DIR=../shared/data python benchmarks/sif_reference_protocol.py --seeds 0 1 2

``--speed R``: seconds per search epoch under the reference protocol (seed 0), the generic NASP step against the
fused one (``search.fused``, :mod:`sif.fused`), interleaved R times in this one process; medians over the epochs
after the first of every run; the load average is printed before and after.

    NASP_DATA_DIR=../shared/data python benchmarks/sif_reference_protocol.py --speed 3 --speed-epochs 6 --threads 1

On a shared 2-vCPU machine the two CPUs need not be equally fast (on this project's machine one of them ran the
same search 1.5x slower, another tenant's load); pin the run with ``taskset -c N`` to time each CPU separately
(the results file then says which: ``sif_reference_speed_cpuN.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from data_loaders import load_movielens, random_split
from sif.evaluation import format_mean_std
from sif.recommender import SIFRecommender

try:
    from ._machine import machine_line
except ImportError:  # run as a script
    from _machine import machine_line


REFERENCE_SEARCH = {"w_optimizer": "adagrad", "w_lr": 0.05, "a_lr": 3e-4}
REFERENCE_TRAIN = {"batch_size": 512, "optimizer": "adagrad", "lr": 0.05, "max_epochs": 500, "patience": 10,
                   "g_lr_scale": 1.0}


def reference(seed: int, epochs: int, fused: bool = False) -> SIFRecommender:
    """The reference code's settings (dim 2, no biases, Adagrad 0.05, norm penalty 1e-5, last prox); ``fused``:
    the hand-fused NASP step (same results, faster)."""
    return SIFRecommender(embedding_dim=2, use_bias=False, train_all_heads=False, select="last", random_state=seed,
                          g_skip=False, keep_g=True,
                          reg=1e-5, penalty="norm", search={"epochs": epochs, "fused": fused, **REFERENCE_SEARCH},
                          train=REFERENCE_TRAIN)


def library_dim2(seed: int, epochs: int) -> SIFRecommender:
    """The protocol's model size (dim 2, no biases) with this library's search and training."""
    return SIFRecommender(embedding_dim=2, use_bias=False, random_state=seed, search={"epochs": epochs, "fused": True},
                          train={"batch_size": 512})


def library(seed: int, epochs: int, dim: int) -> SIFRecommender:
    """This library's defaults (biases, per-rating L2 on g(e), every head trained, best epoch on validation),
    with the reference's batch size and search length."""
    return SIFRecommender(embedding_dim=dim, random_state=seed, search={"epochs": epochs, "fused": True},
                          train={"batch_size": 512})


def summarize(rec: SIFRecommender, test) -> dict:
    hist = rec.search_result_.history
    return {"op": rec.op_, "test": rec.score(test),
            "search_epoch_s": statistics.median(h["seconds_epoch"] for h in hist),
            "search_step_s_per_epoch": statistics.median(h["seconds_alpha"] + h["seconds_weight"] for h in hist),
            "train_epoch_s": statistics.median(h["seconds"] for h in rec.train_result_.history),
            "search_s": rec.search_result_.seconds, "train_s": rec.train_result_.seconds,
            "train_epochs": len(rec.train_result_.history)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--dims", type=int, nargs="+", default=[8, 32])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/sif_reference_protocol.json")
    p.add_argument("--speed", type=int, default=0, help="only time generic vs fused search epochs, R repeats")
    p.add_argument("--speed-epochs", type=int, default=6)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(os.environ.get("NASP_DATA_DIR", "../shared/data")) / "ml-100k"
    ratings = load_movielens("100k", root=root)
    if args.speed:
        speed(ratings, args)
        return
    rows = []
    for seed in args.seeds:
        train, valid, test = random_split(ratings, (0.5, 0.25, 0.25), seed=seed)
        ref = reference(seed, args.epochs, fused=True).fit(train, valid, show_progress=False)
        row = {"seed": seed, "reference": summarize(ref, test)}
        row["library_dim2"] = summarize(library_dim2(seed, args.epochs).fit(train, valid, show_progress=False), test)
        best, best_valid = None, float("inf")
        for dim in args.dims:
            rec = library(seed, args.epochs, dim).fit(train, valid, show_progress=False)
            v = rec.score(valid)["rmse"]
            if v < best_valid:
                best, best_valid = (dim, rec), v
        row["library"] = {"dim": best[0], **summarize(best[1], test)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    report(rows, args)


def events_per_step_pair(train, valid, fused: bool, pairs: int = 10) -> float:
    """Median number of ``torch.profiler`` events (aten ops, nested ones included) one NASP step pair (alpha step
    + weight step) dispatches under the reference protocol, after 10 warm-up pairs."""
    from torch.profiler import ProfilerActivity, profile

    from nasp import strategies

    orig, counts = strategies.STRATEGIES["nasp"], []

    def counted(s, train_batch, valid_batch, update_alpha):
        if not 10 <= s.step < 10 + pairs:
            return orig(s, train_batch, valid_batch, update_alpha)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            out = orig(s, train_batch, valid_batch, update_alpha)
        counts.append(len(prof.events()))
        return out

    strategies.STRATEGIES["nasp"] = counted
    try:
        rec = reference(0, 1, fused)
        rec.search = dict(rec.search, max_steps_per_epoch=10 + pairs)
        rec.train = dict(rec.train, max_epochs=1)
        rec.fit(train, valid, show_progress=False)
    finally:
        strategies.STRATEGIES["nasp"] = orig
    return statistics.median(counts)


def speed(ratings, args) -> None:
    """Seconds per search epoch, generic vs fused NASP step, interleaved in this process (seed 0)."""
    train, valid, test = random_split(ratings, (0.5, 0.25, 0.25), seed=0)
    load_before = [round(x, 2) for x in os.getloadavg()]
    keys = ("seconds_epoch", "seconds_alpha", "seconds_weight", "seconds_eval")
    runs = {False: {k: [] for k in keys}, True: {k: [] for k in keys}}
    rmse = {False: [], True: []}
    for _ in range(args.speed):
        for fused in (False, True):
            rec = reference(0, args.speed_epochs, fused)
            rec.train = dict(rec.train, max_epochs=1)         # only the search is timed
            rec.fit(train, valid, show_progress=False)
            for h in rec.search_result_.history[1:]:          # the first epoch of a run warms up
                for k in keys:
                    runs[fused][k].append(h[k])
            rmse[fused].append(rec.search_result_.history[-1]["valid_rmse"])
    load_after = [round(x, 2) for x in os.getloadavg()]
    events = {fused: events_per_step_pair(train, valid, fused) for fused in (False, True)}
    cpus = sorted(os.sched_getaffinity(0))
    out = {"machine": machine_line(), "cpus": cpus, "load_before": load_before, "load_after": load_after,
           "profiler_events_per_step_pair": {"generic": events[False], "fused": events[True]},
           "epochs_per_run": args.speed_epochs, "repeats": args.speed,
           "last_valid_rmse": {"generic": rmse[False], "fused": rmse[True]}}
    lines = [f"Machine: {machine_line()}", f"pinned to CPUs {cpus}; load average before {load_before}, after "
             f"{load_after}", "",
             "| step | s / search epoch (median) | fastest epoch | alpha steps | weight steps | evaluation | "
             "profiler events / step pair |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for fused, name in ((False, "generic"), (True, "fused")):
        med = {k: statistics.median(v) for k, v in runs[fused].items()}
        out[name] = {"median": med, "min_epoch": min(runs[fused]["seconds_epoch"]), "epochs": runs[fused]}
        lines.append(f"| {name} | {med['seconds_epoch']:.3f} | {min(runs[fused]['seconds_epoch']):.3f} | "
                     f"{med['seconds_alpha']:.3f} | {med['seconds_weight']:.3f} | {med['seconds_eval']:.3f} | "
                     f"{events[fused]:.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out["table"] = text
    pinned = "" if len(cpus) == os.cpu_count() else "_cpu" + "-".join(map(str, cpus))     # e.g. under taskset
    path = Path(args.out).with_name(f"sif_reference_speed{pinned}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))


def report(rows: list[dict], args) -> None:
    def col(kind, key, sub=None):
        return [r[kind][key][sub] if sub else r[kind][key] for r in rows]

    lines = [f"Machine: {machine_line()}", f"Seeds: {args.seeds}; {args.epochs} search epochs", "",
             "| protocol | found ops | test RMSE (1-5) | test RMSE (z) | s / search epoch | s / stand-alone epoch |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for kind in ("reference", "library_dim2", "library"):
        ops = ", ".join(sorted(set(col(kind, "op"))))
        lines.append(f"| {kind} | {ops} | {format_mean_std(col(kind, 'test', 'rmse'))} | "
                     f"{format_mean_std(col(kind, 'test', 'rmse_z'))} | "
                     f"{format_mean_std(col(kind, 'search_epoch_s'), 3)} | "
                     f"{format_mean_std(col(kind, 'train_epoch_s'), 3)} |")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": rows, "table": text, "machine": machine_line()}, indent=2))


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - start:.0f}s")
