"""Cost of the rating reader's input checks (id spellings, True/False ratings) on its fast path, per commit.

Generates two CSVs (unique (user, item) pairs, a header): ``explicit`` with half-star ratings and ``implicit`` with
every rating 1 (implicit feedback), then reads each with ``read_ratings_file`` from a ``git archive`` of every
commit given (a fresh subprocess each, best and median of ``--repeats``), integer and string ids. It also records
whether the fast path (pandas C engine) kept the file or gave it to the per-line careful path, and times the careful
path itself (the fast path switched off) on the first ``--careful-rows`` rows of ``explicit`` (integer ids).

    python benchmarks/bench_fast_read_checks.py --commits 7bf91ef d9acbb7 HEAD --rows 3000000 \\
        --out benchmarks/results/fast_read_checks.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_CHILD = """
import json, statistics, sys, time
sys.path.insert(0, sys.argv[1])
from data_loaders import _parse, read_ratings_file
gave_up = []
fast = (lambda *a, **k: None) if sys.argv[5] == "careful" else _parse.fast_read
_parse.fast_read = lambda *a, **k: (lambda r: (gave_up.append(r is None), r)[1])(fast(*a, **k))
times = []
for _ in range(int(sys.argv[4])):
    start = time.perf_counter()
    read_ratings_file(sys.argv[2], id_type=sys.argv[3], show_progress=False)
    times.append(time.perf_counter() - start)
print(json.dumps({"best_s": min(times), "median_s": statistics.median(times), "fast_path": not any(gave_up)}))
"""


def _write_csv(path: Path, rows: int, implicit: bool, seed: int = 0) -> None:
    """``rows`` unique (user, item) pairs with a header; ratings 1 (implicit) or 0.5..5 in half stars."""
    rng = np.random.default_rng(seed)
    keys = np.unique(rng.integers(0, 200_000 * 60_000, int(rows * 1.01)))[:rows]
    rng.shuffle(keys)
    users, items = keys // 60_000 + 1, keys % 60_000 + 1
    ratings = np.ones(rows) if implicit else rng.integers(1, 11, rows) / 2
    times = rng.integers(800_000_000, 1_500_000_000, rows)
    with open(path, "w") as fh:
        fh.write("userId,movieId,rating,timestamp\n")
        fh.writelines(f"{u},{i},{r:g},{t}\n" for u, i, r, t in zip(users.tolist(), items.tolist(), ratings.tolist(),
                                                                 times.tolist(), strict=True))


def _tree(commit: str, folder: Path) -> Path:
    """The data_loaders package of ``commit`` extracted under ``folder``."""
    out = folder / commit
    out.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "data_loaders"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--commits", nargs="+", default=["HEAD"])
    ap.add_argument("--rows", type=int, default=3_000_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--careful-rows", type=int, default=1_000_000)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    from benchmarks._machine import machine

    results = {"command": " ".join(sys.argv), "machine": machine(), "rows": args.rows, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = {"explicit": tmp / "explicit.csv", "implicit": tmp / "implicit.csv", "careful": tmp / "careful.csv"}
        for kind, path in files.items():
            _write_csv(path, args.careful_rows if kind == "careful" else args.rows, kind == "implicit")
        trees = {c: _tree(c, tmp / "trees") for c in args.commits}
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        for kind, path in files.items():
            for id_type in ("int",) if kind == "careful" else ("int", "str"):
                for commit, tree in trees.items():
                    out = subprocess.run([sys.executable, "-c", _CHILD, str(tree), str(path), id_type,
                                          str(args.repeats), kind], check=True, capture_output=True, text=True, env=env)
                    row = {"file": kind, "id_type": id_type, "commit": commit, **json.loads(out.stdout),
                           "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()), "at": time.time()}
                    results["runs"].append(row)
                    print(json.dumps(row))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
