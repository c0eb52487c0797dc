"""A real recurrent-cell search on Penn Treebank, then the found cell trained stand-alone, next to the unigram
baseline: ``nasp rnn search`` and ``nasp rnn train`` (nasp.commands.rnn) run back to back on two config files.

Example::

    NASP_DATA_DIR=/work/shared/data python benchmarks/rnn_ptb_search.py \\
        --search-config configs/rnn_search_ptb_small.yaml --train-config configs/rnn_train_ptb_small.yaml \\
        --set search.epochs=3
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_loaders.text import load_corpus, unigram_perplexity  # noqa: E402
from nasp.commands.rnn import RNNSearchRun, RNNTrainRun, run_rnn_search, run_rnn_train  # noqa: E402
from nasp.config import load  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--search-config", default="configs/rnn_search_ptb_small.yaml")
    p.add_argument("--train-config", default="configs/rnn_train_ptb_small.yaml")
    p.add_argument("--set", nargs="+", action="extend", default=[], help="search.* / data.* overrides")
    p.add_argument("--train-set", nargs="+", action="extend", default=[], help="overrides of the training run")
    p.add_argument("--out", default="runs/rnn_ptb_small")
    args = p.parse_args(argv)
    out = Path(args.out)
    search_cfg = load(RNNSearchRun, args.search_config, [*args.set, f"run_dir={out / 'search'}"])
    search = run_rnn_search(search_cfg, show_progress=False)
    train_cfg = load(RNNTrainRun, args.train_config,
                     [*args.train_set, f"run_dir={out / 'train'}",
                      f"model.genotype={out / 'search' / 'rnn_genotype.json'}"])
    train = run_rnn_train(train_cfg, show_progress=False)
    d = search_cfg.data
    corpus = load_corpus(d.corpus, d.path, files=d.files, max_vocab=d.max_vocab)
    result = {"unigram_valid_ppl": unigram_perplexity(corpus.train, corpus.valid, len(corpus.vocab)),
              "search": {k: v for k, v in search.items() if k != "pictures"},
              "train": {k: v for k, v in train.items() if k not in ("history", "pictures")},
              "threads": torch.get_num_threads(), "torch": torch.__version__}
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
