"""An ML-20M-shaped rating CSV end to end: read, split, search, train, evaluate, recommend (issue 17).

Writes a synthetic ``ratings.csv`` in ML-20M's format (``userId,movieId,rating,timestamp`` with a header, half-star
ratings in [0.5, 5]; 20,000,263 ratings over 138,493 users x 26,744 items with ML-20M's sparse movie ids up to
131,262) into a scratch folder outside the repository (default /tmp/nasp-20m, reused when it is already there).
The (user, item) pairs and timestamps come from :func:`data_loaders.synthetic.synthetic_ratings`; the ratings are
planted: ``3.5 + 1.1 * <u, v> + noise`` for random unit-variance factors of dimension 8, rounded to half stars, so a
model that learns the factors beats the mean.

Each phase runs in its own subprocess (``python benchmarks/bench_sif_20m.py --phase NAME``) pinned with
``taskset`` to the cores given, so its peak RSS (``VmHWM`` of /proc/self/status, the high-water mark of that process
alone) and its seconds are its own; a sub-step's peak is ``VmHWM`` after a reset through /proc/self/clear_refs (the
phase's peak is the largest of them). CPU seconds are recorded next to wall seconds (a shared machine inflates
wall time), and the load average before and after each phase. The phases call the library's public path, the
functions ``sif search`` and ``sif train`` use (``sif.data.load_splits`` with a ``DataConfig``,
``sif.cli.build_recommender`` with a ``RunConfig``, ``fit``, ``score``, ``save``/``load_recommender``,
``recommend``); every phase that needs the data reads the CSV again, as a separate command would:

- ``read``: ``read_ratings_file`` of the CSV, twice (the second time the file is surely cached);
- ``split``: one read, then ``random_split``, ``leave_k_out_split`` and ``time_split``, each timed apart;
- ``search``: ``sif`` (search, then stand-alone training, as ``sif search`` runs them), the model saved in the
  scratch folder;
- ``train``: ``fixed:<the op the search found>`` trained stand-alone (the ``sif train`` path);
- ``evaluate``: the saved model loaded, RMSE/MAE on valid and test;
- ``recommend``: top-10 for 1000 users, already-rated items filtered.

Each phase's stderr (the progress bars) is shown live and kept in ``<scratch>/phase-<name>.log``; ``bars_seen``
names the bars found there.

    python benchmarks/bench_sif_20m.py [--scratch /tmp/nasp-20m] [--cpus 0] [--threads 1] [--search-epochs 2]
        [--train-epochs 1] [--batch-size 65536] [--keep-csv] [--out benchmarks/results/sif_20m.json]
    python benchmarks/bench_sif_20m.py --phases read --reader-root /tmp/nasp-old --keep-csv --out ...   # before
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NUM_RATINGS, NUM_USERS, NUM_ITEMS, MAX_MOVIE_ID = 20_000_263, 138_493, 26_744, 131_262
HEADER = "userId,movieId,rating,timestamp"
BARS = {"read": r"reading ratings\.csv", "search epoch": r"(nasp|darts1|darts2|random) epoch \d+/\d+",
        "train steps": r"train epoch \d*", "train epochs": r"train: "}   # progress bars, by their text on stderr


# ------------------------------------------------------------------------------------------- the CSV
def planted_frame(num_ratings: int, num_users: int, num_items: int, seed: int = 0, dim: int = 8) -> pd.DataFrame:
    """(user, item, rating, timestamp) rows: distinct pairs, ML-20M-like sparse movie ids, planted half stars."""
    from data_loaders.synthetic import synthetic_ratings

    frame = synthetic_ratings(num_ratings, num_users, num_items, seed=seed, half_stars=True)
    rng = np.random.default_rng(seed + 1)
    max_id = max(MAX_MOVIE_ID, num_items)
    movie_ids = np.sort(rng.choice(np.arange(1, max_id + 1), size=num_items, replace=False))  # (items,)
    u = rng.standard_normal((num_users, dim), dtype=np.float32) / np.float32(dim ** 0.25)
    v = rng.standard_normal((num_items, dim), dtype=np.float32) / np.float32(dim ** 0.25)
    users, items = frame["user"].to_numpy() - 1, frame["item"].to_numpy() - 1
    signal = np.empty(len(frame), dtype=np.float32)
    for s in range(0, len(frame), 1 << 21):          # (chunk, dim) at a time: no (n, dim) temporaries
        sl = slice(s, s + (1 << 21))
        signal[sl] = np.einsum("nd,nd->n", u[users[sl]], v[items[sl]])
    noisy = 3.5 + 1.1 * signal + rng.normal(0.0, 0.3, len(frame)).astype(np.float32)
    stars = np.clip(np.round(noisy * 2.0) / 2.0, 0.5, 5.0)
    return pd.DataFrame({"user": users + 1, "item": movie_ids[items], "rating": stars.astype(np.float64),
                         "timestamp": frame["timestamp"].to_numpy()})


def write_csv(path: Path, frame: pd.DataFrame, chunk: int = 1 << 21) -> None:
    """ML-20M's ratings.csv layout ("4.0", "3.5" ratings), written in chunks to a temporary name, then renamed."""
    tmp = path.with_suffix(".csv.part")
    with open(tmp, "w", newline="") as fh:
        fh.write(HEADER + "\n")
        for s in range(0, len(frame), chunk):
            part = frame.iloc[s:s + chunk]
            part.to_csv(fh, header=False, index=False, float_format="%.1f", lineterminator="\n")
    tmp.replace(path)


def ensure_csv(scratch: Path, num_ratings: int, num_users: int, num_items: int, seed: int) -> Path:
    """The CSV in ``scratch`` (written when missing or made with other sizes); its sidecar names the sizes."""
    scratch.mkdir(parents=True, exist_ok=True)
    path, meta_path = scratch / "ratings.csv", scratch / "ratings.json"
    meta = {"num_ratings": num_ratings, "num_users": num_users, "num_items": num_items, "seed": seed}
    if path.is_file() and meta_path.is_file() and json.loads(meta_path.read_text()) == meta:
        return path
    t0 = time.perf_counter()
    write_csv(path, planted_frame(num_ratings, num_users, num_items, seed))
    meta_path.write_text(json.dumps(meta) + "\n")
    print(f"wrote {path} ({path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


# ------------------------------------------------------------------------------------------- memory
def _status_kib(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key}")


def peak_gib() -> float:
    """This process's peak RSS so far (VmHWM) in GiB."""
    return _status_kib("VmHWM") / 2**20


def rss_gib() -> float:
    return _status_kib("VmRSS") / 2**20


_PEAKS: list[float] = []     # VmHWM just before each reset: the phase's peak is the largest of these and the last


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0, /proc/self/clear_refs); False when not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def timed(fn, *args, **kwargs):
    """(result, wall seconds, {peak GiB of the call, CPU seconds of this process during it}); the peak is reset
    before the call when the kernel allows (``peak_reset``), after noting the peak so far."""
    _PEAKS.append(peak_gib())
    reset = reset_peak()
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    cpu = time.process_time() - c0
    return out, time.perf_counter() - t0, {"peak_rss_gib": round(peak_gib(), 3), "peak_reset": reset,
                                           "cpu_s": round(cpu, 2)}


# ------------------------------------------------------------------------------------------- phases
def run_config(args, csv: Path, search: bool = True):
    """The RunConfig ``sif search`` would read for this CSV (a file data set, random 80/10/10 split); ``search``
    False: without the search-only keys (``--race-k``), for ``sif train``'s fixed model."""
    from sif.config import load_config

    sets = [f"seed={args.seed}", f"device={args.device}", f"threads={args.threads}", "data.dataset=file",
            f"data.path={csv}", "data.rating_scale=[0.5, 5.0, 0.5]", "data.split=random",
            f"model.embedding_dim={args.dim}", f"search.epochs={args.search_epochs}",
            f"train.max_epochs={args.train_epochs}", f"train.batch_size={args.batch_size}",
            f"model.sparse_rows={'true' if args.sparse_rows else 'false'}"]
    if search and args.race_k is not None:                   # else the library's default race
        sets.append(f"model.race_k={args.race_k}")
    return load_config(None, sets)


def _read(args, csv: Path) -> dict:
    import inspect

    if args.reader_root:                    # another checkout's reader (e.g. before a change), for a comparison
        sys.path.insert(0, str(Path(args.reader_root).resolve()))
    from data_loaders import read_ratings_file

    kw = {"show_progress": True} if "show_progress" in inspect.signature(read_ratings_file).parameters else {}
    out = {"reader": str(Path(inspect.getfile(read_ratings_file)).parents[1])}
    for k in range(2):                      # the second read finds the file in the page cache for sure
        ds, sec, mem = timed(read_ratings_file, csv, rating_scale=(0.5, 5.0, 0.5), **kw)
        out[f"read_{k + 1}_s"] = round(sec, 2)
        out.update({f"read_{k + 1}_{m}": v for m, v in mem.items()})
        del ds
    return out


def _split(args, csv: Path) -> dict:
    from data_loaders import leave_k_out_split, random_split, read_ratings_file, time_split

    ds, sec, mem = timed(read_ratings_file, csv, rating_scale=(0.5, 5.0, 0.5), show_progress=False)
    out = {"read_s": round(sec, 2), "read_cpu_s": mem["cpu_s"], "dataset_rss_gib": round(rss_gib(), 3), "rows": len(ds),
           "users": ds.num_users, "items": ds.num_items}
    for name, fn in (("random", lambda: random_split(ds, (0.8, 0.1, 0.1), seed=args.seed)),
                     ("leave_k_out", lambda: leave_k_out_split(ds, k=1, seed=args.seed)),
                     ("time", lambda: time_split(ds, (0.8, 0.1, 0.1)))):
        parts, sec, mem = timed(fn)
        out[f"{name}_s"], out[f"{name}_cpu_s"] = round(sec, 2), mem["cpu_s"]
        out[f"{name}_peak_rss_gib"] = mem["peak_rss_gib"]
        out[f"{name}_sizes"] = [len(p) for p in parts]
        del parts
    return out


def _search(args, csv: Path) -> dict:
    from sif.cli import build_recommender
    from sif.data import load_splits

    cfg = run_config(args, csv)
    (train, valid, test), sec, _ = timed(load_splits, cfg.data, cfg.seed)
    rec = build_recommender(cfg)
    _, fit_s, fit_mem = timed(rec.fit, train, valid, show_progress=True)
    rec.save(Path(args.scratch) / "model-sif")
    sr, tr = rec.search_result_, rec.train_result_
    steps = -(-len(train) // args.batch_size)
    return {"load_splits_s": round(sec, 2), "fit_s": round(fit_s, 2), "fit_cpu_s": fit_mem["cpu_s"],
            "fit_peak_rss_gib": fit_mem["peak_rss_gib"], "search_s": round(sr.seconds, 2),
            "train_s": round(tr.seconds, 2), "op": rec.op_, "search_epochs": len(sr.history),
            "train_epochs": len(tr.history), "steps_per_epoch": steps,
            "search_ratings_per_s": round(len(sr.history) * len(train) / sr.seconds),
            "valid_rmse": round(tr.best_valid["rmse"], 4)}


def _train(args, csv: Path) -> dict:
    from sif.cli import build_recommender
    from sif.data import load_splits

    cfg = run_config(args, csv, search=False)
    op = json.loads((Path(args.scratch) / "phase-search.json").read_text())["op"]
    (train, valid, _), sec, _ = timed(load_splits, cfg.data, cfg.seed)
    rec = build_recommender(cfg, f"fixed:{op}")
    t0 = time.perf_counter()
    rec.fit(train, valid, show_progress=True)
    tr = rec.train_result_
    return {"load_splits_s": round(sec, 2), "fit_s": round(time.perf_counter() - t0, 2), "model": f"fixed:{op}",
            "train_s": round(tr.seconds, 2), "train_epochs": len(tr.history),
            "train_ratings_per_s": round(len(tr.history) * len(train) / tr.seconds),
            "valid_rmse": round(tr.best_valid["rmse"], 4)}


def _evaluate(args, csv: Path) -> dict:
    from sif.data import load_splits
    from sif.recommender import load_recommender

    cfg = run_config(args, csv)
    (_, valid, test), sec, _ = timed(load_splits, cfg.data, cfg.seed)
    rec, load_s, _ = timed(load_recommender, Path(args.scratch) / "model-sif", device=args.device)
    scores, score_s, mem = timed(lambda: {"valid": rec.score(valid), "test": rec.score(test)})
    mean_rmse = float(((test.ratings - test.ratings.mean()) ** 2).mean().sqrt())
    return {"load_splits_s": round(sec, 2), "load_model_s": round(load_s, 2), "score_s": round(score_s, 2),
            "score_peak_rss_gib": mem["peak_rss_gib"], "n_valid": len(valid), "n_test": len(test),
            "valid_rmse": round(scores["valid"]["rmse"], 4), "test_rmse": round(scores["test"]["rmse"], 4),
            "test_mae": round(scores["test"]["mae"], 4), "test_rmse_of_the_mean": round(mean_rmse, 4)}


def _recommend(args, csv: Path) -> dict:
    from sif.recommender import load_recommender

    rec, load_s, _ = timed(load_recommender, Path(args.scratch) / "model-sif", device=args.device)
    users = np.asarray(rec.user_ids_)[:args.recommend_users]
    (items, scores), sec, mem = timed(rec.recommend, users, N=10)
    rated = rec.rated_[: len(users)]
    leaked = int(sum(np.isin(items[k], np.asarray(rec.item_ids_)[rated[k].indices]).sum() for k in range(len(users))))
    return {"load_model_s": round(load_s, 2), "recommend_s": round(sec, 2), "users": len(users),
            "recommend_peak_rss_gib": mem["peak_rss_gib"], "shape": list(items.shape),
            "already_rated_in_top10": leaked}


PHASE_FUNCS = {"read": _read, "split": _split, "search": _search, "train": _train, "evaluate": _evaluate,
               "recommend": _recommend}
PHASES = tuple(PHASE_FUNCS)


def child(args) -> None:
    """One phase in this process: print its result as the last stdout line (``RESULT {...}``)."""
    import torch

    torch.set_num_threads(args.threads)
    csv = Path(args.scratch) / "ratings.csv"
    t0 = time.perf_counter()
    out = PHASE_FUNCS[args.phase](args, csv)
    use = resource.getrusage(resource.RUSAGE_SELF)
    peak = max([peak_gib(), *_PEAKS] + [v for k, v in out.items() if k.endswith("peak_rss_gib")])  # every reset
    out.update(phase=args.phase, seconds=round(time.perf_counter() - t0, 2), peak_rss_gib=round(peak, 3),
               cpu_s=round(use.ru_utime + use.ru_stime, 1))
    (Path(args.scratch) / f"phase-{args.phase}.json").write_text(json.dumps(out) + "\n")
    print("RESULT " + json.dumps(out), flush=True)


# ------------------------------------------------------------------------------------------- parent
def _tee(stream, sink, log) -> None:
    """Copy a child's stderr to ours and to a log file as it comes (progress bars stay live)."""
    while chunk := os.read(stream.fileno(), 1 << 16):
        sink.buffer.write(chunk)
        sink.flush()
        log.write(chunk)


def run_phase(args, phase: str) -> dict:
    """Run one phase in a subprocess pinned with taskset; its result plus load averages and what the bars said."""
    import threading

    cmd = ["taskset", "-c", args.cpus, sys.executable, str(Path(__file__).resolve()), "--phase", phase,
           *[f"--{k.replace('_', '-')}={v}" for k, v in _forwarded(args).items() if v is not None]]
    log_path = Path(args.scratch) / f"phase-{phase}.log"
    load_before = os.getloadavg()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
        tee = threading.Thread(target=_tee, args=(proc.stderr, sys.stderr, log))
        tee.start()
        stdout = proc.stdout.read().decode()
        proc.wait()
        tee.join()
    if proc.returncode != 0:
        raise SystemExit(f"phase {phase} failed (exit {proc.returncode}); see {log_path}")
    result = json.loads(stdout.strip().splitlines()[-1].removeprefix("RESULT "))
    text = log_path.read_text(errors="replace")
    result["bars_seen"] = sorted(name for name, pattern in BARS.items() if re.search(pattern, text))
    result["load_average_before"] = [round(x, 2) for x in load_before]
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return result


def _forwarded(args) -> dict:
    keys = ("scratch", "threads", "device", "seed", "dim", "search_epochs", "train_epochs", "batch_size",
            "recommend_users", "reader_root", "sparse_rows", "race_k")
    return {k: getattr(args, k) for k in keys}


def table(results: list[dict]) -> str:
    """Markdown: one row per phase with its seconds, peak RSS and what it measured."""
    rows = ["| phase | seconds | peak RSS (GiB) | details |", "| --- | ---: | ---: | --- |"]
    skip = {"phase", "seconds", "peak_rss_gib", "load_average_before", "load_average_after"}
    for r in results:
        details = ", ".join(f"{k}={v}" for k, v in r.items() if k not in skip)
        rows.append(f"| {r['phase']} | {r['seconds']:.1f} | {r['peak_rss_gib']:.2f} | {details} |")
    return "\n".join(rows) + "\n"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scratch", default="/tmp/nasp-20m", help="folder for the CSV and the models (outside the repo)")
    p.add_argument("--cpus", default="0", help="taskset CPU list of every phase")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--search-epochs", type=int, default=2)
    p.add_argument("--train-epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=65536)
    p.add_argument("--sparse-rows", type=int, default=0, choices=(0, 1), help="1: model.sparse_rows=true")
    p.add_argument("--race-k", type=int, default=None, help="model.race_k (default: the library's; 0: no race, "
                   "the search's own choice, then one stand-alone training)")
    p.add_argument("--recommend-users", type=int, default=1000)
    p.add_argument("--ratings", type=int, default=NUM_RATINGS)
    p.add_argument("--users", type=int, default=NUM_USERS)
    p.add_argument("--items", type=int, default=NUM_ITEMS)
    p.add_argument("--reader-root", default="", help="read phase: import data_loaders from this checkout instead "
                                                      "(e.g. `git archive <commit> | tar -x -C DIR`), for before/after")
    p.add_argument("--phases", default=",".join(PHASES), help=f"comma list out of {', '.join(PHASES)}")
    p.add_argument("--keep-csv", action="store_true", help="leave the CSV in the scratch folder for a rerun")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sif_20m.json"))
    p.add_argument("--phase", help=argparse.SUPPRESS)
    return p


def main() -> None:
    args = _parser().parse_args()
    if args.phase:
        return child(args)
    from benchmarks._machine import machine

    scratch = Path(args.scratch).resolve()
    if ROOT in scratch.parents or scratch == ROOT:
        raise SystemExit(f"--scratch {scratch}: must lie outside the repository (the CSV is never committed)")
    args.scratch = str(scratch)
    csv = ensure_csv(scratch, args.ratings, args.users, args.items, args.seed)
    results = []
    for phase in args.phases.split(","):
        results.append(run_phase(args, phase))
        print(f"{phase}: {results[-1]['seconds']:.1f} s, peak RSS {results[-1]['peak_rss_gib']:.2f} GiB", flush=True)
    report = {"command": "python benchmarks/bench_sif_20m.py " + " ".join(sys.argv[1:]), "machine": machine(),
              "cpus": args.cpus, "csv_mib": round(csv.stat().st_size / 2**20, 1),
              "memory": "each phase in its own subprocess; peak RSS = its VmHWM (sub-steps: VmHWM after a reset "
                        "through /proc/self/clear_refs)",
              "settings": _forwarded(args), "phases": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(table(results))
    if not args.keep_csv:
        csv.unlink()
        (scratch / "ratings.json").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
