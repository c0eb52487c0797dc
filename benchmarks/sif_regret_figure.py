"""The regret of the searched models per fold (issue 14): merge benchmark rows into one result file, draw the figure.

    python benchmarks/sif_regret_figure.py --rows A/benchmark.json B/benchmark.json ... --command "..."
    python benchmarks/sif_regret_figure.py            # redraw from the result file alone

With ``--rows`` it merges the rows of ``sif benchmark`` runs (benchmark.json files, or result files holding them
under "rows"; ``PATH=MODEL,MODEL`` keeps only those models of that file, e.g. rows reused from an earlier run) into
``--json`` with the machine, the commands, the markdown table and the regret summary
(sif.benchmark.regret_summary). Then, from ``--json``, it draws one bar per fold and searched model: test RMSE (or
-NDCG@10) minus that of the fixed op best on validation, with the +-0.003 band of the issue's target, to ``--png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._machine import machine  # noqa: E402
from sif.benchmark import benchmark_table, load_rows, regret_summary  # noqa: E402

JSON = ROOT / "benchmarks" / "results" / "sif_ml100k_folds_regret.json"
PNG = ROOT / "benchmarks" / "results" / "sif_regret_folds.png"
TARGET = 0.003          # issue 14: regret <= 0.003 on every fold


WHAT = ("ML-100K u1..u5, the default settings (configs/sif_ml100k_folds_regret.yaml): the searched model, every "
        "fixed op of the default space, random search, tuned MF and tuned SVD++")


def merge(sources: list[tuple[str, list[str]]], command: str, out: Path, what: str = WHAT) -> dict:
    """One result file from (path, models to keep or [] for all) pairs."""
    rows = []
    for path, keep in sources:
        rows += [r for r in load_rows([path]) if not keep or r["model"] in keep]
    result = {"what": what,
              "command": command, "sources": [{"path": p, "models": k or "all"} for p, k in sources],
              "machine": machine(), "table": benchmark_table(rows),
              "regret": regret_summary(rows), "rows": rows}
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def draw(result: dict, png: Path) -> None:
    """One panel per searched model: per fold, its regret against the validation-best fixed op and (lighter) the
    oracle regret against the test-best one, the op found written above, the +-0.003 target dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = result["regret"]
    fig, axes = plt.subplots(1, len(summary), figsize=(4.2 * len(summary), 3.8), squeeze=False)
    for ax, (model, s) in zip(axes[0], summary.items(), strict=True):
        per = s["per_split"]
        folds = list(per)
        xs = range(len(folds))
        regret = [per[f]["regret"] for f in folds]
        oracle = [per[f]["regret_oracle"] for f in folds]
        ax.bar([x - 0.2 for x in xs], regret, 0.4, label="vs the valid-best fixed op", color="tab:blue")
        ax.bar([x + 0.2 for x in xs], oracle, 0.4, label="vs the test-best (oracle)", color="tab:blue", alpha=0.35)
        ax.plot([x - 0.2 for x in xs], regret, "o", color="tab:blue", markersize=3)   # a zero bar stays visible
        top = max(TARGET * 1.6, *regret, *oracle) * 1.6
        low = min(-TARGET * 1.6, *regret, *oracle) * 1.25
        for x, f in zip(xs, folds, strict=True):
            ax.annotate(per[f]["op"], (x, top * 0.97), fontsize=7, ha="center", va="top", rotation=90)
        for y in (TARGET, -TARGET):
            ax.axhline(y, color="red", linestyle="--", linewidth=1)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_ylim(low, top)
        ax.set_xticks(list(xs), [f"u{f}" for f in folds])
        mean, std = s["regret"]
        ax.set_title(f"{model}: regret {mean:+.4f} +- {std:.4f}\nvalid-best op picked {s['picked']}/{s['splits']}",
                     fontsize=9)
    metric = next(iter(next(iter(summary.values()))["per_split"].values()))["metric"]
    axes[0][0].legend(fontsize=7, loc="lower left")
    axes[0][0].set_ylabel(f"regret (test {'RMSE' if metric == 'rmse' else '-NDCG@10'}; dashed: +-{TARGET})")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", nargs="*", default=[],
                    help="benchmark.json / result files to merge: PATH (all rows) or PATH=MODEL,MODEL")
    ap.add_argument("--command", default="", help="the commands that made the rows (recorded)")
    ap.add_argument("--what", default=WHAT, help="what the rows are (recorded)")
    ap.add_argument("--json", type=Path, default=JSON)
    ap.add_argument("--png", type=Path, default=PNG)
    args = ap.parse_args()
    if args.rows:
        sources = [(p, [m for m in keep.split(",") if m]) for p, _, keep in (a.partition("=") for a in args.rows)]
        result = merge(sources, args.command, args.json, args.what)
    else:
        result = json.loads(args.json.read_text())
    print(result["table"])
    draw(result, args.png)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
