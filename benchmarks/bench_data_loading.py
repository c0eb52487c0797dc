"""Time rating-data loading: ML-100K (folder and zip) and a generated 5-million-row CSV.

Each case runs in a fresh subprocess so its peak RSS is its own: reported as the peak and as the growth over
the process's RSS after imports. Times are the median of repeats (file cache warm after the first run).

    python benchmarks/bench_data_loading.py [--data-dir $NASP_DATA_DIR] [--rows 5000000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _rss_mib() -> float:
    """Current resident set size of this process in MiB (Linux)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _run_case(case: str, path: str, repeats: int) -> dict:
    """Child process: load ``repeats`` times, return timings and memory."""
    import torch

    from data_loaders import BatchIterator, load_movielens, read_ratings_file, to_csr

    torch.set_num_threads(2)
    columns = {"user": "user", "item": "item", "rating": "rating", "timestamp": "timestamp"}
    load = {
        "ml100k-folder": lambda: load_movielens("100k", root=path),
        "ml100k-zip": lambda: load_movielens("100k", root=path),
        "csv-5m": lambda: read_ratings_file(path, columns=columns, rating_scale=(1, 5)),
    }[case]
    base = _rss_mib()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        ds = load()
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    n_batches = sum(1 for _ in BatchIterator(ds, batch_size=4096, seed=0))
    epoch = time.perf_counter() - start
    start = time.perf_counter()
    to_csr(ds)
    csr = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"case": case, "rows": len(ds), "median_s": statistics.median(times), "times_s": times,
            "peak_rss_mib": peak, "peak_over_baseline_mib": peak - base, "epoch_4096_s": epoch,
            "batches": n_batches, "to_csr_s": csr}


def _spawn(case: str, path: Path, repeats: int) -> dict:
    cmd = [sys.executable, __file__, "--child", case, "--path", str(path), "--repeats", str(repeats)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _write_csv(path: Path, rows: int) -> None:
    from data_loaders.synthetic import synthetic_ratings

    frame = synthetic_ratings(rows, 200_000, 50_000, seed=0)
    frame["rating"] = frame["rating"].astype("int64")
    frame.to_csv(path, index=False)


def _machine() -> str:
    import pandas
    import torch

    with open("/proc/cpuinfo") as fh:
        models = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
    model = models[0] if models else platform.processor()
    return (f"{model}, {os.cpu_count()} cores; Python {platform.python_version()}, "
            f"torch {torch.__version__}, pandas {pandas.__version__}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("NASP_DATA_DIR"))
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child")
    parser.add_argument("--path")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_run_case(args.child, args.path, args.repeats)))
        return
    print(_machine())
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.data_dir and (Path(args.data_dir) / "ml-100k" / "u.data").is_file():
            folder = Path(args.data_dir) / "ml-100k"
            with zipfile.ZipFile(tmp / "ml-100k.zip", "w", zipfile.ZIP_DEFLATED) as zf:
                zf.write(folder / "u.data", "ml-100k/u.data")  # temporary, never kept
            results += [_spawn("ml100k-folder", folder, args.repeats),
                        _spawn("ml100k-zip", tmp / "ml-100k.zip", args.repeats)]
        else:
            print("ML-100K not found (set NASP_DATA_DIR); skipping it")
        start = time.perf_counter()
        _write_csv(tmp / "ratings.csv", args.rows)
        print(f"generated {args.rows:,}-row CSV ({(tmp / 'ratings.csv').stat().st_size / 2**20:.0f} MiB) "
              f"in {time.perf_counter() - start:.1f} s")
        results.append(_spawn("csv-5m", tmp / "ratings.csv", max(1, args.repeats // 2 + 1)))
    print("| case | rows | median load (s) | peak RSS (MiB) | peak - RSS after imports (MiB) | "
          "epoch, batch 4096 (s) | to_csr (s) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(f"| {r['case']} | {r['rows']:,} | {r['median_s']:.3f} | {r['peak_rss_mib']:.0f} | "
              f"{r['peak_over_baseline_mib']:.0f} | {r['epoch_4096_s']:.3f} | {r['to_csr_s']:.3f} |")


if __name__ == "__main__":
    main()
