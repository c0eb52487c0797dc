"""``nasp rnn search`` and ``nasp rnn train``: the DARTS recurrent-cell space on a word-level corpus (PTB,
WikiText-2/103 or any three text files), configured by the dataclasses below through :mod:`nasp.config`.

    nasp rnn search --config configs/rnn_search_ptb_small.yaml
    nasp rnn train  --config configs/rnn_train_ptb_small.yaml --set model.genotype=runs/rnn_search/rnn_genotype.json
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from ..config import to_dict
from ..search import SearchConfig, Searcher
from ..train.language import LMTrainConfig, evaluate_language_model, train_language_model
from . import CommandRun, genotype_error
from .runs import digest, prepare_run_dir

__all__ = ["TextDataConfig", "RNNSpaceConfig", "RNNModelConfig", "RNNSearchConfig", "RNNSearchRun", "RNNTrainRun",
           "run_rnn_search", "run_rnn_train"]

CORPORA = ("ptb", "wikitext-2", "wikitext-103", "files")


@dataclass
class TextDataConfig:
    """The corpus and its batching (every line end is an ``<eos>`` token; the vocabulary is the training
    split's)."""

    corpus: str = "ptb"                     # ptb | wikitext-2 | wikitext-103 | files
    path: str | None = None                 # folder holding ptb/ or wikitext-2/ (default: $NASP_DATA_DIR)
    files: dict[str, str] | None = None     # corpus "files": {train: ..., valid: ..., test: ...} (under path)
    encoding: str = "utf-8"                 # of the corpus files (a UTF-8 byte-order mark is dropped)
    max_vocab: int | None = None            # keep the max_vocab - 2 most frequent training words + <eos>, <unk>
    batch_size: int = 256                   # DARTS search: 256 (stand-alone training: 64)
    eval_batch_size: int = 10
    bptt: int = 35
    variable_bptt: bool = True
    eval_batches: int = 0                   # > 0: validation during the search on the first n windows only

    def __post_init__(self):
        if self.corpus not in CORPORA:
            raise ValueError(f"corpus must be one of {', '.join(CORPORA)}, got {self.corpus!r}")
        if self.corpus == "files" and not self.files:
            raise ValueError("files must map train, valid and test to text files when corpus is 'files'")
        if self.corpus == "files" and sorted(self.files) != ["test", "train", "valid"]:
            raise ValueError(f"files must map exactly train, valid and test to text files, got keys "
                             f"{sorted(self.files)}")
        if self.corpus != "files" and self.files:
            raise ValueError(f"files is only read with corpus 'files' (corpus is {self.corpus!r}); remove it or set "
                             "corpus: files")
        if min(self.batch_size, self.eval_batch_size, self.bptt) < 1:
            raise ValueError("batch_size, eval_batch_size and bptt must be >= 1")
        if self.max_vocab is not None and self.max_vocab < 2:
            raise ValueError(f"max_vocab must be >= 2 (<eos> and <unk>) or null, got {self.max_vocab}")
        if self.eval_batches < 0:
            raise ValueError(f"eval_batches must be >= 0 (0: all), got {self.eval_batches}")
        from data_loaders.text import check_encoding

        check_encoding(self.encoding)


@dataclass
class RNNSpaceConfig:
    """The search model (DARTS: 300 units, 8 nodes, search dropouts)."""

    ninp: int = 300
    nhid: int = 300
    num_nodes: int = 8
    ops: list[str] = field(default_factory=lambda: ["tanh", "relu", "sigmoid", "identity"])
    dropout: float = 0.75
    dropout_h: float = 0.25
    dropout_x: float = 0.75
    dropout_i: float = 0.2
    dropout_e: float = 0.0
    # batch norm (no affine) of every node's state. DARTS' search cell needs it to bound the dense mixture; NASP's
    # forward is one-hot, and there it slowed the weights' training (one fixed cell, 300 steps on PTB: validation
    # perplexity 1500 with, 366 without; benchmarks/README.md). None: on for the darts strategies, off otherwise.
    batchnorm: bool | None = None

    def __post_init__(self):
        from ..spaces.rnn.cell import ACTIVATIONS

        _check_sizes(self)
        if self.num_nodes < 1:
            raise ValueError(f"num_nodes must be >= 1, got {self.num_nodes}")
        unknown = [op for op in self.ops if op not in ACTIVATIONS]
        if not self.ops or unknown or len(set(self.ops)) != len(self.ops):
            raise ValueError(f"ops must be distinct names of {', '.join(ACTIVATIONS)}, got {self.ops}")

    def resolved_batchnorm(self, strategy: str) -> bool:
        """The batch-norm setting a search with ``strategy`` uses."""
        return self.batchnorm if self.batchnorm is not None else strategy.startswith("darts")


@dataclass
class RNNModelConfig:
    """The evaluation model of ``nasp rnn train`` (DARTS: 850 units)."""

    genotype: str = "DARTS_V2"              # a published cell's name or a genotype JSON file
    ninp: int = 850
    nhid: int = 850
    dropout: float = 0.75
    dropout_h: float = 0.25
    dropout_x: float = 0.75
    dropout_i: float = 0.2
    dropout_e: float = 0.1

    def __post_init__(self):
        _check_sizes(self)


def _check_sizes(m) -> None:
    """Unit counts of a recurrent model (the decoder is tied to the embedding: ninp == nhid) and dropouts."""
    if min(m.ninp, m.nhid) < 1 or m.ninp != m.nhid:
        raise ValueError(f"ninp and nhid must be equal and >= 1 (the decoder shares the embedding), got ninp={m.ninp}, "
                         f"nhid={m.nhid}")
    for name in ("dropout", "dropout_h", "dropout_x", "dropout_i", "dropout_e"):
        if not 0 <= getattr(m, name) < 1:
            raise ValueError(f"{name} must be in [0, 1), got {getattr(m, name)}")


@dataclass
class RNNSearchConfig(SearchConfig):
    """The search loop with the DARTS recurrent recipe (SGD lr 20, clip 0.25, weight decay 5e-7; Adam lr 3e-3 on
    alpha, betas (0.9, 0.999), weight decay 1e-3)."""

    w_lr: float = 20.0
    w_lr_schedule: str = "constant"
    w_momentum: float = 0.0
    w_weight_decay: float = 5e-7
    grad_clip: float = 0.25
    a_lr: float = 3e-3
    a_betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class RNNSearchRun(CommandRun):
    """``nasp rnn search``; ``seed`` drives everything."""

    run_dir: str = "runs/rnn_search"
    data: TextDataConfig = field(default_factory=TextDataConfig)
    space: RNNSpaceConfig = field(default_factory=RNNSpaceConfig)
    search: RNNSearchConfig = field(default_factory=RNNSearchConfig)

    __derived__: ClassVar[dict[str, str]] = {"search.seed": "seed"}


@dataclass
class RNNTrainRun(CommandRun):
    """``nasp rnn train``: a recurrent cell trained stand-alone as a language model."""

    run_dir: str = "runs/rnn_train"
    data: TextDataConfig = field(default_factory=lambda: TextDataConfig(batch_size=64))
    model: RNNModelConfig = field(default_factory=RNNModelConfig)
    train: LMTrainConfig = field(default_factory=LMTrainConfig)

    __derived__: ClassVar[dict[str, str]] = {"train.seed": "seed"}


def _prepare(cfg, run_dir: Path, command: str):
    """The corpus of ``cfg.data`` and its loaders, then run_dir checked against this run (:func:`prepare_run_dir`)."""
    from data_loaders.text import load_corpus

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    d = cfg.data
    corpus = load_corpus(d.corpus, d.path, files=d.files, max_vocab=d.max_vocab, encoding=d.encoding)
    loaders = _loaders(corpus, d, cfg.seed)
    data = {s: digest(corpus.split(s)) for s in ("train", "valid", "test")}
    prepare_run_dir(run_dir, command, cfg, {**data, "vocabulary": digest(corpus.vocab.itos)})
    return corpus, loaders


def _batchify(corpus, split: str, batch_size: int, key: str):
    """batchify one split; too few tokens is an error naming the split and the batch-size key."""
    from data_loaders.text import batchify

    ids = corpus.split(split)
    if ids.numel() // batch_size < 2:
        raise ValueError(f"the {split} split has {ids.numel()} tokens (words + one <eos> per line), too few for "
                         f"{key}={batch_size} (it needs at least {2 * batch_size}); lower {key} or use a longer file")
    return batchify(ids, batch_size)


def _loaders(corpus, d: TextDataConfig, seed: int):
    from data_loaders.text import BPTTLoader

    train = BPTTLoader(_batchify(corpus, "train", d.batch_size, "data.batch_size"), d.bptt, d.variable_bptt, seed=seed)
    valid = BPTTLoader(_batchify(corpus, "valid", d.batch_size, "data.batch_size"), d.bptt, d.variable_bptt,
                       seed=seed + 1)
    eval_valid = BPTTLoader(_batchify(corpus, "valid", d.eval_batch_size, "data.eval_batch_size"), d.bptt)
    eval_test = BPTTLoader(_batchify(corpus, "test", d.eval_batch_size, "data.eval_batch_size"), d.bptt)
    return train, valid, eval_valid, eval_test


def _scored(loader, tokens: int, max_batches: int | None = None) -> dict[str, int]:
    """How many of a split's ``tokens`` a perplexity is over: batchify drops the tail that does not fill a row,
    and the first token of each of the B columns is never a target, so (N // B - 1) * B of N are scored (fewer
    when only the first ``max_batches`` windows are evaluated)."""
    lengths = loader.lengths()[:max_batches] if max_batches else loader.lengths()
    return {"scored": sum(lengths) * loader.batch_size, "of": tokens}


def run_rnn_search(cfg: RNNSearchRun, show_progress: bool = True) -> dict:
    """Search a recurrent cell; writes the genotype (JSON), its picture and summary.json into run_dir."""
    from ..spaces.rnn import LanguageModelTask, RNNSearchSpace
    from ..spaces.rnn.draw import draw_rnn

    run_dir = Path(cfg.run_dir)
    corpus, (train, valid, eval_valid, _) = _prepare(cfg, run_dir, "rnn search")
    sp = cfg.space
    space = RNNSearchSpace(len(corpus.vocab), ninp=sp.ninp, nhid=sp.nhid, num_nodes=sp.num_nodes, ops=tuple(sp.ops),
                           dropout=sp.dropout, dropout_h=sp.dropout_h, dropout_x=sp.dropout_x,
                           dropout_i=sp.dropout_i, dropout_e=sp.dropout_e,
                           batchnorm=sp.resolved_batchnorm(cfg.search.strategy),
                           alpha_init=cfg.search.resolved_alpha_init, seed=cfg.seed)
    task = LanguageModelTask(max_eval_batches=cfg.data.eval_batches or None)
    t0 = time.perf_counter()
    result = Searcher(space, task, cfg.search, device=cfg.device, run_dir=run_dir, show_progress=show_progress,
                      extra_config={"cli": to_dict(cfg)}).fit(train, valid, eval_valid)
    geno = space.rnn_genotype()
    geno.to_json(run_dir / "rnn_genotype.json")
    pictures = draw_rnn(geno, run_dir / "rnn_cell")
    summary = {"genotype": geno.to_dict(), "best_epoch": result.best_epoch, "vocab": len(corpus.vocab),
               "valid_ppl": [h.get("valid_ppl") for h in result.history],
               "valid_tokens": _scored(eval_valid, corpus.valid.numel(), cfg.data.eval_batches or None),
               "seconds": time.perf_counter() - t0,
               "pictures": [str(p) for p in pictures]}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _genotype(value: str):
    from ..spaces.rnn import GENOTYPES
    from ..spaces.rnn.genotypes import RNNGenotype

    if value in GENOTYPES:
        return GENOTYPES[value]
    path = Path(value)
    if not path.is_file():
        raise FileNotFoundError(f"model.genotype={value!r}: neither a published cell ({', '.join(GENOTYPES)}) "
                                "nor a genotype JSON file")
    try:
        return RNNGenotype.from_dict(json.loads(path.read_text()))
    except ValueError as e:       # JSONDecodeError and the genotype's own checks (unknown activation, ...)
        raise genotype_error(value, e, "nasp rnn search writes the cell to rnn_genotype.json") from None


def run_rnn_train(cfg: RNNTrainRun, show_progress: bool = True) -> dict:
    """Train a recurrent cell stand-alone; test perplexity, parameters and the cell picture into run_dir. The
    training checkpoints into run_dir/train_checkpoint.pt after every epoch (per-epoch log: train_log.jsonl), so
    a rerun of a killed command resumes where it stopped."""
    from ..spaces.rnn import RNNModel
    from ..spaces.rnn.draw import draw_rnn

    run_dir = Path(cfg.run_dir)
    geno = _genotype(cfg.model.genotype)
    corpus, (train, _, eval_valid, eval_test) = _prepare(cfg, run_dir, "rnn train")
    m = cfg.model
    model = RNNModel(len(corpus.vocab), geno, ninp=m.ninp, nhid=m.nhid, dropout=m.dropout, dropout_h=m.dropout_h,
                     dropout_x=m.dropout_x, dropout_i=m.dropout_i, dropout_e=m.dropout_e, seed=cfg.seed)
    t0 = time.perf_counter()
    history = train_language_model(model, train, eval_valid, cfg.train, device=cfg.device, run_dir=run_dir,
                                   show_progress=show_progress)
    valid, test = evaluate_language_model(model, eval_valid), evaluate_language_model(model, eval_test)
    pictures = draw_rnn(geno, run_dir / "rnn_cell")
    summary = {"genotype": geno.to_dict(), "valid_ppl": valid["ppl"], "test_ppl": test["ppl"],
               "valid_tokens": _scored(eval_valid, corpus.valid.numel()),
               "test_tokens": _scored(eval_test, corpus.test.numel()),
               "parameters": sum(p.numel() for p in model.parameters()), "vocab": len(corpus.vocab),
               "seconds": time.perf_counter() - t0, "history": history, "pictures": [str(p) for p in pictures]}
    (run_dir / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
