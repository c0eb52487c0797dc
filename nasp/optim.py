"""Optimiser construction shared by the search loop and the trainers: PyTorch's fused kernels where available.

A NAS or SIF step updates many small tensors (alphas, heads, an element-wise MLP), so the optimiser's per-tensor
kernel launches matter: measured on a 2-core CPU (torch 2.13), one Adam step over SIF's alpha-step parameters
took 0.43 ms fused against 1.2 ms with ``foreach`` (Adagrad over the weights: 0.43 ms against 1.1 ms). Fused
kernels need floating-point parameters on a device that has them; Adagrad's fused kernel is used on CPU only
(elsewhere the ``foreach`` path), and ``fused=False`` keeps the ``foreach`` path everywhere. SGD always takes the
``foreach`` path: torch 2.13's fused SGD fails when a parameter gets its first gradient after others already hold
momentum buffers, which is exactly what a NAS weight step that trains only the selected ops does.

:class:`FlatUpdate` steps an optimiser with hand-computed gradients held in one flat buffer (for any space's
hand-written step): gradients are written into per-parameter views of the buffer, clipped with one norm, and the
step runs torch's fused kernel directly on the optimiser's own state (fused Adagrad/Adam/AdamW, when the kernel
exists in this torch) or else ``optimizer.step()`` with the gradients assigned, so the optimiser state stays the
one a generic autograd step would build.

:class:`RowSparseOptimizer` (what :func:`make_optimizer` returns when some parameters are marked with
:func:`mark_row_sparse`) updates embedding tables row-wise: only the rows of the batch and their optimiser state
change, so a step costs O(batch), not O(table) (Adagrad and plain SGD exact, Adam lazy; see the class).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = ["make_optimizer", "OPTIMIZERS", "FlatUpdate", "RowSparseOptimizer", "mark_row_sparse", "is_row_sparse",
           "coalesce_rows", "clip_grad_norm_"]

OPTIMIZERS = ("sgd", "adagrad", "adam", "adamw")
_FUSED_DEVICES = {"sgd": (), "adam": ("cpu", "cuda"), "adamw": ("cpu", "cuda"), "adagrad": ("cpu",)}


def _param_list(params: Iterable[Any]) -> list[torch.Tensor]:
    out = []
    for p in params:
        out.extend(p["params"] if isinstance(p, dict) else [p])
    return out


def _can_fuse(name: str, params: list[torch.Tensor]) -> bool:
    devices = {p.device.type for p in params}
    return (bool(params) and len(devices) == 1 and devices <= set(_FUSED_DEVICES[name])
            and all(torch.is_floating_point(p) and not p.is_sparse for p in params))


def make_optimizer(name: str, params: Iterable[Any], lr: float, weight_decay: float = 0.0, momentum: float = 0.0,
                   betas: tuple[float, float] = (0.9, 0.999), fused: bool = True) -> torch.optim.Optimizer:
    """``name`` in sgd | adagrad | adam | adamw over ``params`` (tensors or param-group dicts), fused when the
    parameters' device supports it (``fused=True``), else with ``foreach`` kernels."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
    params = list(params)
    if any(is_row_sparse(p) for p in _param_list(params)):
        return RowSparseOptimizer(name, params, lr, weight_decay, momentum, betas, fused)
    kind = {"fused": True} if fused and _can_fuse(name, _param_list(params)) else {"foreach": True}
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, **kind)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=weight_decay, **kind)
    cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    return cls(params, lr=lr, betas=betas, weight_decay=weight_decay, **kind)


# ---- planned updates on a flat gradient buffer ----------------------------------------------------------------
_KERNELS = {"adagrad": "_fused_adagrad_", "adam": "_fused_adam_", "adamw": "_fused_adamw_"}   # private torch ops


def _kernel(opt: torch.optim.Optimizer):
    """(kind, torch's fused kernel) when ``opt`` is a fused torch Adagrad/Adam/AdamW with one plain param group, no
    step hooks and the kernel present in this torch (feature-detected: private ops); else None (then
    ``optimizer.step()`` runs, which is public API)."""
    kinds = {torch.optim.Adagrad: "adagrad", torch.optim.Adam: "adam", torch.optim.AdamW: "adamw"}
    kind = kinds.get(type(opt))
    if kind is None or len(opt.param_groups) != 1:
        return None
    group = opt.param_groups[0]
    if not group.get("fused") or any(group.get(k) for k in ("amsgrad", "differentiable", "capturable")):
        return None
    from torch.optim import optimizer as module

    hooks = [getattr(o, n, None) for o, n in ((opt, "_optimizer_step_pre_hooks"), (opt, "_optimizer_step_post_hooks"),
             (module, "_global_optimizer_pre_hooks"), (module, "_global_optimizer_post_hooks"))]
    if any(h is None or len(h) for h in hooks):       # hooks run only in optimizer.step(); unknown: assume some
        return None
    if kind == "adam" and group.get("decoupled_weight_decay"):
        kind = "adamw"
    fn = getattr(torch, _KERNELS[kind], None)
    return None if fn is None or not hasattr(torch, "_foreach_add_") else (kind, fn)


class FlatUpdate:
    """Steps ``opt`` with gradients held in one flat buffer ``flat`` (zeros; ``views[i]`` shaped like the i-th of
    ``params``, the optimiser's parameters group by group). ``step(idx)`` updates the parameters at positions
    ``idx`` (a tuple) with their views; the others get no gradient (no update, like ``grad=None``).

    With a fused Adagrad/Adam/AdamW (see ``_kernel``) the step increments the states' ``step`` and runs torch's
    fused kernel on the optimiser's own state tensors; otherwise, or while a state does not exist yet, the views
    are copied to ``.grad`` and ``optimizer.step()`` runs (creating missing state exactly as torch does). The
    parameters must share one dtype and device (ValueError otherwise)."""

    def __init__(self, opt: torch.optim.Optimizer):
        self.opt, self.kernel = opt, _kernel(opt)
        self.params = [p for g in opt.param_groups for p in g["params"]]
        if len({(p.dtype, p.device) for p in self.params}) != 1:
            raise ValueError("FlatUpdate: the optimiser's parameters have mixed dtypes or devices")
        self.index = {id(p): i for i, p in enumerate(self.params)}
        sizes = [p.numel() for p in self.params]
        p0 = self.params[0]
        self.flat = torch.zeros(sum(sizes), dtype=p0.dtype, device=p0.device)
        self.views = [v.view(p.shape) for v, p in zip(self.flat.split(sizes), self.params, strict=True)]
        self._plans: dict[tuple[int, ...], tuple] = {}
        self._plans_state: object = None
        self._consts: tuple[float, Tensor, Tensor] | None = None

    def clip_(self, max_norm: float, extra: tuple[Tensor, ...] = ()) -> None:
        """``clip_grad_norm_`` over the whole buffer: one norm of every entry (the norm of the per-tensor norms up
        to rounding; entries without a gradient are 0) and one multiply by min(1, max_norm / (norm + 1e-6)).
        ``extra`` gradients held outside the buffer (row-wise tables' row gradients) join the norm and the scaling."""
        if self._consts is None or self._consts[0] != max_norm:      # 0-dim operands made once, not per step
            self._consts = (max_norm, self.flat.new_tensor(max_norm), self.flat.new_tensor(1e-6))
        _, top, eps = self._consts
        total = torch.linalg.vector_norm(self.flat, 2.0)
        if extra:
            total = torch.linalg.vector_norm(torch.stack([total, *(torch.linalg.vector_norm(t) for t in extra)]))
        coef = torch.div(top, total.add_(eps)).clamp_(max=1.0)
        self.flat.mul_(coef)
        for t in extra:
            t.mul_(coef)

    def _plan(self, idx: tuple[int, ...]) -> tuple | None:
        """(params, grads, state tensor lists, steps, ones) of the parameters at ``idx``; None while a state is
        missing. Cached per pattern while ``opt.state`` (replaced by ``load_state_dict``) is the same object."""
        st = self.opt.state
        if self._plans_state is not st:
            self._plans, self._plans_state = {}, st
        plan = self._plans.get(idx)
        if plan is None:
            sts = [st.get(self.params[i]) for i in idx]
            if any(x is None or "step" not in x for x in sts):
                return None
            names = ("sum",) if self.kernel[0] == "adagrad" else ("exp_avg", "exp_avg_sq")
            steps = [x["step"] for x in sts]
            ones = [torch.ones((), dtype=steps[0].dtype, device=steps[0].device)] * len(steps)
            plan = self._plans[idx] = ([self.params[i] for i in idx], [self.views[i] for i in idx],
                                       [[x[n] for x in sts] for n in names], steps, ones)
        return plan

    def step(self, idx: tuple[int, ...]) -> None:
        """One optimiser step with the buffer's gradients for the parameters at ``idx``."""
        plan = self._plan(idx) if self.kernel is not None else None
        if plan is None:
            chosen = set(idx)
            for i, p in enumerate(self.params):
                p.grad = self.views[i].clone() if i in chosen else None    # never a view of the reused buffer
            self.opt.step()
            self._plans_state = None
            return
        params, grads, states, steps, ones = plan
        group, (kind, fn) = self.opt.param_groups[0], self.kernel
        torch._foreach_add_(steps, ones)                       # step += 1, as torch.optim does before the kernel
        self.opt._opt_called = True                            # what torch.optim's step records for a scheduler
        common = {"lr": group["lr"], "weight_decay": group["weight_decay"], "eps": group["eps"],
                  "maximize": group["maximize"]}
        if kind == "adagrad":
            fn(params, grads, states[0], steps, lr_decay=group["lr_decay"], **common)
            return
        beta1, beta2 = group["betas"]
        fn(params, grads, states[0], states[1], [], steps, amsgrad=False, beta1=beta1, beta2=beta2, **common)


# ---- row-wise sparse updates of embedding tables --------------------------------------------------------------
_ROW_SPARSE = "_nasp_row_sparse"          # attribute a model sets on its row-wise tables (mark_row_sparse)
_EPS = {"sgd": 0.0, "adagrad": 1e-10, "adam": 1e-8, "adamw": 1e-8}        # torch's defaults


def mark_row_sparse(*params: Tensor) -> None:
    """Declare embedding tables (N, k) whose gradients are row-sparse: :func:`make_optimizer` then updates them
    with :class:`RowSparseOptimizer` (only the rows of the batch, and only their optimiser state)."""
    for p in params:
        setattr(p, _ROW_SPARSE, True)


def is_row_sparse(p: Tensor) -> bool:
    return bool(getattr(p, _ROW_SPARSE, False))


def coalesce_rows(idx: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    """(unique row indices (n,), summed row gradients (n, k)) of per-lookup gradients ``rows`` (B, k) at ``idx``
    (B,): what index_select's backward would add into a dense (N, k) gradient, without the dense tensor."""
    uniq, inv = torch.unique(idx, return_inverse=True)
    return uniq, rows.new_zeros(uniq.shape[0], rows.shape[1]).index_add_(0, inv, rows)


def _grad_rows(grad: Tensor) -> tuple[Tensor, Tensor]:
    """(unique row indices, row gradients) of a sparse COO gradient (a dense one: every row)."""
    if not grad.is_sparse:
        return torch.arange(grad.shape[0], device=grad.device), grad
    g = grad.coalesce()
    return g.indices()[0], g.values()


class RowSparseOptimizer(torch.optim.Optimizer):
    """``name`` (sgd | adagrad | adam | adamw) with row-wise updates of the tables marked by
    :func:`mark_row_sparse` and torch's own optimiser (fused where it can be, see :func:`make_optimizer`) for every
    other parameter.

    A table's gradient is a sparse COO tensor (``nn.Embedding(sparse=True)``) or given as (unique rows, row
    gradients) to :meth:`step_rows` (a hand-written step). Only those rows and their state change:

    - **SGD** without momentum and **Adagrad** are exact: the dense update of an untouched row is zero (Adagrad's
      sum grows by 0), so the result equals the dense optimiser's up to float rounding.
    - **Adam / AdamW become lazy Adam** (torch's ``SparseAdam`` rule): a row's moments decay only in the steps that
      touch it; the bias correction uses the table's step count (every step that touched any row).
    - **SGD momentum** is lazy in the same way (the buffer of a row moves only when the row is touched).
    - **Weight decay** applies to the touched rows only (L2 added to their gradient; AdamW: their decoupled
      shrink), i.e. a row is decayed once per step it appears in, not at every step.

    One state dict holds both parts (the dense optimiser shares this optimiser's ``state``); param groups (and
    what a scheduler writes into them) are this optimiser's and are copied to the dense part before each step.
    """

    def __init__(self, name: str, params: Iterable[Any], lr: float, weight_decay: float = 0.0,
                 momentum: float = 0.0, betas: tuple[float, float] = (0.9, 0.999), fused: bool = True):
        if name not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
        defaults = {"lr": lr, "weight_decay": weight_decay, "momentum": momentum, "betas": tuple(betas),
                    "eps": _EPS[name], "lr_decay": 0.0, "maximize": False}
        super().__init__(params, defaults)
        self.kind = name
        self.tables = [p for g in self.param_groups for p in g["params"] if is_row_sparse(p)]
        self.group_of = {p: g for g in self.param_groups for p in g["params"]}
        pairs = [(g, {"params": [p for p in g["params"] if not is_row_sparse(p)], "lr": g["lr"]})
                 for g in self.param_groups]
        pairs = [(g, d) for g, d in pairs if d["params"]]
        self.dense = (make_optimizer(name, [d for _, d in pairs], lr, weight_decay, momentum, betas, fused)
                      if pairs else None)
        self._pairs = list(zip([g for g, _ in pairs], self.dense.param_groups, strict=True)) if pairs else []
        if self.dense is not None:
            self.dense.state = self.state
            for g in self.param_groups:
                g["fused"] = bool(self.dense.param_groups[0].get("fused"))   # how load_state_dict places "step"

    def sync_groups(self) -> None:
        """Copy the settings a scheduler or a user may change (lr, weight decay) to the dense optimiser."""
        for outer, inner in self._pairs:
            inner["lr"], inner["weight_decay"] = outer["lr"], outer["weight_decay"]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if self.dense is not None:
            self.dense.state = self.state                  # torch's load replaces the state dict object

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.dense is not None:
            self.sync_groups()
            self.dense.step()
        for p in self.tables:
            if p.grad is not None:
                self.step_rows(p, *_grad_rows(p.grad))
        return loss

    def _row_state(self, p: Tensor) -> dict[str, Tensor]:
        st = self.state[p]
        if not st:
            st["step"] = torch.zeros((), dtype=torch.float32)
            names = {"adagrad": ("sum",), "adam": ("exp_avg", "exp_avg_sq"), "adamw": ("exp_avg", "exp_avg_sq"),
                     "sgd": ("momentum_buffer",) if self.group_of[p]["momentum"] else ()}[self.kind]
            for n in names:
                st[n] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return st

    @torch.no_grad()
    def step_rows(self, p: Tensor, idx: Tensor, rows: Tensor) -> None:
        """Update rows ``idx`` (n,) unique of table ``p`` (N, k) with their gradients ``rows`` (n, k)."""
        group, st = self.group_of[p], self._row_state(p)
        self._opt_called = True                   # what torch.optim's step records for a scheduler
        self.sync_groups()                        # (a hand-written step then steps the dense part itself)
        st["step"] += 1
        if self._fused_rows(p, idx, rows, group, st):
            return
        lr, wd = group["lr"], group["weight_decay"]
        if self.kind == "adamw":
            if wd:
                p.index_add_(0, idx, p.index_select(0, idx), alpha=-lr * wd)
        elif wd:
            rows = rows + wd * p.index_select(0, idx)
        if self.kind == "sgd":
            if group["momentum"]:
                buf = st["momentum_buffer"]
                rows = buf.index_select(0, idx).mul_(group["momentum"]).add_(rows)
                buf.index_copy_(0, idx, rows)
            p.index_add_(0, idx, rows, alpha=-lr)
        elif self.kind == "adagrad":
            clr = lr / (1 + (float(st["step"]) - 1) * group["lr_decay"])
            s = st["sum"].index_add_(0, idx, rows * rows).index_select(0, idx)
            p.index_add_(0, idx, rows / s.sqrt_().add_(group["eps"]), alpha=-clr)
        else:
            self._adam_rows(p, idx, rows, group, st)

    def _fused_rows(self, p: Tensor, idx: Tensor, rows: Tensor, group: dict, st: dict) -> bool:
        """Adagrad/Adam/AdamW on rows ``idx`` through torch's fused kernel (:data:`_KERNELS`, weight decay
        included): the rows of the table and of its state gathered, one kernel pass, scattered back; the same
        update as the op-by-op path below up to float rounding, with 3-4 passes over the rows instead of ~13 (on
        a 1M-row table and 63k rows, 29 ms against 44 ms). False where not taken (SGD, not on the CPU, no kernel in
        this torch): then the op-by-op path runs."""
        fn = getattr(torch, _KERNELS.get(self.kind, ""), None)
        if fn is None or p.device.type != "cpu" or not hasattr(torch, "_foreach_add_"):
            return False
        names = ("sum",) if self.kind == "adagrad" else ("exp_avg", "exp_avg_sq")
        pr, states = p.index_select(0, idx), [st[n].index_select(0, idx) for n in names]     # (n, k) each
        common = {"lr": group["lr"], "weight_decay": group["weight_decay"], "eps": group["eps"], "maximize": False}
        if self.kind == "adagrad":
            fn([pr], [rows], [states[0]], [st["step"]], lr_decay=group["lr_decay"], **common)
        else:
            (b1, b2) = group["betas"]
            fn([pr], [rows], [states[0]], [states[1]], [], [st["step"]], amsgrad=False, beta1=b1, beta2=b2, **common)
        p.index_copy_(0, idx, pr)
        for n, rows_state in zip(names, states, strict=True):
            st[n].index_copy_(0, idx, rows_state)
        return True

    @staticmethod
    def _adam_rows(p: Tensor, idx: Tensor, rows: Tensor, group: dict, st: dict) -> None:
        """Lazy Adam on rows ``idx``: the moments of those rows only, bias-corrected with the table's step."""
        (b1, b2), t = group["betas"], float(st["step"])
        m = st["exp_avg"].index_select(0, idx).mul_(b1).add_(rows, alpha=1 - b1)
        v = st["exp_avg_sq"].index_select(0, idx).mul_(b2).addcmul_(rows, rows, value=1 - b2)
        st["exp_avg"].index_copy_(0, idx, m)
        st["exp_avg_sq"].index_copy_(0, idx, v)
        denom = v.sqrt_().div_(math.sqrt(1 - b2 ** t)).add_(group["eps"])
        p.index_add_(0, idx, m.div_(denom), alpha=-group["lr"] / (1 - b1 ** t))


def clip_grad_norm_(params: Iterable[Tensor], max_norm: float) -> Tensor:
    """``torch.nn.utils.clip_grad_norm_`` (one total L2 norm, grads scaled by min(1, max_norm / (norm + 1e-6)))
    that also takes sparse COO gradients (row-wise tables: coalesced, their values counted and scaled); without
    sparse gradients it is torch's own call."""
    params = [p for p in params if p.grad is not None]
    sparse = [p for p in params if p.grad.is_sparse]
    if not sparse:
        return torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
    for p in sparse:
        p.grad = p.grad.coalesce()
    grads = [p.grad._values() if p.grad.is_sparse else p.grad for p in params]
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef)
    return total
