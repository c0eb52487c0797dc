"""The quick-start defaults, unchanged, on rating files that are not ML-100K as shipped (issue 14, item 7).

Four MovieLens-format files are derived (``--make DIR``), none of them in the repository:

- ``ml100k_half.tsv``: the users of ML-100K's ``u.data`` with an odd id (half the users, tab-separated, no header);
- ``ml100k_dense.tsv``: the 40-core of ``u.data`` (users and items with >= 40 ratings, pruned until stable);
- ``planted_lowrank.csv``: synthetic, ``user,item,rating,timestamp`` with a header (ML-20M's layout): 1,500 users
  x 1,000 items, 90,000 distinct pairs drawn with Pareto popularity and activity, rating
  ``round(3.6 + b_u + b_i + p_u . q_i + N(0, 0.8^2))`` clipped to 1..5 (rank 8);
- ``planted_halfstar.dat``: the same generator with another seed, ratings rounded to half stars and clipped to
  0.5..5, in ML-10M's layout (``user::item::rating::timestamp``, no header).

Then, per file and seed, the main job and MF on the same config (``--run``; the exact CLI commands)::

    sif search --config configs/sif_ml100k.yaml --set data.dataset=file data.path=FILE seed=S threads=1 \\
        show_progress=false out_dir=RUNS/NAME_sif_sS
    sif train  --config configs/sif_ml100k.yaml --set data.dataset=file data.path=FILE seed=S threads=1 \\
        show_progress=false out_dir=RUNS/NAME_mf_sS model.name=mf

``--table RUNS`` reads the run folders' results.json into a table and a JSON file (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._machine import machine  # noqa: E402
from sif.evaluation import format_mean_std  # noqa: E402

FILES = ("ml100k_half.tsv", "ml100k_dense.tsv", "planted_lowrank.csv", "planted_halfstar.dat")


def _kcore(frame: pd.DataFrame, k: int) -> pd.DataFrame:
    """Users and items with >= k ratings, pruned until no row is dropped."""
    while True:
        keep = (frame.groupby("user").user.transform("size") >= k) & (frame.groupby("item").item.transform("size") >= k)
        if keep.all():
            return frame
        frame = frame[keep]


def planted_lowrank(num_users: int = 1500, num_items: int = 1000, n: int = 90_000, rank: int = 8,
                    seed: int = 7, step: float = 1.0) -> pd.DataFrame:
    """Skewed planted low-rank ratings on 1..5, or on 0.5..5 in half stars with ``step=0.5`` (see the module
    docstring); 1-based ids."""
    rng = np.random.default_rng(seed)
    pop, act = rng.pareto(1.2, num_items) + 1, rng.pareto(1.5, num_users) + 1
    pairs = pd.DataFrame({"user": rng.choice(num_users, 3 * n, p=act / act.sum()),
                          "item": rng.choice(num_items, 3 * n, p=pop / pop.sum())}).drop_duplicates().iloc[:n]
    p, q = rng.normal(0, 0.45, (num_users, rank)), rng.normal(0, 0.45, (num_items, rank))
    bu, bi = rng.normal(0, 0.4, num_users), rng.normal(0, 0.5, num_items)
    u, i = pairs.user.to_numpy(), pairs.item.to_numpy()
    r = 3.6 + bu[u] + bi[i] + (p[u] * q[i]).sum(1) + rng.normal(0, 0.8, len(u))
    rating = np.clip(np.round(r / step) * step, step if step < 1 else 1, 5)
    return pd.DataFrame({"user": u + 1, "item": i + 1, "rating": rating if step < 1 else rating.astype(int),
                         "timestamp": rng.integers(874_724_710, 1_000_000_000, len(u))})


def make(udata: Path, out: Path) -> None:
    """Write the four files of the module docstring into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    d = pd.read_csv(udata, sep="\t", header=None, names=["user", "item", "rating", "timestamp"])
    d[d.user % 2 == 1].to_csv(out / FILES[0], sep="\t", header=False, index=False)
    _kcore(d, 40).to_csv(out / FILES[1], sep="\t", header=False, index=False)
    planted_lowrank().to_csv(out / FILES[2], index=False)
    half = planted_lowrank(seed=11, step=0.5)
    (out / FILES[3]).write_text("".join(f"{u}::{i}::{r:g}::{t}\n" for u, i, r, t in half.itertuples(index=False)))


def run(files: Path, runs: Path, seeds: list[int], names: tuple[str, ...] = FILES) -> None:
    """The CLI commands of the module docstring, one after the other."""
    for seed in seeds:
        for name in names:
            for model in ("sif", "mf"):
                out = runs / f"{Path(name).stem}_{model}_s{seed}"
                cmd = [sys.executable, "-m", "sif.cli", "search" if model == "sif" else "train", "--config",
                       str(ROOT / "configs/sif_ml100k.yaml"), "--set", "data.dataset=file",
                       f"data.path={files / name}", f"seed={seed}", "threads=1", "show_progress=false",
                       f"out_dir={out}", *(["model.name=mf"] if model == "mf" else [])]
                subprocess.run(cmd, check=True, cwd=ROOT)


def table(runs: Path) -> dict:
    """{file: {seed: {model: {valid, test, op}}}} from the run folders, and the printed table."""
    rows: dict = {}
    for path in sorted(runs.glob("*/*/results.json")):
        m = re.fullmatch(r"(.+)_(sif|mf)_s(\d+)", path.parent.parent.name)
        res = json.loads(path.read_text())
        rows.setdefault(m[1], {}).setdefault(int(m[3]), {})[m[2]] = {
            "valid": res["valid"]["rmse"], "test": res["test"]["rmse"], "op": res.get("op")}
    for name, seeds in rows.items():
        pairs = [(s["sif"]["test"], s["mf"]["test"]) for s in seeds.values() if {"sif", "mf"} <= set(s)]
        sif, mf = [a for a, _ in pairs], [b for _, b in pairs]
        print(f"{name}: sif {format_mean_std(sif)}, mf {format_mean_std(mf)}, sif - mf "
              f"{format_mean_std([a - b for a, b in pairs])} ({len(pairs)} seeds), "
              f"ops {[s['sif']['op'] for s in seeds.values()]}")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--make", type=Path, help="write the four files into this folder")
    p.add_argument("--udata", type=Path, help="ML-100K's u.data (default: $NASP_DATA_DIR/ml-100k/u.data)")
    p.add_argument("--run", type=Path, help="fit every (file, seed, model) into run folders under this folder")
    p.add_argument("--files", type=Path, help="the folder --make wrote (with --run)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--names", nargs="+", choices=FILES, default=FILES, help="run only these files (with --run)")
    p.add_argument("--table", type=Path, help="summarise the run folders under this folder")
    p.add_argument("--out", type=Path, help="JSON file for --table")
    a = p.parse_args()
    if a.make:
        make(a.udata or Path(os.environ["NASP_DATA_DIR"]) / "ml-100k" / "u.data", a.make)
    if a.run:
        run(a.files or a.make, a.run, a.seeds, tuple(a.names))
    if a.table:
        rows = table(a.table)
        if a.out:
            a.out.write_text(json.dumps({"machine": machine(), "command": " ".join(sys.argv), "rows": rows},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
