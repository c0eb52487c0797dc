"""The race's ensemble (sif/ensemble.py, model.race_ensemble): greedy members on validation, the averaged model, its
refit, persistence and resume."""

import numpy as np
import pytest
import torch
from torch import nn

from data_loaders import random_split
from sif import selection
from sif.ensemble import AveragedModel, greedy_members, lead_model
from sif.implicit_feedback import score_all_items
from sif.ranking import topk_by_score_then_index
from sif.recommender import FixedInteractionRecommender, SIFRecommender, load_recommender
from sif.synthetic import planted_ratings

OPS = ["plus", "multiply", "max", "min"]


def _common(**kw):
    return dict(embedding_dim=4, random_state=0, clip_predictions=False,
                train={"max_epochs": 15, "patience": 3, "batch_size": 256}, **kw)


def _planted():
    """Noisy planted multiply on which the race's winner (min) and multiply average better than either (seed 2;
    found by trying seeds 0-2, the others' races end with one member)."""
    ds = planted_ratings("multiply", num_users=80, num_items=100, dim=4, n=3000, noise=0.3, seed=2)
    return random_split(ds, (0.8, 0.1, 0.1), seed=2)


def test_greedy_members_adds_the_best_helper_while_it_helps_and_breaks_ties_by_pool_order():
    gains = {"a": 0.0, "b": 0.3, "c": 0.3, "d": 0.1, "e": -0.2}     # planted: what each op adds to the average

    def loss(ops):
        assert ops[0] == "a"
        return 1.0 - sum(gains[op] for op in ops) + 0.25 * (len(ops) - 1) ** 2 * (len(ops) > 2)

    members, steps = greedy_members("a", ["e", "c", "b", "d", "a"], loss, min_delta=1e-4)
    assert members == ["a", "c"]          # b and c tie: c comes first in the pool; then b would add 0.3 - 0.25 * 4
    assert [s["members"] for s in steps] == [["a"], ["a", "c"]]
    assert steps[1]["loss"] == pytest.approx(0.7)
    alone, steps = greedy_members("a", ["d"], lambda ops: 1.0 - 0.00005 * (len(ops) - 1), min_delta=1e-4)
    assert alone == ["a"] and len(steps) == 1       # an improvement within min_delta is not taken


def test_averaged_model_is_the_mean_of_its_members():
    class Const(nn.Module):
        def __init__(self, v):
            super().__init__()
            self.v = nn.Parameter(torch.tensor(float(v)))

        def forward(self, users, items, contexts=None):
            return self.v * torch.ones(len(users))

    model = AveragedModel([Const(1.0), Const(4.0)])
    u = torch.arange(3)
    torch.testing.assert_close(model(u, u), torch.full((3,), 2.5))
    assert lead_model(model).v.item() == 1.0 and lead_model(model.members[1]) is model.members[1]
    with pytest.raises(ValueError, match="at least one member"):
        AveragedModel([])


def test_the_race_averages_fits_that_help_on_validation_and_predicts_their_mean(tmp_path):
    """The ensemble's members are fully trained race fits; its validation RMSE is below the winner's alone; its
    predictions are the mean of the members' stand-alone fits (the race's fits are those fits); saved and loaded it
    predicts the same; set to race_ensemble=False and fitted again it gives the winner alone."""
    tr, va, te = _planted()
    rec = SIFRecommender(ops=OPS, search={"epochs": 2}, **_common()).fit(tr, va, show_progress=False)
    ens = rec.selection_.ensemble
    assert rec.ensemble_ == ens["members"] and len(rec.ensemble_) > 1 and rec.ensemble_[0] == rec.op_
    assert set(rec.ensemble_) <= set(rec.selection_.stopped)
    assert ens["valid"]["rmse"] < ens["steps"][0]["rmse"] - 1e-4
    assert rec.train_result_.best_valid["rmse"] == ens["valid"]["rmse"]
    assert rec.selection_.summary()["ensemble"] == ens
    fixed = {op: FixedInteractionRecommender(op=op, **_common()).fit(tr, va, show_progress=False)
             for op in rec.ensemble_}
    assert ens["epochs"] == [fixed[op].train_result_.best_epoch + 1 for op in rec.ensemble_]
    mean = np.mean([fixed[op].predict(te.users, te.items, ids="index") for op in rec.ensemble_], axis=0)
    pred = rec.predict(te.users, te.items, ids="index")
    np.testing.assert_allclose(pred, mean, rtol=0, atol=1e-5)
    back = load_recommender(rec.save(tmp_path / "m"))
    assert back.ensemble_ == rec.ensemble_ and isinstance(back.model_, AveragedModel)
    np.testing.assert_array_equal(back.predict(te.users, te.items, ids="index"), pred)
    alone = rec.set_params(race_ensemble=False).fit(tr, va, show_progress=False)    # fit again: nothing stale
    assert alone.get_params()["race_ensemble"] is False and not isinstance(alone.model_, AveragedModel)
    assert alone.ensemble_ == [alone.op_] and alone.selection_.ensemble is None
    np.testing.assert_allclose(alone.predict(te.users, te.items, ids="index"),
                               fixed[alone.op_].predict(te.users, te.items, ids="index"), rtol=0, atol=1e-5)


def test_on_context_data_the_ensemble_is_of_fully_trained_fits_and_averages_with_contexts(monkeypatch):
    """(user, item, context) data, the race capped at 4 epochs: only fits that reached their own early stop are
    members (the capped ones are left out; each member's epochs are those of its stand-alone fit); predict and
    recommend with a context give the mean of the members' stand-alone fits (seed 5: 4 candidates capped, two
    members; found by trying seeds 0-5)."""
    ds = planted_ratings("multiply_multiply", num_users=40, num_items=50, num_contexts=3, dim=4, n=3000, noise=0.3,
                         seed=5)
    tr, va, te = random_split(ds, (0.8, 0.1, 0.1), seed=5)
    kw = dict(embedding_dim=4, random_state=5, clip_predictions=False,
              train={"max_epochs": 12, "patience": 2, "batch_size": 256})
    pools = []

    def spy(winner, pool, loss, min_delta):
        pools.append(list(pool))
        return greedy_members(winner, pool, loss, min_delta)

    monkeypatch.setattr(selection, "greedy_members", spy)
    rec = SIFRecommender(search={"epochs": 1}, tensor_race_cap=4, **kw).fit(tr, va, show_progress=False)
    race = rec.selection_
    assert len(rec.ensemble_) > 1 and set(rec.ensemble_) <= set(race.stopped)
    assert set(race.candidates) - set(race.stopped)                     # capped fits exist and are not members
    assert pools == [list(race.stopped)]                                # nor candidates of the greedy selection
    fixed = {op: FixedInteractionRecommender(op=op, **kw).fit(tr, va, show_progress=False) for op in rec.ensemble_}
    assert race.ensemble["epochs"] == [fixed[op].train_result_.best_epoch + 1 for op in rec.ensemble_]
    mean = np.mean([f.predict(te.users, te.items, te.contexts, ids="index") for f in fixed.values()], axis=0)
    np.testing.assert_allclose(rec.predict(te.users, te.items, te.contexts, ids="index"), mean, rtol=0, atol=1e-5)
    items = np.arange(rec.num_items_)
    scores = np.mean([f.predict(np.full_like(items, 3), items, np.full_like(items, 2), ids="index")
                      for f in fixed.values()], axis=0)                  # user 3, context 2, every item
    got, got_scores = rec.recommend(3, N=5, context=2, filter_already_rated=False, ids="index")
    np.testing.assert_array_equal(got, np.argsort(-scores, kind="stable")[:5])
    np.testing.assert_allclose(got_scores, np.sort(scores)[::-1][:5], rtol=0, atol=1e-5)


def test_the_refit_refits_every_member_for_its_own_epochs_and_resumes(tmp_path):
    """With refit each member is trained afresh on train + valid for its own early-stopped epochs (the mean of the
    members' refit stand-alone fits); rerun on the same run folder (a killed run resumed) it predicts the same."""
    tr, va, te = _planted()
    rec = SIFRecommender(ops=OPS, search={"epochs": 2}, refit=True, **_common()).fit(tr, va, show_progress=False,
                                                                                     run_dir=tmp_path)
    assert len(rec.ensemble_) > 1
    for op in rec.ensemble_[1:]:
        assert (tmp_path / f"refit-{op}" / "train_checkpoint.pt").is_file()
    fixed = [FixedInteractionRecommender(op=op, refit=True, **_common()).fit(tr, va, show_progress=False)
             for op in rec.ensemble_]
    mean = np.mean([f.predict(te.users, te.items, ids="index") for f in fixed], axis=0)
    pred = rec.predict(te.users, te.items, ids="index")
    np.testing.assert_allclose(pred, mean, rtol=0, atol=1e-5)
    again = SIFRecommender(ops=OPS, search={"epochs": 2}, refit=True, **_common()).fit(tr, va, show_progress=False,
                                                                                       run_dir=tmp_path)
    assert again.ensemble_ == rec.ensemble_
    np.testing.assert_array_equal(again.predict(te.users, te.items, ids="index"), pred)


@pytest.mark.parametrize("setting", [True, False])
def test_ranking_tasks_average_by_validation_ndcg(setting):
    """For bpr the race's ensemble is chosen on validation NDCG@10 (larger is better): the average of the members
    scores at least the winner's NDCG plus min_delta there; race_ensemble=False keeps the winner alone."""
    tr, va, _ = _planted()
    rec = SIFRecommender(task="bpr", embedding_dim=4, random_state=2, search={"epochs": 1}, race_ensemble=setting,
                         train={"max_epochs": 4, "patience": 2, "batch_size": 256}).fit(tr, va, show_progress=False)
    assert rec.ensemble_[0] == rec.op_
    if not setting:
        assert rec.ensemble_ == [rec.op_] and not isinstance(rec.model_, AveragedModel)
    else:       # random_state 2: the race's winner multiply and max average better (found by trying 0-3)
        assert rec.ensemble_ == ["multiply", "max"] and isinstance(rec.model_, AveragedModel)
        steps = rec.selection_.ensemble["steps"]
        assert steps[-1]["ndcg@10"] > steps[0]["ndcg@10"] + 1e-4
        assert rec.train_result_.best_valid["ndcg@10"] == pytest.approx(steps[-1]["ndcg@10"])
    users = torch.arange(5)         # recommend ranks the mean of the members' scores, the training positives left out
    members = rec.model_.members if setting else [rec.model_]
    with torch.no_grad():
        mean = torch.stack([score_all_items(m, users) for m in members]).mean(dim=0)
    mean = mean.masked_fill(torch.from_numpy(rec.rated_[:5].toarray() > 0), float("-inf"))
    top = topk_by_score_then_index(mean, 3)
    items, scores = rec.recommend(users.numpy(), N=3, ids="index")
    np.testing.assert_array_equal(items, top.numpy())
    np.testing.assert_allclose(scores, mean.gather(1, top).numpy(), rtol=0, atol=1e-6)


def test_ranking_scores_of_an_ensemble_are_its_members_mean():
    """score_all_items (recommend, the ranking metrics) of an AveragedModel: the mean of its members' scores."""
    tr, va, _ = _planted()
    kw = dict(task="bpr", embedding_dim=4, random_state=0, train={"max_epochs": 2, "batch_size": 256})
    members = [FixedInteractionRecommender(op=op, **kw).fit(tr, va, show_progress=False).model_
               for op in ("multiply", "max")]
    users = torch.arange(7)
    want = (score_all_items(members[0], users) + score_all_items(members[1], users)) / 2
    torch.testing.assert_close(score_all_items(AveragedModel(members), users), want)


def test_race_ensemble_is_checked():
    with pytest.raises(ValueError, match="race_ensemble must be True or False"):
        SIFRecommender(race_ensemble="yes")
    with pytest.raises(ValueError, match="race_ensemble"):
        SIFRecommender(race_ensemble=None)


def test_a_run_killed_in_a_members_refit_resumes_to_the_same_model(tmp_path):
    """Killed in the second member's refit (after its first epoch; the winner's refit has finished), the run
    resumes from its folder (race fits, refit/, refit-<op>/) to the predictions of an uninterrupted run."""
    tr, va, te = _planted()
    kw = dict(ops=OPS, search={"epochs": 2}, refit=True, **_common())
    ref = SIFRecommender(**kw).fit(tr, va, show_progress=False)
    winner_epochs = ref.selection_.ensemble["epochs"][0]
    calls = []

    def crash(epoch, *_):           # the refits' callback: the winner's epochs, then the second member's
        calls.append(epoch)
        if len(calls) == winner_epochs + 1:     # the first epoch of the second member (it trains 1 here)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        SIFRecommender(**kw).fit(tr, va, show_progress=False, run_dir=tmp_path, callback=crash)
    assert (tmp_path / f"refit-{ref.ensemble_[1]}" / "train_checkpoint.pt").is_file()
    again = SIFRecommender(**kw).fit(tr, va, show_progress=False, run_dir=tmp_path)
    assert again.ensemble_ == ref.ensemble_
    np.testing.assert_array_equal(again.predict(te.users, te.items, ids="index"),
                                  ref.predict(te.users, te.items, ids="index"))
