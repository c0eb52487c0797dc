"""BatchIterator (seeded per-epoch permutations, resumable) and to_csr."""

import numpy as np
import pytest
import torch

from data_loaders import BatchIterator, RatingDataset, to_csr


def _ds(n=103):
    gen = np.random.default_rng(0)
    users = gen.integers(0, 10, n)
    items = np.arange(n) % 17
    return RatingDataset(users, items, gen.integers(1, 6, n).astype(np.float32), user_ids=np.arange(10) + 1,
                         item_ids=np.arange(17) + 100, rating_scale=(1, 5), contexts=np.arange(n) % 3,
                         timestamps=np.arange(n))


def test_len_and_covers_every_row_once():
    ds = _ds()
    it = BatchIterator(ds, batch_size=10, seed=0, fields=("timestamps", "users"))
    assert len(it) == 11
    batches = list(it)
    assert [len(b[0]) for b in batches] == [10] * 10 + [3]
    rows = torch.cat([b[0] for b in batches])  # (103,) row ids, since timestamps are 0..n-1
    assert rows.dtype == torch.int64 and sorted(rows.tolist()) == list(range(103))
    assert not torch.equal(rows, torch.arange(103))  # shuffled


def test_rows_stay_aligned_across_fields():
    ds = _ds()
    fields = ("timestamps", "users", "items", "ratings", "contexts")
    it = BatchIterator(ds, batch_size=7, seed=3, fields=fields)
    for ts, users, items, ratings, contexts in it:
        assert torch.equal(users, ds.users[ts]) and torch.equal(items, ds.items[ts])
        assert torch.equal(ratings, ds.ratings[ts]) and torch.equal(contexts, ds.contexts[ts])


def test_drop_last():
    it = BatchIterator(_ds(), batch_size=10, drop_last=True)
    assert len(it) == 10 and all(len(b[0]) == 10 for b in it)


def test_permutation_is_pure_function_of_seed_and_epoch():
    ds = _ds()
    a, b = BatchIterator(ds, batch_size=8, seed=5), BatchIterator(ds, batch_size=8, seed=5)
    a.set_epoch(2)
    b.set_epoch(2)
    first = [x[2] for x in a]
    assert all(torch.equal(x, y[2]) for x, y in zip(first, b, strict=True))
    assert all(torch.equal(x, y[2]) for x, y in zip(first, a, strict=True))  # same epoch, same order again
    expected = torch.randperm(len(ds), generator=torch.Generator().manual_seed(5 * 1_000_003 + 2))
    assert torch.equal(a.permutation(), expected)
    a.set_epoch(3)
    assert not torch.equal(torch.cat([x[2] for x in a]), torch.cat(first))


def test_iter_from_resumes_mid_epoch():
    ds = _ds()
    it = BatchIterator(ds, batch_size=10, seed=1)
    it.set_epoch(4)
    full = list(it)
    fresh = BatchIterator(ds, batch_size=10, seed=1)
    fresh.set_epoch(4)
    tail = list(fresh.iter_from(6))
    assert len(tail) == 5
    assert all(torch.equal(x[0], y[0]) for x, y in zip(full[6:], tail, strict=True))
    assert list(fresh.iter_from(11)) == []


def test_no_shuffle_yields_slices_in_order():
    ds = _ds()
    it = BatchIterator(ds, batch_size=50, shuffle=False)
    assert torch.equal(torch.cat([b[1] for b in it]), ds.items)


def test_tuple_and_dict_inputs():
    x, y = torch.arange(10), torch.arange(10) * 2.0
    for users, ratings in BatchIterator((x, y), batch_size=4, seed=0):
        assert torch.equal(ratings, users * 2.0)
    it = BatchIterator({"a": x, "b": y}, batch_size=3, fields=("b",))
    assert len(it) == 4 and all(len(batch) == 1 for batch in it)
    with pytest.raises(ValueError, match="first dimension"):
        BatchIterator((x, y[:3]))
    with pytest.raises(ValueError, match="not in the dict"):
        BatchIterator({"a": x}, fields=("z",))
    with pytest.raises(ValueError, match="batch_size"):
        BatchIterator((x,), batch_size=0)


def test_dataset_without_contexts_rejects_context_field():
    ds = _ds()
    ds.contexts = None
    with pytest.raises(ValueError, match="contexts"):
        BatchIterator(ds, fields=("users", "contexts"))


def test_empty_dataset():
    it = BatchIterator((torch.zeros(0, dtype=torch.int64),), batch_size=4)
    assert len(it) == 0 and list(it) == []


def test_device_placement():
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        it = BatchIterator(_ds(), batch_size=16, device=device)
        users, items, ratings = next(iter(it))
        assert users.device.type == device and ratings.dtype == torch.float32
        assert it.permutation().device.type == device


def test_to_csr_threshold_binary():
    ds = RatingDataset([0, 0, 2, 1], [1, 2, 0, 1], [5.0, 2.0, 4.0, 3.5], user_ids=[10, 11, 12],
                       item_ids=[7, 8, 9, 10], rating_scale=(1, 5))
    m = to_csr(ds)
    assert m.shape == (3, 4) and m.nnz == 4 and m.dtype == np.float32 and m[0, 1] == 5.0
    kept = to_csr(ds, threshold=3.5)
    assert kept.nnz == 3 and kept[0, 2] == 0 and kept[1, 1] == 3.5
    binary = to_csr(ds, threshold=4, binary=True)
    assert binary.nnz == 2 and set(binary.data.tolist()) == {1.0}


def test_to_csr_repeated_pairs_across_contexts():
    ds = RatingDataset([0, 0], [1, 1], [2.0, 3.0], user_ids=[1], item_ids=[1, 2], rating_scale=(1, 5),
                       contexts=[0, 1])
    assert to_csr(ds)[0, 1] == 5.0 and to_csr(ds, binary=True)[0, 1] == 1.0


@pytest.mark.parametrize("chunk_rows", [1, 7, 20, 1 << 16])
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("shuffle", [False, True])
def test_chunked_gather_equals_per_batch_gather(chunk_rows, drop_last, shuffle):
    """Batches gathered in chunks equal batches gathered one by one, from any start batch."""
    n, bs = 53, 5
    data = {"a": torch.arange(n), "b": torch.arange(n, dtype=torch.float32) * 0.5}
    it = BatchIterator(data, batch_size=bs, shuffle=shuffle, seed=3, drop_last=drop_last)
    it.CHUNK_ROWS = chunk_rows
    it.set_epoch(2)
    perm = it.permutation() if shuffle else torch.arange(n)
    expected = [perm[b * bs: min((b + 1) * bs, n)] for b in range(len(it))]
    for start in (0, 1, 4, len(it) - 1):
        got = list(it.iter_from(start))
        assert len(got) == len(it) - start
        for (a, b), idx in zip(got, expected[start:], strict=True):
            assert torch.equal(a, data["a"][idx]) and torch.equal(b, data["b"][idx])
