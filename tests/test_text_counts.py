"""Token counts of the text reader: every line ends in <eos>, blank lines included (tokens = words + lines)."""

from pathlib import Path

import pytest
import torch

from data_loaders.text import (
    EOS,
    UNK,
    count_tokens,
    load_corpus,
    load_ptb,
    load_wikitext,
    read_corpus,
    read_files,
)

WIKI = ("wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens")


def _write(folder: Path, texts, names=WIKI) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in zip(names, texts, strict=True):
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def test_blank_lines_give_one_eos_each(tmp_path):
    _write(tmp_path, ("a b\n\n = c = \n \n", "\n\na\n", "b\n"))
    c = read_corpus(tmp_path)
    assert c.vocab.decode(c.train) == ["a", "b", EOS, EOS, "=", "c", "=", EOS, EOS]
    assert c.vocab.decode(c.valid) == [EOS, EOS, "a", EOS]
    chars = read_corpus(tmp_path, level="char")
    assert chars.vocab.decode(chars.valid) == [EOS, EOS, "a", EOS]


def test_token_count_is_words_plus_lines(tmp_path):
    g = torch.Generator().manual_seed(0)
    words = [f"w{i}" for i in range(30)]
    lines, n_words = [], 0
    for _ in range(200):
        k = int(torch.randint(0, 6, (1,), generator=g))        # k == 0: a blank line
        lines.append(" ".join(words[int(j)] for j in torch.randint(0, 30, (k,), generator=g)))
        n_words += k
    text = "\n".join(lines) + "\n"
    _write(tmp_path, (text, text, "x\n"))
    c = read_corpus(tmp_path)
    assert len(c.train) == len(c.valid) == n_words + 200 == count_tokens(tmp_path / WIKI[0])
    assert int((c.train == c.vocab.stoi[EOS]).sum()) == 200
    # a last line without a newline still counts as a line
    (tmp_path / "tail.txt").write_text("a b\nc", encoding="utf-8")
    assert count_tokens(tmp_path / "tail.txt") == 3 + 2


def test_oov_maps_to_unk_and_vocab_comes_from_train(tmp_path):
    _write(tmp_path, ("a a b\nc\n", "a zz\nyy b\n", "c c\n"))
    c = read_corpus(tmp_path)
    assert set(c.vocab.itos) == {"a", "b", "c", EOS, UNK}
    assert c.vocab.decode(c.valid) == ["a", UNK, EOS, UNK, "b", EOS]
    assert UNK not in c.vocab.decode(c.test)
    small = read_corpus(tmp_path, max_vocab=3)                    # a, <eos>, <unk>
    assert len(small.vocab) == 3 and small.vocab.decode(small.train) == ["a", "a", UNK, EOS, UNK, EOS]


def test_wikitext_layouts_and_files_corpus(tmp_path):
    texts = (" = T = \n\n a <unk> b \n", "\n a c \n", " b \n\n")
    _write(tmp_path / "wikitext-2", texts)
    _write(tmp_path / "nested" / "wikitext-103" / "wikitext-103", texts)
    for c in (load_wikitext(tmp_path), load_corpus("wikitext-2", tmp_path),
              load_wikitext(tmp_path / "nested", "wikitext-103"), load_wikitext(tmp_path / "wikitext-2")):
        assert (len(c.train), len(c.valid), len(c.test)) == (4 + 1 + 4, 1 + 3, 2 + 1)
        assert c.vocab.decode(c.valid) == [EOS, "a", UNK, EOS]           # c is not in train
    files = {s: tmp_path / "wikitext-2" / n for s, n in zip(("train", "valid", "test"), WIKI, strict=True)}
    f = read_files(files)
    assert torch.equal(f.valid, load_wikitext(tmp_path).valid)
    rel = load_corpus("files", tmp_path / "wikitext-2", files=dict(zip(("train", "valid", "test"), WIKI,
                                                                       strict=True)))
    assert torch.equal(rel.test, f.test)


def test_missing_files_are_one_line_errors(tmp_path):
    _write(tmp_path / "wikitext-2", ("a\n", "a\n", "a\n"))
    (tmp_path / "wikitext-2" / WIKI[2]).unlink()
    with pytest.raises(FileNotFoundError, match="wiki.test.tokens does not exist") as e:
        load_wikitext(tmp_path)
    assert "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError, match=r"wikitext-103.wiki.train.tokens does not exist"):
        load_wikitext(tmp_path, "wikitext-103")
    with pytest.raises(FileNotFoundError, match=r"nope.txt does not exist"):
        read_files({"train": tmp_path / "nope.txt", "valid": tmp_path / "v", "test": tmp_path / "t"})
    with pytest.raises(ValueError, match=r"\['test'\]"):
        read_files({"train": tmp_path / "a", "valid": tmp_path / "b"})
    with pytest.raises(ValueError, match="corpus name"):
        load_corpus("imdb", tmp_path)


@pytest.mark.realdata
def test_real_ptb_valid_test_counts(data_dir):
    if not Path(data_dir, "ptb", "ptb.valid.txt").is_file():
        pytest.skip("PTB not in NASP_DATA_DIR")
    c = load_ptb(data_dir)
    assert (len(c.valid), len(c.test)) == (73760, 82430)
    assert count_tokens(Path(data_dir, "ptb", "ptb.valid.txt")) == 73760
    assert load_corpus("ptb", data_dir).vocab.itos == c.vocab.itos
