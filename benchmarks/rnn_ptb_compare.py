"""Does the recurrent-cell search find anything? A NASP search on Penn Treebank, then three cells trained
stand-alone with the SAME training config, budget and seed: the found cell, a random cell drawn (seeded) from the
same space, and DARTS_V2's published cell; test perplexity of each next to the unigram baseline.

Every training uses ``--train-config`` with the ``--train-set`` overrides, so the three differ only in the cell.
``--search-dir`` reuses a finished search (its ``rnn_genotype.json`` and ``log.jsonl``) instead of searching;
``--cells`` picks which cells to train. Positional ``data.*=...`` overrides go to the trainings only, so a cell
found on PTB is transferred to another corpus unchanged, e.g. ``data.corpus=wikitext-2 data.path=/data``.
The search's alpha trajectory (per epoch: kept cell, mean alpha per activation, its move since the last epoch,
the number of identity nodes) is written next to the results, to diagnose degenerate (all-identity) cells.

Example (the README's numbers)::

    NASP_DATA_DIR=/work/shared/data taskset -c 1 nice -n 5 python benchmarks/rnn_ptb_compare.py \\
        --search-config configs/rnn_search_ptb_cpu.yaml --train-config configs/rnn_train_ptb_cpu.yaml \\
        --set search.warmup_epochs=1 --out runs/rnn_ptb_compare
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._machine import machine  # noqa: E402
from data_loaders.text import load_corpus, unigram_perplexity  # noqa: E402
from nasp.commands.rnn import RNNSearchRun, RNNTrainRun, run_rnn_search, run_rnn_train  # noqa: E402
from nasp.config import load  # noqa: E402
from nasp.spaces.rnn.genotypes import ACTIVATION_NAMES, RNNGenotype  # noqa: E402

CELLS = ("found", "random", "DARTS_V2")


def random_genotype(num_nodes: int = 8, ops: tuple[str, ...] = ACTIVATION_NAMES, seed: int = 0) -> RNNGenotype:
    """A cell drawn uniformly from the search space: node j takes a predecessor in 0..j-1 and an activation from
    ``ops``, each uniform and independent (``seed`` fixes the draw); the output is the mean of all nodes."""
    if num_nodes < 1 or not ops:
        raise ValueError(f"random_genotype: num_nodes must be >= 1 and ops non-empty, got {num_nodes}, {ops}")
    bad = [o for o in ops if o not in ACTIVATION_NAMES]
    if bad:
        raise ValueError(f"random_genotype: ops {bad} are not among {ACTIVATION_NAMES}")
    rng = random.Random(seed)
    recurrent = tuple((rng.choice(tuple(ops)), rng.randrange(j)) for j in range(1, num_nodes + 1))
    return RNNGenotype(recurrent, tuple(range(1, num_nodes + 1)))


def _cell_of(genotype: dict) -> list[list]:
    """Core genotype dict of a search log record -> [[activation, predecessor] per node j = 1..N]."""
    per_node = {}
    for c in genotype["cell"]:
        i, j = (int(v) for v in c["row_name"].split("->"))
        per_node[j] = [c["op"], i]
    return [per_node[j] for j in sorted(per_node)]


def alpha_trajectory(log_path: str | os.PathLike, ops: list[str], init: float = 0.5) -> list[dict]:
    """Per search epoch of ``log.jsonl``: the kept cell, the mean alpha of each activation over all rows (A: rows
    x ops), the mean |change| of each activation's alphas since the previous epoch (since ``init`` for the first)
    and how many nodes keep 'identity'."""
    out, prev = [], None
    for line in Path(log_path).read_text().splitlines():
        rec = json.loads(line)
        if "alphas" not in rec:
            continue
        a = rec["alphas"]["cell"]                                        # (rows, ops)
        cols = list(zip(*a, strict=True))
        before = list(zip(*prev, strict=True)) if prev is not None else [[init] * len(a)] * len(ops)
        cell = _cell_of(rec["genotype"])
        out.append({"epoch": rec["epoch"], "warmup": rec.get("warmup", False), "valid_ppl": rec.get("valid_ppl"),
                    "cell": cell, "identity_nodes": sum(op == "identity" for op, _ in cell),
                    "mean_alpha": {o: sum(c) / len(c) for o, c in zip(ops, cols, strict=True)},
                    "mean_abs_move": {o: sum(abs(x - y) for x, y in zip(c, b, strict=True)) / len(c)
                                      for o, c, b in zip(ops, cols, before, strict=True)}})
        prev = a
    return out


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--search-config", default="configs/rnn_search_ptb_cpu.yaml")
    p.add_argument("--train-config", default="configs/rnn_train_ptb_cpu.yaml")
    p.add_argument("--set", nargs="+", action="extend", default=[], help="overrides of the search run")
    p.add_argument("--train-set", nargs="+", action="extend", default=[], help="overrides of every training run")
    p.add_argument("--search-dir", default=None, help="a finished search run folder: reuse it, do not search")
    p.add_argument("--search-epochs", type=int, default=None,
                   help="with --search-dir: take the cell kept after this many epochs of its log")
    p.add_argument("--cells", default=",".join(CELLS), help=f"comma-separated subset of {','.join(CELLS)}")
    p.add_argument("--random-seed", type=int, default=0, help="seed of the random cell's draw")
    p.add_argument("--out", default="runs/rnn_ptb_compare")
    p.add_argument("transfer", nargs="*", default=[], help="data.* overrides of the trainings (e.g. another corpus)")
    args = p.parse_args(argv)
    cells = [c for c in args.cells.split(",") if c]
    bad = [c for c in cells if c not in CELLS]
    if bad or not cells:
        p.error(f"--cells: {bad or 'empty'} not among {', '.join(CELLS)}")
    wrong = [t for t in args.transfer if not t.startswith("data.")]
    if wrong:
        p.error(f"positional overrides must be data.*=value (they go to the trainings), got {wrong}")
    if args.search_epochs is not None and (args.search_dir is None or args.search_epochs < 1):
        p.error(f"--search-epochs needs --search-dir and a value >= 1, got {args.search_epochs}")
    args.cells = cells
    return args


def _cell_at_epoch(run: Path, epochs: int, out: Path) -> dict:
    """Summary of a search folder cut after its first ``epochs`` epochs (its log.jsonl): the cell kept then, written
    to out/found_genotype.json. With a constant weight lr nothing in the search depends on the planned epoch count,
    so this is the cell a search of exactly ``epochs`` epochs finds."""
    recs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    recs = [r for r in recs if "genotype" in r][:epochs]
    if len(recs) < epochs:
        raise ValueError(f"--search-epochs {epochs}: {run / 'log.jsonl'} logs only {len(recs)} epochs")
    geno = RNNGenotype(tuple(tuple(x) for x in _cell_of(recs[-1]["genotype"])), tuple(range(1, len(
        recs[-1]["genotype"]["cell"]) + 1)))
    geno.to_json(out / "found_genotype.json")
    return {"genotype": geno.to_dict(), "epochs": epochs, "steps": recs[-1]["step"],
            "valid_ppl": [r.get("valid_ppl") for r in recs], "seconds": sum(r["seconds_epoch"] for r in recs),
            "genotype_file": str(out / "found_genotype.json")}


def _search(args, out: Path) -> tuple[Path, dict]:
    """Run the search (or read a finished one, or the first ``--search-epochs`` epochs of one): folder, summary."""
    if args.search_dir is not None:
        run = Path(args.search_dir)
        if args.search_epochs:
            return run, _cell_at_epoch(run, args.search_epochs, out)
        summary_path = run / "summary.json"
        if not summary_path.is_file():
            raise FileNotFoundError(f"--search-dir {run}: no summary.json (not a finished `nasp rnn search` run)")
        return run, {**json.loads(summary_path.read_text()), "genotype_file": str(run / "rnn_genotype.json")}
    cfg = load(RNNSearchRun, args.search_config, [*args.set, f"run_dir={out / 'search'}"])
    summary = run_rnn_search(cfg, show_progress=False)
    return Path(cfg.run_dir), {**summary, "genotype_file": str(Path(cfg.run_dir) / "rnn_genotype.json")}


def _space_of(args, search_run: Path | None):
    """The search space's settings (of the finished search when there is one): what the random cell is drawn from."""
    if search_run is not None and (search_run / "resolved_config.yaml").is_file():
        return load(RNNSearchRun, search_run / "resolved_config.yaml").space
    return load(RNNSearchRun, args.search_config, args.set).space


def _genotype_arg(cell: str, search: dict | None, search_run: Path | None, args, out: Path) -> str:
    """model.genotype for one cell: a JSON file (found, random) or a published cell's name."""
    if cell == "found":
        return search["genotype_file"]
    if cell == "DARTS_V2":
        return "DARTS_V2"
    sp = _space_of(args, search_run)
    path = out / f"random_seed{args.random_seed}_genotype.json"
    random_genotype(sp.num_nodes, tuple(o for o in sp.ops if o != "none"), args.random_seed).to_json(path)
    return str(path)


def _train(cell: str, genotype: str, args, out: Path) -> dict:
    cfg = load(RNNTrainRun, args.train_config, [*args.train_set, *args.transfer, f"run_dir={out / cell}",
                                                 f"model.genotype={genotype}"])
    r = run_rnn_train(cfg, show_progress=False)
    steps = sum(h["steps"] for h in r["history"])
    return {"genotype": r["genotype"], "valid_ppl": r["valid_ppl"], "test_ppl": r["test_ppl"],
            "parameters": r["parameters"], "epochs": len(r["history"]), "steps": steps, "seconds": r["seconds"],
            "valid_ppl_per_epoch": [h["valid_ppl"] for h in r["history"]],
            "switched_to_asgd": any(h.get("switched_to_asgd") for h in r["history"]), "seed": cfg.seed}


def _unigram(args) -> dict:
    d = load(RNNTrainRun, args.train_config, [*args.train_set, *args.transfer]).data
    corpus = load_corpus(d.corpus, d.path, files=d.files, max_vocab=d.max_vocab)
    v = len(corpus.vocab)
    return {"corpus": d.corpus, "vocab": v, "tokens": {s: int(getattr(corpus, s).numel())
                                                       for s in ("train", "valid", "test")},
            "valid_ppl": unigram_perplexity(corpus.train, corpus.valid, v),
            "test_ppl": unigram_perplexity(corpus.train, corpus.test, v)}


def main(argv=None) -> dict:
    args = _parse(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"command": " ".join(sys.argv if argv is None else ["rnn_ptb_compare.py", *argv]),
              "machine_before": machine(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    search_run, search = None, None
    if "found" in args.cells or args.search_dir is not None:
        search_run, search = _search(args, out)
        result["search"] = {k: v for k, v in search.items() if k != "pictures"}
        result["search"]["run_dir"] = str(search_run)
        sp = _space_of(args, search_run)
        result["alpha_trajectory"] = alpha_trajectory(search_run / "log.jsonl", list(sp.ops))[:args.search_epochs]
    result["unigram"] = _unigram(args)
    result["cells"] = {c: _train(c, _genotype_arg(c, search, search_run, args, out), args, out) for c in args.cells}
    result["machine_after"] = machine()
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({c: {k: r[k] for k in ("valid_ppl", "test_ppl", "steps")} for c, r in result["cells"].items()},
                     indent=2))
    return result


if __name__ == "__main__":
    main()
