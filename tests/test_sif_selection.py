"""The selection stage after the SIF search (sif/selection.py): shortlist by alpha, race of stand-alone fits."""

import numpy as np
import pytest

from data_loaders import random_split
from sif.recommender import FixedInteractionRecommender, SIFRecommender, load_recommender
from sif.selection import RaceResult, early_stopped, race, shortlist, tie_break
from sif.synthetic import planted_ratings


def _curve(start: float, floor: float, rate: float, n: int) -> list[float]:
    """A convex learning curve: floor + (start - floor) * rate^t, t = 0..n-1."""
    return [floor + (start - floor) * rate ** t for t in range(n)]


def _stopped_prefix(curve: list[float], patience: int) -> list[float]:
    """The part of a curve a fit with early stopping (patience) runs."""
    for t in range(1, len(curve) + 1):
        if early_stopped(curve[:t], patience):
            return curve[:t]
    return curve


def _replay(curves: dict[str, list[float]]):
    used = {op: 0 for op in curves}

    def advance(op, epochs):
        used[op] = min(len(curves[op]), max(used[op], epochs))
        return curves[op][:used[op]]
    return advance, used


def test_shortlist_orders_by_alpha_and_widens_on_ties():
    alphas = {"plus": 0.61, "multiply": 0.30, "max": 0.6095, "min": 0.64, "concat": 0.20}
    assert shortlist(alphas, 1) == ["min"]
    assert shortlist(alphas, 2) == ["min", "plus", "max"]           # max is within 1e-3 of plus: a tie
    assert shortlist(alphas, 2, alpha_tol=0.0) == ["min", "plus"]
    assert shortlist(alphas, 5) == ["min", "plus", "max", "multiply", "concat"]
    assert shortlist({"a": 0.5, "b": 0.5}, 1, alpha_tol=0.0) == ["a", "b"]   # exactly equal is a tie too
    with pytest.raises(ValueError, match="k must be >= 1"):
        shortlist(alphas, 0)


def test_early_stopped_follows_the_patience_rule():
    assert not early_stopped([1.0, 0.9, 0.8], patience=2)
    assert early_stopped([1.0, 0.9, 0.95, 0.9], patience=2)
    assert not early_stopped([1.0, 0.9, 0.95, 0.85], patience=2)
    assert early_stopped([1.0, 1.0 - 5e-5, 1.0 - 9e-5], patience=2)   # below min_delta is no improvement


def test_race_drops_nothing_by_bound_on_the_initial_plateau():
    """Every fit sits on its initial plateau for the first rounds (no op has learned yet; the leader's own progress
    is smaller than the others' gap to it); the one that learns later must not be dropped by a bound from noise."""
    plateau = {"concat": [2.077, 2.073, 2.069, 2.070, 2.073, 2.080, 2.081, 2.087],
               "plus": [2.093, 2.081, 2.073, 2.073, 2.076, 2.087, 2.085, 2.096]}
    late = [2.089, 2.087, 2.086, 2.084] + _curve(2.06, 0.4, 0.9, 60)
    advance, _ = _replay({**plateau, "multiply": _stopped_prefix(late, 5)})
    res = race(["concat", "plus", "multiply"], advance, patience=5, first_budget=2, max_epochs=64)
    assert res.winner == "multiply", res.eliminated
    assert all(why.startswith("plateau") for _, _, why in res.eliminated)


def test_race_waits_for_the_slow_starter_and_stays_within_the_cost_of_all_fits():
    """The planted curves of ML-100K: an additive op plateaus high after a few epochs, multiply starts worse and
    ends best, max plateaus between them late. Any comparison at equal early epochs picks the additive op."""
    patience = 5
    full = {"plus": _stopped_prefix(_curve(1.00, 0.954, 0.3, 200), patience),
            "max": _stopped_prefix(_curve(1.05, 0.930, 0.9, 200), patience),
            "multiply": _stopped_prefix(_curve(1.08, 0.926, 0.85, 200), patience),
            "concat": _stopped_prefix(_curve(1.00, 0.955, 0.3, 200), patience)}
    assert min(full, key=lambda op: full[op][3]) == "plus"            # the equal-epoch (4 epochs) judgement
    advance, used = _replay(full)
    res = race(list(full), advance, patience=patience)
    assert res.winner == "multiply"
    assert used["multiply"] == len(full["multiply"])                  # the winner is trained to its own stop
    assert res.epochs == sum(used.values()) <= sum(len(c) for c in full.values())
    assert {op for op, _, _ in res.eliminated} == {"plus", "max", "concat"}
    why = {op: reason for op, _, reason in res.eliminated}
    assert why["plus"].startswith("plateau") and used["plus"] == len(full["plus"])   # dropped at its own plateau


def test_race_of_one_candidate_trains_it_to_its_stop_and_rejects_bad_input():
    full = {"min": _stopped_prefix(_curve(1.0, 0.9, 0.8, 200), 3)}
    advance, used = _replay(full)
    res = race(["min"], advance, patience=3)
    assert res.winner == "min" and used["min"] == len(full["min"]) and res.eliminated == []
    with pytest.raises(ValueError, match="no candidates"):
        race([], advance, patience=3)


def test_an_exact_validation_tie_goes_to_the_larger_alpha_in_any_candidate_order():
    """Two ops with the same validation curve: the race keeps the one listed first (the larger alpha, from
    :func:`shortlist`), whatever order the alphas dict has, so a tie is never decided by float rounding."""
    curve = _stopped_prefix(_curve(1.0, 0.92, 0.5, 200), 3)
    full = {"max": curve, "min": list(curve), "plus": _stopped_prefix(_curve(1.0, 0.95, 0.5, 200), 3)}
    for alphas in ({"max": 0.5004, "min": 0.5, "plus": 0.1}, {"min": 0.5, "plus": 0.1, "max": 0.5004}):
        cands = shortlist(alphas, 1)                  # min is within alpha_tol of max: both race
        assert cands == ["max", "min"]
        advance, _ = _replay(full)
        assert race(cands, advance, patience=3).winner == "max"
        advance, _ = _replay(full)
        assert race(list(reversed(cands)), advance, patience=3).winner == "min"    # the order decides, not floats


def _planted(seed=0):
    ds = planted_ratings("multiply", num_users=80, num_items=100, dim=4, n=3000, noise=0.1, seed=seed)
    return random_split(ds, (0.8, 0.1, 0.1), seed=seed)


def test_selecting_recommender_picks_the_validation_best_fixed_op_on_planted_data(tmp_path):
    """The race's winner is the op whose stand-alone fit is best on validation, and its model is exactly that
    fit (a fit resumed across rounds equals an uninterrupted one)."""
    tr, va, te = _planted()
    common = dict(embedding_dim=4, random_state=0, train={"max_epochs": 15, "patience": 3, "batch_size": 256})
    ops = ["plus", "multiply", "max"]
    fixed = {op: FixedInteractionRecommender(op=op, **common).fit(tr, va, show_progress=False) for op in ops}
    valid = {op: fixed[op].train_result_.best_valid["rmse"] for op in ops}
    rec = SIFRecommender(ops=ops, search={"epochs": 2}, **common).fit(tr, va, show_progress=False)   # race_k=5
    assert rec.op_ == min(valid, key=valid.get)
    assert set(rec.selection_.candidates) == set(ops)
    assert rec.genotype_.choices("interaction")[0].op == rec.op_
    np.testing.assert_allclose(rec.train_result_.best_valid["rmse"], valid[rec.op_], rtol=0, atol=1e-6)
    np.testing.assert_allclose(rec.predict(te.users, te.items, ids="index"),
                               fixed[rec.op_].predict(te.users, te.items, ids="index"), rtol=0, atol=1e-5)
    rec.save(tmp_path / "m")
    back = load_recommender(tmp_path / "m")
    assert type(back) is SIFRecommender and back.op_ == rec.op_
    np.testing.assert_array_equal(back.predict(te.users, te.items, ids="index"),
                                  rec.predict(te.users, te.items, ids="index"))


def test_race_settings_are_checked_and_race_k_0_is_the_search_choice():
    with pytest.raises(ValueError, match="race_k"):
        SIFRecommender(race_k=-1)
    with pytest.raises(ValueError, match="race_first_budget"):
        SIFRecommender(race_first_budget=0)
    tr, va, _ = _planted()
    common = dict(embedding_dim=4, random_state=0, search={"epochs": 2},
                  train={"max_epochs": 4, "patience": 2, "batch_size": 256})
    plain = SIFRecommender(race_k=0, **common).fit(tr, va, show_progress=False)
    assert not hasattr(plain, "selection_")
    assert plain.op_ == plain.search_result_.best_genotype.choices("interaction")[0].op


@pytest.mark.parametrize("tie_z", [0.0, 1.0])
def test_race_on_implicit_feedback_maximises_ndcg(tie_z):
    """For bpr the race compares validation NDCG@10 (larger is better): without the tie rule the winner has the best
    curve; with it, the winner is that op or a fully trained op tied with it, the tie won on validation AUC."""
    tr, va, _ = _planted()
    rec = SIFRecommender(task="bpr", embedding_dim=4, random_state=0, search={"epochs": 1}, race_tie_z=tie_z,
                         train={"max_epochs": 4, "patience": 2, "batch_size": 256}).fit(tr, va, show_progress=False)
    sel = rec.selection_
    best = min(sel.curves, key=lambda op: (min(sel.curves[op]), sel.candidates.index(op)))   # negated NDCG
    assert set(sel.candidates) == {"multiply", "max", "min"}
    if tie_z == 0:
        assert rec.op_ == best and sel.tie_break is None
        return
    tb = sel.tie_break
    assert tb["race_winner"] == best and rec.op_ == tb["winner"] == sel.winner and rec.op_ in tb["tied"]
    assert set(tb["tied"]) <= set(sel.stopped)
    assert tb["values"][rec.op_]["auc"] == max(tb["values"][op]["auc"] for op in tb["tied"])
    assert sel.summary()["tie_break"] == tb and sel.summary()["stopped"] == list(sel.stopped)


def _race_result(candidates, stopped):
    curves = {op: [0.0] for op in candidates}
    return RaceResult(candidates[0], tuple(candidates), curves, len(candidates), stopped=tuple(stopped))


def test_tie_break_follows_the_one_standard_error_rule():
    """Planted per-user values: 'b' trails the winner 'a' by 0.2 standard errors and has the better AUC, so it wins
    the tie; 'c' trails by about 10 standard errors (no tie) and 'd' was not fully trained (not compared), although
    both have the best AUC. z = 0 makes every difference but an exact one count."""
    rng = np.random.default_rng(0)
    n = 400
    a = rng.normal(0.5, 0.1, n)
    noise = rng.normal(0, 0.05, n)
    shift = 0.2 * noise.std(ddof=1) / np.sqrt(n)
    vals = {"a": {"ndcg@10": a, "auc": np.full(n, 0.90)},
            "b": {"ndcg@10": a + noise - noise.mean() - shift, "auc": np.full(n, 0.92)},
            "c": {"ndcg@10": a - 0.05 + noise, "auc": np.full(n, 0.99)},
            "d": {"ndcg@10": a, "auc": np.full(n, 0.99)}}
    res = _race_result(["a", "b", "c", "d"], stopped=["a", "b", "c"])
    tb = tie_break(res, lambda op: vals[op], "ndcg@10", "auc", maximize=True, z=1.0)
    assert tb["tied"] == ["a", "b"] and res.winner == tb["winner"] == "b"
    assert abs(tb["values"]["b"]["diff"] / tb["values"]["b"]["se"] + 0.2) < 1e-9
    assert tb["values"]["c"]["diff"] < -5 * tb["values"]["c"]["se"] and "d" not in tb["values"]
    res = _race_result(["a", "b", "c", "d"], stopped=["a", "b", "c"])
    assert tie_break(res, lambda op: vals[op], "ndcg@10", "auc", maximize=True, z=0.0)["winner"] == "a"


def test_tie_break_is_deterministic_on_equal_tie_values():
    """Equal AUCs among tied candidates: the earlier candidate (the larger alpha) wins, whatever the winner was."""
    n = 50
    same = {"ndcg@10": np.linspace(0, 1, n), "auc": np.full(n, 0.8)}
    res = _race_result(["x", "y"], stopped=["x", "y"])
    res.winner = "y"
    assert tie_break(res, lambda op: same, "ndcg@10", "auc", maximize=True, z=1.0)["winner"] == "x"


def test_race_resumes_from_its_run_folder_to_the_same_winner(tmp_path):
    """A race whose fits are checkpointed under run_dir/race/<op> gives, when rerun on the same folder (a killed run
    resumed), the same winner, curves and predictions."""
    tr, va, te = _planted(1)
    common = dict(embedding_dim=4, random_state=0, ops=["plus", "multiply"], search={"epochs": 2},
                  train={"max_epochs": 8, "patience": 2, "batch_size": 256})
    first = SIFRecommender(**common).fit(tr, va, show_progress=False, run_dir=tmp_path)
    assert (tmp_path / "race" / first.op_ / "train_checkpoint.pt").is_file()
    again = SIFRecommender(**common).fit(tr, va, show_progress=False, run_dir=tmp_path)
    assert again.op_ == first.op_ and again.selection_.curves == first.selection_.curves
    np.testing.assert_array_equal(again.predict(te.users, te.items, ids="index"),
                                  first.predict(te.users, te.items, ids="index"))


def test_the_race_shows_progress_and_logs_each_round(capsys, caplog):
    """A user watching a fit sees the race's stand-alone fits train (their bars) and which op each round trains;
    with show_progress=False nothing is drawn."""
    tr, va, _ = _planted()
    common = dict(embedding_dim=4, random_state=0, ops=["plus", "multiply"], search={"epochs": 1},
                  train={"max_epochs": 3, "patience": 2, "batch_size": 256})
    with caplog.at_level("INFO", logger="sif.selection"):
        rec = SIFRecommender(**common).fit(tr, va, show_progress=True)
    messages = [r.getMessage() for r in caplog.records]
    rounds = [m for m in messages if m.startswith("race: ") and " to " in m]
    assert {m.split()[1] for m in rounds} == set(rec.selection_.candidates)
    shown = capsys.readouterr().err
    assert "train" in shown and shown.count("\r") > 2 * len(rounds)
    SIFRecommender(**common).fit(tr, va, show_progress=False)
    assert capsys.readouterr().err == ""
