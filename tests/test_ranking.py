import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from sif.ranking import auc_scores, evaluate_ranking, topk_by_score_then_index

# users x items = 3 x 5. User 0: item 0 in train, items 2 and 4 in test. User 1: all scores tied, item 3 in test.
# User 2: no test item (must be left out of every mean).
SCORES = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5],
                       [1.0, 1.0, 1.0, 1.0, 1.0],
                       [0.1, 0.2, 0.3, 0.4, 0.5]])
TRAIN = sp.csr_matrix(np.array([[1, 0, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 0, 0, 0]], dtype=np.float32))
TEST = sp.csr_matrix(np.array([[0, 0, 1, 0, 1], [0, 0, 0, 1, 0], [0, 0, 0, 0, 0]], dtype=np.float32))


def _score_fn(users):
    return SCORES[users]


def test_metrics_on_a_hand_computed_case_with_ties_and_a_user_without_test_items():
    out = evaluate_ranking(_score_fn, TRAIN, TEST, ks=(2, 4))
    assert out["users"] == 2
    # user 0: item 0 filtered -> ranking 1, 2, 3, 4; hits at ranks 1 and 3 (0-based)
    u0 = {"recall@2": 0.5, "hr@2": 1.0, "ndcg@2": (1 / math.log2(3)) / (1 + 1 / math.log2(3)),
          "map@2": (1 / 2) * (1 / 2),
          "recall@4": 1.0, "ndcg@4": (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3)),
          "map@4": (1 / 2) * (1 / 2 + 2 / 4), "hr@4": 1.0}
    # user 1: all scores equal -> ties by lower item index: 0, 1, 2, 3; the test item 3 is at rank 3
    u1 = {"recall@2": 0.0, "hr@2": 0.0, "ndcg@2": 0.0, "map@2": 0.0,
          "recall@4": 1.0, "hr@4": 1.0, "ndcg@4": 1 / math.log2(5), "map@4": 1 / 4}
    for key in u0:
        assert out[key] == pytest.approx((u0[key] + u1[key]) / 2), key
    # AUC: user 0 pairs (2>1? no, 2>3 yes, 4>1 no, 4>3 no) = 1/4; user 1: every pair tied = 1/2
    assert out["auc"] == pytest.approx((0.25 + 0.5) / 2)


def test_per_user_values_are_the_hand_computed_ones_and_average_to_the_means():
    """per_user=True: one value per user with a test item (user 2 left out), in user order, batching-invariant."""
    out = evaluate_ranking(_score_fn, TRAIN, TEST, ks=(2, 4), per_user=True, batch_size=1)
    assert out["users"].tolist() == [0, 1]
    assert out["ndcg@4"] == pytest.approx([(1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3)),
                                           1 / math.log2(5)])
    assert out["auc"] == pytest.approx([0.25, 0.5])
    means = evaluate_ranking(_score_fn, TRAIN, TEST, ks=(2, 4))
    for key in ("recall@2", "ndcg@2", "map@4", "hr@4", "auc"):
        assert float(np.mean(out[key])) == pytest.approx(means[key]), key


def test_batching_does_not_change_the_result():
    full = evaluate_ranking(_score_fn, TRAIN, TEST, ks=(1, 3))
    one = evaluate_ranking(_score_fn, TRAIN, TEST, ks=(1, 3), batch_size=1)
    assert full == pytest.approx(one)


def test_no_user_with_test_items_gives_nan_and_zero_users():
    out = evaluate_ranking(_score_fn, TRAIN, sp.csr_matrix(TEST.shape, dtype=np.float32))
    assert out["users"] == 0 and math.isnan(out["ndcg@10"])


def test_topk_tie_rule_matches_a_sort_by_score_then_index():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (20, 30), generator=g).float()       # many ties
    top = topk_by_score_then_index(scores, 7)
    for row, got in zip(scores.tolist(), top.tolist(), strict=True):
        expected = sorted(range(30), key=lambda j: (-row[j], j))[:7]
        assert got == expected


def test_auc_matches_brute_force_pair_counting():
    g = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 5, (6, 12), generator=g).float()
    candidate = torch.rand(6, 12, generator=g) > 0.2
    positive = candidate & (torch.rand(6, 12, generator=g) > 0.6)
    auc, ok = auc_scores(scores, positive, candidate)
    for b in range(6):
        pos = [scores[b, j] for j in range(12) if positive[b, j]]
        neg = [scores[b, j] for j in range(12) if candidate[b, j] and not positive[b, j]]
        assert bool(ok[b]) == (len(pos) > 0 and len(neg) > 0)
        if ok[b]:
            wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
            assert float(auc[b]) == pytest.approx(wins / (len(pos) * len(neg)))


def test_bad_score_shape_is_rejected():
    with pytest.raises(ValueError, match="score_fn returned shape"):
        evaluate_ranking(lambda u: SCORES[u][:, :3], TRAIN, TEST)
