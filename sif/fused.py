"""A fused NASP step for :class:`sif.space.SIFSpace` in the matrix case (user, item): the generic step's results,
computed faster; the search's default wherever it applies (``SearchConfig.fused``).

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
searcher uses the generic step, with a warning only when ``fused=True`` was asked for): the tensor case,
neighbourhoods, other tasks, data parallelism, autocast, compile.

Where it differs from the generic path only in rounding: the weight gradients live in one flat buffer reused by
every step (written with ``out=``), so the clip's total norm is taken over all its entries at once; the heads'
projection runs on the heads this step changed, and on any head whose version counter moved since its last
projection (a head inside its ball is divided by exactly 1, so the generic path's projection of the others is a
no-op up to rounding). The selection of Ā is read to the host once per alpha update, as in the generic path
(:meth:`nasp.arch.ArchParameters.projection`, whose cache ``prox_c2_`` invalidates, is not used in the step, so
the epoch-end evaluation reads it once more), and compared there in Python (K numbers). Speed:
benchmarks/README.md, "The reference code's protocol".
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from nasp.prox import prox_c2_
from nasp.regularizers import normalise_costs
from nasp.search import FusedStepUnsupported

from .interactions import PRIMITIVES
from .space import SIFSpace
from .task import RatingTask, unpack

__all__ = ["FusedSIFStep", "check_supported"]


# ---- the five matrix ops: forward (zu, zv) (B, k) -> (B, width) and backward (B, width) -> (2, B, k) ------------
def _op_forward(name: str, zu: Tensor, zv: Tensor, out: Tensor | None = None) -> Tensor:
    """The features (B, width) of op ``name`` (into ``out`` when given)."""
    if name == "plus":
        return torch.add(zu, zv, out=out)
    if name == "multiply":
        return torch.mul(zu, zv, out=out)
    if name == "max":
        return torch.maximum(zu, zv, out=out)
    if name == "min":
        return torch.minimum(zu, zv, out=out)
    return torch.cat([zu, zv], dim=1, out=out)                              # concat: (B, 2k)


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
    """Raise :class:`~nasp.search.FusedStepUnsupported` naming the first setting the fused step does not cover."""
    s, model, task, c = searcher, searcher.model, searcher.task, searcher.config
    if c.strategy != "nasp":
        raise FusedStepUnsupported(f"strategy {c.strategy!r} (the fused step is NASP's)")
    if c.amp is not None or c.compile:
        raise FusedStepUnsupported("autocast (amp) or torch.compile")
    if getattr(s, "grad_sync", None) is not None:
        raise FusedStepUnsupported("data-parallel search (grad_sync)")
    if not isinstance(model, SIFSpace) or len(model.sides) != 2:
        raise FusedStepUnsupported("the tensor (user, item, context) case")
    if len(model.neighbourhoods):
        raise FusedStepUnsupported("neighbourhoods (SVD++-style implicit feedback)")
    unknown = [n for n in model.names if n not in PRIMITIVES]
    if unknown:
        raise FusedStepUnsupported(f"ops {unknown} (only the matrix primitives)")
    if not isinstance(task, RatingTask) or type(task).loss is not RatingTask.loss \
            or type(task)._penalty is not RatingTask._penalty:
        raise FusedStepUnsupported(f"task {type(task).__name__} (only sif.task.RatingTask)")
    if s.task_loss != task.loss:
        raise FusedStepUnsupported("a replaced task loss")
    if [id(p) for p in s.extra_params] != [id(p) for p in model.g.parameters()] or len(s.alpha_params) != 1:
        raise FusedStepUnsupported("alpha-step parameters other than (interaction alphas, g)")
    if type(model).after_weight_step is not SIFSpace.after_weight_step:
        raise FusedStepUnsupported("a replaced after_weight_step")
    if {id(p) for p in s.weight_params} != {id(p) for p in model.weights()}:
        raise FusedStepUnsupported("weight parameters other than the model's")
    if len({(p.dtype, p.device) for p in s.weight_params}) != 1:
        raise FusedStepUnsupported("weight parameters of mixed dtypes or devices")


# ---- optimiser updates on the optimisers' own state ----------------------------------------------------------
def _fused_kind(opt: torch.optim.Optimizer) -> str | None:
    """'adagrad' | 'adam' | 'adamw' when ``opt`` is that torch optimiser, fused, with one plain param group."""
    if len(opt.param_groups) != 1:
        return None
    group = opt.param_groups[0]
    if not group.get("fused") or group.get("amsgrad") or group.get("differentiable") or group.get("capturable"):
        return None
    from torch.optim import optimizer as _opt_module

    if opt._optimizer_step_pre_hooks or opt._optimizer_step_post_hooks \
            or _opt_module._global_optimizer_pre_hooks or _opt_module._global_optimizer_post_hooks:
        return None                      # step hooks run only through optimizer.step()
    if type(opt) is torch.optim.Adagrad:
        return "adagrad"
    if type(opt) in (torch.optim.Adam, torch.optim.AdamW):
        return "adamw" if group.get("decoupled_weight_decay") else "adam"
    return None


class _Update:
    """Steps an optimiser with gradients for some of ``params`` (its parameters, group by group), given by their
    positions; the others have no gradient, so no update, like ``grad=None``.

    A fused Adagrad/Adam/AdamW runs torch's fused kernel directly on the optimiser's own state tensors (after
    incrementing their ``step`` like ``torch.optim`` does); any other optimiser, or a step whose state does not
    exist yet, gets the gradients assigned to ``.grad`` and ``optimizer.step()`` (which also creates missing state
    exactly as torch does). Tensors are never hashed per step (``Tensor.__hash__`` is a Python call)."""

    def __init__(self, opt: torch.optim.Optimizer):
        self.opt, self.kind = opt, _fused_kind(opt)
        self.params = [p for g in opt.param_groups for p in g["params"]]
        self.index = {id(p): i for i, p in enumerate(self.params)}
        self._plans: dict[tuple[int, ...], tuple] = {}       # per gradient pattern, for one opt.state object
        self._plans_state: object = None

    def _plan(self, idx: tuple[int, ...]) -> tuple | None:
        """(params, state tensor lists, steps, ones) of the parameters at ``idx``; None when a state is missing
        (torch creates it in the first ``optimizer.step()``). Cached per pattern while ``opt.state`` (replaced
        by ``load_state_dict``) stays the same object; torch updates the state tensors in place."""
        st = self.opt.state
        if self._plans_state is not st:
            self._plans, self._plans_state = {}, st
        plan = self._plans.get(idx)
        if plan is None:
            sts = [st.get(self.params[i]) for i in idx]
            if any(x is None or "step" not in x for x in sts):
                return None
            names = ("sum",) if self.kind == "adagrad" else ("exp_avg", "exp_avg_sq")
            steps = [x["step"] for x in sts]
            ones = [torch.ones((), dtype=steps[0].dtype, device=steps[0].device)] * len(steps)
            plan = self._plans[idx] = ([self.params[i] for i in idx], [[x[n] for x in sts] for n in names],
                                       steps, ones)
        return plan

    def __call__(self, idx: tuple[int, ...], gs: list[Tensor]) -> None:
        """One step with gradients ``gs`` for the parameters at positions ``idx`` (a tuple; the others get none)."""
        plan = self._plan(idx) if self.kind is not None else None
        if plan is None:
            grads = dict(zip(idx, gs, strict=True))
            for i, p in enumerate(self.params):
                g = grads.get(i)
                p.grad = None if g is None else g.clone()      # never a view of the step's reused buffer
            self.opt.step()
            self._plans_state = None
            return
        params, states, steps, ones = plan
        group = self.opt.param_groups[0]
        torch._foreach_add_(steps, ones)                       # step += 1 (tensor-list overload: 4x fewer ops)
        self.opt._opt_called = True      # what torch.optim's step wrapper records for an LR scheduler
        if self.kind == "adagrad":
            torch._fused_adagrad_(params, gs, states[0], steps, lr=group["lr"], lr_decay=group["lr_decay"],
                                  weight_decay=group["weight_decay"], eps=group["eps"], maximize=group["maximize"])
            return
        fn = torch._fused_adamw_ if self.kind == "adamw" else torch._fused_adam_
        beta1, beta2 = group["betas"]
        fn(params, gs, states[0], states[1], [], steps, amsgrad=False, lr=group["lr"], beta1=beta1, beta2=beta2,
           weight_decay=group["weight_decay"], eps=group["eps"], maximize=group["maximize"])


class _Consts:
    """0-dim tensors of the Python numbers used every step, cached per (value, dtype, device): a Python number
    as an operand is wrapped into a tensor by every op (measured: ``x * 0.5`` costs 5 profiler events, ``x * c``
    with a cached 0-dim ``c`` one)."""

    def __init__(self):
        self.cache: dict[tuple, Tensor] = {}

    def __call__(self, value: float, like: Tensor) -> Tensor:
        key = (value, like.dtype, like.device)
        t = self.cache.get(key)
        if t is None:
            t = self.cache[key] = torch.tensor(value, dtype=like.dtype, device=like.device)
        return t


def _clip_(flat: Tensor, max_norm: float, const: _Consts) -> None:
    """``clip_grad_norm_`` on gradients that all live in one flat buffer: one norm over every entry (equal to the
    norm of the per-tensor norms up to rounding) and one multiply by min(1, max_norm / (norm + 1e-6))."""
    total = torch.linalg.vector_norm(flat, 2.0)
    flat.mul_(torch.div(const(max_norm, total), total.add_(const(1e-6, total))).clamp_(max=1.0))


class _Buffers:
    """Activation buffers of one batch size, reused by every step (a fresh 64 KB tensor per op is a cold one:
    measured ~9% of a step), with their views made once: x (2, B, k) the looked-up embeddings (halves xu, xv;
    flat (2, 1, B*k) and flat_t (2, B*k, 1)), h and dpre (2, H, B*k) g's hidden tanh and its gradient, z (2, B, k)
    g's output (halves zu, zv; zflat (2, 1, B*k)); feats and outs (K, B) every op's features and output (rows
    out_rows). The alpha step is done with them before the weight step starts, so one set serves both."""

    def __init__(self, b: int, k: int, hidden: int, widths: list[int], like: Tensor):
        self.x = like.new_empty(2, b, k)
        self.xu, self.xv = self.x.unbind(0)
        self.flat = self.x.view(2, 1, b * k)
        self.flat_t = self.flat.transpose(1, 2)
        self.h, self.dpre = like.new_empty(2, hidden, b * k), like.new_empty(2, hidden, b * k)
        self.zflat = like.new_empty(2, 1, b * k)
        self.z = self.zflat.view(2, b, k)
        self.zu, self.zv = self.z.unbind(0)
        self.feats = [like.new_empty(b, w) for w in widths]      # each op's features (alpha step)
        self.outs = like.new_empty(len(widths), b)                # each op's output (alpha step)
        self.out_rows = list(self.outs.unbind(0))


class FusedSIFStep:
    """``step(train_batch, valid_batch, update_alpha) -> {"train_loss", ["alpha_loss"]}`` for a
    :class:`~nasp.search.Searcher` driving a matrix-case :class:`~sif.space.SIFSpace` with a
    :class:`~sif.task.RatingTask` (see the module docstring). Raises FusedStepUnsupported for unsupported settings.
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
        self.global_bias = m.global_bias
        self.alpha = searcher.alpha_params[0]
        self.w_update, self.a_update = _Update(searcher.w_opt), _Update(searcher.a_opt)
        wi, ai = self.w_update.index, self.a_update.index
        self.w_pos = {"tables": [wi[id(p)] for p in self.tables], "g": [wi[id(p)] for p in self.g],
                      "heads": [wi[id(p)] for p in self.heads],
                      "bias": wi[id(m.global_bias)] if self.bias else None}
        self.a_pos = (ai[id(self.alpha)], *(ai[id(p)] for p in self.g))
        self.head_versions: list[int | None] = [None] * len(self.heads)      # after our last projection
        cost = searcher.op_costs.get("interaction")
        self.eta = searcher.config.eta
        self.costs = None if self.eta == 0 or cost is None else normalise_costs(cost)          # (1, K)
        self._views_key: tuple | None = None
        self._bufs: dict[int, _Buffers] = {}
        self._w_plans: dict[int, tuple] = {}
        self.all_heads = t.train_all_heads and len(self.names) > 1
        self._sel_key: tuple | None = None
        self.c = _Consts()
        self._sel = -1
        self.arch_buffers = m.arch._buffers                              # plain dict: no Module.__getattr__
        prio = m.arch.op_priority_interaction                          # (1, K); read here, not in the steps
        self._prio: list[float] = prio[0].tolist()
        self._prio_key: tuple | None = (prio.data_ptr(), prio._version)

    def _views(self) -> None:
        """Views of the parameters in the shapes the hand-written ops use (rebuilt if a parameter moved)."""
        key = tuple(p.data_ptr() for p in (*self.tables, *self.g, *self.heads))
        if key == self._views_key:
            return
        self._grad_buffer()
        w1, b1, w2, _ = self.g
        hid = w1.shape[2]
        self.g1 = (w1.view(2, hid, 1), b1.view(2, hid, 1), w2.view(2, 1, hid))          # (2,H,1) (2,H,1) (2,1,H)
        self.vecs = [w.view(-1) for w in self.heads]                                      # (width,) each
        self._views_key = key

    def _grad_buffer(self) -> None:
        """One flat buffer for every weight gradient, reused by every step, with views shaped like each parameter
        (``gview``) and like the hand-written ops' outputs (``g_out``, ``head_out``): the weight step writes its
        gradients into it with ``out=``, and the clip takes one norm and one multiply of it."""
        params = self.w_update.params
        sizes = [p.numel() for p in params]
        buf = torch.zeros(sum(sizes), dtype=params[0].dtype, device=params[0].device)
        self.gbuf = buf
        self.gview = [v.view(p.shape) for v, p in zip(buf.split(sizes), params, strict=True)]
        self._w_plans = {}
        hid = self.g[0].shape[2]
        dw1, db1, dw2, db2 = (self.gview[i] for i in self.w_pos["g"])
        self.g_out = (dw1.view(2, hid, 1), db1.view(2, hid), dw2, db2)          # bmm / sum output shapes
        self.head_out = [self.gview[i].view(-1) for i in self.w_pos["heads"]]    # (width,) each

    def _buffers(self, b: int, like: Tensor) -> _Buffers:
        """The reused activation buffers of a batch of ``b`` ratings (one set per batch size)."""
        bufs = self._bufs.get(b)
        if bufs is None or bufs.x.dtype != like.dtype or bufs.x.device != like.device:
            bufs = self._bufs[b] = _Buffers(b, self.k, self.g[0].shape[2], [w.numel() for w in self.heads], like)
        return bufs

    # ---- shared forward / backward pieces ------------------------------------------------------------------
    def _encode(self, batch) -> tuple[_Buffers, Tensor | None, Tensor, Tensor, Tensor]:
        """(buffers with x (2, B, k) the raw embeddings, bias (B,) or None, users, items, y)."""
        users, items, y, contexts = unpack(batch)
        if contexts is not None:
            raise ValueError("the fused SIF step takes (users, items, ratings) batches")
        bufs = self._buffers(users.shape[0], self.tables[0])
        if not self.bias:                   # both lookups straight into the buffer
            torch.index_select(self.tables[0], 0, users, out=bufs.xu)
            torch.index_select(self.tables[1], 0, items, out=bufs.xv)
            return bufs, None, users, items, y
        ru, rv = self.tables[0].index_select(0, users), self.tables[1].index_select(0, items)   # (B, k + 1)
        k = self.k
        bias = self.global_bias + (ru[:, k] + rv[:, k])                                         # (B,)
        torch.stack([ru[:, :k], rv[:, :k]], out=bufs.x)
        return bufs, bias, users, items, y

    def _g(self, bufs: _Buffers) -> None:
        """z = g(x) into ``bufs.z`` (2, B, k), keeping the hidden tanh in ``bufs.h`` (2, H, B*k).

        The hidden layer is laid out (sides, H, B*k), so that its broadcasts run along the contiguous B*k axis
        (measured: g's forward + backward 2.7x faster than in the (sides, B*k, H) layout of ElementwiseMLP)."""
        w1t, b1t, w2t = self.g1
        torch.mul(w1t, bufs.flat, out=bufs.h).add_(b1t).tanh_()               # (2, H, BK); 2x faster than addcmul
        torch.baddbmm(self.g[3], w2t, bufs.h, out=bufs.zflat)                 # (2, 1, BK)
        if self.skip:
            bufs.zflat.add_(bufs.flat)

    def _g_backward(self, dz: Tensor, bufs: _Buffers, need_dx: bool, into_buffer: bool = False):
        """[dw1, db1, dw2, db2], dx (2, 1, B*k) or None, from dL/dz (2, B, k); ``into_buffer``: the four
        gradients are written into (and returned as) their views of the weight-gradient buffer."""
        w1, b1, w2, _ = self.g
        h, dpre, flat_t = bufs.h, bufs.dpre, bufs.flat_t
        dy = dz.reshape(2, 1, -1)                                             # (2, 1, BK)
        torch.mul(w2, dy, out=dpre)
        torch.ops.aten.tanh_backward.grad_input(dpre, h, grad_input=dpre)    # (2, H, BK), in place
        if into_buffer:
            o1, ob1, o2, ob2 = self.g_out
            torch.bmm(h, dy.transpose(1, 2), out=o2)                          # (2, H, 1)
            torch.sum(dy, 2, keepdim=True, out=ob2)                           # (2, 1, 1)
            torch.bmm(dpre, flat_t, out=o1)                                   # (2, H, 1) = w1's (2, 1, H)
            torch.sum(dpre, 2, out=ob1)                                       # (2, H) = b1's (2, 1, H)
            grads = [self.gview[i] for i in self.w_pos["g"]]
        else:
            grads = [torch.bmm(dpre, flat_t).view(w1.shape), dpre.sum(2).view(b1.shape),
                     torch.bmm(h, dy.transpose(1, 2)), dy.sum(2, keepdim=True)]
        if not need_dx:
            return grads, None
        dx = torch.bmm(w1, dpre)                                              # (2, 1, BK)
        return grads, (dx + dy if self.skip else dx)

    def _penalty(self, x: Tensor, z: Tensor, want_grad: bool):
        """reg * ("l2" | "norm") penalty value and its gradient w.r.t. e (on_transformed False) or z."""
        t = self.task
        r = z if t.on_transformed else x
        if t.penalty == "norm":
            n = torch.linalg.vector_norm(r, dim=(1, 2))                      # (2,)
            val = n.sum() * self.c(t.reg, n)
            grad = r * (self.c(t.reg, n) / n.clamp_min(torch.finfo(n.dtype).tiny)).view(2, 1, 1) if want_grad \
                else None
            return val, grad
        val = (r * r).sum() * self.c(t.reg / r.shape[1], r)
        return val, (r * self.c(2 * t.reg / r.shape[1], r) if want_grad else None)

    def _mse(self, d: Tensor) -> tuple[Tensor, Tensor]:
        """(mean(d^2), its gradient 2 d / B) of a residual d (B,)."""
        b = d.shape[0]
        return torch.dot(d, d) * self.c(1.0 / b, d), d * self.c(2.0 / b, d)

    # ---- the two steps ---------------------------------------------------------------------------------------
    def alpha_step(self, batch, sel: int) -> Tensor:
        """Adam step on (A, g) with dL_val/dĀ, then A = prox_C2(A); returns the validation loss (detached)."""
        t = self.task
        bufs, bias, _, _, y = self._encode(batch)
        self._g(bufs)
        x, z, zu, zv = bufs.x, bufs.z, bufs.zu, bufs.zv
        outs = bufs.outs                                                     # (K, B)
        for n, w, f, o in zip(self.names, self.vecs, bufs.feats, bufs.out_rows, strict=True):
            torch.mv(_op_forward(n, zu, zv, out=f), w, out=o)               # every op's output, in place
        pred = bufs.out_rows[sel] if bias is None else bufs.out_rows[sel] + bias     # (B,)
        d = pred - y
        loss, dpred = self._mse(d)
        dz = _op_backward(self.names[sel], z, torch.outer(dpred, self.vecs[sel]))
        if t.reg and t.penalty != "effective":
            val, grad = self._penalty(x, z, t.on_transformed)
            loss = loss + val
            if grad is not None:
                dz = dz + grad
        d_alpha = torch.mv(outs, dpred).view(self.alpha.shape)              # (1, K)
        if self.costs is not None:                                          # eta * sum(Ā^2 * cost), Ā one-hot
            onehot = torch.zeros_like(d_alpha)
            onehot[0, sel] = 1.0
            d_alpha = d_alpha + self.eta * (2 * onehot * self.costs.to(onehot))
        dg, _ = self._g_backward(dz, bufs, need_dx=False)
        if d_alpha.dtype != self.alpha.dtype:
            d_alpha = d_alpha.to(self.alpha.dtype)
        self.a_update(self.a_pos, [d_alpha, *dg])
        prox_c2_(self.alpha)                # A = prox_C2(A) (ArchParameters' caches key on the version it bumps)
        return loss

    def weight_step(self, batch, sel: int) -> Tensor:
        """Weight-optimiser step with the selected op (and every head when train_all_heads); returns the loss."""
        t, name, w = self.task, self.names[sel], self.vecs[sel]
        bufs, bias, users, items, y = self._encode(batch)
        self._g(bufs)
        x, z, zu, zv = bufs.x, bufs.z, bufs.zu, bufs.zv
        feat = _op_forward(name, zu, zv)                                     # (B, width)
        out = torch.mv(feat, w)
        pred = out if bias is None else out + bias
        loss, dpred = self._mse(pred - y)
        pos, gv = self.w_pos, self.gview
        self.gbuf.zero_()
        dw = torch.mv(feat.t(), dpred, out=self.head_out[sel])                # (width,), in the buffer
        dz = _op_backward(name, z, torch.outer(dpred, w))
        dx_extra = None
        if t.reg and t.penalty == "effective":
            val, dz_pen, dw_pen = self._effective(z, name, w)
            loss, dz = loss + val, dz + dz_pen
            dw.add_(dw_pen)
        elif t.reg:
            val, grad = self._penalty(x, z, True)
            loss = loss + val
            if t.on_transformed:
                dz = dz + grad
            else:
                dx_extra = grad
        changed = [sel]
        if self.all_heads:
            loss = loss + self._other_heads(zu, zv, y if bias is None else y - bias, sel)
            changed = range(len(self.heads))
        _, dx = self._g_backward(dz, bufs, need_dx=True, into_buffer=True)
        dx = dx.view(x.shape) if dx_extra is None else dx.view(x.shape) + dx_extra
        self._table_grads(dx, dpred if bias is not None else None, users, items)
        if bias is not None:
            torch.sum(dpred, 0, out=gv[pos["bias"]])
        if self.s.config.grad_clip:
            _clip_(self.gbuf, self.s.config.grad_clip, self.c)      # the entries without a gradient are 0
        self.w_update(*self._w_plan(sel))
        self._project_heads(changed)
        return loss

    def _w_plan(self, sel: int) -> tuple[tuple[int, ...], list[Tensor]]:
        """(positions, gradient-buffer views) of the weight parameters a weight step with op ``sel`` updates: the
        tables, g, the selected head (every head with ``train_all_heads``) and the global bias."""
        plan = self._w_plans.get(sel)
        if plan is None:
            pos = self.w_pos
            heads = pos["heads"] if self.all_heads else [pos["heads"][sel]]
            idx = tuple(sorted([*pos["tables"], *pos["g"], *heads] + ([pos["bias"]] if self.bias else [])))
            plan = self._w_plans[sel] = (idx, [self.gview[i] for i in idx])
        return plan

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

    def _other_heads(self, zu: Tensor, zv: Tensor, target: Tensor, sel: int) -> Tensor:
        """Sum over non-selected heads of their MSE on z (no gradient to z); their head grads go into the
        gradient buffer."""
        total = None
        for j, (n, w) in enumerate(zip(self.names, self.vecs, strict=True)):
            if j == sel:
                continue
            f = _op_forward(n, zu, zv)
            mse, dr = self._mse(torch.mv(f, w) - target)                     # (), (B,)
            total = mse if total is None else total + mse
            torch.mv(f.t(), dr, out=self.head_out[j])
        return total

    def _table_grads(self, dx: Tensor, dbias: Tensor | None, users: Tensor, items: Tensor) -> None:
        """Dense gradients of the two embedding tables (like ``index_select``'s backward), accumulated into their
        (zeroed) views of the gradient buffer."""
        for i, idx, rows in zip(self.w_pos["tables"], (users, items), dx.unbind(0), strict=True):
            if dbias is not None:
                rows = torch.cat([rows, dbias.unsqueeze(1)], dim=1)           # (B, k + 1)
            self.gview[i].index_add_(0, idx, rows)

    def _project_heads(self, changed) -> None:
        """The heads' projection onto their ball (SIFSpace.after_weight_step, the same ops per head) for the heads
        this step changed or that changed elsewhere since (tracked by version counter); the others already lie
        in the ball, where the projection divides by exactly 1."""
        r = self.m.head_radius
        if math.isinf(r):
            return
        for j, w in enumerate(self.heads):
            if j in changed or w._version != self.head_versions[j]:
                n = torch.linalg.vector_norm(w)
                if r != 1.0:
                    n = n / r
                w.div_(n.clamp_min(1.0))
                self.head_versions[j] = w._version

    # ---- the architecture ------------------------------------------------------------------------------------
    def _selection(self) -> int:
        """The op Ā = prox_C1(A) selects: the argmax of the alphas with ties broken by the op priorities, exactly
        as :func:`nasp.prox.row_argmax` (a NaN row gives 0, like it); read to the host once per change of A
        (version counter), so once per alpha update, like :meth:`nasp.arch.ArchParameters.projection` (whose cache
        prox_c2_ invalidates). The K values are compared on the host: one transfer, no device ops."""
        a, prio = self.alpha, self.arch_buffers["op_priority_interaction"]
        key = (a.data_ptr(), a._version, prio.data_ptr(), prio._version)
        if key != self._sel_key:
            row = a[0].tolist()                                                          # K floats, exact
            if self._prio_key != key[2:]:
                self._prio, self._prio_key = prio[0].tolist(), key[2:]
            top = max(row)
            if any(v != v for v in row):                    # NaN: row_argmax's comparisons are all False
                self._sel = 0
            else:                                           # the first of the tied maxima with the top priority
                self._sel = max((i for i, v in enumerate(row) if v == top), key=self._prio.__getitem__)
            self._sel_key = key
        return self._sel

    # ---- the searcher's hook -----------------------------------------------------------------------------------
    def __call__(self, train_batch, valid_batch, update_alpha: bool) -> dict[str, Tensor]:
        s = self.s
        out = {}
        grad_mode = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)           # torch.no_grad() without its Python context object
        try:
            self._views()
            if update_alpha:
                with s.timer("alpha"):
                    sel = self._selection()
                    out["alpha_loss"] = self.alpha_step(valid_batch, sel)
            with s.timer("weight"):
                out["train_loss"] = self.weight_step(train_batch, self._selection())
        finally:
            torch._C._set_grad_enabled(grad_mode)
        return out
