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
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = ["make_optimizer", "OPTIMIZERS", "FlatUpdate"]

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

    def clip_(self, max_norm: float) -> None:
        """``clip_grad_norm_`` over the whole buffer: one norm of every entry (the norm of the per-tensor norms up
        to rounding; entries without a gradient are 0) and one multiply by min(1, max_norm / (norm + 1e-6))."""
        if self._consts is None or self._consts[0] != max_norm:      # 0-dim operands made once, not per step
            self._consts = (max_norm, self.flat.new_tensor(max_norm), self.flat.new_tensor(1e-6))
        _, top, eps = self._consts
        total = torch.linalg.vector_norm(self.flat, 2.0)
        self.flat.mul_(torch.div(top, total.add_(eps)).clamp_(max=1.0))

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
