"""The one-hot (sparse) recurrent cell over a whole sequence as one autograd function with a hand-written BPTT.

Used by :class:`~nasp.spaces.rnn.model.RNNSearchSpace` for the NASP weight step (SPARSE view) and the NASP alpha
step (``nasp_alpha_step="contract"``): node j = 1..N keeps one predecessor i_j and one activation f_j (or 'none'),
``y_j = s_i + sigmoid(c) * (f_j(g) - s_i)`` with ``(c, g) = split((s_i * mask_h) W_j)``, ``s_j = BN(y_j)`` (batch
statistics, no affine; or ``s_j = y_j``); node 0 is the highway ``s_0 = h + sigmoid(c0) * (tanh(g0) - h)`` with
``(c0, g0) = split(xw_t + (h * mask_h) W_h)``; the output is the mean of the ``concat`` nodes. It computes
exactly what autograd through the per-node Python path computes (float64 tests to 1e-9 in
tests/test_rnn_fused.py), with far fewer operator calls:

- forward: per time step one matmul and three fused elementwise calls (sigmoid, activation, lerp) per node plus
  its batch norm, written into preallocated (T, nodes, B, H) buffers; no autograd graph;
- backward: the activation and gate derivatives of all nodes are formed in a few calls per block of time steps
  (all of them at small sizes, one at the DARTS search size: while still in cache); then per time step and
  node only the batch-norm backward, two products into the gate-gradient buffer, one matmul back to the
  predecessor and two fused multiply-adds remain; the weight gradients of W_h and every W_j are ONE matmul each
  over all time steps and batch rows (instead of one per time step); the gate gradients are kept for all time
  steps only when these are asked for;
- NASP alpha step: dL/d(node output) of every node and time step falls out of the backward directly and goes to
  the graph-free contraction of :mod:`.alpha_step` (every candidate of every node at once), together with the
  kept edges' gates (c, g), which the forward writes into a buffer so that the contraction does not redo them;
- buffers: the large (T, ...) work buffers of the forward and the backward come from the calling module's
  :class:`BufferPool` on CPU, reused across calls (a fresh one of ~100 MB is a fresh mapping whose first write
  faults in every page: ~30 ms against ~4 ms to refill reused memory at the DARTS search size). Which results
  this gives: bit for bit those of freshly allocated buffers (tests/test_rnn_fused.py).

The kept entries of Ā are exactly 1 (prox_C1's one-hot), so the node outputs are not multiplied by them.
Autocast (mixed precision) is not handled here: the recurrent models run the cell with autocast off (only their
decoder takes the autocast dtype, see :class:`.cell.LanguageModelShell`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nasp import fastmath
from nasp.buffers import BufferPool

__all__ = ["CellPlan", "sparse_cell", "needed_grads"]

def _empty(pool: BufferPool | None, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.empty(shape, dtype=dtype, device=device) if pool is None else pool.empty(shape, dtype, device)


@dataclass(frozen=True)
class CellPlan:
    """The one-hot cell: kept[j - 1] = (row, predecessor, op name or None for 'none') of node j = 1..N; concat:
    the nodes averaged into the output; bn_eps: batch-norm epsilon, None without batch norm; alpha: compute
    dL/dĀ (ops: the alpha columns, pairs: (i, j) of every alpha row, for the contraction)."""

    kept: tuple[tuple[int, int, str | None], ...]
    concat: tuple[int, ...]
    bn_eps: float | None
    alpha: bool
    ops: tuple[str, ...]
    pairs: tuple[tuple[int, int], ...]


def _act_out(name: str, g: Tensor, out: Tensor) -> Tensor:
    if name == "tanh":
        return fastmath.tanh_into(g, out)            # numpy's on CPU (nasp.fastmath)
    if name == "sigmoid":
        return torch.sigmoid(g, out=out)
    if name == "relu":
        return torch.clamp(g, min=0, out=out)
    if name == "identity":
        return out.copy_(g)
    raise ValueError(f"unknown activation {name!r}")


def _act_grad(name: str, f: Tensor) -> Tensor | None:
    """f'(g) from f = act(g) (None for identity: 1)."""
    if name == "tanh":
        return 1 - f * f
    if name == "sigmoid":
        return f * (1 - f)
    if name == "relu":
        return (f > 0).to(f.dtype)
    return None


FACTOR_BYTES = 1 << 22      # the backward's derivative factors are formed for time steps of at most this many bytes


def _factors(plan: CellPlan, ops: list[str | None], A: Tensor, F: Tensor, S: Tensor, Hprev: Tensor, oma: Tensor,
             dc_f: Tensor, dg_f: Tensor) -> None:
    """The derivative factors of every node over a block of time steps (k, N + 1, B, H): d y / d s = 1 - a,
    d y / d c = (f - s) a (1 - a), d y / d g = a f'(g) (zeros for 'none' nodes)."""
    for j, op in enumerate(ops):
        if op is None:
            dc_f[:, j].zero_()
            dg_f[:, j].zero_()
            continue
        torch.sub(F[:, j], Hprev if j == 0 else S[:, plan.kept[j - 1][1]], out=dc_f[:, j])
        d = _act_grad(op, F[:, j])
        if d is None:
            dg_f[:, j].copy_(A[:, j])
        else:
            torch.mul(A[:, j], d, out=dg_f[:, j])
    dc_f.mul_(A).mul_(torch.mul(A, -1, out=oma).add_(1))


def needed_grads(ctx) -> tuple[bool, ...]:
    """Which inputs this backward pass needs gradients for: ``needs_input_grad``, narrowed by the engine's plan
    for the current pass where it can tell (autograd.grad w.r.t. Ā only, as in the NASP alpha step, needs no
    weight gradients). The weights enter through views (see :func:`sparse_cell`) because the engine cannot say
    this for leaves inside autograd.grad."""
    need = list(ctx.needs_input_grad)
    will = getattr(torch._C, "_will_engine_execute_node", None)
    if will is None:
        return tuple(need)
    for k, (fn, _) in enumerate(ctx.next_functions):
        if need[k] and fn is not None:
            try:
                need[k] = bool(will(fn))
            except RuntimeError:            # a leaf inside autograd.grad: cannot tell, keep it
                pass
    return tuple(need)


class _SparseCell(torch.autograd.Function):

    @staticmethod
    def forward(ctx, xw: Tensor, h0: Tensor, w_h: Tensor, Ws: Tensor, alpha: Tensor, mask_h: Tensor | None,
                plan: CellPlan, pool: BufferPool | None):
        T, B, H2 = xw.shape
        H = H2 // 2
        N = len(plan.kept)
        dt, dev = xw.dtype, xw.device
        A = _empty(pool, (T, N + 1, B, H), dt, dev)                # sigmoid gates (slot 0: the highway)
        F = _empty(pool, (T, N + 1, B, H), dt, dev)                # activation outputs (slot 0: tanh(g0))
        S = _empty(pool, (T, N + 1, B, H), dt, dev)                # node states s_0..s_N
        Y = _empty(pool, (T, N, B, H), dt, dev) if plan.bn_eps is not None else None   # pre-BN
        Z = _empty(pool, (T, N, B, 2 * H), dt, dev) if plan.alpha else None   # kept gates (c, g), for the alpha
        out = torch.empty(T, B, H, dtype=dt, device=dev)          # h_t (returned: not pooled)
        bn_stats: list[tuple[Tensor, Tensor] | None] = []          # [t * N + j - 1] -> (mean, invstd)
        zero = torch.zeros(B, H, dtype=dt, device=dev)
        zero_bn = None
        all_nodes = plan.concat == tuple(range(1, N + 1))
        h = h0
        for t in range(T):
            St = S[t]
            hm = h if mask_h is None else h * mask_h
            z0 = torch.addmm(xw[t], hm, w_h)
            torch.sigmoid(z0[:, :H], out=A[t, 0])
            fastmath.tanh_into(z0[:, H:], F[t, 0])
            torch.lerp(h, F[t, 0], A[t, 0], out=St[0])
            masked: dict[int, Tensor] = {}
            for j, (_, i, op) in enumerate(plan.kept, start=1):
                if op is None:
                    A[t, j].zero_()                                  # unused; defined values (pooled memory)
                    F[t, j].zero_()
                    if plan.bn_eps is not None:
                        Y[t, j - 1].zero_()
                        if zero_bn is None:
                            zero_bn = torch.native_batch_norm(zero, None, None, None, None, True, 0.0,
                                                              plan.bn_eps)[1:]
                        bn_stats.append(zero_bn)
                    St[j].zero_()
                    continue
                s = St[i]
                sm = masked.get(i)
                if sm is None:
                    sm = masked[i] = s if mask_h is None else s * mask_h
                z = torch.mm(sm, Ws[j - 1]) if Z is None else torch.mm(sm, Ws[j - 1], out=Z[t, j - 1])
                a = torch.sigmoid(z[:, :H], out=A[t, j])
                f = _act_out(op, z[:, H:], F[t, j])
                if plan.bn_eps is None:
                    torch.lerp(s, f, a, out=St[j])
                else:
                    y = torch.lerp(s, f, a, out=Y[t, j - 1])
                    sj, mean, invstd = torch.native_batch_norm(y, None, None, None, None, True, 0.0, plan.bn_eps)
                    St[j].copy_(sj)
                    bn_stats.append((mean, invstd))
            if all_nodes:
                torch.mean(St[1:], 0, out=out[t])
            else:
                torch.mean(torch.stack([St[c] for c in plan.concat]), 0, out=out[t])
            h = out[t]
        Hprev = _empty(pool, (T, B, H), dt, dev)                   # h_{t-1}
        Hprev[0].copy_(h0)
        Hprev[1:].copy_(out[:-1])
        ctx.plan = plan
        ctx.pool = pool
        ctx.bn_stats = bn_stats
        ctx.save_for_backward(w_h, Ws, mask_h, A, F, Y, S, Hprev, Z)
        return out

    @staticmethod
    def backward(ctx, dout: Tensor):
        plan: CellPlan = ctx.plan
        w_h, Ws, mask_h, A, F, Y, S, Hprev, Z = ctx.saved_tensors
        pool: BufferPool | None = ctx.pool
        T, N1, B, H = A.shape
        N = N1 - 1
        dt, dev = A.dtype, A.device
        need = needed_grads(ctx)
        ops = ["tanh"] + [op for _, _, op in plan.kept]
        WT = Ws.detach().transpose(1, 2).contiguous()                # (N, 2H, H)
        w_hT = w_h.detach().t().contiguous()
        # d(c, g) of every node and of the highway: kept over all time steps only for the weight gradients
        # ('none' nodes' slots unused); else one time step's, overwritten
        DZ = _empty(pool, (T if need[3] else 1, N, B, 2 * H), dt, dev)
        DZ0 = _empty(pool, (T if need[0] or need[2] else 1, B, 2 * H), dt, dev)
        # dL/d(node j's output y_j) of every time step
        G = _empty(pool, (T, N, B, H), dt, dev) if plan.alpha else None
        n_cat = len(plan.concat)
        carry = None
        zero = torch.zeros(B, H, dtype=dt, device=dev)
        # derivative factors of every node, formed for a block of K time steps at a time (all of them when small,
        # else one: while still in cache, and no (T, ...) buffers)
        K = max(1, min(T, FACTOR_BYTES // ((N + 1) * B * H * A.element_size())))
        factors = _empty(pool, (3, K, N + 1, B, H), dt, dev)
        t0 = T
        for t in range(T - 1, -1, -1):
            if t < t0:
                t0 = max(0, t + 1 - K)
                block = factors[:, : t + 1 - t0]
                _factors(plan, ops, A[t0:t + 1], F[t0:t + 1], S[t0:t + 1], Hprev[t0:t + 1], *block.unbind(0))
            oma, dc_f, dg_f = block[:, t - t0].unbind(0)
            dh = dout[t] if carry is None else dout[t] + carry
            base = dh / n_cat
            dS: list[Tensor | None] = [None] * (N + 1)
            for c in plan.concat:
                dS[c] = base
            G_t: list[Tensor] = [zero] * N
            for j in range(N, 0, -1):
                _, i, op = plan.kept[j - 1]
                ds = dS[j]
                if ds is None:
                    ds = zero
                if plan.bn_eps is not None:
                    mean, invstd = ctx.bn_stats[t * N + j - 1]
                    dm = torch.ops.aten.native_batch_norm_backward(
                        ds, Y[t, j - 1], None, None, None, mean, invstd, True, plan.bn_eps, [True, False, False])[0]
                else:
                    dm = ds
                G_t[j - 1] = dm
                if op is None:
                    continue
                dz = DZ[t if need[3] else 0, j - 1]
                torch.mul(dm, dc_f[j], out=dz[:, :H])
                torch.mul(dm, dg_f[j], out=dz[:, H:])
                back = torch.mm(dz, WT[j - 1])
                prev = dS[i]
                prev = torch.mul(dm, oma[j]) if prev is None else torch.addcmul(prev, dm, oma[j])
                dS[i] = prev.add_(back) if mask_h is None else prev.addcmul_(back, mask_h)
            if G is not None:
                torch.stack(G_t, out=G[t])
            ds0 = dS[0] if dS[0] is not None else zero
            dz0 = DZ0[t if DZ0.shape[0] == T else 0]
            torch.mul(ds0, dc_f[0], out=dz0[:, :H])
            torch.mul(ds0, dg_f[0], out=dz0[:, H:])
            back = torch.mm(dz0, w_hT)
            carry = torch.mul(ds0, oma[0])
            carry = carry.add_(back) if mask_h is None else carry.addcmul_(back, mask_h)
        d_xw = DZ0 if need[0] else None
        d_h0 = carry if need[1] else None
        d_wh = d_Ws = d_alpha = None
        if need[2]:
            hm = Hprev if mask_h is None else Hprev * mask_h
            d_wh = hm.reshape(T * B, H).t() @ DZ0.reshape(T * B, 2 * H)
        if need[3]:
            d_Ws = torch.zeros_like(Ws)
            for j, (_, i, op) in enumerate(plan.kept, start=1):
                if op is None:
                    continue
                sm = S[:, i] if mask_h is None else S[:, i] * mask_h
                torch.mm(sm.reshape(T * B, H).t(), DZ[:, j - 1].reshape(T * B, 2 * H), out=d_Ws[j - 1])
        if plan.alpha and need[4]:
            from .alpha_step import contract_alpha_grad
            G_nhtb = _empty(pool, (N, H, T, B), dt, dev).copy_(G.permute(1, 3, 0, 2))
            kept = {j: (i, Z[:, j - 1]) for j, (_, i, op) in enumerate(plan.kept, start=1) if op is not None}
            d_alpha = contract_alpha_grad(plan.ops, Ws.detach(), list(plan.pairs), S[:, :N], mask_h, G_nhtb,
                                          g_nhtb=True, kept_gates=kept).to(Ws.dtype)
        return d_xw, d_h0, d_wh, d_Ws, d_alpha, None, None, None


def sparse_cell(xw: Tensor, h0: Tensor, w_h: Tensor, Ws: Tensor, alpha: Tensor, mask_h: Tensor | None,
                plan: CellPlan, pool: BufferPool | None = None) -> tuple[Tensor, Tensor]:
    """xw: (T, B, 2H) input projections x_t W_x of all time steps; h0 (B, H); w_h (H, 2H); Ws (N, H, 2H);
    alpha: Ā (rows, ops) (its gradient is computed when ``plan.alpha``); pool: where the large work buffers come
    from (None: freshly allocated). Returns (outputs (T, B, H), last (B, H))."""
    if Ws.requires_grad:
        Ws = Ws.view_as(Ws)                 # a non-leaf, so that the backward can ask whether it is needed
    if w_h.requires_grad:
        w_h = w_h.view_as(w_h)
    outs = _SparseCell.apply(xw, h0, w_h, Ws, alpha, mask_h, plan, pool)
    return outs, outs[-1]
