"""Tiny end-to-end search and stand-alone training of the recurrent space on generated text (seconds)."""

import json

import pytest
import torch

from data_loaders.text import BPTTLoader, batchify, read_corpus, unigram_perplexity
from nasp.search import SearchConfig, Searcher
from nasp.spaces.rnn import DARTS_V2, PRIMITIVES_NASP, LanguageModelTask, RNNModel, RNNSearchSpace
from nasp.train.language import LMTrainConfig, WeightAverager, nonmonotone_trigger, train_language_model


def _markov_text(path, n_lines, seed, vocab=16):
    """Lines of a Markov chain where the next word is one of two successors of the current one."""
    g = torch.Generator().manual_seed(seed)
    cur, lines = 0, []
    for _ in range(n_lines):
        words = []
        for _ in range(12):
            cur = (3 * cur + 1 + int(torch.randint(2, (1,), generator=g))) % vocab
            words.append(f"w{cur}")
        lines.append(" " + " ".join(words) + " \n")
    path.write_text("".join(lines))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("markov")
    for name, n, seed in (("train", 150, 0), ("valid", 30, 1), ("test", 30, 2)):
        _markov_text(folder / f"ptb.{name}.txt", n, seed)
    return read_corpus(folder)


def _loaders(corpus, batch=16, bptt=12):
    train = BPTTLoader(batchify(corpus.train, batch), bptt=bptt, variable=True, seed=0)
    valid = BPTTLoader(batchify(corpus.valid, batch), bptt=bptt)
    evals = BPTTLoader(batchify(corpus.valid, 4), bptt=bptt)
    return train, valid, evals


SEARCH = dict(w_lr=20.0, w_lr_schedule="constant", w_momentum=0.0, w_weight_decay=5e-7, grad_clip=0.25,
              a_lr=3e-3, a_betas=(0.9, 0.999))
NO_DROPOUT = dict(dropout=0.0, dropout_h=0.0, dropout_x=0.0, dropout_i=0.0)


def test_tiny_nasp_search_learns_the_language_then_found_cell_trains(corpus, tmp_path):
    V = len(corpus.vocab)
    unigram = unigram_perplexity(corpus.train, corpus.valid, V)          # ~17; the true conditional ppl is 2
    train, valid, evals = _loaders(corpus)
    space = RNNSearchSpace(V, 16, 16, ops=PRIMITIVES_NASP, seed=0, **NO_DROPOUT)
    config = SearchConfig(strategy="nasp", epochs=5, alpha_every=4, seed=0, **SEARCH)
    result = Searcher(space, LanguageModelTask(), config, run_dir=tmp_path, show_progress=False).fit(
        train, valid, evals)
    best = min(h["valid_ppl"] for h in result.history)
    assert best < 0.75 * unigram, ([h["valid_ppl"] for h in result.history], unigram)
    geno = space.rnn_genotype()
    assert json.loads((tmp_path / "genotype.json").read_text())["cell"]
    model = RNNModel(V, geno, ninp=16, nhid=16, dropout_e=0.0, seed=0, **NO_DROPOUT)
    hist = train_language_model(model, train, evals, LMTrainConfig(epochs=5, lr=20.0, bptt=12))
    assert len(hist) == 5 and min(h["valid_ppl"] for h in hist) < 0.75 * unigram, [h["valid_ppl"] for h in hist]


@pytest.mark.parametrize("strategy", ["darts1", "darts2", "random"])
def test_other_strategies_drive_the_recurrent_space(corpus, strategy):
    train, valid, evals = _loaders(corpus)
    space = RNNSearchSpace(len(corpus.vocab), 8, 8, num_nodes=4, alpha_init="darts" if strategy != "random" else "nasp")
    config = SearchConfig(strategy=strategy, epochs=1, max_steps_per_epoch=2, random_candidates=2, **SEARCH)
    task = LanguageModelTask(max_eval_batches=2)
    result = Searcher(space, task, config, show_progress=False).fit(train, valid, evals)
    assert torch.isfinite(torch.tensor(result.history[-1]["valid_ppl"]))
    assert space.rnn_genotype().num_nodes == 4


def test_nonmonotone_trigger():
    assert not nonmonotone_trigger([5.0, 4.0], 4.5, nonmono=2)           # too little history
    assert not nonmonotone_trigger([5.0, 4.0, 3.0, 2.0], 3.5, nonmono=2)  # better than the best before the window
    assert nonmonotone_trigger([5.0, 4.0, 3.0, 2.0], 5.5, nonmono=2)


def test_asgd_switch_keeps_averaging(corpus):
    """With nonmono=1 the first epoch that is worse than an earlier one switches; later epochs stay averaged."""
    train, _, evals = _loaders(corpus)
    model = RNNModel(len(corpus.vocab), DARTS_V2, ninp=8, nhid=8, dropout_e=0.0, **NO_DROPOUT)
    hist = train_language_model(model, train, evals, LMTrainConfig(epochs=6, lr=40.0, bptt=12, nonmono=1,
                                                                   max_steps_per_epoch=3))
    losses = [h["valid_loss"] for h in hist]
    switch = next((h["epoch"] for h in hist if h.get("switched_to_asgd")), None)
    for e, h in enumerate(hist):
        expect = nonmonotone_trigger(losses[:e], losses[e], 1) if switch is None or e <= switch else False
        assert bool(h.get("switched_to_asgd")) == (expect and (switch is None or e == switch))
        assert h["optimizer"] == ("asgd" if switch is not None and e > switch else "sgd")


def test_weight_averager_is_the_mean_of_iterates():
    p = torch.nn.Parameter(torch.tensor([0.0, 2.0]))
    avg = WeightAverager([p])
    for v in ([1.0, 4.0], [2.0, 6.0]):
        with torch.no_grad():
            p.copy_(torch.tensor(v))
        avg.update()
    with avg.swapped():
        assert torch.allclose(p, torch.tensor([1.0, 4.0]))
    assert torch.equal(p.detach(), torch.tensor([2.0, 6.0]))
