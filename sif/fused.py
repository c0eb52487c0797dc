"""A fused NASP step for :class:`sif.space.SIFSpace` in the matrix case (user, item): exact, opt-in, fast.

The generic NASP step (:func:`nasp.strategies.step_nasp`) builds an autograd graph through the view/mix layers,
the task's loss and every candidate head, then calls ``torch.optim``'s step wrappers. For SIF's tiny model (dim 2,
batch 512) that overhead is nearly all of the time. This step computes the same losses and gradients by hand with
plain tensor ops (one forward, a hand-written backward, no graph) and updates the SAME optimiser state tensors the
searcher's optimisers own (through torch's fused Adagrad/Adam/AdamW kernels when the optimiser is fused, otherwise
through ``optimizer.step()`` with the gradients assigned), so checkpoints and resume stay interchangeable with
the generic path, and results agree with it to float rounding.

What it computes (the generic path's semantics, :mod:`nasp.strategies` and :class:`sif.task.RatingTask`):

- alpha step on a validation batch at Ā = prox_C1(A): loss = MSE + reg * penalty ("l2"/"norm" on e or g(e);
  "effective" is left out of validation losses); dL/dĀ_k = <dL/dpred, out_k> for every op k (the other ops'
  outputs need no weight gradients); gradients of g through the selected op; ``+ eta * R(Ā)``'s gradient; one
  Adam step on (A, g); A = prox_C2(A).
- weight step on a training batch with the selected op: gradients of the embeddings (dense, like
  ``index_select``'s backward), g, the selected head and the global bias; with ``train_all_heads`` every other
  head's MSE on detached features; gradient clipping as ``clip_grad_norm_``; the weight optimiser's step; the
  heads' projection onto their ball (``after_weight_step``).

Supported: the 5 matrix primitives or any subset, with or without biases, g with or without skip, penalties
"l2", "norm" and "effective", any reg and eta, gradient clipping, any weight optimiser. Not supported (the
searcher warns and uses the generic step): the tensor case, other tasks, data parallelism, autocast, compile.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nasp.regularizers import normalise_costs

from .interactions import PRIMITIVES
from .task import RatingTask, unpack

__all__ = ["FusedSIFStep", "check_supported"]


# ---- the five matrix ops: forward (2, B, k) -> (B, width) and backward (B, width) -> (2, B, k) ----------------
def _op_forward(name: str, z: Tensor) -> Tensor:
    if name == "plus":
        return z[0] + z[1]
    if name == "multiply":
        return z[0] * z[1]
    if name == "max":
        return torch.maximum(z[0], z[1])
    if name == "min":
        return torch.minimum(z[0], z[1])
    return torch.cat([z[0], z[1]], dim=1)                                  # concat: (B, 2k)


def _op_backward(name: str, z: Tensor, do: Tensor) -> Tensor:
    """dL/dz (2, B, k) of op ``name`` given dL/d(op output) ``do``; max/min split ties evenly like torch."""
    if name == "plus":
        return do.expand(2, *do.shape)
    if name == "multiply":
        return do * z.flip(0)
    if name in ("max", "min"):
        sgn = torch.sign(z - z.flip(0))                                      # (2, B, k): +1 where the side wins max
        if name == "min":
            sgn = sgn.neg_()
        return do * sgn.mul_(0.5).add_(0.5)
    b, k = z.shape[1], z.shape[2]
    return do.view(b, 2, k).transpose(0, 1)                                 # concat


def check_supported(searcher) -> None:
    """Raise NotImplementedError naming the first setting the fused step does not cover."""
    s, model, task, c = searcher, searcher.model, searcher.task, searcher.config
    if c.strategy != "nasp":
        raise NotImplementedError(f"strategy {c.strategy!r} (the fused step is NASP's)")
    if c.amp is not None or c.compile:
        raise NotImplementedError("autocast (amp) or torch.compile")
    if getattr(s, "grad_sync", None) is not None:
        raise NotImplementedError("data-parallel search (grad_sync)")
    if len(model.sides) != 2:
        raise NotImplementedError("the tensor (user, item, context) case")
    unknown = [n for n in model.names if n not in PRIMITIVES]
    if unknown:
        raise NotImplementedError(f"ops {unknown} (only the matrix primitives)")
    if not isinstance(task, RatingTask) or type(task).loss is not RatingTask.loss \
            or type(task)._penalty is not RatingTask._penalty:
        raise NotImplementedError(f"task {type(task).__name__} (only sif.task.RatingTask)")
    if s.task_loss != task.loss:
        raise NotImplementedError("a replaced task loss")
    g = list(model.g.parameters())
    if [id(p) for p in s.extra_params] != [id(p) for p in g] or len(s.alpha_params) != 1:
        raise NotImplementedError("alpha-step parameters other than (interaction alphas, g)")
    if type(model).after_weight_step is not _space_class().after_weight_step:
        raise NotImplementedError("a replaced after_weight_step")


def _space_class():
    from .space import SIFSpace

    return SIFSpace


# ---- optimiser updates on the optimisers' own state ----------------------------------------------------------
def _fused_kind(opt: torch.optim.Optimizer) -> str | None:
    """'adagrad' | 'adam' | 'adamw' when ``opt`` is that torch optimiser with fused=True and one group."""
    if len(opt.param_groups) != 1 or not opt.param_groups[0].get("fused"):
        return None
    if type(opt) is torch.optim.Adagrad:
        return "adagrad"
    if type(opt) in (torch.optim.Adam, torch.optim.AdamW):
        return "adamw" if opt.param_groups[0].get("decoupled_weight_decay") else "adam"
    return None


def _step_with_grads(opt: torch.optim.Optimizer, kind: str | None, grads: dict[Tensor, Tensor]) -> None:
    """One optimiser step with ``grads`` (param -> gradient; params absent get no update, like ``grad=None``)."""
    group = opt.param_groups[0]
    params = [p for p in group["params"] if p in grads] if kind is not None else []
    states = [opt.state.get(p) for p in params]
    if kind is None or not all(st and "step" in st for st in states) or group.get("amsgrad") \
            or group.get("differentiable") or group.get("capturable"):
        for g_ in opt.param_groups:
            for p in g_["params"]:
                p.grad = grads.get(p)
        opt.step()                       # generic: also initialises missing state exactly as torch does
        return
    gs = [grads[p] for p in params]
    steps = [st["step"] for st in states]
    torch._foreach_add_(steps, 1)
    if kind == "adagrad":
        torch._fused_adagrad_(params, gs, [st["sum"] for st in states], steps, lr=group["lr"],
                              lr_decay=group["lr_decay"], weight_decay=group["weight_decay"], eps=group["eps"],
                              maximize=group["maximize"])
        return
    fn = torch._fused_adamw_ if kind == "adamw" else torch._fused_adam_
    beta1, beta2 = group["betas"]
    fn(params, gs, [st["exp_avg"] for st in states], [st["exp_avg_sq"] for st in states], [], steps,
       amsgrad=False, lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
       maximize=group["maximize"])


def _clip_(grads: list[Tensor], max_norm: float) -> None:
    """``clip_grad_norm_(..., foreach=True)`` on plain gradient tensors."""
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0)), 2.0)
    torch._foreach_mul_(grads, torch.clamp(max_norm / (total + 1e-6), max=1.0))


class FusedSIFStep:
    """``step(train_batch, valid_batch, update_alpha) -> {"train_loss", ["alpha_loss"]}`` for a
    :class:`~nasp.search.Searcher` driving a matrix-case :class:`~sif.space.SIFSpace` with a
    :class:`~sif.task.RatingTask` (see the module docstring). Raises NotImplementedError for unsupported settings.
    """

    def __init__(self, searcher):
        check_supported(searcher)
        self.s = searcher
        m, t = searcher.model, searcher.task
        self.m, self.task = m, t
        self.k, self.bias = m.embedding_dim, m.use_bias
        self.names, self.skip = m.names, m.g.skip
        self.tables = (m.embeddings["u"].weight, m.embeddings["v"].weight)
        self.g = (m.g.w1, m.g.b1, m.g.w2, m.g.b2)
        self.heads = [h.weight for h in m.heads]
        self.alpha = searcher.alpha_params[0]
        self.w_kind, self.a_kind = _fused_kind(searcher.w_opt), _fused_kind(searcher.a_opt)
        cost = searcher.op_costs.get("interaction")
        self.eta = searcher.config.eta
        self.costs = None if self.eta == 0 or cost is None else normalise_costs(cost)          # (1, K)

    # ---- shared forward / backward pieces ------------------------------------------------------------------
    def _encode(self, batch):
        """(x (2, B, k) raw embeddings, bias (B,) or None, users, items, y)."""
        users, items, y, contexts = unpack(batch)
        if contexts is not None:
            raise ValueError("the fused SIF step takes (users, items, ratings) batches")
        ru, rv = self.tables[0].index_select(0, users), self.tables[1].index_select(0, items)   # (B, k [+1])
        k = self.k
        if not self.bias:
            return torch.stack([ru, rv]), None, users, items, y
        bias = self.m.global_bias + (ru[:, k] + rv[:, k])                                       # (B,)
        return torch.stack([ru[:, :k], rv[:, :k]]), bias, users, items, y

    def _g(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(z (2, B, k), flat input (2, B*k, 1), hidden tanh (2, B*k, H))."""
        w1, b1, w2, b2 = self.g
        flat = x.reshape(2, -1, 1)
        h = torch.tanh(torch.baddbmm(b1, flat, w1))
        y = torch.baddbmm(b2, h, w2)
        z = flat + y if self.skip else y
        return z.view(x.shape), flat, h

    def _g_backward(self, dz: Tensor, flat: Tensor, h: Tensor, need_dx: bool):
        """(dw1, db1, dw2, db2), dx (2, B*k, 1) or None, from dL/dz (2, B, k)."""
        w1, _, w2, _ = self.g
        dy = dz.reshape(2, -1, 1)                                            # (2, BK, 1)
        dw2 = torch.bmm(h.transpose(1, 2), dy)                               # (2, H, 1)
        db2 = dy.sum(1, keepdim=True)                                        # (2, 1, 1)
        dpre = torch.ops.aten.tanh_backward(dy * w2.transpose(1, 2), h)      # (2, BK, H)
        dw1 = torch.bmm(flat.transpose(1, 2), dpre)                          # (2, 1, H)
        db1 = dpre.sum(1, keepdim=True)                                      # (2, 1, H)
        if not need_dx:
            return (dw1, db1, dw2, db2), None
        dx = torch.bmm(dpre, w1.transpose(1, 2))                             # (2, BK, 1)
        return (dw1, db1, dw2, db2), (dx + dy if self.skip else dx)

    def _penalty(self, x: Tensor, z: Tensor, want_grad: bool):
        """reg * ("l2" | "norm") penalty value and its gradient w.r.t. e (on_transformed False) or z."""
        t = self.task
        r = z if t.on_transformed else x
        if t.penalty == "norm":
            n = torch.linalg.vector_norm(r, dim=(1, 2))                      # (2,)
            val = t.reg * n.sum()
            grad = r * (t.reg / n.clamp_min(torch.finfo(n.dtype).tiny)).view(2, 1, 1) if want_grad else None
            return val, grad
        val = t.reg * ((r * r).sum() / r.shape[1])
        return val, (r * (2 * t.reg / r.shape[1]) if want_grad else None)

    # ---- the two steps ---------------------------------------------------------------------------------------
    def alpha_step(self, batch, onehot: Tensor, sel: int) -> Tensor:
        """Adam step on (A, g) with dL_val/dĀ; returns the validation loss (detached)."""
        t = self.task
        x, bias, _, _, y = self._encode(batch)
        z, flat, h = self._g(x)
        feats = [_op_forward(n, z) for n in self.names]                     # (B, width_k) each
        outs = torch.stack([torch.mv(f, w[0]) for f, w in zip(feats, self.heads, strict=True)])   # (K, B)
        pred = outs[sel] if bias is None else outs[sel] + bias
        d = pred - y
        loss = torch.mean(d * d)
        dpred = d * (2.0 / d.shape[0])                                      # (B,)
        dz = _op_backward(self.names[sel], z, torch.outer(dpred, self.heads[sel][0]))
        if t.reg and t.penalty != "effective":
            val, grad = self._penalty(x, z, t.on_transformed)
            loss = loss + val
            if grad is not None:
                dz = dz + grad
        d_alpha = torch.mv(outs, dpred).view_as(onehot)                     # (1, K)
        if self.costs is not None:                                          # eta * sum(Ā^2 * cost)
            d_alpha = d_alpha + self.eta * (2 * onehot * self.costs.to(onehot))
        dg, _ = self._g_backward(dz, flat, h, need_dx=False)
        grads = {self.alpha: d_alpha.to(self.alpha.dtype), **dict(zip(self.g, dg, strict=True))}
        _step_with_grads(self.s.a_opt, self.a_kind, grads)
        self.m.arch.prox_c2_()
        return loss

    def weight_step(self, batch, sel: int) -> Tensor:
        """Weight-optimiser step with the selected op (and every head when train_all_heads); returns the loss."""
        t, name, w = self.task, self.names[sel], self.heads[sel]
        x, bias, users, items, y = self._encode(batch)
        z, flat, h = self._g(x)
        feat = _op_forward(name, z)                                          # (B, width)
        out = torch.mv(feat, w[0])
        pred = out if bias is None else out + bias
        d = pred - y
        loss = torch.mean(d * d)
        dpred = d * (2.0 / d.shape[0])
        grads = {w: torch.mv(feat.t(), dpred).view_as(w)}
        dz = _op_backward(name, z, torch.outer(dpred, w[0]))
        dx_extra = None
        if t.reg and t.penalty == "effective":
            val, dz_pen, dw = self._effective(z, name, w[0])
            loss, dz = loss + val, dz + dz_pen
            grads[w] = grads[w] + dw.view_as(w)
        elif t.reg:
            val, grad = self._penalty(x, z, True)
            loss = loss + val
            if t.on_transformed:
                dz = dz + grad
            else:
                dx_extra = grad
        if t.train_all_heads and len(self.names) > 1:
            loss = loss + self._other_heads(z, y if bias is None else y - bias, sel, grads)
        dg, dx = self._g_backward(dz, flat, h, need_dx=True)
        dx = dx.view(x.shape) if dx_extra is None else dx.view(x.shape) + dx_extra
        grads.update(zip(self.g, dg, strict=True))
        grads.update(self._table_grads(dx, dpred if bias is not None else None, users, items))
        if bias is not None:
            grads[self.m.global_bias] = dpred.sum()
        self._apply_weight_grads(grads)
        return loss

    # ---- weight-step pieces -------------------------------------------------------------------------------
    def _effective(self, z: Tensor, name: str, w: Tensor):
        """reg * effective penalty of op ``name`` (head ``w`` (width,)), its dL/dz and its dL/dw."""
        reg, k, b = self.task.reg, self.k, z.shape[1]
        sq = z * z                                                           # (2, B, k)
        scale = w.abs() if name == "multiply" else k * (w * w)               # (width,)
        s2 = scale.view(2, 1, k) if name == "concat" else scale.view(1, 1, k)
        val = reg * ((sq * s2).sum() / b)
        dz = z * s2 * (2 * reg / b)
        col = sq.sum(1) / b                                                  # (2, k)
        col = col.reshape(-1) if name == "concat" else col.sum(0)            # (width,)
        dscale = torch.sign(w) if name == "multiply" else (2 * k) * w
        return val, dz, reg * col * dscale

    def _other_heads(self, z: Tensor, target: Tensor, sel: int, grads: dict) -> Tensor:
        """Sum over non-selected heads of their MSE on z (no gradient to z); head grads added to ``grads``."""
        total = None
        for j, (n, w) in enumerate(zip(self.names, self.heads, strict=True)):
            if j == sel:
                continue
            f = _op_forward(n, z)
            r = torch.mv(f, w[0]) - target                                   # (B,)
            mse = torch.mean(r * r)
            total = mse if total is None else total + mse
            grads[w] = torch.mv(f.t(), r * (2.0 / r.shape[0])).view_as(w)
        return total

    def _table_grads(self, dx: Tensor, dbias: Tensor | None, users: Tensor, items: Tensor) -> dict:
        """Dense gradients of the two embedding tables (like ``index_select``'s backward)."""
        out = {}
        for table, idx, rows in zip(self.tables, (users, items), dx.unbind(0), strict=True):
            if dbias is not None:
                rows = torch.cat([rows, dbias.unsqueeze(1)], dim=1)           # (B, k + 1)
            out[table] = torch.zeros_like(table).index_add_(0, idx, rows)
        return out

    def _apply_weight_grads(self, grads: dict) -> None:
        s = self.s
        if s.config.grad_clip:
            _clip_([grads[p] for p in s.w_opt.param_groups[0]["params"] if p in grads]
                   if len(s.w_opt.param_groups) == 1 else list(grads.values()), s.config.grad_clip)
        _step_with_grads(s.w_opt, self.w_kind, grads)
        self.m.after_weight_step()

    # ---- the searcher's hook -----------------------------------------------------------------------------------
    def __call__(self, train_batch, valid_batch, update_alpha: bool) -> dict[str, Tensor]:
        s, arch = self.s, self.m.arch
        out = {}
        with torch.no_grad():
            if update_alpha:
                with s.timer("alpha"):
                    onehot, selected = arch.projection()
                    out["alpha_loss"] = self.alpha_step(valid_batch, onehot["interaction"],
                                                        selected["interaction"][0])
            with s.timer("weight"):
                _, selected = arch.projection()
                out["train_loss"] = self.weight_step(train_batch, selected["interaction"][0])
        return out
