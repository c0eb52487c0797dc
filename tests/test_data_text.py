import pytest
import torch

from data_loaders.text import EOS, UNK, BPTTLoader, batchify, load_ptb, read_corpus, unigram_perplexity


def _write(folder, train, valid, test, names=("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt")):
    for name, text in zip(names, (train, valid, test), strict=True):
        (folder / name).write_text(text)
    return folder


def test_word_corpus_vocabulary_and_unknowns(tmp_path):
    _write(tmp_path, " a b a \n b c a \n", " a zzz \n", " c \n")
    corpus = read_corpus(tmp_path)
    v = corpus.vocab
    assert v.itos[0] == "a" and EOS in v.stoi and UNK in v.stoi          # most frequent first
    assert v.decode(corpus.train) == ["a", "b", "a", EOS, "b", "c", "a", EOS]
    assert v.decode(corpus.valid) == ["a", UNK, EOS]                     # OOV -> <unk>
    assert corpus.test.dtype == torch.long and len(corpus.test) == 2


def test_wikitext_layout_char_level_and_max_vocab(tmp_path):
    _write(tmp_path, "ab a\nba\n", "ab\n", "b\n", names=("wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens"))
    chars = read_corpus(tmp_path, level="char")
    assert chars.vocab.decode(chars.train[:5]) == ["a", "b", "_", "a", EOS]
    small = read_corpus(tmp_path, level="char", max_vocab=3)
    assert len(small.vocab) == 3 and UNK in small.vocab.decode(small.train)
    with pytest.raises(FileNotFoundError, match="no train/valid/test files"):
        read_corpus(tmp_path / "missing")
    with pytest.raises(ValueError, match="level"):
        read_corpus(tmp_path, level="byte")


def test_batchify_columns_are_contiguous_slices():
    ids = torch.arange(23)
    data = batchify(ids, 4)                                              # 5 rows, tail of 3 dropped
    assert data.shape == (5, 4)
    assert torch.equal(data[:, 1], torch.arange(5, 10))
    with pytest.raises(ValueError, match="batch_size"):
        batchify(ids, 0)


@pytest.mark.parametrize("variable", [False, True])
def test_bptt_loader_covers_stream_and_resumes_exactly(variable):
    data = batchify(torch.arange(2000), 5)                               # (400, 5)
    loader = BPTTLoader(data, bptt=20, variable=variable, seed=3)
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        batches = list(loader)
        assert [b[2] for b in batches] == [True] + [False] * (len(batches) - 1)
        x = torch.cat([b[0] for b in batches])
        y = torch.cat([b[1] for b in batches])
        assert torch.equal(x, data[:-1]) and torch.equal(y, data[1:])   # every position once, y = next token
        tail = list(loader.iter_from(3))
        assert all(torch.equal(a[0], b[0]) for a, b in zip(tail, batches[3:], strict=True))
    lengths = [len(b[0]) for b in batches]
    if variable:
        assert len(set(lengths)) > 3 and min(lengths[:-1]) >= 5
        loader.set_epoch(0)
        again = BPTTLoader(data, bptt=20, variable=True, seed=3)
        assert again.lengths() == loader.lengths()                      # pure function of (seed, epoch)
        again.set_epoch(1)
        assert again.lengths() != loader.lengths()
    else:
        assert set(lengths[:-1]) == {20}


def test_unigram_perplexity_of_uniform_text():
    ids = torch.arange(10).repeat(50)
    assert unigram_perplexity(ids, ids, 10) == pytest.approx(10.0)


@pytest.mark.realdata
def test_real_ptb_counts(data_dir):
    corpus = load_ptb(data_dir)
    assert len(corpus.vocab) == 10000
    assert (len(corpus.train), len(corpus.valid), len(corpus.test)) == (929589, 73760, 82430)
