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
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .prox import prox_c1, prox_c2, random_c1, row_argmax

__all__ = ["AlphaSpec", "ArchParameters", "ArchView", "SPARSE", "NASP", "DENSE"]

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
    DENSE mode). Computed once per step, so a forward never syncs with the host per op.
    """

    mode: str
    weights: dict[str, Tensor]
    selected: dict[str, tuple[int, ...]] | None = None
    meta: dict = field(default_factory=dict)

    def row(self, name: str, r: int) -> tuple[Tensor, int]:
        """(weights of row r (ops,), selected op index or -1; -2 in DENSE mode)."""
        sel = -2 if self.selected is None else self.selected[name][r]
        return self.weights[name][r], sel


def _selection(onehot: Tensor) -> tuple[int, ...]:
    """Op index per row of a one-hot matrix, -1 for zero rows (one host transfer for the whole matrix)."""
    idx = torch.where(onehot.amax(dim=1) > 0, onehot.argmax(dim=1), -1)
    return tuple(int(i) for i in idx.tolist())


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

    @torch.no_grad()
    def prox_c2_(self) -> None:
        """A = prox_C2(A) in place."""
        for a in self.alphas.values():
            a.copy_(prox_c2(a))

    @torch.no_grad()
    def set_(self, values: dict[str, Tensor]) -> None:
        """Overwrite the matrices (e.g. with the one-hot of a chosen architecture)."""
        for n, v in values.items():
            self.alphas[n].copy_(v)

    # ---- views -------------------------------------------------------------------------------------------
    def sparse_view(self, onehot: dict[str, Tensor] | None = None) -> ArchView:
        """SPARSE view of Ā (computed here when not given); weights carry no gradient."""
        onehot = self.prox_c1() if onehot is None else onehot
        return ArchView(SPARSE, onehot, {n: _selection(w) for n, w in onehot.items()})

    def nasp_view(self, onehot: dict[str, Tensor] | None = None) -> ArchView:
        """NASP view: Ā as leaf tensors with requires_grad, for the alpha step's gradient dL/dĀ."""
        onehot = self.prox_c1() if onehot is None else onehot
        leaves = {n: w.clone().requires_grad_(True) for n, w in onehot.items()}
        return ArchView(NASP, leaves, {n: _selection(w) for n, w in onehot.items()})

    def softmax_view(self) -> ArchView:
        """DENSE view with DARTS' softmax weights (differentiable w.r.t. the alphas)."""
        return ArchView(DENSE, {n: torch.softmax(a, dim=-1) for n, a in self.alphas.items()})

    def random_view(self, generator: torch.Generator) -> ArchView:
        """SPARSE view of a uniform random point of C1 (random search)."""
        dev = next(iter(self.alphas.values())).device
        onehot = {}
        for n, s in self.specs.items():
            g = self.groups(n)
            onehot[n] = random_c1(*s.shape, None if g is None else g.cpu(), s.k, generator, dev)
        return self.sparse_view(onehot)

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
