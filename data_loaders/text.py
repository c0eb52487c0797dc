"""Text corpora for language modelling: word- or character-level, from ``train/valid/test`` files.

Layout: a folder with three text files, e.g. ``ptb.train.txt``, ``ptb.valid.txt``, ``ptb.test.txt`` (Penn
Treebank, Mikolov's preprocessing), ``wiki.train.tokens`` ... (WikiText-2), or any corpus in that layout.
Every line is split on whitespace (word level) or into characters (character level, spaces kept as ``_``) and
ends with ``<eos>``. The vocabulary is built from the training split only; tokens of valid/test that it lacks
map to ``<unk>``.

``batchify`` cuts a token stream into ``batch_size`` contiguous columns, (N, B). :class:`BPTTLoader` walks such
a matrix in windows of (variable) BPTT length and yields ``(x (T, B), y (T, B), first)`` where ``first`` is True
on the first window of an epoch (so a consumer that carries a hidden state across windows resets it).
The window lengths are a pure function of (seed, epoch, position): ``set_epoch`` and ``iter_from`` resume
exactly.

This module imports nothing of ``nasp`` or ``sif``.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["Vocabulary", "Corpus", "read_corpus", "load_ptb", "batchify", "BPTTLoader", "unigram_perplexity",
           "SPLIT_PATTERNS"]

EOS, UNK = "<eos>", "<unk>"

# file-name patterns of known corpora: split -> file name, tried in order
SPLIT_PATTERNS = (
    {"train": "ptb.train.txt", "valid": "ptb.valid.txt", "test": "ptb.test.txt"},
    {"train": "wiki.train.tokens", "valid": "wiki.valid.tokens", "test": "wiki.test.tokens"},
    {"train": "train.txt", "valid": "valid.txt", "test": "test.txt"},
)


class Vocabulary:
    """Token <-> id map. ``<eos>`` and ``<unk>`` are always present; ids are assigned by descending count in the
    training text (ties by first appearance), so the same text always gives the same ids."""

    def __init__(self, tokens: list[str]):
        if len(set(tokens)) != len(tokens):
            raise ValueError("Vocabulary: tokens must be distinct")
        self.itos = list(tokens)
        self.stoi = {t: i for i, t in enumerate(self.itos)}
        for special in (EOS, UNK):
            if special not in self.stoi:
                self.stoi[special] = len(self.itos)
                self.itos.append(special)

    @classmethod
    def build(cls, counts: Counter) -> Vocabulary:
        """From token counts (Counter keeps first-appearance order, so sorting by count is deterministic)."""
        return cls([t for t, _ in sorted(counts.items(), key=lambda kv: -kv[1])])

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: list[str]) -> list[int]:
        unk = self.stoi[UNK]
        return [self.stoi.get(t, unk) for t in tokens]

    def decode(self, ids) -> list[str]:
        return [self.itos[int(i)] for i in ids]


def _tokenize_line(line: str, level: str) -> list[str]:
    if level == "word":
        return line.split() + [EOS]
    return [("_" if c == " " else c) for c in line.strip()] + [EOS]


def _read_tokens(path: Path, level: str) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"corpus file {path} does not exist")
    tokens: list[str] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                tokens.extend(_tokenize_line(line, level))
    if not tokens:
        raise ValueError(f"corpus file {path} has no tokens")
    return tokens


@dataclass
class Corpus:
    """A tokenised corpus: the vocabulary and one 1-D int64 tensor of token ids per split."""

    vocab: Vocabulary
    train: Tensor
    valid: Tensor
    test: Tensor
    level: str = "word"

    def split(self, name: str) -> Tensor:
        if name not in ("train", "valid", "test"):
            raise ValueError(f"split must be train, valid or test, got {name!r}")
        return getattr(self, name)


def _find_files(folder: Path) -> dict[str, Path]:
    for pattern in SPLIT_PATTERNS:
        paths = {s: folder / f for s, f in pattern.items()}
        if all(p.is_file() for p in paths.values()):
            return paths
    names = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else "no such folder"
    raise FileNotFoundError(f"no train/valid/test files in {folder} (tried {[p['train'] for p in SPLIT_PATTERNS]}, "
                            f"found: {names}); pass files= explicitly")


def read_corpus(folder: str | os.PathLike, level: str = "word", files: dict[str, str] | None = None,
                max_vocab: int | None = None) -> Corpus:
    """Read a corpus folder with train/valid/test files.

    level: "word" or "char"; files: split -> file name inside ``folder`` (default: the first of
    :data:`SPLIT_PATTERNS` that exists); max_vocab: keep the most frequent tokens only (the rest become
    ``<unk>``; None keeps all).
    """
    if level not in ("word", "char"):
        raise ValueError(f"level must be 'word' or 'char', got {level!r}")
    folder = Path(folder)
    paths = {s: folder / f for s, f in files.items()} if files else _find_files(folder)
    toks = {s: _read_tokens(paths[s], level) for s in ("train", "valid", "test")}
    counts = Counter(toks["train"])
    if max_vocab is not None:
        if max_vocab < 2:
            raise ValueError(f"max_vocab must be >= 2, got {max_vocab}")
        counts = Counter(dict(counts.most_common(max_vocab - 2)))
    vocab = Vocabulary.build(counts)
    ids = {s: torch.tensor(vocab.encode(t), dtype=torch.long) for s, t in toks.items()}
    return Corpus(vocab, ids["train"], ids["valid"], ids["test"], level)


def load_ptb(data_dir: str | os.PathLike | None = None, level: str = "word") -> Corpus:
    """Penn Treebank from ``<data_dir>/ptb`` (default: the NASP_DATA_DIR environment variable)."""
    data_dir = data_dir or os.environ.get("NASP_DATA_DIR")
    if not data_dir:
        raise FileNotFoundError("load_ptb: pass data_dir or set NASP_DATA_DIR to the folder holding ptb/")
    return read_corpus(Path(data_dir) / "ptb", level=level)


def batchify(ids: Tensor, batch_size: int) -> Tensor:
    """(N,) token ids -> (N // batch_size, batch_size): column b is the b-th contiguous slice of the stream;
    the tail that does not fill a row is dropped."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rows = ids.numel() // batch_size
    if rows < 2:
        raise ValueError(f"batchify: {ids.numel()} tokens are too few for batch_size {batch_size}")
    return ids[: rows * batch_size].view(batch_size, rows).t().contiguous()


def unigram_perplexity(train: Tensor, target: Tensor, vocab_size: int) -> float:
    """Perplexity of ``target`` under the add-one-smoothed unigram distribution of ``train`` (a baseline)."""
    counts = torch.bincount(train, minlength=vocab_size).double() + 1.0
    logp = torch.log(counts / counts.sum())
    return math.exp(-logp[target].mean().item())


class BPTTLoader:
    """Windows of a batchified matrix for truncated back-propagation through time.

    data: (N, B) int64 from :func:`batchify`. Yields ``(x (T, B), y (T, B), first)`` with y the next tokens.
    With ``variable=True`` the window length follows the AWD-LSTM recipe: base = bptt with probability 0.95
    else bptt / 2, then T ~ N(base, 5), at least ``min_len`` and at most ``max_len`` (default bptt + 20).
    Lengths are drawn from a generator seeded by (seed, epoch) in order, so they are a pure function of
    (seed, epoch, position) and ``iter_from`` resumes exactly.
    """

    def __init__(self, data: Tensor, bptt: int = 35, variable: bool = False, seed: int = 0, min_len: int = 5,
                 max_len: int | None = None):
        if data.dim() != 2 or data.shape[0] < 2:
            raise ValueError(f"BPTTLoader: data must be (N >= 2, B), got {tuple(data.shape)}")
        if bptt < 1:
            raise ValueError(f"BPTTLoader: bptt must be >= 1, got {bptt}")
        self.data, self.bptt, self.variable, self.seed = data, bptt, variable, seed
        self.min_len, self.max_len = min_len, max_len or bptt + 20
        self.epoch = 0
        self._cache: tuple[int, list[int]] | None = None

    @property
    def batch_size(self) -> int:
        return self.data.shape[1]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def lengths(self) -> list[int]:
        """Window lengths of the current epoch (their sum covers the N - 1 predictable positions)."""
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        n = self.data.shape[0] - 1
        out, pos = [], 0
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        draws = iter(())
        while pos < n:
            if self.variable:
                try:
                    u, z = next(draws)
                except StopIteration:
                    draws = iter(zip(torch.rand(256, generator=g).tolist(), torch.randn(256, generator=g).tolist(),
                                     strict=True))
                    u, z = next(draws)
                base = self.bptt if u < 0.95 else self.bptt / 2
                t = int(round(base + 5 * z))
                t = max(self.min_len, min(self.max_len, t))
            else:
                t = self.bptt
            t = min(t, n - pos)
            out.append(t)
            pos += t
        self._cache = (self.epoch, out)
        return out

    def __len__(self) -> int:
        return len(self.lengths())

    def iter_from(self, start: int) -> Iterator[tuple[Tensor, Tensor, bool]]:
        lengths = self.lengths()
        pos = sum(lengths[:start])
        for b in range(start, len(lengths)):
            t = lengths[b]
            yield self.data[pos: pos + t], self.data[pos + 1: pos + 1 + t], b == 0
            pos += t

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, bool]]:
        return self.iter_from(0)
