"""Data-parallel SIF search on ML-100K: 1 process vs 2 processes (torchrun, gloo on CPU), side by side in one run.

Each case is a fresh ``torchrun --standalone`` launch that times NASP search steps (alpha step + weight step, the
same step function as ``Searcher.fit``) on the SIF space at a fixed GLOBAL batch size: 1 process x 1 thread,
1 process x 2 threads, 2 processes x 1 thread. Reported per case: median seconds per step (median over repeats of
the median over steps), global rows per second, and for 2 processes the share of the step spent in the gradient
all-reduces. Scaling efficiency = throughput(2 processes) / (2 x throughput(1 process x 1 thread)).

    NASP_DATA_DIR=../shared/data python benchmarks/bench_distributed_sif.py

``--users N`` replaces ML-100K by planted ratings with N users and N / 5 items (``bench_sif_scale._planted``, 400k
ratings), and ``--tables dense,sparse`` runs each case with dense tables (whole-table all-reduce) and with row-wise
ones (``sparse_rows``: only the touched rows travel, :mod:`nasp.distributed_sparse`):

    python benchmarks/bench_distributed_sif.py --users 100000 --tables dense,sparse --dim 32 \
        --out benchmarks/results/distributed_sif_100k.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _worker(args) -> None:
    sys.path.insert(0, str(ROOT))
    import torch

    from data_loaders import BatchIterator, RatingScaler, load_movielens, random_split
    from nasp import distributed as nd
    from nasp.search import SearchConfig, to_device
    from nasp.strategies import STRATEGIES
    from nasp.streams import ResumableStream
    from sif.space import SIFSpace
    from sif.task import RatingTask

    torch.set_num_threads(args.threads)
    nd.init_distributed("cpu")
    if args.users:
        from benchmarks.bench_sif_scale import _planted
        from data_loaders import RatingDataset

        u, i, y = _planted(args.users, args.users // 5, 400_000, 0)
        ds = RatingDataset.from_arrays(u.numpy(), i.numpy(), y.double().numpy(), user_ids=range(args.users),
                                       item_ids=range(args.users // 5), name=f"planted-{args.users}")
    else:
        root = Path(os.environ.get("NASP_DATA_DIR", ROOT.parent / "shared" / "data")) / "ml-100k"
        ds = load_movielens("100k", root=root, download=False)
    train, valid, _ = random_split(ds, (0.8, 0.1, 0.1), seed=0)
    scaler = RatingScaler().fit(train)

    def loader(d, seed):
        data = {"users": d.users, "items": d.items, "ratings": scaler.transform(d.ratings).float()}
        return nd.shard_if_distributed(BatchIterator(data, batch_size=args.batch_size, seed=seed,
                                                     fields=("users", "items", "ratings")))

    results = {}
    space = SIFSpace(train.num_users, train.num_items, embedding_dim=args.dim, use_bias=True, seed=0,
                     sparse_rows=args.sparse)
    task = RatingTask(scaler.mean_, scaler.std_, train.rating_scale, train_all_heads=True)
    cfg = SearchConfig(strategy="nasp", epochs=1, w_optimizer="adagrad", w_lr=0.05, w_lr_schedule="constant",
                       w_momentum=0.0, w_weight_decay=0.0, a_lr=3e-4)
    s = nd.make_searcher(space, task, cfg, show_progress=False)
    sync_time = [0.0]
    if s.grad_sync is not None:
        inner = s.grad_sync

        def timed(grads):
            t = time.perf_counter()
            inner(grads)
            sync_time[0] += time.perf_counter() - t

        s.grad_sync = timed
    tr, va = ResumableStream(loader(train, 0)), ResumableStream(loader(valid, 1))
    step = STRATEGIES["nasp"]
    per_repeat, sync_share = [], []
    for _ in range(args.warmup):
        step(s, to_device(next(tr), s.device), to_device(next(va), s.device), True)
    for _ in range(args.repeats):
        times, sync_time[0] = [], 0.0
        for _ in range(args.steps):
            t = time.perf_counter()
            step(s, to_device(next(tr), s.device), to_device(next(va), s.device), True)
            times.append(time.perf_counter() - t)
        per_repeat.append(statistics.median(times))
        sync_share.append(sync_time[0] / sum(times))
    nd.check_alphas_identical(s.model.arch, "after the benchmark")
    results = {"world_size": nd.get_world_size(), "threads": args.threads, "batch_size": args.batch_size,
               "users": train.num_users, "sparse_rows": args.sparse,
               "step_s": statistics.median(per_repeat), "step_s_repeats": per_repeat,
               "allreduce_share": statistics.median(sync_share) if s.grad_sync is not None else 0.0,
               "rows_per_s": args.batch_size / statistics.median(per_repeat)}
    if nd.is_main_process():
        Path(args.result).write_text(json.dumps(results))
    nd.cleanup()


def _launch(nproc: int, threads: int, batch: int, args, result: Path, sparse: bool = False) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", __file__,
           "--worker", "--threads", str(threads), "--batch-size", str(batch), "--steps", str(args.steps),
           "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--result", str(result),
           "--users", str(args.users), "--dim", str(args.dim)] + (["--sparse"] if sparse else [])
    subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return json.loads(result.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--batch-sizes", default="512,4096")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--result", default=None)
    p.add_argument("--users", type=int, default=0, help="planted ratings with this many users (0: ML-100K)")
    p.add_argument("--dim", type=int, default=8)
    p.add_argument("--tables", default="dense", help="dense, sparse or dense,sparse (model.sparse_rows)")
    p.add_argument("--sparse", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default="benchmarks/results/distributed_sif.json")
    args = p.parse_args()
    if args.worker:
        _worker(args)
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _machine import machine_line

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for tables in args.tables.split(","):
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            case = {}
            for name, nproc, threads in (("1 proc x 1 thread", 1, 1), ("1 proc x 2 threads", 1, 2),
                                         ("2 procs x 1 thread", 2, 1)):
                case[name] = _launch(nproc, threads, batch, args, out.with_suffix(".tmp.json"), tables == "sparse")
                print(f"{tables:6s} batch {batch:5d}  {name:20s} {case[name]['step_s'] * 1e3:7.2f} ms/step "
                      f"{case[name]['rows_per_s']:9.0f} rows/s  all-reduce {case[name]['allreduce_share']:.0%}",
                      flush=True)
            eff = case["2 procs x 1 thread"]["rows_per_s"] / (2 * case["1 proc x 1 thread"]["rows_per_s"])
            rows.append({"tables": tables, "batch_size": batch, "cases": case, "scaling_efficiency": eff})
            print(f"{tables:6s} batch {batch:5d}  scaling efficiency (2 procs vs 1 proc x 1 thread): {eff:.2f}",
                  flush=True)
    out.with_suffix(".tmp.json").unlink(missing_ok=True)
    res = {"command": " ".join(["python", *sys.argv]), "machine": machine_line(), "rows": rows}
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(res["machine"])


if __name__ == "__main__":
    main()
