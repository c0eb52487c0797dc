"""Text corpora for language modelling: word- or character-level, from ``train/valid/test`` files.

Layout: a folder with three text files, e.g. ``ptb.train.txt``, ``ptb.valid.txt``, ``ptb.test.txt`` (Penn
Treebank, Mikolov's preprocessing), ``wiki.train.tokens`` ... (WikiText-2 / WikiText-103: :func:`load_wikitext`),
or any three files (:func:`read_files`, :func:`load_corpus`). Every line, blank ones included, is split on
whitespace (word level) or into characters (character level, spaces kept as ``_``) and ends with ``<eos>``, so a
split has words + lines tokens (the standard counts: PTB valid / test 73,760 / 82,430, WikiText-2 valid / test
217,646 / 245,569). The vocabulary is built from the training split only; tokens of valid/test that it lacks map
to ``<unk>``.

``batchify`` cuts a token stream into ``batch_size`` contiguous columns, (N, B). :class:`BPTTLoader` walks such
a matrix in windows of (variable) BPTT length and yields ``(x (T, B), y (T, B), first)`` where ``first`` is True
on the first window of an epoch (so a consumer that carries a hidden state across windows resets it).
The window lengths are a pure function of (seed, epoch, position): ``set_epoch`` and ``iter_from`` resume
exactly.

This module imports nothing of ``nasp`` or ``sif``.
"""

from __future__ import annotations

import codecs
import math
import os
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ._format import check_encoding

__all__ = ["Vocabulary", "Corpus", "read_corpus", "read_files", "load_ptb", "load_wikitext", "load_corpus",
           "count_tokens", "batchify", "BPTTLoader", "unigram_perplexity", "check_encoding", "SPLIT_PATTERNS",
           "WIKITEXT_FILES"]

EOS, UNK = "<eos>", "<unk>"

WIKITEXT_FILES = {"train": "wiki.train.tokens", "valid": "wiki.valid.tokens", "test": "wiki.test.tokens"}
# file-name patterns of known corpora: split -> file name, tried in order
SPLIT_PATTERNS = (
    {"train": "ptb.train.txt", "valid": "ptb.valid.txt", "test": "ptb.test.txt"},
    WIKITEXT_FILES,
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
    """One line -> its tokens and a closing ``<eos>`` (a blank line gives just ``<eos>``)."""
    if level == "word":
        return line.split() + [EOS]
    return [("_" if c == " " else c) for c in line.strip()] + [EOS]


def _lines(path: Path, encoding: str = "utf-8"):
    """The lines of a corpus file (universal newlines; a UTF-8 byte-order mark is dropped, not made part of the
    first word); one-line errors name a missing file, or the line and byte offset of bytes that are not
    ``encoding``."""
    if not path.is_file():
        raise FileNotFoundError(f"corpus file {path} does not exist")
    codec = "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding
    try:
        with open(path, encoding=codec) as f:
            yield from f
    except UnicodeDecodeError:
        raise _decode_error(path, codec) from None


def _decode_error(path: Path, codec: str) -> ValueError:
    """The first line of ``path`` that is not valid ``codec``, as a one-line error (file, line, byte offset)."""
    offset = 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                raw.decode(codec if number == 1 else codec.replace("-sig", ""))
            except UnicodeDecodeError as e:
                return ValueError(f"{path}:{number}: not valid {codec.replace('-sig', '')} (byte 0x{raw[e.start]:02x} "
                                  f"at byte offset {offset + e.start}); convert the file to UTF-8 or set the "
                                  "corpus encoding (data.encoding, e.g. latin-1)")
            offset += len(raw)
    return ValueError(f"{path}: not valid {codec.replace('-sig', '')}")


def _count_tokens(path: Path, level: str, encoding: str = "utf-8") -> Counter:
    """Token counts of one file (first-appearance order kept, so ids built from them are deterministic)."""
    counts: Counter = Counter()
    for line in _lines(path, encoding):
        counts.update(_tokenize_line(line, level))
    if not counts:
        raise ValueError(f"corpus file {path} has no lines")
    return counts


def _encode_file(path: Path, vocab: Vocabulary, level: str, encoding: str = "utf-8") -> Tensor:
    """(N,) int64 ids of a file's tokens, N = words + lines; streamed, so WikiText-103 fits in memory."""
    ids = array("q")
    for line in _lines(path, encoding):
        ids.extend(vocab.encode(_tokenize_line(line, level)))
    if not ids:
        raise ValueError(f"corpus file {path} has no lines")
    return torch.from_numpy(np.frombuffer(ids, dtype=np.int64))


def count_tokens(path: str | os.PathLike, level: str = "word", encoding: str = "utf-8") -> int:
    """Number of tokens :func:`read_corpus` makes of one file: words (or characters) plus one ``<eos>`` per line."""
    return sum(_count_tokens(Path(path), level, encoding).values())


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


def _limit(counts: Counter, max_vocab: int | None) -> Counter:
    """The counts of the ``max_vocab - 2`` most frequent ordinary tokens plus ``<eos>`` / ``<unk>``."""
    if max_vocab is None:
        return counts
    if max_vocab < 2:
        raise ValueError(f"max_vocab must be >= 2, got {max_vocab}")
    ordinary = [t for t, _ in counts.most_common() if t not in (EOS, UNK)]
    keep = set(ordinary[: max_vocab - 2]) | {EOS, UNK}
    return Counter({t: c for t, c in counts.items() if t in keep})


def read_files(files: dict[str, str | os.PathLike], level: str = "word", max_vocab: int | None = None,
               encoding: str = "utf-8") -> Corpus:
    """The generic corpus: ``files`` maps train / valid / test to file paths.

    Every line becomes its whitespace-separated words (or characters) and one ``<eos>``, blank lines included,
    so a split has words + lines tokens. The vocabulary comes from the training file; other tokens map to
    ``<unk>``. max_vocab: keep the ``max_vocab - 2`` most frequent training tokens plus ``<eos>`` and ``<unk>``.
    encoding: of all three files (default UTF-8; a byte-order mark is dropped). Tokens ``<eos>`` / ``<unk>``
    written in the text are those tokens (PTB writes ``<unk>`` for its rare words).
    """
    if level not in ("word", "char"):
        raise ValueError(f"level must be 'word' or 'char', got {level!r}")
    check_encoding(encoding)
    missing = [s for s in ("train", "valid", "test") if s not in files]
    if missing:
        raise ValueError(f"files lacks the split(s) {missing} (needs train, valid and test paths)")
    extra = sorted(set(files) - {"train", "valid", "test"})
    if extra:
        raise ValueError(f"files has the unknown split(s) {extra} (only train, valid and test are read)")
    paths = {s: Path(files[s]).expanduser() for s in ("train", "valid", "test")}
    for p in paths.values():
        if not p.is_file():
            raise FileNotFoundError(f"corpus file {p} does not exist")
    vocab = Vocabulary.build(_limit(_count_tokens(paths["train"], level, encoding), max_vocab))
    ids = {s: _encode_file(p, vocab, level, encoding) for s, p in paths.items()}
    return Corpus(vocab, ids["train"], ids["valid"], ids["test"], level)


def read_corpus(folder: str | os.PathLike, level: str = "word", files: dict[str, str] | None = None,
                max_vocab: int | None = None, encoding: str = "utf-8") -> Corpus:
    """Read a corpus folder with train/valid/test files (see :func:`read_files` for tokens and vocabulary).

    level: "word" or "char"; files: split -> file name inside ``folder`` (default: the first of
    :data:`SPLIT_PATTERNS` that exists); max_vocab, encoding: as in :func:`read_files`.
    """
    if level not in ("word", "char"):
        raise ValueError(f"level must be 'word' or 'char', got {level!r}")
    folder = Path(folder).expanduser()
    paths = {s: folder / f for s, f in files.items()} if files else _find_files(folder)
    return read_files(paths, level=level, max_vocab=max_vocab, encoding=encoding)


def _data_root(data_dir: str | os.PathLike | None, who: str, sub: str) -> Path:
    data_dir = data_dir or os.environ.get("NASP_DATA_DIR")
    if not data_dir:
        raise FileNotFoundError(f"{who}: pass data_dir or set NASP_DATA_DIR to the folder holding {sub}/")
    return Path(data_dir).expanduser()


def load_ptb(data_dir: str | os.PathLike | None = None, level: str = "word") -> Corpus:
    """Penn Treebank from ``<data_dir>/ptb`` (default: the NASP_DATA_DIR environment variable)."""
    return read_corpus(_data_root(data_dir, "load_ptb", "ptb") / "ptb", level=level)


def load_wikitext(data_dir: str | os.PathLike | None = None, name: str = "wikitext-2", level: str = "word",
                  max_vocab: int | None = None, encoding: str = "utf-8") -> Corpus:
    """WikiText-2 / WikiText-103 (tokenised ``wiki.{train,valid,test}.tokens``) from ``<data_dir>/<name>``, the
    folder the official zip unpacks to (also ``<data_dir>/<name>/<name>``, or ``data_dir`` itself holding the
    files); default data_dir: NASP_DATA_DIR."""
    if name not in ("wikitext-2", "wikitext-103"):
        raise ValueError(f"name must be 'wikitext-2' or 'wikitext-103', got {name!r}")
    root = _data_root(data_dir, "load_wikitext", name)
    for folder in (root / name, root / name / name, root):
        if (folder / WIKITEXT_FILES["train"]).is_file():
            return read_corpus(folder, level=level, files=WIKITEXT_FILES, max_vocab=max_vocab, encoding=encoding)
    raise FileNotFoundError(f"{root / name / WIKITEXT_FILES['train']} does not exist (looked in {root / name}, "
                            f"{root / name / name} and {root})")


def load_corpus(name: str, path: str | os.PathLike | None = None, level: str = "word",
                files: dict[str, str | os.PathLike] | None = None, max_vocab: int | None = None,
                encoding: str = "utf-8") -> Corpus:
    """A corpus by name: "ptb" (``<path>/ptb``, or ``path`` itself holding ``ptb.train.txt``), "wikitext-2" /
    "wikitext-103" (:func:`load_wikitext`), or "files" (``files`` maps train / valid / test to paths, relative ones
    under ``path`` when it is given). Paths may start with ``~``."""
    if name == "ptb":
        root = _data_root(path, "load_corpus", "ptb")
        inside = (root / SPLIT_PATTERNS[0]["train"]).is_file() and not (root / "ptb").is_dir()
        folder = root if inside else root / "ptb"
        return read_corpus(folder, level=level, max_vocab=max_vocab, encoding=encoding)
    if name in ("wikitext-2", "wikitext-103"):
        return load_wikitext(path, name, level=level, max_vocab=max_vocab, encoding=encoding)
    if name == "files":
        if not files:
            raise ValueError("load_corpus('files') needs files={'train': ..., 'valid': ..., 'test': ...}")
        base = Path(path).expanduser() if path is not None else Path()
        return read_files({s: base / p for s, p in files.items()}, level=level, max_vocab=max_vocab, encoding=encoding)
    raise ValueError(f"corpus name must be ptb, wikitext-2, wikitext-103 or files, got {name!r}")


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
