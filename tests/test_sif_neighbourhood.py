"""SVD++-style neighbourhoods (sif.neighbourhood) and the refit on train + valid."""

import math

import numpy as np
import pytest
import torch

from data_loaders import RatingDataset, random_split
from sif.baselines import create_baseline
from sif.neighbourhood import Neighbourhood, neighbour_lists
from sif.recommender import BaselineRecommender, SIFRecommender, load_recommender
from sif.space import SIFSpace
from sif.synthetic import planted_ratings
from sif.task import RatingTask

DEVICE = "cpu"


def _brute(weight, rows, cols, x):
    ns = sorted(set(cols[rows == x].tolist()))
    if not ns:
        return torch.zeros(weight.shape[1], dtype=weight.dtype)
    return weight[ns].sum(0) / math.sqrt(len(ns))


def test_neighbour_lists_are_deduplicated_csr():
    rows, cols = torch.tensor([2, 0, 2, 2, 0]), torch.tensor([1, 3, 1, 0, 3])
    indptr, indices = neighbour_lists(rows, cols, 4)
    assert indptr.tolist() == [0, 1, 1, 3, 3]
    assert indices.tolist() == [3, 0, 1]
    with pytest.raises(ValueError, match="row ids"):
        neighbour_lists(torch.tensor([5]), torch.tensor([0]), 4)


@pytest.mark.parametrize("mode", ["bag", "matmul"])
def test_neighbourhood_sums_and_grads_match_the_definition(mode):
    g = torch.Generator().manual_seed(0)
    rows, cols = torch.randint(0, 7, (40,), generator=g), torch.randint(0, 5, (40,), generator=g)
    nb = Neighbourhood(9, 5, 3, *neighbour_lists(rows, cols, 9), init_std=0.5, generator=g, mode=mode).double()
    ids = torch.tensor([0, 8, 3, 3, 6, 7])                     # rows 7 and 8 have no neighbours
    out = nb(ids)
    ref = torch.stack([_brute(nb.weight.detach(), rows, cols, x) for x in ids.tolist()])
    torch.testing.assert_close(out.detach(), ref)
    w = torch.randn(out.shape, dtype=out.dtype, generator=g)
    (out * w).sum().backward()
    W = nb.weight.detach().clone().requires_grad_(True)
    (torch.stack([_brute(W, rows, cols, x) for x in ids.tolist()]) * w).sum().backward()
    torch.testing.assert_close(nb.weight.grad, W.grad)


def test_state_dict_carries_the_lists():
    rows, cols = torch.tensor([0, 1, 1]), torch.tensor([2, 0, 1])
    a = Neighbourhood(3, 3, 2, *neighbour_lists(rows, cols, 3), init_std=1.0, generator=torch.Generator())
    b = Neighbourhood(3, 3, 2)                                   # empty until loaded
    assert b.nnz == 0 and torch.equal(b(torch.tensor([0, 1])), torch.zeros(2, 2))
    b.load_state_dict(a.state_dict())
    assert b.nnz == 3
    torch.testing.assert_close(b(torch.tensor([0, 1, 2])), a(torch.tensor([0, 1, 2])))
    c = Neighbourhood(3, 3, 2, *neighbour_lists(torch.tensor([2, 2, 0]), torch.tensor([0, 1, 1]), 3), mode="matmul")
    c(torch.tensor([0]))                                       # builds and caches c's own sparse matrices
    c.load_state_dict(b.state_dict())                          # same shapes: copied in place, the cache must go
    torch.testing.assert_close(c(torch.tensor([0, 1, 2])), a(torch.tensor([0, 1, 2])))


def test_models_without_the_option_refuse_it():
    for name in ("neumf", "bias_only"):
        with pytest.raises(ValueError, match="no neighbourhood option"):
            create_baseline(name, num_users=3, num_items=3, neighbourhood="both")
    with pytest.raises(ValueError, match="neighbourhood must be"):
        SIFSpace(3, 3, neighbourhood="users")


def test_penalty_weights_the_neighbourhood_vectors():
    rows, cols = torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 1, 2])
    space = SIFSpace(3, 3, embedding_dim=2, use_bias=True, ops=("multiply",), neighbourhood="both",
                     neighbourhood_reg=0.25).double()
    space.set_neighbours(rows, cols)
    with torch.no_grad():
        for nb in space.neighbourhoods.values():
            nb.weight.normal_()
    u, i, y = torch.tensor([0, 1, 2]), torch.tensor([1, 1, 2]), torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    task = RatingTask(reg=0.1)
    loss = task.loss(space, (u, i, y), None, "train")
    enc = space.encode_parts(u, i)
    mse = ((space(u, i) - y) ** 2).mean()
    n = {s: nb(idx) for (s, nb), idx in zip(space.neighbourhoods.items(), (u, i), strict=True)}
    k = space.embedding_dim
    raw = [space.embeddings["u"].weight[u, :k], space.embeddings["v"].weight[i, :k]]
    expected = mse + 0.1 * (sum((r * r).sum() for r in raw) + 0.25 * sum((v * v).sum() for v in n.values())) / 3
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(enc.emb["u"], raw[0] + n["u"])


def test_effective_penalty_with_neighbourhoods_is_svdpp_at_identity_g():
    """Fixed multiply with g = identity and an all-ones head is SVD++ with both neighbourhoods: under the effective
    penalty its training loss equals the baseline's L2 loss (free vectors at reg, neighbourhood vectors at
    reg * neighbourhood_reg), in float64, and the neighbourhood vectors are not penalised twice."""
    torch.manual_seed(0)
    rows, cols = torch.tensor([0, 0, 1, 2, 3, 3]), torch.tensor([0, 1, 1, 2, 0, 3])
    kw = dict(embedding_dim=3, neighbourhood="both", neighbourhood_reg=0.2)
    space = SIFSpace(4, 4, ops=("multiply",), use_bias=True, g_skip=True, head_init="ones", **kw).double()
    mf = create_baseline("mf", num_users=4, num_items=4, **kw).double()
    for m in (space, mf):
        m.set_neighbours(rows, cols)
    with torch.no_grad():
        for s in ("u", "v"):
            space.neighbourhoods[s].weight.normal_()
            mf.neighbourhoods[s].weight.copy_(space.neighbourhoods[s].weight)
        mf.user.weight.copy_(space.embeddings["u"].weight[:, :3])
        mf.item.weight.copy_(space.embeddings["v"].weight[:, :3])
    assert torch.equal(space.g(torch.ones(2, 1, 3, dtype=torch.float64)), torch.ones(2, 1, 3, dtype=torch.float64))
    u, i = torch.tensor([0, 1, 2, 3, 3]), torch.tensor([1, 1, 2, 0, 3])
    y = torch.tensor([0.5, -1.0, 2.0, 0.1, -0.3], dtype=torch.float64)
    sif_loss = RatingTask(reg=0.1, penalty="effective").loss(space, (u, i, y), None, "train")
    mf_loss = RatingTask(reg=0.1, penalty="l2").loss(mf, (u, i, y), None, "train")
    torch.testing.assert_close(sif_loss, mf_loss, rtol=1e-12, atol=1e-12)


def _implicit_taste_splits(seed=0, num_users=300, num_items=60, per_user=10, dim=8):
    """(train, valid, test) with ratings generated by the user side of SVD++ alone:
    y = <|N(u)|^-1/2 sum_{j in N(u)} y_j, q_i> + noise, N(u) = the items u rated in train. With 7 training ratings
    per user a free 8-dim user vector is under-determined; the shared item vectors y_j are not."""
    g = torch.Generator().manual_seed(seed)
    users = torch.arange(num_users).repeat_interleave(per_user)
    items = torch.stack([torch.randperm(num_items, generator=g)[:per_user] for _ in range(num_users)]).reshape(-1)
    part = torch.randperm(len(users), generator=g) % 10                      # 0-6 train, 7-8 valid, 9 test
    tr = part < 7
    Y, Q = torch.randn(num_items, dim, generator=g), torch.randn(num_items, dim, generator=g)
    deg = torch.bincount(users[tr], minlength=num_users).clamp_min(1)
    taste = torch.zeros(num_users, dim).index_add_(0, users[tr], Y[items[tr]]) / deg.sqrt().unsqueeze(1)
    y = (taste[users] * Q[items]).sum(-1) + 0.1 * torch.randn(len(users), generator=g)
    ds = RatingDataset.from_arrays(users.numpy(), items.numpy(), y.numpy().astype(np.float64),
                                   user_ids=np.arange(num_users), item_ids=np.arange(num_items), name="taste")
    return ds.subset(tr), ds.subset((part >= 7) & (part < 9)), ds.subset(part == 9)


def test_planted_implicit_taste_is_learned_only_with_the_neighbourhood():
    train, valid, test = _implicit_taste_splits()
    kw = dict(embedding_dim=8, reg=0.01, device=DEVICE, train={"max_epochs": 80, "patience": 5, "lr": 0.02,
                                                                "batch_size": 256})
    plain = BaselineRecommender("mf", **kw).fit(train, valid, show_progress=False).score(test)["rmse"]
    svdpp = BaselineRecommender("mf", neighbourhood="user", **kw).fit(train, valid, show_progress=False)
    assert svdpp.score(test)["rmse"] < 0.8 * plain, (svdpp.score(test)["rmse"], plain)


def test_sif_with_neighbourhood_saves_loads_and_recommends(tmp_path):
    ds = planted_ratings("multiply", num_users=40, num_items=50, n=1200, seed=1)
    train, valid, _ = random_split(ds, (0.8, 0.2, 0.0), seed=0)
    rec = SIFRecommender(embedding_dim=4, neighbourhood="both", device=DEVICE, search={"epochs": 2},
                         train={"max_epochs": 3}).fit(train, valid, show_progress=False)
    assert rec.model_.neighbourhoods["u"].nnz == len(train)
    users, items = torch.arange(5), torch.arange(5)
    before = rec.predict(users, items, ids="index")
    loaded = load_recommender(rec.save(tmp_path / "rec"))
    np.testing.assert_array_equal(loaded.predict(users, items, ids="index"), before)
    ids, scores = loaded.recommend(0, N=5, filter_already_rated=False, ids="index")
    all_items = torch.arange(ds.num_items)
    raw = loaded.predict(torch.zeros_like(all_items), all_items, ids="index")
    assert set(ids.tolist()) == set(np.argsort(-raw, kind="stable")[:5].tolist())


def test_refit_trains_the_chosen_epochs_on_train_and_valid():
    ds = planted_ratings("multiply", num_users=40, num_items=50, n=1500, seed=2)
    train, valid, _ = random_split(ds, (0.8, 0.2, 0.0), seed=0)
    kw = dict(embedding_dim=4, neighbourhood="both", device=DEVICE, train={"max_epochs": 6, "patience": 2})
    plain = BaselineRecommender("mf", **kw).fit(train, valid, show_progress=False)
    rec = BaselineRecommender("mf", refit=True, **kw).fit(train, valid, show_progress=False)
    assert rec.train_result_.best_epoch == plain.train_result_.best_epoch
    assert len(rec.refit_result_.history) == rec.train_result_.best_epoch + 1
    assert rec.model_.neighbourhoods["u"].nnz == len(train) + len(valid)
    assert rec.rated_.nnz == len(train) + len(valid)           # the refit model has seen the valid ratings
    assert not np.array_equal(rec.predict(torch.arange(5), torch.arange(5), ids="index"),
                              plain.predict(torch.arange(5), torch.arange(5), ids="index"))
    with pytest.raises(ValueError, match="rating task only"):
        BaselineRecommender("mf", refit=True, task="bpr", embedding_dim=4,
                            train={"max_epochs": 1}).fit(train, valid, show_progress=False)
