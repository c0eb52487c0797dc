"""Fast mini-batches over whole-dataset tensors, and conversion to a users x items CSR matrix."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from .ratings import RatingDataset

_DATASET_FIELDS = ("users", "items", "ratings", "contexts", "timestamps")
_SEED_STRIDE = 1_000_003


def _collect(data, fields: Sequence[str] | None) -> tuple[list[torch.Tensor], tuple]:
    """(tensors, field names) selected from a RatingDataset, a dict, or a tuple/list of tensors."""
    if isinstance(data, RatingDataset):
        fields = tuple(fields or ("users", "items", "ratings"))
        unknown = [f for f in fields if f not in _DATASET_FIELDS or getattr(data, f) is None]
        if unknown:
            raise ValueError(f"fields {unknown} are not tensors of {data.name} (choose: {_DATASET_FIELDS})")
        return [getattr(data, f) for f in fields], fields
    if isinstance(data, Mapping):
        fields = tuple(fields or data.keys())
        missing = [f for f in fields if f not in data]
        if missing:
            raise ValueError(f"fields {missing} not in the dict (keys: {list(data)})")
        return [torch.as_tensor(data[f]) for f in fields], fields
    tensors = [torch.as_tensor(t) for t in data]
    if fields is not None and len(fields) != len(tensors):
        raise ValueError(f"{len(fields)} fields for {len(tensors)} tensors")
    return tensors, tuple(fields or range(len(tensors)))


class BatchIterator:
    """Mini-batches of equal-length tensors held on ``device``, in a seeded order per epoch.

    The permutation of epoch ``e`` comes from a CPU ``torch.Generator`` seeded with
    ``seed * 1_000_003 + e`` and is moved to the device once per epoch, so the order is a pure function of
    (seed, epoch): a restarted run that calls ``set_epoch(e)`` and ``iter_from(b)`` resumes exactly. The
    epoch does not advance by itself; call ``set_epoch`` before each epoch.
    """

    def __init__(self, data, batch_size: int = 512, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, device="cpu", fields: Sequence[str] | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: expected >= 1")
        tensors, self.fields = _collect(data, fields)
        lengths = {t.shape[0] if t.dim() else -1 for t in tensors}
        if len(lengths) != 1 or -1 in lengths:
            raise ValueError(f"tensors must share their first dimension, found lengths {sorted(lengths)}")
        self.device = torch.device(device)
        self.tensors = [t.to(self.device) for t in tensors]  # each (n, ...) on device
        self.num_rows = lengths.pop()
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, int(seed), drop_last
        self.epoch = 0

    CHUNK_ROWS = 1 << 16          # rows gathered at once in a shuffled epoch (see iter_from)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_rows // self.batch_size
        return -(-self.num_rows // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose permutation the next iteration uses."""
        self.epoch = int(epoch)

    def permutation(self, epoch: int | None = None) -> torch.Tensor:
        """(n,) int64 row order of ``epoch`` (default: the current one), on the device."""
        epoch = self.epoch if epoch is None else int(epoch)
        gen = torch.Generator().manual_seed(self.seed * _SEED_STRIDE + epoch)
        return torch.randperm(self.num_rows, generator=gen).to(self.device)

    def iter_from(self, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, ...]]:
        """Batches of the current epoch from batch index ``start_batch`` on (earlier ones are not built).

        A shuffled epoch gathers its rows in chunks of about ``CHUNK_ROWS`` rows (one ``index_select`` per tensor
        and chunk) and yields views of them (one ``split`` per tensor and chunk), so a step costs no tensor op of its
        own; the batches are the same as gathering every batch by itself."""
        if start_batch < 0:
            raise ValueError(f"start_batch={start_batch}: expected >= 0")
        perm = self.permutation() if self.shuffle else None
        bs, n = self.batch_size, len(self)
        per_chunk = max(1, self.CHUNK_ROWS // bs)                     # batches per gathered chunk
        for c in range(start_batch, n, per_chunk):
            lo, hi = c * bs, min((c + per_chunk) * bs, n * bs, self.num_rows)
            if perm is None:
                chunk = [t[lo:hi] for t in self.tensors]
            else:
                chunk = [t.index_select(0, perm[lo:hi]) for t in self.tensors]
            yield from zip(*(t.split(bs) for t in chunk), strict=True)      # the chunk's batches, as views

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        return self.iter_from(0)


def to_csr(ds: RatingDataset, threshold: float | None = None, binary: bool = False) -> sp.csr_matrix:
    """Users x items CSR matrix of the ratings (the orientation ``implicit`` expects).

    ``threshold`` keeps ratings >= threshold; ``binary`` stores 1 for every kept entry. Repeated
    (user, item) pairs (e.g. in several contexts) are summed, or stored once as 1 when ``binary``.
    """
    users, items = ds.users.numpy(), ds.items.numpy()
    values = ds.ratings.numpy().astype(np.float32)
    if threshold is not None:
        keep = values >= threshold
        users, items, values = users[keep], items[keep], values[keep]
    if binary:
        values = np.ones_like(values)
    matrix = sp.csr_matrix((values, (users, items)), shape=(ds.num_users, ds.num_items), dtype=np.float32)
    matrix.sum_duplicates()
    if binary:
        matrix.data[:] = 1.0
    return matrix
