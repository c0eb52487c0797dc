"""Architecture parameters: named alpha matrices as ``nn.Parameter`` s with their constraint specification.

An :class:`AlphaSpec` describes one decision set: one row per decision (an edge of a cell, the interaction
slot of SIF), one column per candidate operation, and an optional node grouping with ``k`` rows kept per group.
:class:`ArchParameters` owns the matrices (so they live in ``state_dict`` and checkpoints), the seeded
tie-break priorities (buffers) and produces the three views a search space's forward understands
(:class:`ArchView`): SPARSE (the discrete architecture, only selected ops run), NASP (the discrete architecture
as a leaf tensor whose gradient the alpha step needs) and DENSE (one weight per op, e.g. DARTS' softmax).

Tie-break (documented contract): at construction every matrix gets a seeded random permutation of its op
priorities per row and of its row priorities. ``prox_c1`` and derivation break exact ties by these priorities,
so ties (all alphas start at 0.5 in NASP; clipping creates ties at 0 and 1) never systematically favour op 0,
and the same seed always gives the same choice.

Host syncs (documented contract): a SPARSE or NASP view needs the op index of every row as plain Python ints, a
device->host transfer. :meth:`ArchParameters.projection` computes Ā = prox_C1(A) and that selection with ONE
transfer for all matrices and caches both until the alphas change (detected by the version counter, storage and
dtype of every alpha, and invalidated explicitly by :meth:`ArchParameters.invalidate`). So a NASP step transfers
once per alpha update (the selection of the updated A, reused by the next alpha step) and never when the alphas
did not change; random search draws its architecture on the CPU and transfers nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .prox import prox_c1, prox_c2_, random_c1, row_argmax

__all__ = ["AlphaSpec", "ArchParameters", "ArchView", "SPARSE", "NASP", "DENSE", "onehot_index", "selections"]

SPARSE, NASP, DENSE = "sparse", "nasp", "dense"


@dataclass(frozen=True)
class AlphaSpec:
    """One alpha matrix: ``len(rows)`` decisions, each choosing one of ``ops``.

    rows: names of the rows (e.g. ``"0->2"``); groups: group id per row (e.g. the node an edge feeds) or None
    for ungrouped rows; k: rows kept per group; edges: optional (source, target) node names per row, used to
    draw the architecture.
    """

    name: str
    ops: tuple[str, ...]
    rows: tuple[str, ...]
    groups: tuple[int, ...] | None = None
    k: int = 1
    edges: tuple[tuple[str, str], ...] | None = None

    def __post_init__(self):
        if not self.name.isidentifier():
            raise ValueError(f"AlphaSpec name must be an identifier, got {self.name!r}")
        if len(self.ops) < 1 or len(set(self.ops)) != len(self.ops):
            raise ValueError(f"AlphaSpec {self.name!r}: ops must be non-empty and distinct, got {self.ops}")
        if len(self.rows) < 1:
            raise ValueError(f"AlphaSpec {self.name!r}: needs at least one row")
        if self.groups is not None and len(self.groups) != len(self.rows):
            raise ValueError(f"AlphaSpec {self.name!r}: groups has {len(self.groups)} entries, rows {len(self.rows)}")
        if self.edges is not None and len(self.edges) != len(self.rows):
            raise ValueError(f"AlphaSpec {self.name!r}: edges has {len(self.edges)} entries, rows {len(self.rows)}")
        if self.k < 1:
            raise ValueError(f"AlphaSpec {self.name!r}: k must be >= 1, got {self.k}")

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.rows), len(self.ops))


@dataclass
class ArchView:
    """The architecture as a search space's forward sees it.

    mode: SPARSE, NASP or DENSE. weights: name -> (rows, ops) tensor (one-hot Ā for SPARSE/NASP, mixing weights
    for DENSE). selected: name -> tuple of plain ints, the op index of each row or -1 for a dropped row (None in
    DENSE mode). Read from the device once per change of the alphas (see :meth:`ArchParameters.projection`),
    so a forward never syncs with the host per op.
    """

    mode: str
    weights: dict[str, Tensor]
    selected: dict[str, tuple[int, ...]] | None = None
    meta: dict = field(default_factory=dict)

    def row(self, name: str, r: int) -> tuple[Tensor, int]:
        """(weights of row r (ops,), selected op index or -1; -2 in DENSE mode)."""
        sel = -2 if self.selected is None else self.selected[name][r]
        return self.weights[name][r], sel


def onehot_index(onehot: Tensor) -> Tensor:
    """(rows,) int64 op index per row of a one-hot matrix, -1 for zero rows (on the matrix's device)."""
    return torch.where(onehot.amax(dim=1) > 0, onehot.argmax(dim=1), -1)


def selections(onehot: dict[str, Tensor]) -> dict[str, tuple[int, ...]]:
    """name -> op index per row (plain ints, -1 for dropped rows) of every one-hot matrix, with ONE host
    transfer for all of them (a single ``tolist``)."""
    if not onehot:
        return {}
    idx = torch.cat([onehot_index(w) for w in onehot.values()]).tolist()      # (sum of rows,) -> host
    out, start = {}, 0
    for n, w in onehot.items():
        out[n] = tuple(idx[start: start + w.shape[0]])
        start += w.shape[0]
    return out


def _to_device_async(t: Tensor, device: torch.device) -> Tensor:
    """A small CPU tensor on ``device``; through pinned memory on CUDA so the copy does not block the host."""
    if device.type == "cpu":
        return t
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


class ArchParameters(nn.Module):
    """Named alpha matrices (``nn.Parameter``) plus their specs and seeded tie-break priorities.

    init: "nasp" (0.5 + uniform noise of width ``noise``, the reference start with ties broken) or "darts"
    (1e-3 * N(0, 1)); seed drives the initial noise and the tie-break priorities.
    """

    def __init__(self, specs: Sequence[AlphaSpec], init: str = "nasp", noise: float = 1e-3, seed: int = 0):
        super().__init__()
        if not specs:
            raise ValueError("ArchParameters needs at least one AlphaSpec")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"alpha matrix names must be distinct, got {names}")
        self.specs: dict[str, AlphaSpec] = {s.name: s for s in specs}
        self.alphas = nn.ParameterDict()
        g = torch.Generator().manual_seed(int(seed))
        for s in specs:
            self.alphas[s.name] = nn.Parameter(self._init_matrix(s.shape, init, noise, g))
            rows, ops = s.shape
            op_prio = torch.argsort(torch.rand(rows, ops, generator=g), dim=1).float()   # random ranks
            row_prio = torch.randperm(rows, generator=g).float()
            self.register_buffer(f"op_priority_{s.name}", op_prio)
            self.register_buffer(f"row_priority_{s.name}", row_prio)
            groups = torch.tensor(s.groups, dtype=torch.long) if s.groups is not None else None
            self.register_buffer(f"groups_{s.name}", groups, persistent=False)
        self._cache: tuple | None = None      # (alpha key, Ā, its host selection, Ā versions); see projection()

    @staticmethod
    def _init_matrix(shape, init: str, noise: float, g: torch.Generator) -> Tensor:
        if init == "nasp":
            return 0.5 + noise * (torch.rand(shape, generator=g) - 0.5)
        if init == "darts":
            return 1e-3 * torch.randn(shape, generator=g)
        raise ValueError(f"init must be 'nasp' or 'darts', got {init!r}")

    # ---- iteration ---------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return list(self.specs)

    def __iter__(self) -> Iterator[tuple[str, nn.Parameter]]:
        return iter(self.alphas.items())

    def groups(self, name: str) -> Tensor | None:
        return getattr(self, f"groups_{name}")

    # ---- proximal maps -----------------------------------------------------------------------------------
    def _prox_one(self, n: str, a: Tensor) -> Tensor:
        if self.groups(n) is None:        # fast path: every row kept, one-hot at the tie-broken argmax
            idx = row_argmax(a.detach(), getattr(self, f"op_priority_{n}"))
            return torch.nn.functional.one_hot(idx, a.shape[1]).to(a.dtype)
        return prox_c1(a, self.groups(n), self.specs[n].k, getattr(self, f"op_priority_{n}"),
                       getattr(self, f"row_priority_{n}"))

    def prox_c1(self) -> dict[str, Tensor]:
        """Ā = prox_C1(A) for every matrix (new detached tensors)."""
        return {n: self._prox_one(n, a) for n, a in self.alphas.items()}

    # ---- the cached projection (one host transfer per change of the alphas) ------------------------------
    def _alpha_key(self) -> tuple:
        # an in-place write (copy_, clamp_, load_state_dict, a foreach optimiser step) bumps _version; torch's FUSED
        # optimiser kernels do not, so whoever steps the alphas with one calls
        # torch.autograd.graph.increment_version on them (nasp.strategies does); .to()/.data swap the storage
        return tuple((a.data_ptr(), a._version, a.dtype, a.device) for a in self.alphas.values())

    def _cache_valid(self) -> bool:
        if self._cache is None or self._cache[0] != self._alpha_key():
            return False
        return all(w._version == v for w, v in zip(self._cache[1].values(), self._cache[3], strict=True))

    def projection(self) -> tuple[dict[str, Tensor], dict[str, tuple[int, ...]]]:
        """(Ā = prox_C1(A), the op index per row of Ā as plain ints, -1 for dropped rows).

        Cached until the alphas change: the first call after a change costs one device->host transfer for all
        matrices, later calls none. Ā is shared between callers: treat it as read-only (an in-place write to it
        is detected and recomputes the cache). Writes that bypass the version counter (``a.data`` ops, collective
        communication into ``a.data``) must call :meth:`invalidate`.
        """
        if not self._cache_valid():
            onehot = self.prox_c1()
            self._cache = (self._alpha_key(), onehot, selections(onehot),
                           tuple(w._version for w in onehot.values()))
        return self._cache[1], self._cache[2]

    def cached_selection(self) -> dict[str, tuple[int, ...]] | None:
        """The selection of the current alphas when it is already on the host (no transfer), else None."""
        return self._cache[2] if self._cache_valid() else None

    def invalidate(self) -> None:
        """Forget the cached projection (call after writing the alphas behind autograd's back, e.g. via .data)."""
        self._cache = None

    def _apply(self, fn, recurse=True):
        self._cache = None                  # .to() / .cuda() / .half() move or replace the alphas
        return super()._apply(fn, recurse)

    @torch.no_grad()
    def prox_c2_(self) -> None:
        """A = prox_C2(A) in place."""
        for a in self.alphas.values():
            prox_c2_(a)
        self._cache = None

    @torch.no_grad()
    def set_(self, values: dict[str, Tensor]) -> None:
        """Overwrite the matrices (e.g. with the one-hot of a chosen architecture)."""
        for n, v in values.items():
            self.alphas[n].copy_(v)
        self._cache = None

    # ---- views -------------------------------------------------------------------------------------------
    def _onehot_and_selection(self, onehot: dict[str, Tensor] | None):
        if onehot is None:
            return self.projection()                     # cached: no transfer while the alphas are unchanged
        return onehot, selections(onehot)                # a given architecture: one transfer

    def sparse_view(self, onehot: dict[str, Tensor] | None = None) -> ArchView:
        """SPARSE view of Ā (the cached :meth:`projection` when not given); weights carry no gradient."""
        onehot, selected = self._onehot_and_selection(onehot)
        return ArchView(SPARSE, onehot, selected)

    def nasp_view(self, onehot: dict[str, Tensor] | None = None) -> ArchView:
        """NASP view: Ā as leaf tensors with requires_grad, for the alpha step's gradient dL/dĀ."""
        onehot, selected = self._onehot_and_selection(onehot)
        leaves = {n: w.clone().requires_grad_(True) for n, w in onehot.items()}
        return ArchView(NASP, leaves, selected)

    def softmax_view(self) -> ArchView:
        """DENSE view with DARTS' softmax weights (differentiable w.r.t. the alphas)."""
        return ArchView(DENSE, {n: torch.softmax(a, dim=-1) for n, a in self.alphas.items()})

    def random_view(self, generator: torch.Generator) -> ArchView:
        """SPARSE view of a uniform random point of C1 (random search). Drawn on the CPU (``generator`` is a CPU
        generator), its selection is read there and the one-hot copied to the device without a host sync."""
        dev = next(iter(self.alphas.values())).device
        onehot = {}
        for n, s in self.specs.items():
            g = None if s.groups is None else torch.tensor(s.groups, dtype=torch.long)      # from the spec: CPU
            onehot[n] = random_c1(*s.shape, g, s.k, generator)                              # (rows, ops) CPU
        selected = selections(onehot)
        return ArchView(SPARSE, {n: _to_device_async(w, dev) for n, w in onehot.items()}, selected)

    def extra_repr(self) -> str:
        parts = [f"{n}: {s.shape[0]}x{s.shape[1]}" + (f" k={s.k}" if s.groups else "")
                 for n, s in self.specs.items()]
        return ", ".join(parts)

    def num_choices_log10(self) -> float:
        """log10 of the number of discrete architectures in C1 (for reports)."""
        total = 0.0
        for s in self.specs.values():
            rows, ops = s.shape
            if s.groups is None:
                total += rows * math.log10(ops)
            else:
                for gid in set(s.groups):
                    n = s.groups.count(gid)
                    kk = min(s.k, n)
                    total += math.log10(math.comb(n, kk)) + kk * math.log10(ops)
        return total
