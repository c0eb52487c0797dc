"""A real recurrent-cell search on Penn Treebank, then the found cell trained stand-alone.

Reads a YAML config (sections data / space / search / model / train, see configs/rnn_ptb*.yaml), the PTB
files from ``$NASP_DATA_DIR/ptb``, searches with the shared search loop, evaluates the search model on the
whole validation split, trains the found cell as an evaluation model and reports validation and test
perplexity next to the unigram baseline. Everything lands in ``--run-dir`` (config, search log, genotype,
results.json).

Example::

    NASP_DATA_DIR=/work/shared/data python benchmarks/rnn_ptb_search.py --config configs/rnn_ptb_small.yaml \\
        --set search.epochs=3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_loaders.text import BPTTLoader, batchify, load_ptb, unigram_perplexity  # noqa: E402
from nasp.search import SearchConfig, Searcher  # noqa: E402
from nasp.spaces.rnn import LanguageModelTask, RNNModel, RNNSearchSpace  # noqa: E402
from nasp.train.language import LMTrainConfig, evaluate_language_model, train_language_model  # noqa: E402

SECTIONS = {"data", "space", "search", "model", "train", "train_batch_size"}


def load_config(path: str, overrides: list[str]) -> dict:
    """YAML config with ``section.key=value`` overrides (values parsed as YAML); unknown sections rejected."""
    cfg = yaml.safe_load(Path(path).read_text())
    unknown = set(cfg) - SECTIONS
    if unknown:
        raise ValueError(f"{path}: unknown sections {sorted(unknown)}; known: {sorted(SECTIONS)}")
    for item in overrides:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        if section not in SECTIONS or not _:
            raise ValueError(f"--set {item!r}: expected section.key=value with section in {sorted(SECTIONS)}")
        cfg.setdefault(section, {})[name] = yaml.safe_load(value)
    return cfg


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/rnn_ptb_small.yaml")
    p.add_argument("--set", action="append", default=[], help="section.key=value override")
    p.add_argument("--device", default="cpu")
    p.add_argument("--run-dir", default="runs/rnn_ptb_small")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--data-dir", default=None, help="folder holding ptb/ (default: $NASP_DATA_DIR)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.set)
    run = Path(args.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    d = cfg["data"]
    corpus = load_ptb(args.data_dir)
    V = len(corpus.vocab)
    unigram = unigram_perplexity(corpus.train, corpus.valid, V)
    seed = cfg["search"].get("seed", 0)
    train = BPTTLoader(batchify(corpus.train, d["batch_size"]), d["bptt"], d["variable_bptt"], seed=seed)
    search_valid = BPTTLoader(batchify(corpus.valid, d["batch_size"]), d["bptt"], d["variable_bptt"], seed=seed + 1)
    eval_valid = BPTTLoader(batchify(corpus.valid, d["eval_batch_size"]), d["bptt"])
    eval_test = BPTTLoader(batchify(corpus.test, d["eval_batch_size"]), d["bptt"])

    space_kw = dict(cfg["space"])
    if "ops" in space_kw:
        space_kw["ops"] = tuple(space_kw["ops"])
    search_cfg = SearchConfig.from_dict(cfg["search"])
    space = RNNSearchSpace(V, seed=seed, alpha_init=search_cfg.resolved_alpha_init, **space_kw)
    task = LanguageModelTask(max_eval_batches=d.get("eval_batches"))
    t0 = time.perf_counter()
    result = Searcher(space, task, search_cfg, device=args.device, run_dir=run / "search",
                      extra_config={"config": cfg}).fit(train, search_valid, eval_valid, resume=False)
    search_seconds = time.perf_counter() - t0
    space.eval()
    search_valid_full = LanguageModelTask().evaluate(space, eval_valid, space.sparse_view())
    geno = space.rnn_genotype()
    geno.to_json(run / "rnn_genotype.json")

    model = RNNModel(V, geno, seed=seed, **cfg["model"])
    train_loader = BPTTLoader(batchify(corpus.train, cfg["train_batch_size"]), cfg["train"].get("bptt", 35),
                              d["variable_bptt"], seed=seed + 2)
    t1 = time.perf_counter()
    history = train_language_model(model, train_loader, eval_valid, LMTrainConfig.from_dict(cfg["train"]),
                                   device=args.device)
    train_seconds = time.perf_counter() - t1
    final_valid = evaluate_language_model(model, eval_valid)
    final_test = evaluate_language_model(model, eval_test)
    out = {
        "unigram_valid_ppl": unigram, "vocab": V, "genotype": geno.to_dict(),
        "search": {"seconds": search_seconds, "steps": result.history[-1]["step"],
                   "valid_ppl_per_epoch": [h["valid_ppl"] for h in result.history],
                   "valid_ppl_full": search_valid_full["ppl"]},
        "train": {"seconds": train_seconds, "steps": sum(h["steps"] for h in history),
                  "valid_ppl_per_epoch": [h["valid_ppl"] for h in history],
                  "optimizer_per_epoch": [h["optimizer"] for h in history],
                  "params": sum(p.numel() for p in model.parameters()),
                  "valid_ppl": final_valid["ppl"], "test_ppl": final_test["ppl"]},
        "device": args.device, "threads": torch.get_num_threads(), "torch": torch.__version__,
    }
    (run / "results.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
