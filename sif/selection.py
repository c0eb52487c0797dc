"""A selection stage after the SIF search: shortlist ops by their final alpha, then race stand-alone fits.

Why: on ML-100K the additive ops (plus, concat) reach their plateau in 3-4 epochs and stay high, max and min lead
until ~20 epochs, multiply starts worst and is best after 20-30 (benchmarks/README.md, "SIF search quality"). Any
comparison at equal, early epochs (a 10-epoch weight-sharing search, successive halving at 2/4/8 epochs) picks the
wrong op: the library's default rule picked the validation-best op on 2 of 6 splits, equal-epoch halving on 1 of 6.
The race below never drops a candidate for its value at an early epoch alone: a candidate is dropped when it has
reached its own plateau (its early stop fired) and another candidate is already better, or when even continuing its
mean improvement per epoch over the last half of its curve, for as many epochs again as it has trained, cannot reach
the leader. Measured (6 splits, all 5 ops raced): the validation-best op on 6 of 6, at the cost of training the 5
fixed ops (1.015x in seconds, 0.996x in epochs, the search included).

:func:`shortlist` (alpha order, ties within ``alpha_tol`` widen the list), :func:`race` (the decision rule, on any
``advance`` function) and :func:`race_fit` (the stage of :class:`sif.recommender.SIFRecommender`, by default: search,
shortlist, race with real fits; the race's winner is trained to its own early stop, so its stand-alone model is the
one a plain fit of that op gives).
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from torch import nn

from .config import ModelConfig
from .ensemble import AveragedModel, greedy_members
from .interactions import tensor_candidates
from .train import TrainResult, train_model

__all__ = ["SELECTION_DEFAULTS", "RaceResult", "shortlist", "function_class", "distinct_classes", "race",
           "early_stopped", "tie_break", "race_fit"]

log = logging.getLogger("sif.selection")

_M = ModelConfig()       # the one home of the race's defaults
SELECTION_DEFAULTS = {"race_k": _M.race_k, "alpha_tol": _M.alpha_tol, "first_budget": _M.race_first_budget,
                      "horizon": _M.race_horizon, "window": None, "cap": None}
_TENSOR = {c.name: c for c in tensor_candidates()}
_ADDITIVE = ("plus", "concat")


@dataclass
class RaceResult:
    """The race's winner, the candidates it started with, each one's validation curve (RMSE per epoch) when the
    race ended, the epochs trained in all, and (op, epoch, reason) for every elimination."""

    winner: str
    candidates: tuple[str, ...]
    curves: dict[str, list[float]]
    epochs: int
    eliminated: list[tuple[str, int, str]] = field(default_factory=list)
    seconds: float = 0.0        # of every fit (set by :func:`race_fit`; resumed fits add up)
    stopped: tuple[str, ...] = ()       # the candidates whose fits reached their own early stop (fully trained)
    tie_break: dict | None = None       # :func:`tie_break`'s record, when it ran
    ensemble: dict | None = None        # the race's ensemble (members, epochs, steps, valid), when it has > 1 member

    def summary(self) -> dict:
        """A JSON-ready record: winner, candidates, epochs per candidate and in all, eliminations, seconds."""
        return {"winner": self.winner, "candidates": list(self.candidates), "epochs": self.epochs,
                "epochs_per_candidate": {op: len(c) for op, c in self.curves.items()},
                "eliminated": [{"op": op, "epoch": e, "why": why} for op, e, why in self.eliminated],
                "seconds": self.seconds, "stopped": list(self.stopped), "tie_break": self.tie_break,
                "ensemble": self.ensemble}


def shortlist(alphas: Mapping[str, float], k: int, alpha_tol: float = SELECTION_DEFAULTS["alpha_tol"]) -> list[str]:
    """The ``k`` ops with the largest alpha, in decreasing alpha (equal alphas: the mapping's order); every further op
    within ``alpha_tol`` (absolute) of the k-th is a tie and joins the list, so that validation breaks it.

    alphas: op -> alpha (one NASP row, e.g. the search's final alphas). Returns a list of op names (len >= k)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if alpha_tol < 0:
        raise ValueError(f"alpha_tol must be >= 0, got {alpha_tol}")
    order = sorted(alphas, key=lambda op: (-float(alphas[op]), list(alphas).index(op)))
    if len(order) <= k:
        return order
    cut = float(alphas[order[k - 1]])
    return order[:k] + [op for op in order[k:] if float(alphas[op]) >= cut - alpha_tol]


def function_class(op: str) -> str:
    """The function class of a two-stage tensor candidate in the SIF model with biases and free embeddings: every
    candidate of only plus and concat is one class ("additive": a sum of per-side scores, which the biases span),
    and ``X_concat(z)`` is ``X_plus(z)`` (``w^T [X, g(z)]`` and ``w^T (X + g(z))`` both add a free score of z to
    ``w^T X``). Any other name (a matrix op, a mixture) is its own class."""
    cand = _TENSOR.get(op)
    if cand is None:
        return op
    if cand.op1 in _ADDITIVE and cand.op2 in _ADDITIVE:
        return "additive"
    return op.replace("_concat(", "_plus(") if cand.op2 == "concat" else op


def distinct_classes(ops: Sequence[str]) -> list[str]:
    """``ops`` without the later members of a :func:`function_class` already listed (order kept)."""
    seen: set[str] = set()
    return [op for op in ops if not (function_class(op) in seen or seen.add(function_class(op)))]


def early_stopped(curve: Sequence[float], patience: int, min_delta: float = 1e-4) -> bool:
    """True when a fit with this validation curve (lower is better) has stopped itself: ``patience`` epochs in a row
    without an improvement of more than ``min_delta`` on the best so far (the rule of :func:`sif.train.train_model`)."""
    best, bad = float("inf"), 0
    for v in curve:
        if v < best - min_delta:
            best, bad = v, 0
        else:
            bad += 1
            if bad >= patience:
                return True
    return False


def _floor(curve: Sequence[float], window: int | None, horizon: float) -> float:
    """An optimistic bound on the best value a still-improving fit can reach: the best so far minus its mean
    improvement per epoch over the last ``window`` epochs (None: the last half of the epochs, at least 2), continued for
    ``horizon`` x the epochs trained so far."""
    best, w = min(curve), (max(2, len(curve) // 2) if window is None else window)
    if w < 1 or len(curve) <= w:
        return float("-inf")
    slope = max(0.0, (min(curve[:-w]) - best) / w)
    return best - slope * horizon * len(curve)


def _evidence(leader: Sequence[float], value: float) -> bool:
    """Whether a lead over ``value`` is evidence: the leader has improved since its first epoch by more than ``value``
    trails its best. On the initial plateau, where no fit has learned yet, every lead is smaller than that (measured:
    a planted dot product at lr 0.001, multiply dropped at epoch 4 while trailing concat by 0.015 at 2.07, whose own
    progress was 0.008; multiply then learned to 0.37)."""
    return leader[0] - min(leader) > value - min(leader)


def race(candidates: Sequence[str], advance: Callable[[str, int], Sequence[float]], patience: int,
         min_delta: float = 1e-4, first_budget: int = SELECTION_DEFAULTS["first_budget"], max_epochs: int = 200,
         horizon: float = SELECTION_DEFAULTS["horizon"], window: int | None = SELECTION_DEFAULTS["window"],
         cap: int | None = SELECTION_DEFAULTS["cap"]) -> RaceResult:
    """Race stand-alone fits of ``candidates`` on the validation split; returns the :class:`RaceResult`.

    advance(op, epochs) trains op's fit (resuming it) until it has run ``epochs`` epochs in all or stopped itself,
    and returns its validation curve so far (RMSE per epoch, lower is better). Rounds double the budget
    (``first_budget``, 2x, 4x, ... up to ``max_epochs``); after each round the leader is the candidate with the lowest
    validation value so far (ties: the earlier candidate, i.e. the larger alpha), and every other candidate is
    eliminated when (a) it has reached its plateau (:func:`early_stopped` with ``patience``) or (b) its optimistic
    bound (see ``_floor``) is above the leader's value and the lead is evidence (``_evidence``: the leader has
    improved since its first epoch by more than the candidate trails it). The race ends when one candidate is left
    or every one left has stopped; the winner's fit is then advanced to its own early stop. ``cap`` (None: no cap)
    caps the rounds' budget: a candidate that has trained ``cap`` epochs counts as stopped, so that the leader at
    ``cap`` epochs wins (and is then trained on to its own early stop).
    """
    if not candidates:
        raise ValueError("race: no candidates")
    if first_budget < 1 or patience < 1 or max_epochs < 1 or (cap is not None and cap < 1):
        raise ValueError(f"race: first_budget, patience, max_epochs and cap must be >= 1, got {first_budget}, "
                         f"{patience}, {max_epochs}, {cap}")
    limit = max_epochs if cap is None else min(cap, max_epochs)
    alive, curves, eliminated, budget = list(candidates), {}, [], min(first_budget, limit)
    done: dict[str, bool] = {}
    own: dict[str, bool] = {}         # stopped by itself (or at max_epochs), not by the cap
    while True:
        for op in alive:
            if not done.get(op):
                curves[op] = list(advance(op, budget))
                if not curves[op]:
                    raise RuntimeError(f"race: advance({op!r}, {budget}) returned an empty curve")
                own[op] = (len(curves[op]) < budget or len(curves[op]) >= max_epochs
                           or early_stopped(curves[op], patience, min_delta))
                done[op] = own[op] or len(curves[op]) >= limit
        leader = min(alive, key=lambda op: (min(curves[op]), alive.index(op)))
        lead = min(curves[leader])
        for op in [o for o in alive if o != leader]:
            if done[op]:
                why = "plateau" if own[op] else f"cap {limit}:"
                eliminated.append((op, len(curves[op]), f"{why} {min(curves[op]):.4f} > {lead:.4f} ({leader})"))
            elif _floor(curves[op], window, horizon) > lead and _evidence(curves[leader], min(curves[op])):
                eliminated.append((op, len(curves[op]), f"bound {_floor(curves[op], window, horizon):.4f} > "
                                                        f"{lead:.4f} ({leader})"))
            else:
                continue
            alive.remove(op)
        if len(alive) == 1 or all(done[o] for o in alive):
            break
        budget = min(2 * budget, limit)
    winner = min(alive, key=lambda op: (min(curves[op]), alive.index(op)))
    if not own[winner]:
        curves[winner] = list(advance(winner, max_epochs))
        own[winner] = True
    return RaceResult(winner, tuple(candidates), curves, sum(len(c) for c in curves.values()), eliminated,
                      stopped=tuple(op for op in candidates if own.get(op)))


def tie_break(result: RaceResult, per_user: Callable[[str], Mapping[str, np.ndarray]], metric: str,
              tie_metric: str, maximize: bool, z: float) -> dict:
    """The race's tie rule for noisy validation metrics (ranking tasks); returns its record and sets
    ``result.winner`` and ``result.tie_break``.

    per_user(op) -> {metric: (n,), tie_metric: (n,)} per-user validation values of op's fit (the same users in the
    same order). Every candidate whose fit is fully trained (``result.stopped``) is compared with the winner on
    the per-user differences of ``metric``: it is a tie when the mean difference is within ``z`` standard errors
    of that mean (the one-standard-error rule at z = 1). Among the winner and its ties the largest mean
    ``tie_metric`` (larger is better, e.g. AUC; NaN users left out) wins; equal values: the earlier candidate (the
    larger alpha).
    Why: NDCG@10 of a few validation positives per user separates the ops less than its noise (ML-100K, 5
    positives per user: min led multiply by 0.0022 at 0.57 standard errors, trailed it by 0.009 on test), while
    AUC, which ranks every item, has a quarter of its standard error there and agreed with the test split."""
    sign = 1.0 if maximize else -1.0
    first = result.winner
    ops = [first] + [op for op in result.candidates if op != first and op in result.stopped]
    vals = {op: per_user(op) for op in ops}
    base = np.asarray(vals[first][metric], dtype=np.float64)
    rows, tied = {}, [first]
    for op in ops:
        d = sign * (np.asarray(vals[op][metric], dtype=np.float64) - base)     # (n,) <= 0 on the mean: winner ahead
        se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
        tv = np.asarray(vals[op][tie_metric], dtype=np.float64)
        tv = tv[~np.isnan(tv)]
        rows[op] = {metric: float(np.mean(vals[op][metric])), tie_metric: float(tv.mean()) if tv.size else float("nan"),
                    "diff": float(d.mean()), "se": se}
        if op != first and se == se and abs(d.mean()) <= z * se:
            tied.append(op)

    def rank(op: str) -> tuple[float, int]:        # NaN (no user with a candidate negative) ranks last
        v = rows[op][tie_metric]
        return (v if v == v else float("-inf"), -result.candidates.index(op))

    best = max(tied, key=rank)
    result.winner = best
    result.tie_break = {"z": z, "by": tie_metric, "race_winner": first, "tied": tied, "winner": best, "values": rows}
    return result.tie_break


def race_fit(rec, space, train_it, eval_it, run_dir: str | Path | None = None,
             show_progress: bool = False) -> tuple[nn.Module, TrainResult]:
    """The race stage of :class:`sif.recommender.SIFRecommender` (``race_k`` >= 1): the ``race_k`` ops with the
    largest final alpha of ``space``'s search (ties within ``alpha_tol`` join) race as stand-alone fits on the
    validation split (:func:`race`, on the task's metric, negated where larger is better); the winner's fit, trained
    to its own early stop, is returned as (model, train result). On tensor data (user, item, context) the shortlist
    is the ``tensor_race_k`` largest alphas, one op per :func:`function_class` (the larger alpha races), and the
    race's rounds stop at ``tensor_race_cap`` epochs. Sets ``rec.selection_`` (:class:`RaceResult`),
    ``rec.op_`` and ``rec.genotype_``. Each fit resumes from its checkpoint in ``run_dir/<op>`` (a temporary
    folder when None), so a killed run resumes to the same race; the fits call no ``callback``. show_progress: each
    fit of each round shows the training bars, and the round is logged (which op, to how many epochs)."""
    names = list(space.names)
    final = dict(zip(names, rec.search_result_.history[-1]["alphas"]["interaction"][0], strict=True))
    tensor = len(space.sides) == 3
    cands = shortlist(final, rec.tensor_race_k if tensor else rec.race_k, rec.alpha_tol)
    cands = distinct_classes(cands) if tensor else cands
    metric, sign = rec.task_.metric, (-1.0 if getattr(rec.task_, "maximize", False) else 1.0)
    cfg, fits = rec.train_config_, {}
    with tempfile.TemporaryDirectory(prefix="sif-race-") as tmp:
        root = Path(run_dir) if run_dir is not None else Path(tmp)

        def advance(op: str, epochs: int) -> list[float]:
            model = fits[op][0] if op in fits else rec._race_model(op, space)
            log.info("race: %s to %d epochs", op, epochs)
            res = train_model(model, rec.task_, train_it, eval_it, replace(cfg, max_epochs=epochs), rec.device,
                              run_dir=root / op, show_progress=show_progress)
            fits[op] = (model, res)
            return [sign * h[f"valid_{metric}"] for h in res.history][:epochs]   # a resumed fit may have run longer

        rec.selection_ = race(cands, advance, cfg.patience, cfg.min_delta, rec.race_first_budget, cfg.max_epochs,
                              rec.race_horizon, cap=rec.tensor_race_cap if tensor else None)
        tie_metric = getattr(rec.task_, "tie_metric", None)
        if tie_metric and rec.race_tie_z > 0 and len(rec.selection_.stopped) > 1:
            tb = tie_break(rec.selection_, lambda op: rec.task_.per_user(fits[op][0], eval_it), metric, tie_metric,
                           getattr(rec.task_, "maximize", False), rec.race_tie_z)
            log.info("race: %s tied with the race's winner %s within %.1f standard errors of %s; %s wins on %s",
                     [op for op in tb["tied"] if op != tb["race_winner"]] or "no op", tb["race_winner"],
                     rec.race_tie_z, metric, tb["winner"], tie_metric)
    rec.selection_.seconds = sum(res.seconds for _, res in fits.values())
    rec.op_ = rec.selection_.winner
    best = rec.search_result_.best_genotype
    rec.genotype_ = dataclasses.replace(best, matrices=tuple(
        (n, tuple(replace(c, op=rec.op_) for c in cs)) if n == "interaction" else (n, cs) for n, cs in best.matrices))
    log.info("race: candidates %s, winner %s after %d epochs", cands, rec.op_, rec.selection_.epochs)
    rec.ensemble_ = [rec.op_]
    if not rec.race_ensemble:
        return fits[rec.op_]
    return _race_ensemble(rec, fits, eval_it, metric, sign)


def _race_ensemble(rec, fits: dict, eval_it, metric: str, sign: float) -> tuple[nn.Module, TrainResult]:
    """The race's fully trained fits averaged where that improves the validation metric
    (:func:`sif.ensemble.greedy_members`); sets ``rec.ensemble_`` and ``rec.selection_.ensemble``. Returns
    (model, the winner's train result with the ensemble's validation scores)."""
    def average(ops):
        return AveragedModel([fits[op][0] for op in ops]) if len(ops) > 1 else fits[ops[0]][0]

    pool = list(rec.selection_.stopped)     # every stopped candidate has its fit in fits
    members, steps = greedy_members(rec.op_, pool, lambda ops: sign * rec.task_.evaluate(average(ops), eval_it)[metric],
                                    rec.train_config_.min_delta)
    rec.ensemble_ = members
    model, result = average(members), fits[rec.op_][1]
    if len(members) == 1:
        return model, result
    valid = rec.task_.evaluate(model, eval_it)
    rec.selection_.ensemble = {"members": members, "epochs": [fits[op][1].best_epoch + 1 for op in members],
                               "steps": [{"members": st["members"], metric: sign * st["loss"]} for st in steps],
                               "valid": valid}
    log.info("race: the ensemble %s scores %s %.4f on validation (the winner alone %.4f)", members, metric,
             valid[metric], sign * steps[0]["loss"])
    return model, replace(result, best_valid=valid)
