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

import math
from typing import NamedTuple

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

__all__ = ["FusedSIFStep", "SUPPORTED", "check_supported", "op_terms"]

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

#: every supported op's output ``op(u, v) @ w`` as a sum of terms ``basis @ w_block``: (basis, head block) pairs over
#: the bases u, v and the element-wise products below (the records' forwards, sif.interactions; a mixture "a+b" is
#: a's terms on block 0 and b's on block 1); tests/test_sif_fused.py checks every supported op against its record
_TERMS = {"plus": (("u", 0), ("v", 0)), "multiply": (("uv", 0),), "max": (("max", 0),), "min": (("min", 0),),
          "concat": (("u", 0), ("v", 1))}
_BASES = {"uv": torch.mul, "max": torch.maximum, "min": torch.minimum}       # the bases other than u and v


def op_terms(name: str) -> tuple[tuple[str, int], ...]:
    """(basis, head block) terms of a supported op (see :data:`_TERMS`)."""
    if name in _TERMS:
        return _TERMS[name]
    first, second = name.split("+")
    return _TERMS[first] + tuple((b, blk + 1) for b, blk in _TERMS[second])


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


class _Scratch:
    """Work buffers reused by every step: ``take(name, *shape)`` is a view of the first prod(shape) elements of
    buffer ``name``, which grows (is reallocated) only when a step needs more (batches and distinct-row counts
    vary from step to step)."""

    def __init__(self, like: Tensor):
        self.like, self.store = like, {}

    def take(self, name: str, *shape: int) -> Tensor:
        n = math.prod(shape)
        buf = self.store.get(name)
        if buf is None or buf.numel() < n:
            buf = self.store[name] = self.like.new_empty(n)
        return buf[:n].view(shape)


class _Side(NamedTuple):
    """One side (user or item) of a batch: ``index`` the batch's table rows (B,); ``rows`` those g runs on (U,):
    the distinct rows (sorted) when ``inverse`` (B,) maps every rating to its distinct row, else ``index`` itself
    (U = B); ``distinct`` and ``positions``: the distinct rows and each rating's place among them (row-wise
    tables coalesce with them; None when not computed); ``x`` the looked-up embeddings (U, k), ``h`` g's hidden
    tanh (1, H, U*k), ``z`` = g(x) (U, k)."""

    index: Tensor
    rows: Tensor
    inverse: Tensor | None
    distinct: Tensor | None
    positions: Tensor | None
    x: Tensor
    h: Tensor
    z: Tensor


class _Batch(NamedTuple):
    """An encoded batch: both ``sides``, ``z`` (2, B, k) g's output at every rating (the first two of the bases of
    :meth:`FusedSIFStep._outputs`), ``dz`` (2, B, k) its gradient (scratch), ``bias`` (B,) or None, the ratings
    ``y`` (B,)."""

    sides: tuple[_Side, _Side]
    z: Tensor
    dz: Tensor
    bias: Tensor | None
    y: Tensor


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
        wi, ai = self.w_up.index, self.a_up.index
        self.w_pos = {"tables": [] if self.rows else [wi[id(p)] for p in self.tables],
                      "g": [wi[id(p)] for p in self.g], "heads": [wi[id(p)] for p in self.heads],
                      "bias": [wi[id(m.global_bias)]] if self.bias else []}
        a_pos = (ai[id(self.alpha)], *(ai[id(p)] for p in self.g))
        self.a_idx = tuple(sorted(a_pos))
        self.d_alpha = self.a_up.views[a_pos[0]].view(-1)                                  # (K,)
        shapes = m.g.closed_form().grad_shapes                                              # (2, ...) each
        self.g_out = {up: tuple(tuple(up.views[i].view(sh)[side:side + 1] for i, sh in zip(pos, shapes, strict=True))
                                for side in range(2))                                       # per side: (1, ...) each
                      for up, pos in ((self.w_up, self.w_pos["g"]), (self.a_up, a_pos[1:]))}
        self.head_grads = [self.w_up.views[i].view(-1) for i in self.w_pos["heads"]]     # (width,) each
        cost, eta = s.op_costs.get("interaction"), s.config.eta
        self.cost_grad = None if eta == 0 or cost is None else complexity_grad(cost, eta, self.alpha)[0]   # (K,)
        self.all_heads = self.task.train_all_heads and len(self.ops) > 1
        self._terms_init(m.names)
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
            self.gcf = [self.m.g.closed_form(side) for side in range(2)]        # g's math per side (sif.transform)
            self.vecs = [w.view(-1) for w in self.heads]                                   # (width,) each
            self._views_key, self.scratch = key, _Scratch(self.tables[0])

    def _terms_init(self, names: tuple[str, ...]) -> None:
        """Index maps between the heads (flat, op after op) and the per-basis head matrix W (bases, K, k) of
        :meth:`_outputs`: entry ``src[t]`` of the heads adds into entry ``dst[t]`` of W."""
        k, terms = self.k, [op_terms(n) for n in names]
        self.bases = ["u", "v", *sorted({b for ts in terms for b, _ in ts} - {"u", "v"})]
        src, dst, offset, n_ops = [], [], 0, len(names)
        for j, (ts, w) in enumerate(zip(terms, self.heads, strict=True)):
            for b, blk in ts:
                at = (self.bases.index(b) * n_ops + j) * k                              # W[basis b, op j]
                src.append(torch.arange(offset + blk * k, offset + (blk + 1) * k))
                dst.append(torch.arange(at, at + k))
            offset += w.numel()
        dev = self.tables[0].device
        self.term_src, self.term_dst = torch.cat(src).to(dev), torch.cat(dst).to(dev)
        self.widths = [w.numel() for w in self.heads]

    def _side(self, side: int, index: Tensor, x_all: Tensor, z_all: Tensor) -> _Side:
        """Look up one side and run g on it: on its distinct rows when they are few (on the CPU, see
        :meth:`SIFSpace.distinct_rows`; then gathered back into ``z_all`` (B, k)), else on every rating straight
        from ``x_all`` (B, k) into ``z_all``."""
        sc, k, table = self.scratch, self.k, self.tables[side]
        distinct = positions = inverse = None
        if index.device.type == "cpu" or self.rows is not None:    # (on CUDA torch.unique syncs: not for g alone)
            distinct, positions, few = SIFSpace.distinct_rows(index)
            if few and index.device.type == "cpu":
                inverse = positions
        rows = index if inverse is None else distinct
        n = rows.shape[0]
        x = x_all if inverse is None else sc.take(f"x{side}", n, k)
        SIFSpace.lookup_closed_form(table, rows, x)
        z = z_all if inverse is None else sc.take(f"z{side}", n, k)
        h = sc.take(f"h{side}", 1, self.g[0].shape[2], n * k)
        self.gcf[side].forward_(x.view(1, 1, -1), h, z.view(1, 1, -1))                    # z = g(x)
        if inverse is not None:
            torch.index_select(z, 0, inverse, out=z_all)
        return _Side(index, rows, inverse, distinct, positions, x, h, z)

    def _encode(self, batch) -> _Batch:
        """Both sides looked up and through g, and the biases (see :class:`_Batch`)."""
        users, items, y, contexts = unpack(batch)
        if contexts is not None:
            raise ValueError("the fused SIF step takes (users, items, ratings) batches")
        b, sc = users.shape[0], self.scratch
        z = sc.take("basis", len(self.bases), b, self.k)[:2]            # u, v: the first two bases of _outputs
        x = sc.take("x", 2, b, self.k)                                  # e at every rating (see _x_all)
        sides = (self._side(0, users, x[0], z[0]), self._side(1, items, x[1], z[1]))
        bias = SIFSpace.bias_closed_form(self.tables, self.global_bias, users, items) if self.bias else None
        return _Batch(sides, z, sc.take("dz", 2, b, self.k), bias, y)

    def _x_all(self, enc: _Batch) -> Tensor:
        """The looked-up embeddings at every rating (2, B, k) (what the "l2"/"norm" penalty on e sees; a side that
        went through g on every rating was looked up into it already)."""
        x = self.scratch.take("x", *enc.z.shape)
        for side, xs in zip(enc.sides, x.unbind(0), strict=True):
            if side.inverse is not None:
                torch.index_select(side.x, 0, side.inverse, out=xs)
        return x

    def _per_row(self, side: _Side, name: str, grad: Tensor) -> Tensor:
        """A gradient at every rating (B, ...) summed onto the rows g ran on (U, ...) (itself when U = B)."""
        if side.inverse is None:
            return grad
        out = self.scratch.take(name, side.rows.shape[0], *grad.shape[1:]).zero_()
        return out.index_add_(0, side.inverse, grad)

    def _g_backward(self, enc: _Batch, up: FlatUpdate, need_dx: bool) -> list[Tensor] | None:
        """g's gradients from ``enc.dz`` into ``up``'s views; returns dL/dx per side (U, k) when ``need_dx``."""
        out = []
        for i, (side, dz) in enumerate(zip(enc.sides, enc.dz.unbind(0), strict=True)):
            dz = self._per_row(side, f"dz{i}", dz)                                          # (U, k)
            dpre = self.scratch.take("dpre", *side.h.shape)
            dx = self.gcf[i].backward_(side.x.view(1, 1, -1), side.h, dz.view(1, 1, -1), dpre, self.g_out[up][i],
                                       need_dx)
            out.append(None if dx is None else dx.view(side.x.shape))
        return out if need_dx else None

    def _outputs(self, enc: _Batch) -> tuple[Tensor, Tensor]:
        """(every op's head output (K, B), the bases (nb, B, k)): each output as the sum of its terms (:data:`_TERMS`),
        one matrix product per basis, so that shared pieces (u * v, max, min) are computed once and no op's
        features are concatenated."""
        sc, (_, b, k), n_ops = self.scratch, enc.z.shape, len(self.ops)
        basis = sc.take("basis", len(self.bases), b, k)
        zu, zv = enc.z.unbind(0)
        for name, out in zip(self.bases[2:], basis[2:].unbind(0), strict=True):
            _BASES[name](zu, zv, out=out)
        w = sc.take("W", len(self.bases) * n_ops * k).zero_()
        w.index_add_(0, self.term_dst, torch.cat(self.vecs).index_select(0, self.term_src))
        w = w.view(len(self.bases), n_ops, k)
        outs = sc.take("outs", n_ops, b)
        torch.mm(w[0], basis[0].t(), out=outs)
        for wb, xb in zip(w[1:], basis[1:], strict=True):
            outs.addmm_(wb, xb.t())
        return outs, basis

    def _all_head_grads(self, dr: Tensor, basis: Tensor) -> None:
        """Every head's gradient into ``head_grads`` from dL/d(output) of every op ``dr`` (K, B)."""
        g = self.scratch.take("G", *basis.shape[:1], dr.shape[0], basis.shape[2])              # (nb, K, k)
        for gb, xb in zip(g.unbind(0), basis.unbind(0), strict=True):
            torch.mm(dr, xb, out=gb)
        flat = self.scratch.take("dheads", sum(self.widths)).zero_()
        flat.index_add_(0, self.term_src, g.view(-1).index_select(0, self.term_dst))
        for out, part in zip(self.head_grads, flat.split(self.widths), strict=True):
            out.copy_(part)

    def _op_grad(self, j: int, enc: _Batch, dpred: Tensor) -> None:
        """dL/dz (2, B, k) of op j's head output into ``enc.dz``, from dL/dpred (B,)."""
        zu, zv = enc.z.unbind(0)
        torch.stack(self.ops[j].grad(zu, zv, torch.outer(dpred, self.vecs[j])), out=enc.dz)

    def alpha_step(self, batch, sel: int) -> Tensor:
        """The alpha optimiser's step on (A, g) with dL_val/dĀ, then A = prox_C2(A); returns the validation loss."""
        t = self.task
        enc = self._encode(batch)
        outs, _ = self._outputs(enc)                                                        # every op's output
        pred = outs[sel] if enc.bias is None else outs[sel] + enc.bias
        loss, dpred = mse_closed_form(pred - enc.y)
        self._op_grad(sel, enc, dpred)
        if t.reg and t.penalty != "effective":
            val, grad = t.penalty_closed_form(enc.z if t.on_transformed else self._x_all(enc), t.on_transformed)
            loss = loss + val
            if grad is not None:
                enc.dz.add_(grad)
        torch.mv(outs, dpred, out=self.d_alpha)                                            # (K,)
        if self.cost_grad is not None:                      # d(eta * R(Ā))/dĀ, Ā one-hot
            self.d_alpha[sel] += self.cost_grad[sel]
        self._g_backward(enc, self.a_up, need_dx=False)
        self.a_up.step(self.a_idx)
        prox_c2_(self.alpha)                # A = prox_C2(A) (ArchParameters' caches key on the version it bumps)
        return loss

    def weight_step(self, batch, sel: int) -> Tensor:
        """The weight optimiser's step with op ``sel`` (every head with train_all_heads); returns the loss."""
        t, w, pos, views = self.task, self.vecs[sel], self.w_pos, self.w_up.views
        enc = self._encode(batch)
        z, bias = enc.z, enc.bias
        zu, zv = z.unbind(0)
        self.w_up.flat.zero_()
        if self.all_heads:                 # every head's MSE (the others' on detached features: no gradient to z)
            loss, dpred = self._all_heads_loss(enc, sel)
        else:
            feat = self.ops[sel](zu, zv)                                                   # (B, width)
            pred = torch.mv(feat, w) if bias is None else torch.mv(feat, w) + bias
            loss, dpred = mse_closed_form(pred - enc.y)
            torch.mv(feat.t(), dpred, out=self.head_grads[sel])                           # (width,)
        dw = self.head_grads[sel]
        self._op_grad(sel, enc, dpred)
        dx_extra = None
        if t.reg and t.penalty == "effective":
            loss = loss + SIFSpace.effective_penalty_closed_form(self.ops[sel], w, z, t.reg, enc.dz, dw)
        elif t.reg:
            val, grad = t.penalty_closed_form(z if t.on_transformed else self._x_all(enc))
            loss = loss + val
            if t.on_transformed:
                enc.dz.add_(grad)
            else:
                dx_extra = grad                                                             # (2, B, k)
        dxs = self._g_backward(enc, self.w_up, True)
        looked = []                                      # per side: (table rows, their gradients (n, k [+1]))
        for i, (side, dx) in enumerate(zip(enc.sides, dxs, strict=True)):
            if dx_extra is not None:
                dx = dx + self._per_row(side, f"dxe{i}", dx_extra[i])
            if bias is not None:                        # the bias column's gradient: dL/dpred per rating
                dx = torch.cat([dx, self._per_row(side, f"db{i}", dpred.unsqueeze(1))], dim=1)
            looked.append((side, dx))
        for i, (side, r) in zip(pos["tables"], looked, strict=False):   # dense tables (none when row-wise):
            views[i].index_add_(0, side.rows, r)                       # index_select's backward
        rows = [self._coalesced(side, r) for side, r in looked] if self.rows else []   # row-wise: (rows, grads)
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

    def _all_heads_loss(self, enc: _Batch, sel: int) -> tuple[Tensor, Tensor]:
        """(the selected op's MSE plus every other head's on the target minus the bias (the closed form of
        :meth:`SIFSpace.other_heads_loss`), dL/dpred of the selected op (B,)); writes every head's gradient."""
        outs, basis = self._outputs(enc)
        target = enc.y if enc.bias is None else enc.y - enc.bias
        dr = self.scratch.take("dr", *outs.shape)
        loss = None
        for j in [sel, *(j for j in range(len(self.ops)) if j != sel)]:
            mse, d = mse_closed_form(outs[j] - target)
            dr[j] = d
            loss = mse if loss is None else loss + mse
        self._all_head_grads(dr, basis)
        return loss, dr[sel]

    @staticmethod
    def _coalesced(side: _Side, r: Tensor) -> tuple[Tensor, Tensor]:
        """(unique table rows, summed row gradients) of a side's gradients ``r`` at ``side.rows``."""
        if side.inverse is not None:                            # already one row per distinct row
            return side.rows, r
        if side.distinct is None:
            return coalesce_rows(side.index, r)
        return side.distinct, r.new_zeros(side.distinct.shape[0], r.shape[1]).index_add_(0, side.positions, r)

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
