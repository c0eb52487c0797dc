"""NASP's exact alpha step on the recurrent cell: the sparse forward, one backward, one batched contraction.

At the one-hot point Ā, node j's mixed (pre-batch-norm) output at time t is
``m_j(t) = sum_{i<j} sum_k Ā[(i,j), k] e_{ijk}(t)`` with the candidate
``e_{ijk}(t) = s_i(t) + sigmoid(c_ij(t)) * (f_k(g_ij(t)) - s_i(t))``, ``(c_ij, g_ij) = split((s_i(t) * mask_h) W_j)``.
Ā is shared by every time step, so ``dL/dĀ[(i,j), k] = sum_t <G_j(t), e_{ijk}(t)>`` with ``G_j(t) = dL/dm_j(t)``.
Only the selected candidate of each node has a non-zero weight, so the states s_i(t) are those of the SPARSE
forward, and a non-selected candidate's value influences nothing later: the contraction is exact.

How it runs: the forward is the sparse one (one predecessor, one activation per node, with its graph); each
node's output passes through :class:`_NodeTap`, whose backward records ``G_j(t)``; Ā enters the graph once,
through :class:`_AlphaCollect`, whose backward runs after every tap's (all taps consume its output) and computes
every candidate of every node, batched over all time steps and batch rows, without a graph:
``<G, e> = <G - A, s> + <A, f_k(g)>`` with ``A = G * sigmoid(c)`` (one matrix product per predecessor i against
the W_j of all its successors j > i concatenated). The same dropout mask ``mask_h`` as the forward's is used;
node 0 (the highway on x_t and the carried hidden state) enters only through the recorded states s_0(t).
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from nasp import fastmath

from .cell import ACTIVATIONS

__all__ = ["AlphaStore", "alpha_leaf", "node_tap", "contract_alpha_grad"]

CHUNK_ELEMENTS = 1 << 20        # columns of T*B per matmul chunk: at most ~1M gate values (4 MB in float32)


class AlphaStore:
    """What one NASP forward records for the alpha gradient: the states s_0..s_{N-1} of every time step, the
    hidden dropout mask, and (filled by the backward) G_j(t) for every node and time step.

    ops: the op names of the alpha columns; Ws: (N, H, 2H) node maps; pairs: (i, j) of every alpha row."""

    def __init__(self, ops: tuple[str, ...], Ws: Tensor, pairs: list[tuple[int, int]]):
        self.ops, self.Ws, self.pairs = ops, Ws, pairs
        self.N = Ws.shape[0]
        self.states: list[list[Tensor]] = [[] for _ in range(self.N)]     # [i][t] -> s_i(t) (B, H)
        self.mask_h: Tensor | None = None
        self.t = -1
        self.G: Tensor | None = None                                        # (N, H, T, B)
        self.amp = None
        self.kept_gates: dict[int, tuple[int, Tensor]] = {}   # j -> (i, (T, B, 2H) gates of the kept edge i -> j)

    def record(self, j: int, states: list[Tensor], mask_h: Tensor | None) -> int:
        """Called by node j's function at each time step (j = 1 starts a step); returns the time step."""
        if j == 1:
            self.t += 1
            self.mask_h = mask_h
        self.states[j - 1].append(states[j - 1])
        return self.t

    def put_grad(self, j: int, t: int, g: Tensor) -> None:
        if self.G is None:          # (N, H, T, B): every node's block contiguous over (H, T * B)
            self.G = g.new_zeros((self.N, g.shape[1], self.t + 1, g.shape[0]))
        self.G[j - 1, :, t] = g.t()

    def alpha_grad(self, dtype: torch.dtype) -> Tensor:
        """(rows, ops) dL/dĀ from the recorded states and node gradients; runs without a graph."""
        acc = torch.promote_types(dtype, torch.float32)
        full = torch.zeros(self.N, self.N, len(self.ops), dtype=acc, device=self.Ws.device)   # [i, j - 1, k]
        if self.G is not None:
            self._fill(full, acc)
        i, j = torch.tensor(self.pairs, device=full.device).unbind(1)      # one host->device copy
        return full[i, j - 1]

    def _fill(self, full: Tensor, acc: torch.dtype) -> None:
        """Per predecessor i: the gates of all its successors j > i in one product (n * 2H, H) @ (H, T * B), then
        per successor the dot products over (H, T * B) as matrix-vector and batched dot products (no temporaries
        of the products)."""
        N, H, T, B = self.G.shape
        G = self.G.reshape(N, H, T * B)
        Ws = self.Ws.detach()
        for i in range(N):
            S = self.states[i]
            S = S if isinstance(S, Tensor) else torch.stack(S)                # (T, B, H)
            Sm = S if self.mask_h is None else S * self.mask_h
            ST, SmT = (u.permute(2, 0, 1).reshape(H, T * B) for u in (S, Sm))   # (H, T * B)
            n = N - i                                                          # successors j = i+1..N
            W = Ws[i:].transpose(1, 2).reshape(n * 2 * H, H).to(SmT.dtype)     # rows: [c_j; g_j] of each j
            # the kept edges i -> j: their gates come from the forward ((2H, T * B)); the others are computed
            reuse = {j - 1 - i: z.permute(2, 0, 1).reshape(2 * H, T * B).to(SmT.dtype)
                     for j, (p, z) in self.kept_gates.items() if p == i}
            runs = _runs([r for r in range(n) if r not in reuse])
            step = max(1, CHUNK_ELEMENTS // (n * 2 * H))
            for a in range(0, T * B, step):
                b = min(a + step, T * B)
                cg = SmT.new_empty(n, 2 * H, b - a)
                for r0, r1 in runs:
                    torch.mm(W[r0 * 2 * H: r1 * 2 * H], SmT[:, a:b], out=cg[r0:r1].view(-1, b - a))
                for r, z in reuse.items():
                    cg[r].copy_(z[:, a:b])
                cg = cg.view(n, 2, H, b - a)
                with torch.autocast(G.device.type, enabled=False):
                    self._contract(full[i, i:], *(u.reshape(n, -1).to(acc) for u in (G[i:, :, a:b], cg[:, 0],
                                                                                    cg[:, 1])),
                                   ST[:, a:b].reshape(-1).to(acc))

    def _contract(self, out: Tensor, G: Tensor, c: Tensor, g: Tensor, s: Tensor) -> None:
        """out[:, k] += <G, s + sigmoid(c) (f_k(g) - s)> per successor: out (succ, ops); G, c, g: (succ, K);
        s: (K,) (K = H * time steps * batch rows). Overwrites c; one scratch buffer for f_k(g) and the products."""
        A = torch.sigmoid(c, out=c).mul_(G)                                    # c is not needed again
        base = torch.mv(G, s).sub_(torch.mv(A, s))                             # <G - A, s>  (succ,)
        f = torch.empty_like(g)
        for k, op in enumerate(self.ops):
            if op == "none":
                continue
            if op == "identity":
                src = g
            elif op == "tanh" and fastmath.numpy_ok(g, contiguous=False):     # numpy's tanh (nasp.fastmath)
                src = fastmath.tanh_into(g, f)
            elif op == "tanh":      # tanh(g) = 2 sigmoid(2g) - 1: sigmoid is several times cheaper than torch's tanh
                d = torch.mul(torch.sigmoid(torch.mul(g, 2, out=f), out=f), A, out=f).sum(1).mul_(2).sub_(A.sum(1))
                out[:, k] += base + d
                continue
            elif op == "relu":
                src = torch.clamp(g, min=0, out=f)
            else:
                src = ACTIVATIONS[op](g)
            out[:, k] += base + torch.mul(A, src, out=f).sum(1)                # + <A, f_k(g)>


def _runs(rows: list[int]) -> list[tuple[int, int]]:
    """Maximal runs [r0, r1) of consecutive ints in the sorted list ``rows``."""
    runs: list[tuple[int, int]] = []
    for r in rows:
        if runs and runs[-1][1] == r:
            runs[-1] = (runs[-1][0], r + 1)
        else:
            runs.append((r, r + 1))
    return runs


def contract_alpha_grad(ops: tuple[str, ...], Ws: Tensor, pairs: list[tuple[int, int]], states: Tensor,
                        mask_h: Tensor | None, G: Tensor, g_nhtb: bool = False,
                        kept_gates: dict[int, tuple[int, Tensor]] | None = None) -> Tensor:
    """(rows, ops) dL/dĀ from all states at once: states (T, N, B, H) = s_0..s_{N-1}, G (T, N, B, H) =
    dL/d(mixed output of node j = 1..N), or with ``g_nhtb`` already laid out (N, H, T, B) contiguous; the same
    contraction as the store's (used by :mod:`.fused`). kept_gates: j -> (i, (T, B, 2H) gates (c, g) =
    (s_i * mask_h) W_j of the kept edge i -> j, as the forward computed them): those products are not redone."""
    store = AlphaStore(ops, Ws, pairs)
    store.kept_gates = kept_gates or {}
    store.states = [states[:, i] for i in range(states.shape[1])]
    store.mask_h = mask_h
    store.G = G if g_nhtb else G.permute(1, 3, 0, 2).contiguous()             # (N, H, T, B)
    return store.alpha_grad(G.dtype)


class _AlphaCollect(torch.autograd.Function):
    """w -> a copy of w that every node tap consumes; backward: the store's contraction (+ any incoming grad)."""

    @staticmethod
    def forward(ctx, w: Tensor, store: AlphaStore) -> Tensor:
        ctx.store = store
        dev = w.device.type
        store.amp = (dev, torch.get_autocast_dtype(dev)) if torch.is_autocast_enabled(dev) else None
        return w.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        store = ctx.store
        amp = torch.autocast(store.amp[0], dtype=store.amp[1]) if store.amp else contextlib.nullcontext()
        with torch.no_grad(), amp:
            dtype = store.G.dtype if store.G is not None else grad.dtype
            g = store.alpha_grad(dtype).to(grad.dtype)
        store.states, store.G = [], None                                       # free the recorded tensors
        return g + grad, None


class _NodeTap(torch.autograd.Function):
    """out = Ā[r, k] * y (y: the selected candidate's output, zeros when the node's op is 'none'); backward
    records dL/d(out) = G_j(t) in the store and passes Ā[r, k] * G_j(t) on to y."""

    @staticmethod
    def forward(ctx, w: Tensor, y: Tensor, info) -> Tensor:
        store, j, t, r, k = info
        ctx.info = info
        ctx.save_for_backward(w)
        return y * w[r, k].to(y.dtype) if k >= 0 else y.clone()

    @staticmethod
    def backward(ctx, g: Tensor):
        store, j, t, r, k = ctx.info
        (w,) = ctx.saved_tensors
        store.put_grad(j, t, g)
        grad_y = g * w[r, k].to(g.dtype) if k >= 0 and ctx.needs_input_grad[1] else None
        return None, grad_y, None


def alpha_leaf(w: Tensor, store: AlphaStore) -> Tensor:
    """Ā as the node taps see it (its backward computes dL/dĀ from ``store``)."""
    return _AlphaCollect.apply(w, store)


def node_tap(w: Tensor, y: Tensor, store: AlphaStore, j: int, t: int, r: int, k: int) -> Tensor:
    """Node j's mixed output at time step t: Ā[r, k] * y (k = -1: y, which is then zeros)."""
    return _NodeTap.apply(w, y, (store, j, t, r, k))
