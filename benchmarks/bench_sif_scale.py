"""SIF at scale: seconds per step, ratings per second and peak RSS of the search and of stand-alone training as the
tables grow (1k .. 1M users, items = users / 5), dense tables against row-wise ones (``model.sparse_rows``).

Every configuration (users x batch x phase x tables) runs in a fresh subprocess, so that its peak RSS is its own.
The data are planted ratings (``y = <u, v> + noise`` from random dim-4 user and item factors; pairs drawn with
replacement, since at 1k users a batch of 65536 exceeds the 200k distinct pairs). Search: ``Searcher.fit`` with
SIF's search defaults (NASP, Adam lr 0.002, the fused step where it applies, every head trained) for one epoch of
``--steps`` batches; training: ``sif.train.train_model`` of the multiply model with the default training settings
(Adam, clip 5) for one epoch. A step's time is the interval between two batches drawn by the loop (the loader is
wrapped), so it is the loop's own step, warm-up steps dropped; ratings/s = batch / median step. The CPU seconds of
the process over the same intervals (``time.process_time``) are recorded next to them (``cpu_step_s``,
``ratings_per_cpu_s``): on a shared machine the wall time of a pinned process grows with the load, its CPU time
much less.

    taskset -c 1 python benchmarks/bench_sif_scale.py --threads 1        # writes benchmarks/results/sif_scale.json

``--diagnostic`` adds, per phase, batch and tables, a row with the largest table whose batches draw from the
smallest user count's ids (e.g. a 1M-user table, batches from its first 1k users and 200 items): the same batches,
hence the same distinct rows per batch, as the smallest configuration, so its ratio to that row is the cost of the
table size alone (``table_only_step_ratio`` in the summary; the issue's ratio mixes it with the number of distinct
rows per batch). ``--profile FILE`` (with ``--worker``) writes a cProfile of the fit, timed in CPU seconds.

Parts can run as separate processes (``--phases``, ``--batches``, ``--out``; each file is rewritten after every
row) and be joined with ``--merge FILE ... --out benchmarks/results/sif_scale.json`` (benchmarks/README.md, "SIF at
scale", has the commands of the recorded run).

``--device cuda`` runs the same on a GPU (search with ``--amp bf16``: autocast, so the generic step); no GPU numbers
exist yet (none was available).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIM = 32


class _Timed:
    """Forwards a loader (``set_epoch``/``iter_from``/``len``) and records the time at which each batch is drawn."""

    def __init__(self, loader):
        self.loader, self.stamps, self.cpu_stamps = loader, [], []

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def iter_from(self, start: int):
        for batch in self.loader.iter_from(start):
            self.stamps.append(time.perf_counter())
            self.cpu_stamps.append(time.process_time())
            yield batch

    def __iter__(self):
        return self.iter_from(0)


def _planted(users: int, items: int, n: int, seed: int):
    """(users (n,), items (n,), ratings (n,) float32 standardised) with y = <p_u, q_i> + 0.1 noise (dim 4); the
    ids lie in [0, users) and [0, items) (the model's tables may be larger: ``--active-users``)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    p, q = torch.randn(users, 4, generator=g), torch.randn(items, 4, generator=g)
    u, i = torch.randint(users, (n,), generator=g), torch.randint(items, (n,), generator=g)
    y = (p[u] * q[i]).sum(1) + 0.1 * torch.randn(n, generator=g)
    return u, i, ((y - y.mean()) / y.std()).float()


def _loader(users, items, n, batch, seed, device):
    from data_loaders import BatchIterator

    u, i, y = _planted(users, items, n, seed)
    return BatchIterator({"users": u, "items": i, "ratings": y}, batch_size=batch, seed=seed, device=device,
                         fields=("users", "items", "ratings"))


def _worker(a) -> dict:
    """One configuration in this process: its step times, ratings/s and peak RSS."""
    sys.path.insert(0, str(ROOT))
    import torch

    from nasp.search import Searcher
    from sif.config import SIFSearchConfig
    from sif.space import SIFSpace
    from sif.task import RatingTask
    from sif.train import TrainConfig, train_model

    torch.set_num_threads(a.threads)
    items, n = max(a.users // 5, 1), a.batch * (a.steps + a.warmup)
    active = a.active_users or a.users                 # the batches' users; the tables hold a.users rows
    active_items = max(active // 5, 1)
    train = _Timed(_loader(active, active_items, n, a.batch, 0, a.device))
    valid = _loader(active, active_items, 2 * a.batch, a.batch, 1, a.device)
    ops = None if a.phase == "search" else ("multiply",)
    model = SIFSpace(a.users, items, embedding_dim=DIM, ops=ops, use_bias=True, g_skip=True, seed=0,
                     sparse_rows=a.sparse).to(a.device)
    task = RatingTask(train_all_heads=True)
    prof = cProfile.Profile(time.process_time) if a.profile else None      # CPU time: the machine is shared
    if prof:
        prof.enable()
    t0 = time.perf_counter()
    if a.phase == "search":
        cfg = SIFSearchConfig(epochs=1, seed=0, amp=a.amp, log_every=10_000)
        s = Searcher(model, task, cfg, device=a.device, show_progress=False)
        s.fit(train, valid, eval_loader=valid)
        path = "fused" if s.fused_step is not None else "generic"
    else:
        cfg = TrainConfig(max_epochs=1, batch_size=a.batch)
        train_model(model, task, train, valid, cfg, a.device, show_progress=False)
        path = "train loop"
    wall = time.perf_counter() - t0
    top = None
    if prof:
        prof.disable()
        prof.dump_stats(a.profile)
        top = _top_calls(a.profile, a.steps + a.warmup)
    steps = [b - a_ for a_, b in zip(train.stamps, train.stamps[1:], strict=False)][a.warmup:]
    cpu = [b - a_ for a_, b in zip(train.cpu_stamps, train.cpu_stamps[1:], strict=False)][a.warmup:]
    step, cpu_step = statistics.median(steps), statistics.median(cpu)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2          # KiB -> GiB
    return {"users": a.users, "items": items, "active_users": active, "active_items": active_items,
            "batch": a.batch, "phase": a.phase, "sparse_rows": a.sparse,
            "device": a.device, "amp": a.amp, "path": path, "steps_timed": len(steps), "step_s": step,
            "step_s_all": steps, "ratings_per_s": a.batch / step, "cpu_step_s": cpu_step, "cpu_step_s_all": cpu,
            "ratings_per_cpu_s": a.batch / cpu_step, "peak_rss_gib": rss, "wall_s": wall,
            **({"profile_top": top} if top else {})}


def _top_calls(path: str, steps: int, n: int = 16) -> list[dict]:
    """The C-level calls (torch ops, numpy) made directly from the library's code (sif/, nasp/) in a cProfile dump,
    largest first: {call, caller, cpu_ms_per_step, calls_per_step} over ``steps`` steps (one-time work such as
    the optimiser state's creation included)."""
    import pstats

    agg: dict[tuple[str, str], list[float]] = {}
    for (fn, _, name), (*_, callers) in pstats.Stats(path).stats.items():
        if fn != "~":                                               # C functions only
            continue
        for (cfn, _, cname), (_, calls, _, cum) in callers.items():
            if ("/sif/" in cfn or "/nasp/" in cfn) and cname != "<module>":          # not imports
                key = (name, f"{Path(cfn).parent.name}/{Path(cfn).name}:{cname}")
                acc = agg.setdefault(key, [0.0, 0])
                acc[0], acc[1] = acc[0] + cum, acc[1] + calls
    rows = sorted(agg.items(), key=lambda kv: -kv[1][0])[:n]
    return [{"call": c, "caller": w, "cpu_ms_per_step": round(1e3 * t / steps, 3), "calls_per_step": k / steps}
            for (c, w), (t, k) in rows]


def _run(users: int, batch: int, phase: str, sparse: bool, args, active: int = 0) -> dict:
    steps = args.steps if batch <= 4096 else args.big_steps
    cmd = [sys.executable, __file__, "--worker", "--users", str(users), "--batch", str(batch), "--phase", phase,
           "--steps", str(steps), "--warmup", str(args.warmup), "--threads", str(args.threads),
           "--device", args.device, "--active-users", str(active)] + (["--sparse"] if sparse else []) \
        + (["--amp", args.amp] if args.amp else [])
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT)}
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _active(r: dict) -> int:
    return r.get("active_users") or r["users"]                      # rows of older files: every user active


def _summary(rows: list[dict]) -> dict:
    """The issue's targets: s/step at the largest table over the smallest (same batch, phase, tables; rows whose
    batches draw from every user), and the search's ratings/s at the largest batch. Diagnostic rows (a large table
    whose batches draw from few users, ``--diagnostic``) get their own ratio against the small table with the same
    active users: the table size alone, the distinct rows per batch held fixed."""
    diag = [r for r in rows if _active(r) < r["users"]]
    rows = [r for r in rows if _active(r) == r["users"]]
    key = {(r["users"], r["batch"], r["phase"], r["sparse_rows"]): r for r in rows}
    lo, hi = min(r["users"] for r in rows), max(r["users"] for r in rows)
    def ratios(field):
        return {f"{p} batch {b} {'sparse' if sp else 'dense'}": key[(hi, b, p, sp)][field] / key[(lo, b, p, sp)][field]
                for (u, b, p, sp) in key if u == lo and (hi, b, p, sp) in key and field in key[(lo, b, p, sp)]}

    big = max(r["batch"] for r in rows)
    rate = {f"{u} users {'sparse' if sp else 'dense'}": r["ratings_per_s"]
            for (u, b, p, sp), r in key.items() if b == big and p == "search"}
    cpu_rate = {f"{u} users {'sparse' if sp else 'dense'}": r["ratings_per_cpu_s"]
                for (u, b, p, sp), r in key.items() if b == big and p == "search" and "ratings_per_cpu_s" in r}
    out = {f"step_ratio_{hi}_vs_{lo}": ratios("step_s"), f"cpu_step_ratio_{hi}_vs_{lo}": ratios("cpu_step_s"),
           f"search_ratings_per_s_batch_{big}": rate, f"search_ratings_per_cpu_s_batch_{big}": cpu_rate}
    table_only = {}
    for r in diag:
        base = key.get((_active(r), r["batch"], r["phase"], r["sparse_rows"]))
        if base is not None:
            name = (f"{r['phase']} batch {r['batch']} {'sparse' if r['sparse_rows'] else 'dense'}: "
                    f"{r['users']} rows / {base['users']} rows, {_active(r)} active users")
            table_only[name] = {"step_ratio": r["step_s"] / base["step_s"],
                                "cpu_step_ratio": r["cpu_step_s"] / base["cpu_step_s"]}
    if table_only:
        out["table_only_step_ratio"] = table_only
    return out


def _merge(paths: list[str], out: Path) -> None:
    """One result file from several runs (e.g. the batch sizes run as separate processes): every run's command,
    machine and load averages are kept; the summary is recomputed over all rows."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    rows = [r for run in runs for r in run["rows"]]
    res = {"runs": [{k: v for k, v in run.items() if k != "rows" and k != "summary"} for run in runs],
           "summary": _summary(rows), "rows": rows}
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res["summary"], indent=2))


def _write(out: Path, args, load_before, rows: list[dict]) -> None:
    from benchmarks._machine import machine

    res = {"command": " ".join(["taskset -c " + ",".join(map(str, sorted(os.sched_getaffinity(0))))
                                if len(os.sched_getaffinity(0)) < (os.cpu_count() or 1) else "", "python",
                                *sys.argv]).strip(),
           "machine": machine(), "load_average_before": load_before, "load_average_after": os.getloadavg(),
           "summary": _summary(rows), "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")


def _print(r: dict, tables: str) -> None:
    print(f"{r['phase']:6s} users {r['users']:8d} active {_active(r):8d} batch {r['batch']:6d} {tables:6s} "
          f"{r['path']:10s} {r['step_s'] * 1e3:9.2f} ms/step {r['ratings_per_s']:11.0f} ratings/s "
          f"{r['cpu_step_s'] * 1e3:9.2f} CPU ms/step {r['ratings_per_cpu_s']:11.0f} ratings/CPU s "
          f"peak RSS {r['peak_rss_gib']:.2f} GiB", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--phase", choices=("search", "train"), default="search")
    p.add_argument("--sparse", action="store_true")
    p.add_argument("--user-counts", default="1000,10000,100000,1000000")
    p.add_argument("--batches", default="1024,65536")
    p.add_argument("--phases", default="search,train")
    p.add_argument("--tables", default="dense,sparse")
    p.add_argument("--steps", type=int, default=30, help="timed steps per configuration at batch <= 4096")
    p.add_argument("--big-steps", type=int, default=8, help="timed steps per configuration at larger batches")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--active-users", type=int, default=0, help="worker: batches draw from the first N users (and "
                   "N/5 items) of the tables (0: all)")
    p.add_argument("--diagnostic", action="store_true", help="also a row per (phase, batch, tables) with the "
                   "largest table and batches drawn from the smallest user count's ids: table size alone")
    p.add_argument("--profile", default="", help="worker: cProfile (CPU time) of the fit into this file")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", default=None, help="search autocast dtype on CUDA (bf16 | fp16); none on CPU")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sif_scale.json"))
    p.add_argument("--merge", nargs="+", default=None, help="merge the rows of these result files into --out")
    args = p.parse_args()
    if args.worker:
        print(json.dumps(_worker(args)))
        return
    if args.merge:
        _merge(args.merge, Path(args.out))
        return
    sys.path.insert(0, str(ROOT))
    load_before, rows, out = os.getloadavg(), [], Path(args.out)
    for phase in args.phases.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            for users in (int(u) for u in args.user_counts.split(",")):
                for tables in args.tables.split(","):
                    r = _run(users, batch, phase, tables == "sparse", args)
                    rows.append(r)
                    _print(r, tables)
                    _write(out, args, load_before, rows)          # after every row: a stopped run keeps its rows
            if args.diagnostic:
                counts = [int(u) for u in args.user_counts.split(",")]
                for tables in args.tables.split(","):
                    r = _run(max(counts), batch, phase, tables == "sparse", args, active=min(counts))
                    rows.append(r)
                    _print(r, tables)
                    _write(out, args, load_before, rows)
    print(json.dumps(_summary(rows), indent=2))


if __name__ == "__main__":
    main()
