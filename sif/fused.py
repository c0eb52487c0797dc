"""A fused NASP step for :class:`sif.space.SIFSpace` in the matrix case (user, item): the generic step's results
(:func:`nasp.strategies.step_nasp`, :class:`sif.task.RatingTask`) up to float rounding, computed with plain tensor
ops, no autograd graph, from closed forms kept next to what they compute: the op records' gradients
(:mod:`sif.interactions`), g's forward and backward (:class:`sif.transform.MLPClosedForm`), the MSE and the
"l2"/"norm" penalty (:mod:`sif.task`), the lookup, the effective penalty and the other heads' loss
(:class:`SIFSpace`), the complexity term and the tie-broken argmax (:mod:`nasp.regularizers`, :mod:`nasp.prox`). The
search's default wherever it applies (``SearchConfig.fused``); on ML-100K (benchmarks/README.md, "The reference
code's protocol") 5x faster than the generic step (a closed-form alpha step with autograd's weight step was only 1.8x
faster). Alpha step: MSE (+ "l2"/"norm" penalty) on a validation batch at Ā = prox_C1(A), dL/dĀ_k = <dL/dpred,
out_k>, g's gradients, eta * R(Ā), the alpha optimiser's step, prox_C2. Weight step: the selected op's (every op's
with ``train_all_heads``) gradients of tables, g, heads and bias, the clip of ``clip_grad_norm_`` (one norm over the
flat buffer: rounding only), the weight optimiser's step, the heads' projection. Optimiser updates:
:class:`nasp.optim.FlatUpdate` on the searcher's own optimisers (checkpoints resume across the two paths); row-wise
tables (``sparse_rows``) bypass the flat buffer: their unique rows and summed row gradients join the clip and go to
:meth:`nasp.optim.RowSparseOptimizer.step_rows`, so a step costs O(batch). :data:`SUPPORTED` lists what it covers;
anything else raises FusedStepUnsupported.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nasp.optim import FlatUpdate, RowSparseOptimizer, coalesce_rows
from nasp.prox import prox_c2_, row_argmax_host
from nasp.regularizers import complexity_grad
from nasp.search import FusedStepUnsupported

from .interactions import INTERACTIONS, MIXTURES, PRIMITIVES
from .space import SIFSpace
from .task import RatingTask, mse_closed_form, unpack
from .transform import HAS_CLOSED_FORM

__all__ = ["FusedSIFStep", "SUPPORTED", "check_supported"]

#: every setting the fused step covers, with its supported values (anything else: the generic step)
SUPPORTED = {
    "strategy": ("nasp",), "amp": (None,), "compile": (False,), "grad_sync": (None,),
    "model": (SIFSpace,), "sides": (2,), "neighbourhoods": (0,), "ops": PRIMITIVES + MIXTURES, "task": (RatingTask,),
    "penalty": ("l2", "norm", "effective"), "on_transformed": (False, True), "train_all_heads": (False, True),
    "use_bias": (False, True), "g_skip": (False, True), "head_init": ("uniform", "ones"),
    "dtype": (torch.float32, torch.float64),
    "w_optimizer": (torch.optim.SGD, torch.optim.Adagrad, torch.optim.Adam, torch.optim.AdamW),   # row-wise too
    "a_optimizer": (torch.optim.Adam, torch.optim.AdamW),
}
_WHAT = {"sides": "the tensor (user, item, context) case", "grad_sync": "data-parallel search (grad_sync)",
         "neighbourhoods": "neighbourhoods (SVD++-style implicit feedback)", "amp": "autocast (amp)",
         "compile": "torch.compile", "task": "other tasks (only sif.task.RatingTask)"}


def _settings(s) -> dict:
    m, t, c = s.model, s.task, s.config
    sif = type(m) is SIFSpace
    return {"strategy": c.strategy, "amp": c.amp, "compile": c.compile, "grad_sync": getattr(s, "grad_sync", None),
            "model": type(m), "sides": len(m.sides) if sif else None,
            "neighbourhoods": len(m.neighbourhoods) if sif else None, "task": type(t),
            "penalty": getattr(t, "penalty", None), "on_transformed": getattr(t, "on_transformed", None),
            "train_all_heads": getattr(t, "train_all_heads", None), "use_bias": getattr(m, "use_bias", None),
            "g_skip": m.g.skip if sif else None, "head_init": getattr(m, "head_init", None),
            "dtype": {p.dtype for p in (*s.weight_params, *s.alpha_params, *s.extra_params)},
            "w_optimizer": type(getattr(s.w_opt, "dense", s.w_opt)), "a_optimizer": type(s.a_opt),
            "ops": set(getattr(m, "names", ()))}


def check_supported(searcher) -> None:
    """Raise :class:`~nasp.search.FusedStepUnsupported` naming the first setting outside :data:`SUPPORTED`."""
    s = searcher
    for key, value in _settings(s).items():
        values = value if isinstance(value, set) else {value}
        bad = [v for v in values if v not in SUPPORTED[key]]
        if bad or not values:
            shown = getattr(bad[0], "__name__", bad[0]) if bad else "none"
            raise FusedStepUnsupported(f"{_WHAT.get(key, key)}: {key}={shown}, supported {SUPPORTED[key]}")
    m = s.model
    if s.task_loss != s.task.loss:
        raise FusedStepUnsupported("a replaced task loss (compile or a custom loss)")
    if [id(p) for p in s.extra_params] != [id(p) for p in m.g.parameters()] or len(s.alpha_params) != 1:
        raise FusedStepUnsupported("alpha-step parameters other than (interaction alphas, g)")
    if {id(p) for p in s.weight_params} != {id(p) for p in m.weights()}:
        raise FusedStepUnsupported("weight parameters other than the model's")
    rows = {id(p) for p in getattr(s.w_opt, "tables", ())}
    if rows and rows != {id(m.embeddings[k].weight) for k in "uv"}:
        raise FusedStepUnsupported("row-wise updates of parameters other than the two embedding tables")
    if len({(p.dtype, p.device) for p in (*s.weight_params, *s.alpha_params, *s.extra_params)}) != 1:
        raise FusedStepUnsupported("parameters of several dtypes or devices")
    if not HAS_CLOSED_FORM or not hasattr(s.alpha_params[0], "_version") \
            or "op_priority_interaction" not in getattr(m.arch, "_buffers", {}):
        raise FusedStepUnsupported("this torch (no aten.tanh_backward, Tensor._version or Module._buffers)")


class _Buffers:
    """Activations of one batch size, reused by every step: x, z = g(x), dz (2, B, k) (flat (2, 1, B*k) views);
    h, dpre (2, H, B*k) g's hidden tanh and its gradient; feats (B, width) and outs (K, B) every op's output."""

    def __init__(self, b: int, k: int, hidden: int, widths: list[int], like: Tensor):
        self.x, self.dz = like.new_empty(2, b, k), like.new_empty(2, b, k)
        self.xu, self.xv = self.x.unbind(0)
        self.flat, self.dzflat = self.x.view(2, 1, b * k), self.dz.view(2, 1, b * k)
        self.h, self.dpre = like.new_empty(2, hidden, b * k), like.new_empty(2, hidden, b * k)
        self.zflat = like.new_empty(2, 1, b * k)
        self.z = self.zflat.view(2, b, k)
        self.zu, self.zv = self.z.unbind(0)
        self.feats = [like.new_empty(b, w) for w in widths]
        self.outs = like.new_empty(len(widths), b)


class FusedSIFStep:
    """``step(train_batch, valid_batch, update_alpha) -> {"train_loss", ["alpha_loss"]}`` for a
    :class:`~nasp.search.Searcher` (see the module docstring); raises FusedStepUnsupported outside SUPPORTED."""

    def __init__(self, searcher):
        check_supported(searcher)
        s = self.s = searcher
        m, self.task = s.model, s.task
        self.m, self.k, self.bias = m, m.embedding_dim, m.use_bias
        self.ops = [INTERACTIONS[n] for n in m.names]
        self.tables = (m.embeddings["u"].weight, m.embeddings["v"].weight)
        self.g = (m.g.w1, m.g.b1, m.g.w2, m.g.b2)
        self.heads, self.global_bias = [h.weight for h in m.heads], m.global_bias
        self.alpha = s.alpha_params[0]
        self.rows = s.w_opt if isinstance(s.w_opt, RowSparseOptimizer) else None       # row-wise tables
        self.w_up, self.a_up = FlatUpdate(s.w_opt.dense if self.rows else s.w_opt), FlatUpdate(s.a_opt)
        wi, ai, self.gcf = self.w_up.index, self.a_up.index, m.g.closed_form()      # g's math (sif.transform)
        self.w_pos = {"tables": [] if self.rows else [wi[id(p)] for p in self.tables],
                      "g": [wi[id(p)] for p in self.g], "heads": [wi[id(p)] for p in self.heads],
                      "bias": [wi[id(m.global_bias)]] if self.bias else []}
        a_pos = (ai[id(self.alpha)], *(ai[id(p)] for p in self.g))
        self.a_idx = tuple(sorted(a_pos))
        self.d_alpha = self.a_up.views[a_pos[0]].view(-1)                                  # (K,)
        self.g_out = {up: tuple(up.views[i].view(sh) for i, sh in zip(pos, self.gcf.grad_shapes, strict=True))
                      for up, pos in ((self.w_up, self.w_pos["g"]), (self.a_up, a_pos[1:]))}
        self.head_grads = [self.w_up.views[i].view(-1) for i in self.w_pos["heads"]]     # (width,) each
        cost, eta = s.op_costs.get("interaction"), s.config.eta
        self.cost_grad = None if eta == 0 or cost is None else complexity_grad(cost, eta, self.alpha)[0]   # (K,)
        self.all_heads = self.task.train_all_heads and len(self.ops) > 1
        self._bufs: dict[int, _Buffers] = {}
        self._w_plans: dict[int, tuple[int, ...]] = {}
        self._views_key = self._sel_key = None
        self._sel = -1
        self.arch_buffers = m.arch._buffers                   # the plain dict (no Module.__getattr__ per step)
        prio = self.arch_buffers["op_priority_interaction"]
        self._prio, self._prio_key = prio[0].tolist(), (prio.data_ptr(), prio._version)

    def _views(self) -> None:
        """Views of the parameters in the shapes the hand-written ops use (remade when a parameter moved)."""
        key = tuple(p.data_ptr() for p in (*self.tables, *self.g, *self.heads))
        if key != self._views_key:
            self.gcf = self.m.g.closed_form()
            self.vecs = [w.view(-1) for w in self.heads]                                   # (width,) each
            self._views_key, self._bufs = key, {}

    def _encode(self, batch) -> tuple[_Buffers, Tensor | None, Tensor, Tensor, Tensor]:
        """(buffers with x (2, B, k) the looked-up embeddings and z = g(x), bias (B,) or None, users, items, y)."""
        users, items, y, contexts = unpack(batch)
        if contexts is not None:
            raise ValueError("the fused SIF step takes (users, items, ratings) batches")
        b, like = users.shape[0], self.tables[0]
        bufs = self._bufs.get(b)           # (emptied by _views when a parameter moved)
        if bufs is None:
            bufs = self._bufs[b] = _Buffers(b, self.k, self.g[0].shape[2], [w.numel() for w in self.heads], like)
        bias = SIFSpace.encode_closed_form(self.tables, self.global_bias, users, items, (bufs.xu, bufs.xv))
        self.gcf.forward_(bufs.flat, bufs.h, bufs.zflat)                                   # z = g(x)
        return bufs, bias, users, items, y

    def _op_grad(self, j: int, bufs: _Buffers, dpred: Tensor) -> None:
        """dL/dz (2, B, k) of op j's head output into ``bufs.dz``, from dL/dpred (B,)."""
        torch.stack(self.ops[j].grad(bufs.zu, bufs.zv, torch.outer(dpred, self.vecs[j])), out=bufs.dz)

    def alpha_step(self, batch, sel: int) -> Tensor:
        """The alpha optimiser's step on (A, g) with dL_val/dĀ, then A = prox_C2(A); returns the validation loss."""
        t = self.task
        bufs, bias, _, _, y = self._encode(batch)
        for op, w, f, o in zip(self.ops, self.vecs, bufs.feats, bufs.outs.unbind(0), strict=True):
            torch.mv(op(bufs.zu, bufs.zv, out=f), w, out=o)                                # every op's output
        pred = bufs.outs[sel] if bias is None else bufs.outs[sel] + bias
        loss, dpred = mse_closed_form(pred - y)
        self._op_grad(sel, bufs, dpred)
        if t.reg and t.penalty != "effective":
            val, grad = t.penalty_closed_form(bufs.z if t.on_transformed else bufs.x, t.on_transformed)
            loss = loss + val
            if grad is not None:
                bufs.dz.add_(grad)
        torch.mv(bufs.outs, dpred, out=self.d_alpha)                                       # (K,)
        if self.cost_grad is not None:                      # d(eta * R(Ā))/dĀ, Ā one-hot
            self.d_alpha[sel] += self.cost_grad[sel]
        self.gcf.backward_(bufs.flat, bufs.h, bufs.dzflat, bufs.dpre, self.g_out[self.a_up], need_dx=False)
        self.a_up.step(self.a_idx)
        prox_c2_(self.alpha)                # A = prox_C2(A) (ArchParameters' caches key on the version it bumps)
        return loss

    def weight_step(self, batch, sel: int) -> Tensor:
        """The weight optimiser's step with op ``sel`` (every head with train_all_heads); returns the loss."""
        t, w, pos, views = self.task, self.vecs[sel], self.w_pos, self.w_up.views
        bufs, bias, users, items, y = self._encode(batch)
        x, z = bufs.x, bufs.z
        feat = self.ops[sel](bufs.zu, bufs.zv)                                             # (B, width)
        pred = torch.mv(feat, w) if bias is None else torch.mv(feat, w) + bias
        loss, dpred = mse_closed_form(pred - y)
        self.w_up.flat.zero_()
        dw = torch.mv(feat.t(), dpred, out=self.head_grads[sel])                          # (width,)
        self._op_grad(sel, bufs, dpred)
        dx_extra = None
        if t.reg and t.penalty == "effective":
            loss = loss + SIFSpace.effective_penalty_closed_form(self.ops[sel], w, z, t.reg, bufs.dz, dw)
        elif t.reg:
            val, grad = t.penalty_closed_form(z if t.on_transformed else x)
            loss = loss + val
            if t.on_transformed:
                bufs.dz.add_(grad)
            else:
                dx_extra = grad
        if self.all_heads:
            loss = loss + SIFSpace.other_heads_loss_closed_form(self.ops, self.vecs, bufs.zu, bufs.zv,
                                                                y if bias is None else y - bias, sel, self.head_grads)
        dx = self.gcf.backward_(bufs.flat, bufs.h, bufs.dzflat, bufs.dpre, self.g_out[self.w_up], True).view(x.shape)
        dx = dx if dx_extra is None else dx + dx_extra
        looked = [(idx, r if bias is None else torch.cat([r, dpred.unsqueeze(1)], dim=1))
                  for idx, r in zip((users, items), dx.unbind(0), strict=True)]
        for i, (idx, r) in zip(pos["tables"], looked, strict=False):    # dense tables (none when row-wise):
            views[i].index_add_(0, idx, r)                             # index_select's backward
        rows = [coalesce_rows(idx, r) for idx, r in looked] if self.rows else []   # row-wise: (unique rows, grads)
        if bias is not None:
            torch.sum(dpred, 0, out=views[pos["bias"][0]])
        if self.s.config.grad_clip:
            self.w_up.clip_(self.s.config.grad_clip, tuple(g for _, g in rows))
        plan = self._w_plans.get(sel)
        if plan is None:
            heads = pos["heads"] if self.all_heads else [pos["heads"][sel]]
            plan = self._w_plans[sel] = tuple(sorted([*pos["tables"], *pos["g"], *heads, *pos["bias"]]))
        for table, (idx, g) in zip(self.tables, rows, strict=False):      # row-wise tables (none when dense)
            self.rows.step_rows(table, idx, g)
        self.w_up.step(plan)
        self.m.after_weight_step()                              # the heads' projection onto their ball
        return loss

    def _selection(self) -> int:
        """The op of Ā = prox_C1(A) as :func:`nasp.prox.row_argmax` picks it (the first of the tied maxima with
        the top priority; 0 for a NaN row), read to the host once per change of A or of the priorities."""
        a, prio = self.alpha, self.arch_buffers["op_priority_interaction"]
        key = (a.data_ptr(), a._version, prio.data_ptr(), prio._version)
        if key != self._sel_key:
            row = a[0].tolist()                                                              # K floats, exact
            if key[2:] != self._prio_key:
                self._prio, self._prio_key = prio[0].tolist(), key[2:]
            self._sel, self._sel_key = row_argmax_host(row, self._prio), key
        return self._sel

    def __call__(self, train_batch, valid_batch, update_alpha: bool) -> dict[str, Tensor]:
        s, out = self.s, {}
        with torch.no_grad():
            self._views()
            if update_alpha:
                with s.timer("alpha"):
                    out["alpha_loss"] = self.alpha_step(valid_batch, self._selection())
            with s.timer("weight"):
                out["train_loss"] = self.weight_step(train_batch, self._selection())
        return out
