"""Data-parallel search and training with PyTorch's own distributed engine (``torchrun`` + ``torch.distributed``).

Launch any search or training command with ``torchrun --nproc_per_node=N ...``: :func:`init_distributed` joins the
process group when ``WORLD_SIZE > 1`` (gloo on CPU, nccl on CUDA, one GPU per local rank) and is a no-op otherwise,
so the same script runs in one process unchanged.

What data parallelism means here (the choices, documented):

- **Gradients are averaged with explicit all-reduces**, not with ``DistributedDataParallel``: the alpha step takes
  ``torch.autograd.grad`` w.r.t. the one-hot Ā leaves (NASP), the softmax alphas (DARTS) and the extra alpha-step
  weights, which DDP's backward hooks never see. The search loop calls ``searcher.grad_sync`` (here
  :func:`allreduce_mean_`: one flattened ``all_reduce`` per dtype) on the weight-step gradients after
  ``backward`` and on the alpha-step gradients before the Adam update; DARTS second order also averages the
  train gradients of its virtual step and the validation gradients that set the finite-difference points, so every
  rank computes the same update as one process on the global batch.
- **Every rank keeps a full replica** of the model, the alphas, both optimisers and all RNG states (seeded
  identically, so random architecture samples agree). Parameters are broadcast from rank 0 at the start; alphas
  are checked to be bit-identical at every epoch end (:func:`check_alphas_identical`: an all-reduced checksum of
  their bit patterns) and a :class:`AlphaMismatchError` stops the run if they ever differ.
- **Each rank reads its own shard**: :class:`ShardedLoader` splits every global batch into ``world_size`` equal
  contiguous slices (rank r takes slice r of the same global permutation). With mean-reduced losses the average
  of the per-rank gradients then equals the gradient of the global batch, so an N-process run equals a 1-process
  run with the same global batch up to float rounding. Rows beyond ``world_size * (B // world_size)`` of a batch
  are dropped (none when the batch size is divisible by the world size; pick it so).
- **Evaluation is replicated**: every rank evaluates the whole validation loader, so the metrics that choose the
  best epoch and stop early are identical on every rank without a task-specific reduction.
- **Rank 0 writes**: run folder, log, checkpoints, genotype files and the progress bar. On resume rank 0 reads
  the checkpoint and broadcasts it, so a restart works on several machines without a shared file system.
- **Embedding tables (SIF) are replicated.** Dense tables have their gradients all-reduced whole; row-wise tables
  (``model.sparse_rows``, :func:`nasp.optim.mark_row_sparse`) send only the touched rows as (index, row) pairs
  (:mod:`nasp.distributed_sparse`), so the traffic follows the batch, not the table size.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .arch import ArchParameters
from .checkpoint import load_checkpoint
from .distributed_data import PinnedLoader, ShardedLoader, shard_if_distributed
from .distributed_sparse import allreduce_sparse_mean_
from .search import Searcher

__all__ = ["AlphaMismatchError", "init_distributed", "cleanup", "is_distributed", "get_rank", "get_world_size",
           "is_main_process", "barrier", "allreduce_mean_", "allreduce_grads_", "allreduce_mean_scalar",
           "allreduce_any", "broadcast_module_", "broadcast_object", "load_checkpoint_on_main", "alpha_checksum",
           "check_alphas_identical", "ShardedLoader", "shard_if_distributed", "DistributedSearcher",
           "make_searcher", "PinnedLoader"]

log = logging.getLogger("nasp.distributed")


class AlphaMismatchError(RuntimeError):
    """The architecture parameters differ across ranks (they must stay bit-identical)."""


# ---- process group ----------------------------------------------------------------------------------------------
def is_distributed() -> bool:
    """True inside an initialised process group with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Rank 0 (or a single process): the one that writes files and shows progress."""
    return get_rank() == 0


def init_distributed(device: str | torch.device = "cpu", backend: str | None = None,
                     timeout_s: float = 1800.0) -> torch.device:
    """Join the process group when launched with ``WORLD_SIZE > 1`` (torchrun sets it); return this rank's device.

    device: the requested device type ("cpu", "cuda"); with CUDA each process takes ``cuda:LOCAL_RANK``.
    backend: default "nccl" on CUDA, "gloo" otherwise. A single process (no WORLD_SIZE, or 1) gets ``device``
    back and no group is created.
    """
    device = torch.device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = backend or ("nccl" if device.type == "cuda" else "gloo")
        timeout = datetime.timedelta(seconds=timeout_s)
        kw: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
        if "MASTER_ADDR" in os.environ and "MASTER_PORT" in os.environ:
            kw.update(store=_attempt_store(world, timeout), rank=int(os.environ["RANK"]), world_size=world)
        dist.init_process_group(backend=backend, timeout=timeout, **kw)
        log.info("rank %d/%d joined the %s process group on %s", dist.get_rank(), dist.get_world_size(),
                 backend, device)
    return device


def _attempt_store(world: int, timeout: datetime.timedelta) -> dist.Store:
    """The rendezvous store of this launch attempt, under a prefix per torchrun restart.

    torchrun's agent keeps one TCP store across ``--max-restarts`` attempts; without a fresh prefix a restarted
    rank can read the previous attempt's gloo addresses (a dead peer: "connection refused" or a hang). Like
    ``env://``: the agent hosts the store when ``TORCHELASTIC_USE_AGENT_STORE=True``, else rank 0 does.
    """
    rank = int(os.environ["RANK"])
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                          is_master=(rank == 0 and not agent), timeout=timeout, multi_tenant=not agent)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"nasp_attempt_{attempt}", store)


def cleanup() -> None:
    """Leave the process group (safe to call when none exists)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


# ---- collectives ------------------------------------------------------------------------------------------------
@torch.no_grad()
def allreduce_mean_(tensors: Sequence[Tensor]) -> None:
    """Average ``tensors`` in place over all ranks: one flattened ``all_reduce`` per (device, dtype) bucket.

    Every rank must pass tensors of the same shapes in the same order (in the search loop: the gradients that
    exist for the shared architecture); sparse COO ones are averaged by :func:`allreduce_sparse_mean_`.
    """
    if not is_distributed() or not tensors:
        return
    world = dist.get_world_size()
    buckets: dict[tuple, list[Tensor]] = {}
    for t in tensors:                   # sparse COO gradients (row-wise tables): only their touched rows travel
        buckets.setdefault((t.device, t.dtype, t.is_sparse), []).append(t)
    for (_, _, sparse), group in buckets.items():
        if sparse:
            allreduce_sparse_mean_(group)
            continue
        flat = torch.cat([t.reshape(-1) for t in group])          # (sum of numels,)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(world)
        torch._foreach_copy_(group, [f.view_as(t) for f, t in zip(flat.split([t.numel() for t in group]), group,
                                                                      strict=True)])


def allreduce_grads_(params: Iterable[nn.Parameter]) -> None:
    """Average the ``.grad`` of ``params`` (those that have one) across ranks."""
    allreduce_mean_([p.grad for p in params if p.grad is not None])


def allreduce_mean_scalar(x: float | Tensor, device: torch.device | str = "cpu") -> float:
    """Mean of a per-rank number over all ranks (a host sync; for logging at epoch ends)."""
    t = torch.as_tensor(x, dtype=torch.float64, device=device).clone().reshape(1)
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= dist.get_world_size()
    return float(t.item())


def allreduce_any(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every rank when ``flag`` is true on any rank (collective decisions such as early stops)."""
    if not is_distributed():
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


@torch.no_grad()
def broadcast_module_(module: nn.Module, src: int = 0) -> None:
    """Copy every parameter and buffer of rank ``src`` to all ranks (as DDP does at construction)."""
    if not is_distributed():
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=src)
    for m in module.modules():          # writes through .data bypass the version counters the arch cache reads
        if isinstance(m, ArchParameters):
            m.invalidate()


def broadcast_object(obj: Any, src: int = 0, device: torch.device | str | None = None) -> Any:
    """``obj`` of rank ``src`` on every rank (pickled between our own processes; tensors should be on CPU)."""
    if not is_distributed():
        return obj
    box = [obj if get_rank() == src else None]
    dist.broadcast_object_list(box, src=src, device=device)
    return box[0]


def _collective_device(device: torch.device) -> torch.device | None:
    return device if dist.is_initialized() and dist.get_backend() == "nccl" else None


def load_checkpoint_on_main(path: str | Path | None, device: torch.device | str = "cpu") -> dict[str, Any] | None:
    """Rank 0 reads ``path`` (None when it does not exist) and broadcasts it; every rank gets the same dict.

    In a single process this is just ``load_checkpoint`` (or None). Tensors travel on CPU; loading a state dict
    moves them to each rank's device.
    """
    if not is_distributed():
        p = Path(path) if path is not None else None
        return load_checkpoint(p, map_location=device) if p is not None and p.is_file() else None
    state = None
    if is_main_process() and path is not None and Path(path).is_file():
        state = load_checkpoint(path, map_location="cpu")
    return broadcast_object(state, device=_collective_device(torch.device(device)))


# ---- alpha consistency ------------------------------------------------------------------------------------------
@torch.no_grad()
def alpha_checksum(alphas: Iterable[tuple[str, Tensor]]) -> Tensor:
    """An int64 checksum of the bit patterns of named alpha matrices (position-weighted, so swaps count)."""
    total = None
    for m, (_, a) in enumerate(sorted(alphas, key=lambda kv: kv[0])):
        bits = a.detach().float().contiguous().view(torch.int32).reshape(-1).to(torch.int64)      # (numel,)
        pos = torch.arange(1, bits.numel() + 1, device=bits.device, dtype=torch.int64) * (2 * m + 1)
        s = (bits * pos).sum()
        total = s if total is None else total * 1_000_003 + s
    return total if total is not None else torch.zeros((), dtype=torch.int64)


@torch.no_grad()
def check_alphas_identical(arch: Iterable[tuple[str, Tensor]], where: str = "") -> None:
    """Raise :class:`AlphaMismatchError` on every rank unless the alphas are bit-identical on all ranks.

    One ``all_reduce(MAX)`` of (checksum, -checksum): the max and the min agree iff every rank has the same sum.
    """
    if not is_distributed():
        return
    items = list(arch)
    c = alpha_checksum(items)
    t = torch.stack([c, -c]).reshape(2)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    hi, lo = int(t[0]), -int(t[1])
    if hi != lo:
        mine = {n: float(a.detach().double().sum()) for n, a in items}
        raise AlphaMismatchError(
            f"architecture parameters differ across ranks {where}: bit checksum ranges over [{lo}, {hi}] "
            f"(rank {get_rank()} has {int(c)}; its alpha sums {mine}). Data-parallel search needs every rank to "
            "apply the same averaged alpha update: check that all ranks run the same strategy, config and seed, "
            "that grad_sync is set, and that nothing else writes the alphas.")


# ---- the data-parallel searcher ---------------------------------------------------------------------------------
class DistributedSearcher(Searcher):
    """A :class:`~nasp.search.Searcher` for one rank of a data-parallel search (see the module docstring).

    Same arguments as ``Searcher``; pass loaders wrapped in :class:`ShardedLoader` for the training and alpha
    streams and an unsharded evaluation loader. Only rank 0 keeps ``run_dir`` (writes, progress bar); callbacks
    run on every rank and the search stops when any rank's callback asks for it.
    """

    def __init__(self, model, task, config=None, device="cpu", run_dir=None, callbacks: Sequence[Callable] = (),
                 show_progress: bool = True, **kwargs):
        if not is_distributed():
            raise RuntimeError("DistributedSearcher needs an initialised process group with several ranks "
                               "(launch with torchrun and call nasp.distributed.init_distributed); use "
                               "make_searcher() to get a plain Searcher in a single process")
        self.rank, self.world_size = get_rank(), get_world_size()
        main = self.rank == 0
        self.shared_run_dir = Path(run_dir) if run_dir is not None else None
        super().__init__(model, task, config, device=device, run_dir=run_dir if main else None,
                         callbacks=[self._collective(cb) for cb in callbacks],
                         show_progress=show_progress and main, **kwargs)
        self.grad_sync = allreduce_mean_
        self.async_finite_check = False     # a rank-local, timing-dependent stop would leave the others waiting

    def _collective(self, cb: Callable) -> Callable:
        def wrapped(*args):
            return allreduce_any(bool(cb(*args)), self._coll_device)
        return wrapped

    @property
    def _coll_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def _resume_state(self) -> dict[str, Any] | None:
        broadcast_module_(self.model)          # identical start on every rank (DDP's construction broadcast)
        return load_checkpoint_on_main(self.shared_run_dir / "checkpoint.pt" if self.shared_run_dir else None,
                                       self.device)

    @staticmethod
    def _average_losses(acc: dict[str, Any]) -> None:
        """Replace this rank's running loss sums by their mean over ranks (linear, so doing it at every checkpoint
        and again at the epoch end gives the same epoch mean; a resumed run restores rank 0's sums)."""
        if "train_loss" not in acc:
            return
        losses = torch.stack([acc["train_loss"], acc["alpha_loss"]]).float()          # (2,) local sums of means
        allreduce_mean_([losses])
        acc["train_loss"], acc["alpha_loss"] = losses[0].clone(), losses[1].clone()

    def _check_finite(self, acc: dict, epoch: int) -> None:
        """Collective: every rank stops when the running loss of any rank is NaN/inf (same step everywhere)."""
        if allreduce_any(self._non_finite(acc), self._coll_device):
            self._raise_non_finite(epoch)

    def _save(self, train_stream, valid_stream) -> None:
        self._average_losses(self._epoch_acc)       # every rank calls _save; rank 0 alone has a checkpoint_path
        super()._save(train_stream, valid_stream)

    def _end_epoch(self, acc, t0, train_stream, valid_stream, eval_loader, warm) -> dict[str, Any]:
        check_alphas_identical(self.model.arch, f"at the end of epoch {self.epoch} (global step {self.step})")
        self._average_losses(acc)
        return super()._end_epoch(acc, t0, train_stream, valid_stream, eval_loader, warm)


def make_searcher(model, task, config=None, device="cpu", run_dir=None, **kwargs) -> Searcher:
    """A :class:`DistributedSearcher` inside a multi-rank process group, else a plain :class:`Searcher`."""
    cls = DistributedSearcher if is_distributed() else Searcher
    return cls(model, task, config, device=device, run_dir=run_dir, **kwargs)
